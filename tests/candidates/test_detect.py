"""Nodule-candidate detector on the tiny synthetic chest of test_lungfield."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from lungslice.candidates import (
    CANDIDATE_COLUMNS,
    DetectorConfig,
    detect_candidates,
)
from lungslice.errors import ConfigError, NotChestError
from tests.helpers import SPACING, Chest


@pytest.fixture(scope="module")
def cands(chest: Chest, lung: np.ndarray) -> pd.DataFrame:
    return detect_candidates(chest.hu, SPACING, lung)


def _dist_mm(cands: pd.DataFrame, point: tuple[float, float, float]) -> np.ndarray:
    xyz = cands[["z", "row", "col"]].to_numpy()
    return np.sqrt((((xyz - np.asarray(point)) * np.asarray(SPACING)) ** 2).sum(axis=1))


def test_table_layout(cands: pd.DataFrame) -> None:
    assert list(cands.columns) == list(CANDIDATE_COLUMNS)
    assert len(cands) > 0
    assert (cands["candidate_id"].to_numpy() == np.arange(len(cands))).all()
    assert (np.diff(cands["score"].to_numpy()) <= 0).all()
    assert cands["candidate_id"].dtype == np.int64
    for col in ("z", "row", "col", "radius_mm", "score"):
        assert cands[col].dtype == np.float64


def test_nodules_rank_above_every_vessel_point(chest: Chest, cands: pd.DataFrame) -> None:
    ranks = []
    for zc, rc, cc, _ in chest.nodules:
        hit = np.flatnonzero(_dist_mm(cands, (zc, rc, cc)) <= 3.0)
        assert hit.size, f"no candidate near the nodule at {(zc, rc, cc)}"
        ranks.append(int(cands["candidate_id"].to_numpy()[hit].min()))
    assert max(ranks) <= 2, f"nodule ranks {ranks}"
    # every candidate centred on a vessel (within 3 mm of its voxels) scores lower
    near_vessel = ndi.distance_transform_edt(~chest.vessels, sampling=SPACING) <= 3.0
    idx = np.rint(cands[["z", "row", "col"]].to_numpy()).astype(int)
    on_vessel = near_vessel[idx[:, 0], idx[:, 1], idx[:, 2]]
    for zc, rc, cc, _ in chest.nodules:
        on_vessel &= _dist_mm(cands, (zc, rc, cc)) > 6.0
    assert on_vessel.any(), "the test needs vessel candidates to compare with"
    nodule_scores = cands["score"].to_numpy()[ranks]
    assert cands["score"].to_numpy()[on_vessel].max() < nodule_scores.min()


def test_coordinates_and_radius_in_input_units(chest: Chest, lung: np.ndarray) -> None:
    for config, tol_mm in ((DetectorConfig(), 2.0), (DetectorConfig(grid_mm=4.0), 3.0)):
        cands = detect_candidates(chest.hu, SPACING, lung, config)
        for zc, rc, cc, rad in chest.nodules:
            d = _dist_mm(cands, (zc, rc, cc))
            best = int(np.argmin(d))
            assert d[best] <= tol_mm, (config.grid_mm, d[best])
            assert 0.4 * rad <= cands["radius_mm"].iloc[best] <= 2.5 * rad


def test_coordinates_follow_the_input_grid(chest: Chest) -> None:
    # the same chest at 1 mm pixels in-plane (rows/cols doubled): the detector
    # works on a 2x averaged grid and still reports input-array voxels
    fine = np.repeat(np.repeat(chest.hu, 2, axis=1), 2, axis=2)
    spacing = (2.0, 1.0, 1.0)
    cands = detect_candidates(fine, spacing, config=DetectorConfig(grid_mm=2.0))
    for zc, rc, cc, _ in chest.nodules:
        # voxel centre (r) of the 2 mm grid covers fine voxels 2r and 2r+1
        target = np.array([zc, 2 * rc + 0.5, 2 * cc + 0.5])
        xyz = cands[["z", "row", "col"]].to_numpy()
        d = np.sqrt((((xyz - target) * np.asarray(spacing)) ** 2).sum(axis=1))
        assert d.min() <= 2.0


def test_empty_lung_field_gives_empty_table(chest: Chest) -> None:
    out = detect_candidates(chest.hu, SPACING, np.zeros(chest.hu.shape, dtype=bool))
    assert out.empty and list(out.columns) == list(CANDIDATE_COLUMNS)


def test_max_candidates_and_min_score(chest: Chest, lung: np.ndarray) -> None:
    out = detect_candidates(chest.hu, SPACING, lung, DetectorConfig(max_candidates=3))
    assert len(out) == 3
    high = detect_candidates(chest.hu, SPACING, lung, DetectorConfig(min_score=1e6))
    assert high.empty


def test_errors(chest: Chest) -> None:
    with pytest.raises(ConfigError, match="lung mask shape"):
        detect_candidates(chest.hu, SPACING, np.ones((2, 2, 2), dtype=bool))
    with pytest.raises(ConfigError, match="radii_mm"):
        DetectorConfig(radii_mm=())
    with pytest.raises(ConfigError, match="max_candidates"):
        DetectorConfig(max_candidates=0)
    soft = np.full((10, 32, 32), 40.0, dtype=np.float32)
    with pytest.raises(NotChestError, match="no lung field"):
        detect_candidates(soft, SPACING)


def test_blob_inside_the_wall_is_dropped_juxtapleural_nodule_kept(
    chest: Chest, lung: np.ndarray
) -> None:
    # a dense blob (a rib end, a calcified node) in the chest wall beside the right
    # lung, taken into the lung field as the field's closing takes in concavities
    from tests.helpers import ball

    hu = chest.hu.copy()
    centre = (20.0, 46.0, 9.0)
    blob = ball(hu.shape, centre, 2.5)
    hu[blob] = 300.0
    field = lung | ndi.binary_dilation(blob, iterations=3)
    kept_all = detect_candidates(hu, SPACING, field, DetectorConfig(min_lung_shell=0.0))
    assert (_dist_mm(kept_all, centre) <= 3.0).any(), "without the shell test the blob is found"
    out = detect_candidates(hu, SPACING, field)
    assert not (_dist_mm(out, centre) <= 3.0).any(), "a blob with no lung around it is dropped"
    for zc, rc, cc, _ in chest.nodules:  # the lateral-wall nodule is juxtapleural
        hit = np.flatnonzero(_dist_mm(out, (zc, rc, cc)) <= 3.0)
        assert hit.size and hit.min() <= 2, f"nodule at {(zc, rc, cc)} lost or ranked {hit}"
    with pytest.raises(ConfigError, match="min_lung_shell"):
        DetectorConfig(min_lung_shell=1.5)
