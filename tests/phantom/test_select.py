from __future__ import annotations

import pytest

from lungslice.errors import ConfigError
from lungslice.lidc.db import read_database
from lungslice.lidc.records import LidcScan
from lungslice.phantom import select_patients
from lungslice.phantom.select import stratum_by_patient

# 0001: malignant; 0078: malignant + benign; 0100: nodule-free; plus a spread of others
CANDIDATES = [f"LIDC-IDRI-{i:04d}" for i in (1, 2, 3, 5, 7, 9, 10, 11, 13, 78, 100, 104, 118)]


@pytest.fixture(scope="module")
def candidates() -> list[LidcScan]:
    return read_database(patient_ids=CANDIDATES)


def test_strata_follow_mean_malignancy(candidates: list[LidcScan]) -> None:
    strata = stratum_by_patient(candidates)
    assert strata["LIDC-IDRI-0001"] == "malignant"
    assert strata["LIDC-IDRI-0078"] == "malignant"  # its worst nodule decides
    assert strata["LIDC-IDRI-0100"] == "nodule-free"
    assert set(strata.values()) == {"malignant", "benign", "nodule-free"}


@pytest.mark.parametrize("n", [3, 5, 8])
def test_every_stratum_appears_and_the_draw_is_deterministic(
    candidates: list[LidcScan], n: int
) -> None:
    chosen = select_patients(candidates, n, seed=4)
    assert len(chosen) == len(set(chosen)) == n
    assert chosen == sorted(chosen)
    assert select_patients(candidates, n, seed=4) == chosen
    strata = stratum_by_patient(candidates)
    assert {strata[p] for p in chosen} == {"malignant", "benign", "nodule-free"}


def test_seed_changes_the_draw(candidates: list[LidcScan]) -> None:
    draws = {tuple(select_patients(candidates, 5, seed=s)) for s in range(6)}
    assert len(draws) > 1


@pytest.mark.parametrize("n", [0, 14])
def test_n_out_of_range(candidates: list[LidcScan], n: int) -> None:
    with pytest.raises(
        ConfigError, match=rf"n must be between 1 and the 13 patients available, got {n}"
    ):
        select_patients(candidates, n)
