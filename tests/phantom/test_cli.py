"""``lungslice synth``: a thin CLI over synthesize, select_patients and the preview."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from lungslice.cli import app
from lungslice.phantom.preview import series_preview
from lungslice.phantom.writer import MANIFEST

runner = CliRunner()


def test_synth_patients_with_preview(tmp_path: Path) -> None:
    png = tmp_path / "grid.png"
    result = runner.invoke(
        app,
        [
            "synth", "--out", str(tmp_path / "out"), "--patients", "LIDC-IDRI-0001",
            "--matrix", "256", "--z-margin", "0", "--seed", "2", "--preview", str(png),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "LIDC-IDRI-0001" in result.output
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    (rec,) = manifest["series"]
    assert rec["z_cropped"] is True and rec["slices_written"] == 9
    assert manifest["config"]["matrix"] == 256 and manifest["config"]["seed"] == 2
    files = list((tmp_path / "out" / "LIDC-IDRI" / "LIDC-IDRI-0001").rglob("*.dcm"))
    assert len(files) == 9
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same grid from any series folder (here the phantom's own, slices by z)
    grid = series_preview(files[0].parent, tmp_path / "series.png", n_panels=4)
    assert 0 < grid.stat().st_size < 500_000


def test_synth_needs_exactly_one_of_patients_or_n(tmp_path: Path) -> None:
    result = runner.invoke(app, ["synth", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "give exactly one of --patients" in result.output
    result = runner.invoke(
        app, ["synth", "--out", str(tmp_path), "--patients", "LIDC-IDRI-0001", "--n", "2"]
    )
    assert result.exit_code == 2


def test_synth_reports_unknown_patients(tmp_path: Path) -> None:
    result = runner.invoke(app, ["synth", "--out", str(tmp_path), "--patients", "LIDC-IDRI-9999"])
    assert result.exit_code == 2
    assert "LIDC-IDRI-9999" in result.output and "not in the LIDC-IDRI database" in result.output


def test_synth_rejects_a_bad_matrix(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["synth", "--out", str(tmp_path), "--patients", "LIDC-IDRI-0001", "--matrix", "300"]
    )
    assert result.exit_code == 2
    assert "matrix must be 512 or 256, got 300" in result.output
