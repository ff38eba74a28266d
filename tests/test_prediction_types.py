"""The typed prediction: model ids, frozen records, classes, series discovery errors."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from lungslice.errors import BundleMismatchError, NoCTSeriesError
from lungslice.prediction import find_ct_series
from lungslice.study import Finding, Scores, model_id
from lungslice.testing import write_ct_series


def test_model_id_is_the_hash_of_model_json(tmp_path: Path) -> None:
    (tmp_path / "model.json").write_text('{"kind": "candidates"}')
    want = hashlib.sha256(b'{"kind": "candidates"}').hexdigest()[:12]
    assert model_id(tmp_path) == want
    (tmp_path / "model.json").write_text('{"kind": "candidates", "x": 1}')
    assert model_id(tmp_path) != want
    with pytest.raises(BundleMismatchError, match=r"no model\.json, so it has no id"):
        model_id(tmp_path / "missing")


def _finding(**kw: float) -> Finding:
    base = {
        "id": 1,
        "slice_index": 3,
        "z_mm": 1.0,
        "z_min": 0.0,
        "z_max": 2.0,
        "p_nodule": 0.8,
        "p_benign": 0.2,
        "p_malignant": 0.6,
        "max_p_malignant": 0.6,
        "mean_p_malignant": 0.6,
        "max_p_benign": 0.2,
        "mean_p_benign": 0.2,
        "sop_instance_uid": "1.2.3",
        "instance_number": 4,
    }
    return Finding(**{**base, **kw})  # type: ignore[arg-type]


def test_finding_class_and_location() -> None:
    assert _finding().label == "malignant"
    assert _finding(p_benign=0.7, p_malignant=0.1).label == "benign"
    assert _finding(p_nodule=0.3, p_benign=0.2, p_malignant=0.1).label == "non-nodule"
    assert not _finding().located
    assert _finding(row=1.0, column=2.0, radius_mm=3.0).located


def test_records_are_frozen() -> None:
    scores = Scores(p_any_nodule=0.5, p_malignant=0.2, method="max")
    with pytest.raises(dataclasses.FrozenInstanceError):
        scores.p_malignant = 0.9  # type: ignore[misc]


def test_find_ct_series_picks_ct_and_names_what_else_it_found(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "study" / "ct", n_slices=4, series_uid="1.2.826.0.1.3680043.8.1")
    write_ct_series(tmp_path / "study" / "xr", n_slices=1, modality="CR", seed=3)
    found = find_ct_series(tmp_path / "study")
    assert found.series_uids == ("1.2.826.0.1.3680043.8.1",)
    files = found.files_of("1.2.826.0.1.3680043.8.1")
    assert len(files) == 4 and all(p.is_file() for p in files.values())
    with pytest.raises(NoCTSeriesError, match=r"no loadable CT series with SeriesInstanceUID 9\.9"):
        find_ct_series(tmp_path / "study", series_uid="9.9")
    with pytest.raises(NoCTSeriesError, match=r"found 1 files: 1 CR series"):
        find_ct_series(tmp_path / "study" / "xr")
