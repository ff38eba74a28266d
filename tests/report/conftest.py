"""Fixtures of the report tests: a tiny synthetic CT series and predictions on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lungslice.study import StudyPrediction
from tests.report.synthetic import MakePrediction, synthetic_prediction


@pytest.fixture
def ct_series(tmp_path: Path) -> Path:
    """A 12-slice synthetic CT series (2.5 mm, 32x32, PatientName set) in tmp_path/ct."""
    from lungslice.testing import write_ct_series

    write_ct_series(
        tmp_path / "ct",
        n_slices=12,
        rows=32,
        columns=32,
        spacing=(2.5, 0.7, 0.7),
        PatientName="Doe^Jane",
        PatientBirthDate="19450203",
    )
    return tmp_path / "ct"


@pytest.fixture
def make_prediction(ct_series: Path) -> MakePrediction:
    """``make_prediction(located=True, out_of_domain=False, top_k=3, n_findings=4)``."""

    def make(**kwargs: object) -> StudyPrediction:
        return synthetic_prediction(ct_series, **kwargs)  # type: ignore[arg-type]

    return make
