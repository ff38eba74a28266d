"""iter_series: several series in worker processes, arrays through shared memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lungslice.dicom import batch
from lungslice.dicom.batch import iter_series
from lungslice.dicom.discover import index_tree
from lungslice.dicom.volume import CTVolume, load_series
from lungslice.errors import SeriesGeometryError
from lungslice.testing import body_phantom, write_ct_series


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for i in range(3):
        write_ct_series(
            tmp_path / "tree" / f"s{i}", body_phantom(4, 16, 16, seed=i), seed=i, patient_id=f"P{i}"
        )
    gap = write_ct_series(tmp_path / "tree" / "gap", n_slices=5, rows=16, columns=16, seed=9)
    gap[2].unlink()
    return tmp_path / "tree"


@pytest.mark.slow
def test_workers_match_serial_and_clean_up(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shm"
    shared.mkdir()
    monkeypatch.setattr(batch, "_shared_dir", lambda: shared)
    index = index_tree(tree, workers=1)
    uids = index.series.sort_values("patient_id")["series_uid"].tolist()
    seen: list[int] = []
    results = list(
        iter_series(index, uids, workers=2, progress=lambda d, t, label="": seen.append(d))
    )
    assert [uid for uid, _ in results] == uids
    assert seen == [1, 2, 3, 4]
    errors = [r for _, r in results if not isinstance(r, CTVolume)]
    assert len(errors) == 1 and isinstance(errors[0], SeriesGeometryError)
    assert "missing slices" in str(errors[0]) or "step of 5 mm" in str(errors[0])
    for uid, result in results:
        if isinstance(result, CTVolume):
            expected = load_series(index, series_uid=uid)
            np.testing.assert_array_equal(result.hu, expected.hu)
            assert result.sop_instance_uids == expected.sop_instance_uids
    assert list(shared.iterdir()) == []


def test_one_worker_runs_in_process(tree: Path) -> None:
    index = index_tree(tree, workers=1)
    ok = index.ct_series()["series_uid"].tolist()
    results = dict(iter_series(index, ok, workers=1))
    assert all(isinstance(v, CTVolume) for v in results.values())
    assert len(results) == 3


def test_stack_error_survives_pickling() -> None:
    import pickle

    from lungslice.dicom.geometry import StackError

    err = pickle.loads(pickle.dumps(StackError("missing slices", "series 1: step of 5 mm")))
    assert (err.reason, str(err)) == ("missing slices", "series 1: step of 5 mm")


@pytest.mark.slow
def test_stopping_early_leaves_no_files(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shm2"
    shared.mkdir()
    monkeypatch.setattr(batch, "_shared_dir", lambda: shared)
    index = index_tree(tree, workers=1)
    ok = index.ct_series()["series_uid"].tolist()
    results = iter_series(index, ok, workers=2)
    uid, first = next(results)
    assert uid == ok[0] and isinstance(first, CTVolume)
    results.close()  # the consumer stops: remaining results are dropped with their files
    assert list(shared.iterdir()) == []
    assert first.hu.shape == (4, 16, 16)  # the volume taken stays readable
