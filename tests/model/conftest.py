"""Fixtures of the model tests: synthetic features and labels (see tests.helpers)."""

from __future__ import annotations

import pytest

from tests.helpers import Synthetic, make_synthetic


@pytest.fixture(scope="session")
def synthetic() -> Synthetic:
    return make_synthetic()
