"""The tiny synthetic chest and its lung field, shared by the detector and measurement tests."""

from __future__ import annotations

import numpy as np
import pytest

from lungslice.candidates import lung_field
from tests.helpers import SPACING, Chest, synthetic_chest


@pytest.fixture(scope="session")
def chest() -> Chest:
    return synthetic_chest()


@pytest.fixture(scope="session")
def lung(chest: Chest) -> np.ndarray:
    return lung_field(chest.hu, SPACING)
