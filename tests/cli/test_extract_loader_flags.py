"""`lungslice extract` takes the loader flags of index/show/predict, typed as a user types them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from typer.testing import CliRunner

from lungslice.cli import app
from lungslice.testing import write_ct_series

runner = CliRunner()

#: Small inputs keep the model cheap; the loader decisions are what is tested.
FAST = ("--size", "64", "--batch-size", "8", "--precision", "fp32", "--device", "cpu")
FAST_CANDIDATES = ("--max-candidates", "8")


def _run(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}")
    return result.exit_code, " ".join(result.output.split())


def _uid(paths: list[Path]) -> str:
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def _manifest(work: Path) -> pd.DataFrame:
    (path,) = (work / "features").glob("*/manifest.parquet")
    return pd.read_parquet(path).set_index("series_uid")


def _tree(root: Path) -> dict[str, str]:
    """A series with a missing slice, a tilted one and a regular one (6 slices, 48 x 48)."""
    small = {"rows": 48, "columns": 48}
    gap = write_ct_series(
        root / "P1" / "gap",
        n_slices=6,
        z_positions=[0.0, 2.5, 5.0, 12.5, 15.0, 17.5],
        spacing=(2.5, 0.7, 0.7),
        patient_id="P1",
        seed=1,
        **small,
    )
    angle = np.deg2rad(15.0)
    tilted = write_ct_series(
        root / "P2" / "tilted",
        n_slices=6,
        orientation=(1, 0, 0, 0, float(np.cos(angle)), float(-np.sin(angle))),
        stack_direction=(0, 0, 1),
        GantryDetectorTilt=15.0,
        patient_id="P2",
        seed=2,
        **small,
    )
    ok = write_ct_series(root / "P3" / "ok", n_slices=6, patient_id="P3", seed=3, **small)
    return {"gap": _uid(gap), "tilted": _uid(tilted), "ok": _uid(ok)}


def test_extract_loader_flags(tmp_path: Path) -> None:
    uids = _tree(tmp_path / "tree")
    tree = tmp_path / "tree"

    # strict by default: the gap and the tilt are rejected with their reasons, the rest runs
    code, text = _run("extract", tree, "--out", tmp_path / "w1", *FAST)
    assert code == 0, text
    strict = _manifest(tmp_path / "w1")
    assert strict.loc[uids["ok"], "status"] == "done"
    assert strict.loc[uids["gap"], "status"] == "rejected"
    assert "gap" in strict.loc[uids["gap"], "reason"]
    assert strict.loc[uids["tilted"], "status"] == "rejected"
    assert "degrees off the slice normal" in strict.loc[uids["tilted"], "reason"]

    # the opt-outs, as flags: every series is extracted
    code, text = _run(
        "extract", tree, "--out", tmp_path / "w2", "--allow-gaps", "--tilt", "correct", *FAST
    )
    assert code == 0, text
    relaxed = _manifest(tmp_path / "w2")
    assert set(relaxed["status"]) == {"done"}, relaxed[["status", "reason"]]
    assert len(relaxed) == 3

    # --series-uid: only that series, the others' rows of earlier runs are kept
    code, text = _run(
        "extract", tree, "--out", tmp_path / "w1", "--series-uid", uids["gap"], "--allow-gaps",
        *FAST,
    )  # fmt: skip
    assert code == 0, text
    assert "1 computed" in text, text
    again = _manifest(tmp_path / "w1")
    assert again.loc[uids["gap"], "status"] == "done"
    assert again.loc[uids["ok"], "status"] == "done"
    code, text = _run("extract", tree, "--out", tmp_path / "w3", "--series-uid", "1.2.3", *FAST)
    assert code != 0 and "1.2.3" in text and "lungslice index" in text, text

    # --min-slices above every series' count: nothing loadable, a message, not a traceback
    code, text = _run(
        "extract", tree, "--out", tmp_path / "w4", "--min-slices", "7", "--allow-gaps", *FAST
    )
    assert code != 0 and str(tree) in text and "no loadable CT series" in text, text

    # a rejected --series-uid says why, with the remedy as a flag (not LoadConfig(...))
    code, text = _run("extract", tree, "--out", tmp_path / "w5", "--series-uid", uids["gap"], *FAST)
    assert code != 0 and "--allow-gaps" in text and "LoadConfig" not in text, text


def test_candidates_extract_loader_flags(tmp_path: Path) -> None:
    uids = _tree(tmp_path / "tree")
    tree = tmp_path / "tree"

    def manifest(work: Path) -> pd.DataFrame:
        (path,) = (work / "candidates").glob("*/manifest.parquet")
        return pd.read_parquet(path).set_index("series_uid")

    code, text = _run("candidates", "extract", tree, "--out", tmp_path / "w1", *FAST_CANDIDATES)
    assert code == 0, text
    strict = manifest(tmp_path / "w1")
    assert strict.loc[uids["gap"], "status"] == "rejected"
    assert "gap" in strict.loc[uids["gap"], "reason"]
    assert "degrees off the slice normal" in strict.loc[uids["tilted"], "reason"]

    code, text = _run(
        "candidates", "extract", tree, "--out", tmp_path / "w2", "--allow-gaps",
        "--tilt", "correct", *FAST_CANDIDATES,
    )  # fmt: skip
    assert code == 0, text
    relaxed = manifest(tmp_path / "w2")
    # loaded now; these tiny non-chest series then fail for want of a lung field,
    # said in one line each, without a traceback (_run checks)
    for uid in (uids["gap"], uids["tilted"]):
        assert relaxed.loc[uid, "status"] == "failed", relaxed.loc[uid]
        assert "no lung field" in relaxed.loc[uid, "reason"]
