"""The index and show commands: they call the library, print a summary, turn errors into exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from lungslice.cli.commands import app
from lungslice.testing import write_ct_series

runner = CliRunner()


def test_index_writes_tables_and_summary(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "tree" / "a", n_slices=4, rows=8, columns=8)
    gap = write_ct_series(tmp_path / "tree" / "b", n_slices=5, rows=8, columns=8, seed=1)
    gap[2].unlink()
    (tmp_path / "tree" / "readme.txt").write_text("x")
    result = runner.invoke(app, ["index", str(tmp_path / "tree"), "--out", str(tmp_path / "idx")])
    assert result.exit_code == 0, result.output
    assert "series rejected: missing slices" in result.output
    assert "files skipped: not DICOM" in result.output
    files = pd.read_parquet(tmp_path / "idx" / "files.parquet")
    assert len(files) == 9
    series = pd.read_parquet(tmp_path / "idx" / "series.parquet")
    assert sorted(series["status"]) == ["ok", "rejected"]
    again = runner.invoke(
        app, ["index", str(tmp_path / "tree"), "--out", str(tmp_path / "i2"), "--allow-gaps"]
    )
    assert again.exit_code == 0
    assert list(pd.read_parquet(tmp_path / "i2" / "series.parquet")["status"]) == ["ok", "ok"]


def test_show_prints_facts_and_png(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "s", n_slices=6, rows=16, columns=16, patient_id="P-7")
    result = runner.invoke(app, ["show", str(tmp_path / "s"), "--png", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert "P-7" in result.output
    assert "median_lung_range" in result.output
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    as_json = runner.invoke(app, ["show", str(tmp_path / "s"), "--json"])
    facts = json.loads(as_json.stdout[as_json.stdout.index("{") :])
    assert facts["geometry"]["shape"] == [6, 16, 16]
    assert facts["geometry"]["spacing_mm"] == [2.5, 0.7, 0.7]


def test_show_error_is_clean(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["show", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "the folder is empty" in " ".join(result.output.split())  # rich wraps lines
    assert "Traceback" not in result.output
    bad = runner.invoke(app, ["show", str(tmp_path / "empty"), "--tilt", "maybe"])
    assert bad.exit_code == 2
    assert "LoadConfig.tilt must be 'refuse' or 'correct', got 'maybe'" in " ".join(
        bad.output.split()
    )
