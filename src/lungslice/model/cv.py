"""Cross-validation folds split by patient, never by slice or nodule.

Splitting LIDC slices or nodules instead of patients lets neighbouring slices
of one nodule land in train and test, inflating published figures by 30-55 %.
Here every fold is a set of whole patients (two scans of one patient stay
together), stratified by what each patient has: a malignant nodule, only
benign nodules, or none.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from lungslice.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["STRATA", "Fold", "patient_folds", "patient_strata"]

#: Per-patient strata, in code order.
STRATA: tuple[str, ...] = ("none", "benign-only", "malignant")


@dataclass(frozen=True, eq=False)
class Fold:
    """One outer fold.

    Attributes
    ----------
    index : int
        Fold number, from 0.
    train, test : numpy.ndarray
        Row indices (into the arrays given to :func:`patient_folds`).
    test_patients : tuple of str
        Patients held out in this fold, sorted.
    """

    index: int
    train: np.ndarray
    test: np.ndarray
    test_patients: tuple[str, ...]


def patient_strata(patient_ids: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row stratum code of each row's patient: 2 malignant, 1 benign-only, 0 none.

    Parameters
    ----------
    patient_ids : numpy.ndarray
        ``(n,)`` patient id of each slice.
    y : numpy.ndarray
        ``(n,)`` slice codes (0 non-nodule, 1 benign, 2 malignant, -1 excluded).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int: the highest code of the row's patient (excluded rows ignored).
    """
    patient_ids = np.asarray(patient_ids).astype(str)
    y = np.asarray(y).astype(np.int64)
    if patient_ids.shape != y.shape:
        raise ConfigError(
            f"patient_ids has shape {patient_ids.shape} but y has {y.shape}; expected one "
            "patient id per slice label."
        )
    uniq, inverse = np.unique(patient_ids, return_inverse=True)
    top = np.zeros(uniq.size, dtype=np.int64)
    np.maximum.at(top, inverse, np.clip(y, 0, 2))
    return top[inverse]


def patient_folds(
    patient_ids: np.ndarray,
    strata: np.ndarray,
    n_splits: int = 5,
    seed: int = 0,
) -> list[Fold]:
    """Stratified folds of whole patients.

    Parameters
    ----------
    patient_ids : numpy.ndarray
        ``(n,)`` patient id of each row (slice).
    strata : numpy.ndarray
        ``(n,)`` stratum of each row's patient (see :func:`patient_strata`);
        must be constant within a patient.
    n_splits : int
        Number of folds.
    seed : int
        Shuffles patients before splitting.

    Returns
    -------
    list of Fold
        ``n_splits`` folds; each patient is in exactly one test set.

    Raises
    ------
    ConfigError
        If shapes differ, a patient has two strata, or there are fewer
        patients than folds.
    """
    patient_ids = np.asarray(patient_ids).astype(str)
    strata = np.asarray(strata)
    if patient_ids.shape != strata.shape or patient_ids.ndim != 1:
        raise ConfigError(
            f"patient_ids has shape {patient_ids.shape} but strata has {strata.shape}; "
            "expected two 1-D arrays with one entry per row."
        )
    uniq, first, inverse = np.unique(patient_ids, return_index=True, return_inverse=True)
    per_patient = strata[first]
    differs = per_patient[inverse] != strata
    if differs.any():
        bad = patient_ids[np.flatnonzero(differs)[0]]
        raise ConfigError(
            f"patient {bad} has more than one stratum; expected one per patient. "
            "Fix: compute strata with patient_strata(patient_ids, y)."
        )
    if uniq.size < n_splits:
        raise ConfigError(
            f"{n_splits}-fold patient CV needs at least {n_splits} patients, got {uniq.size}. "
            "Fix: lower n_splits or add patients."
        )
    # one row per patient: folds balance patients, not slice counts
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # a stratum with fewer patients than folds (e.g. 2 malignant patients, 4 folds)
        # cannot reach every fold; scikit-learn warns on stderr, the library logs it
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        splits = list(splitter.split(np.zeros(uniq.size), per_patient, uniq))
    sizes = np.unique(per_patient, return_counts=True)[1]
    if sizes.min() < n_splits:
        log.info(
            "patient_folds: the smallest stratum has %d patient(s) for %d folds",
            int(sizes.min()),
            n_splits,
        )
    folds: list[Fold] = []
    for k, (_, test_pat) in enumerate(splits):
        in_test = np.zeros(uniq.size, dtype=bool)
        in_test[test_pat] = True
        row_test = in_test[inverse]
        folds.append(
            Fold(
                index=k,
                train=np.flatnonzero(~row_test),
                test=np.flatnonzero(row_test),
                test_patients=tuple(sorted(uniq[test_pat].tolist())),
            )
        )
    return folds
