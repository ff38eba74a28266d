"""Patient folds: no patient in two folds, strata balanced, strict errors."""

from __future__ import annotations

import numpy as np
import pytest

from lungslice.errors import ConfigError
from lungslice.model.cv import patient_folds, patient_strata


def test_no_patient_in_two_folds_and_every_row_tested_once(synthetic) -> None:
    pids = synthetic.slices["patient_id"].to_numpy()
    strata = patient_strata(pids, synthetic.y)
    folds = patient_folds(pids, strata, n_splits=4, seed=3)
    assert len(folds) == 4
    seen: set[str] = set()
    tested = np.zeros(pids.size, dtype=int)
    for fold in folds:
        test_p = set(pids[fold.test])
        assert test_p.isdisjoint(set(pids[fold.train]))
        assert test_p.isdisjoint(seen)
        assert test_p == set(fold.test_patients)
        seen |= test_p
        tested[fold.test] += 1
    assert seen == set(pids)
    assert (tested == 1).all()
    # 4 patients per stratum over 4 folds: each fold holds one of each stratum
    for fold in folds:
        assert sorted(np.unique(strata[fold.test]).tolist()) == [0, 1, 2]


def test_patient_with_two_scans_stays_together() -> None:
    pids = np.array(["A"] * 5 + ["B"] * 5 + ["A"] * 5 + ["C"] * 5 + ["D"] * 5)
    y = np.zeros(pids.size, dtype=int)
    folds = patient_folds(pids, patient_strata(pids, y), n_splits=2, seed=0)
    for fold in folds:
        assert set(pids[fold.test]).isdisjoint(set(pids[fold.train]))


def test_folds_depend_on_seed_only() -> None:
    pids = np.repeat([f"P{i}" for i in range(10)], 3)
    strata = np.zeros(pids.size, dtype=int)
    a = patient_folds(pids, strata, n_splits=5, seed=1)
    b = patient_folds(pids, strata, n_splits=5, seed=1)
    assert [f.test_patients for f in a] == [f.test_patients for f in b]


def test_patient_strata_codes() -> None:
    pids = np.array(["a", "a", "b", "b", "c"])
    y = np.array([0, 2, 1, -1, 0])
    assert patient_strata(pids, y).tolist() == [2, 2, 1, 1, 0]


def test_errors_say_what_and_fix() -> None:
    with pytest.raises(ConfigError, match=r"5-fold patient CV needs at least 5 patients, got 2"):
        patient_folds(np.array(["a", "b"]), np.array([0, 0]), n_splits=5)
    with pytest.raises(ConfigError, match=r"patient a has more than one stratum"):
        patient_folds(np.array(["a", "a", "b"]), np.array([0, 1, 0]), n_splits=2)
