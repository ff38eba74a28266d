"""resample: linear along z with provenance back to the source slices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lungslice.dicom.resample import ResampledVolume, resample, resample_plan
from lungslice.dicom.volume import CTVolume, LoadConfig, load_series
from lungslice.errors import ConfigError
from lungslice.testing import write_ct_series


def _volume(z: list[float], rows: int = 4, columns: int = 6) -> CTVolume:
    hu = np.stack([np.full((rows, columns), 10.0 * i, np.float32) for i in range(len(z))])
    return CTVolume(
        hu=hu,
        spacing=(float(np.median(np.diff(z))) if len(z) > 1 else 1.0, 0.5, 0.5),
        z_positions=np.asarray(z, dtype=float),
        sop_instance_uids=tuple(f"1.2.{i}" for i in range(len(z))),
        instance_numbers=tuple(range(1, len(z) + 1)),
        series_uid="1.2.3",
        study_uid="1.2",
        patient_id="P",
    )


def test_linear_with_provenance() -> None:
    vol = _volume([0.0, 2.5, 5.0, 7.5])
    out = resample(vol, slice_spacing=1.0)
    assert isinstance(out, ResampledVolume)
    np.testing.assert_allclose(out.z_positions, np.arange(8.0))
    # HU rises 10 per 2.5 mm: 4 per mm.
    np.testing.assert_allclose(out.hu[:, 0, 0], 4.0 * np.arange(8), atol=1e-5)
    assert out.spacing == (1.0, 0.5, 0.5)
    assert out.source_index.tolist() == [
        [0, 0], [0, 1], [0, 1], [1, 2], [1, 2], [2, 2], [2, 3], [2, 3]
    ]  # fmt: skip
    np.testing.assert_allclose(
        out.source_weight[:3], [[1.0, 0.0], [0.6, 0.4], [0.2, 0.8]], atol=1e-12
    )
    np.testing.assert_allclose(out.source_weight.sum(axis=1), 1.0)
    assert out.nearest_source.tolist() == [0, 0, 1, 1, 2, 2, 2, 3]
    assert out.nearest_sop_instance_uid(2) == "1.2.1"
    assert out.nearest_instance_number(7) == 4
    assert out.take_nearest(["a", "b", "c", "d"]).tolist() == [
        "a",
        "a",
        "b",
        "b",
        "c",
        "c",
        "c",
        "d",
    ]
    with pytest.raises(ConfigError, match=r"expected 4 values \(one per source slice\), got 2"):
        out.take_nearest([1, 2])


def test_plan_stops_at_last_slice_and_handles_gaps() -> None:
    pos, index, weight, nearest = resample_plan(np.array([0.0, 1.0, 2.0, 5.0]), 1.5)
    np.testing.assert_allclose(pos, [0.0, 1.5, 3.0, 4.5])
    assert index.tolist() == [[0, 0], [1, 2], [2, 3], [2, 3]]
    np.testing.assert_allclose(weight[2], [2 / 3, 1 / 3])
    assert nearest.tolist() == [0, 1, 2, 3]
    pos, index, weight, nearest = resample_plan(np.array([3.0]), 1.0)
    assert pos.tolist() == [3.0] and index.tolist() == [[0, 0]] and nearest.tolist() == [0]
    with pytest.raises(ConfigError, match=r"slice_spacing must be > 0 mm, got 0"):
        resample_plan(np.array([0.0, 1.0]), 0)


def test_in_plane_keeps_field_of_view() -> None:
    vol = _volume([0.0, 1.0], rows=8, columns=6)
    out = resample(vol, slice_spacing=1.0, in_plane=1.0)
    assert out.hu.shape == (2, 4, 3)
    assert out.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(out.hu[1], 10.0, atol=1e-4)


def test_from_loaded_series_points_back_to_dicom(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, n_slices=5, rows=8, columns=8, spacing=(2.5, 0.7, 0.7))
    (tmp_path / "0002.dcm").unlink()
    vol = load_series(tmp_path, config=LoadConfig(allow_gaps=True))
    out = resample(vol)
    assert out.n_slices == 11
    # 5 mm gap: new slices between z=-97.5 and -92.5 come from the slices around it.
    assert out.source_index[4].tolist() == [1, 2]
    assert out.nearest_sop_instance_uid(10) == vol.sop_instance_uids[-1]
    assert vol.info["paths"][out.nearest_source[0]] == str(paths[0])
