"""iter_series: several series loading at once, in order, errors yielded not raised."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from lungslice.dicom.batch import iter_series, iter_sources
from lungslice.dicom.discover import index_tree
from lungslice.dicom.geometry import StackError
from lungslice.dicom.volume import CTVolume, load_series
from lungslice.errors import ConfigError, SeriesGeometryError
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


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_matches_load_series_in_order(tree: Path, prefetch: int) -> None:
    index = index_tree(tree, workers=1)
    uids = index.series.sort_values("patient_id")["series_uid"].tolist()
    seen: list[tuple[int, int]] = []
    results = list(
        iter_series(
            index, uids, prefetch=prefetch, progress=lambda d, t, label="": seen.append((d, t))
        )
    )
    assert [uid for uid, _ in results] == uids
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    errors = [r for _, r in results if not isinstance(r, CTVolume)]
    assert len(errors) == 1 and isinstance(errors[0], SeriesGeometryError)
    assert "step of 5 mm" in str(errors[0])
    for uid, result in results:
        if isinstance(result, CTVolume):
            expected = load_series(index, series_uid=uid)
            np.testing.assert_array_equal(result.hu, expected.hu)
            assert result.sop_instance_uids == expected.sop_instance_uids


def test_folders_as_jobs_and_early_stop(tree: Path) -> None:
    jobs = [(tree / f"s{i}", None) for i in range(3)] * 3
    results = iter_sources(jobs, prefetch=2)
    first = next(results)
    assert isinstance(first, CTVolume) and first.patient_id == "P0"
    results.close()  # the consumer stops: queued loads are cancelled
    vols = list(iter_sources(jobs, prefetch=1))
    assert [v.patient_id for v in vols if isinstance(v, CTVolume)] == ["P0", "P1", "P2"] * 3


def test_negative_prefetch() -> None:
    with pytest.raises(ConfigError, match=r"prefetch must be >= 0, got -1"):
        next(iter_sources([], prefetch=-1))


def test_stack_error_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(StackError("missing slices", "series 1: step of 5 mm")))
    assert (err.reason, str(err)) == ("missing slices", "series 1: step of 5 mm")
