"""Batch prediction over a collection: one folder per study, a summary table, resume, failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from lungslice.batch import SUMMARY_COLUMNS, predict_batch
from lungslice.prediction import PredictConfig
from lungslice.testing import write_ct_series
from tests.helpers import PIPELINE_PATIENTS, Pipeline

PATIENTS = PIPELINE_PATIENTS
FAST = PredictConfig(write_report=False, write_key_images=False, heatmaps=False)


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, pipeline: Pipeline) -> tuple[Path, Path]:
    """(DICOM root with 3 phantom patients and one corrupt series, model bundle)."""
    root = tmp_path_factory.mktemp("batch")
    shutil.copytree(pipeline.data, root / "data")
    files = write_ct_series(
        root / "data" / "BAD" / "study" / "series",
        n_slices=12,
        rows=64,
        columns=64,
        patient_id="BAD",
        seed=3,
    )
    data = files[5].read_bytes()
    files[5].write_bytes(data[: len(data) - 3000])  # headers index, pixels do not decode
    return root / "data", pipeline.model


@pytest.mark.slow
def test_batch_predicts_every_study_and_resumes(
    tmp_path: Path, collection: tuple[Path, Path]
) -> None:
    data, model = collection
    out = tmp_path / "out"
    first = predict_batch(data, model, out, FAST)
    summary = pd.read_parquet(out / "summary.parquet")
    assert list(summary.columns[: len(SUMMARY_COLUMNS)]) == list(SUMMARY_COLUMNS)
    assert pd.read_csv(out / "summary.csv")["series_uid"].tolist() == summary["series_uid"].tolist()
    done = summary[summary["status"] == "done"]
    assert sorted(done["patient_id"]) == sorted(PATIENTS)
    bad = summary[summary["patient_id"] == "BAD"]
    # the index already sees the truncated file, so the series is rejected (with the
    # reason) before any prediction; either way the run records it and goes on
    assert list(bad["status"]) in (["failed"], ["rejected"]) and bad["reason"].iloc[0]
    for row in done.itertuples():
        folder = out / row.patient_id / row.study_uid
        assert Path(row.out_dir) == folder
        result = json.loads((folder / "result.json").read_text())
        assert result["scores"]["p_malignant"] == pytest.approx(row.p_malignant)
        assert result["study"]["series_uid"] == row.series_uid
        if result["recommendations"]:
            assert row.top_slice_index == result["recommendations"][0]["slice_index"]
    assert not list(out.rglob("*.tmp"))
    assert sorted(first.computed) == sorted(done["series_uid"])

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("result.json")}
    again = predict_batch(data, model, out, FAST)
    assert again.computed == [] and sorted(again.reused) == sorted(done["series_uid"])
    if list(bad["status"]) == ["failed"]:
        assert again.failed == list(bad["series_uid"])  # a failed series is tried again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("result.json")} == mtimes


@pytest.mark.slow
def test_batch_on_ray_equals_local(
    tmp_path: Path, collection: tuple[Path, Path], ray_session: Any
) -> None:
    from lungslice.features.ray_engine import RayOptions

    data, model = collection
    local = predict_batch(data, model, tmp_path / "local", FAST)
    remote = predict_batch(data, model, tmp_path / "ray", FAST, engine="ray", ray=RayOptions())
    assert remote.engine == "ray"
    cols = ["patient_id", "series_uid", "status", "n_candidates", "top_slice_index"]
    a = local.summary.sort_values("series_uid").reset_index(drop=True)
    b = remote.summary.sort_values("series_uid").reset_index(drop=True)
    pd.testing.assert_frame_equal(a[cols], b[cols])
    ok = a["status"] == "done"
    np.testing.assert_allclose(
        a.loc[ok, ["p_malignant", "p_any_nodule"]].to_numpy(float),
        b.loc[ok, ["p_malignant", "p_any_nodule"]].to_numpy(float),
        atol=1e-3,
    )
    assert (b.loc[ok, "node_id"].str.len() > 0).all()
