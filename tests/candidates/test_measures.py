"""Candidate measurements (HU around the centre, lung-edge distance) on the synthetic chest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungslice.candidates import detect_candidates
from lungslice.candidates.measures import (
    MEASUREMENT_COLUMNS,
    MEASUREMENT_FEATURES,
    candidate_measurements,
    measurement_features,
)
from lungslice.errors import ConfigError
from tests.helpers import SPACING, Chest


def _at(points: list[tuple[float, float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(points, columns=["z", "row", "col", "radius_mm"])


def test_hu_around_a_nodule_and_in_the_parenchyma(chest: Chest, lung: np.ndarray) -> None:
    zc, rc, cc, rad = chest.nodules[0]  # 4 mm nodule, +20 HU, inside the right lung
    # the nodule; lung away from it; the nodule's edge (half inside, half lung)
    table = _at([(zc, rc, cc, rad), (20.0, 46.0, 22.0, 4.0), (zc, rc, cc + 2.0, rad)])
    m = candidate_measurements(chest.hu, SPACING, lung, table)
    assert list(m.columns) == list(MEASUREMENT_COLUMNS)
    nod, paren, edge = m.iloc[0], m.iloc[1], m.iloc[2]
    assert -40 < nod["hu_centre"] < 80  # +20 HU with 15 HU noise
    assert -40 < nod["hu_inner"] < 80
    assert nod["hu_shell"] < -500  # lung around it
    assert nod["solid_fraction"] > 0.6
    assert paren["hu_centre"] < -700
    assert paren["solid_fraction"] < 0.2
    assert nod["hu_inner"] - nod["hu_shell"] > 500
    assert nod["hu_std"] < 40 and paren["hu_std"] < 40  # uniform inside: noise only
    assert edge["hu_std"] > 200


def test_border_distance(chest: Chest, lung: np.ndarray) -> None:
    zc, rc, cc, _ = chest.nodules[1]  # on the left lung's lateral wall
    table = _at([(zc, rc, cc, 5.0), (20.0, 46.0, 28.0, 3.0), (20.0, 46.0, 48.0, 3.0)])
    m = candidate_measurements(chest.hu, SPACING, lung, table)
    wall, centre, mediastinum = m["border_mm"].to_numpy()
    # right lung centre: 14 voxels (28 mm) from its lateral edge, more than the wall nodule
    assert centre > wall
    assert 12.0 < centre < 40.0
    assert mediastinum == 0.0  # outside the lung field


def test_features_of_detected_candidates(chest: Chest, lung: np.ndarray) -> None:
    found = detect_candidates(chest.hu, SPACING, lung)
    m = candidate_measurements(chest.hu, SPACING, lung, found)
    both = pd.concat([found, m], axis=1)
    f = measurement_features(both)
    assert f.shape == (len(found), len(MEASUREMENT_FEATURES))
    assert f.dtype == np.float32 and np.isfinite(f).all()
    # log score is monotone in the detector score
    j = MEASUREMENT_FEATURES.index("log_score")
    assert (np.diff(f[:, j]) <= 1e-6).all()
    # the blob's eigenvalue ratio eig3/eig1 lies in (0, 1]
    r = f[:, MEASUREMENT_FEATURES.index("eig3_over_eig1")]
    assert ((r > 0) & (r <= 1.0 + 1e-6)).all()


def test_empty_table_and_errors(chest: Chest, lung: np.ndarray) -> None:
    empty = candidate_measurements(chest.hu, SPACING, lung, _at([]))
    assert len(empty) == 0 and list(empty.columns) == list(MEASUREMENT_COLUMNS)
    with pytest.raises(ConfigError, match="lacks row, col, radius_mm"):
        candidate_measurements(chest.hu, SPACING, lung, pd.DataFrame({"z": [1.0]}))
    with pytest.raises(ConfigError, match="lung mask of its shape"):
        candidate_measurements(chest.hu, SPACING, lung[:-1], _at([]))
    with pytest.raises(ConfigError, match="lacks score"):
        measurement_features(_at([(1.0, 2.0, 3.0, 4.0)]))
