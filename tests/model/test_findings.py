"""Candidate probabilities -> slice probabilities, findings, study scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungslice.errors import ConfigError
from lungslice.model.findings import FindingsConfig, study_findings


def _cands(rows: list[tuple[float, float, float, float, float]]) -> pd.DataFrame:
    """(z_mm, row, col, radius_mm, score) per candidate, 1 mm slices from z = 0, 1 mm pixels."""
    z, r, c, rad, s = (np.array(v, dtype=float) for v in zip(*rows, strict=True))
    return pd.DataFrame(
        {
            "candidate_id": np.arange(len(rows)),
            "slice_index": np.rint(z).astype(int),
            "z_mm": z,
            "row": r,
            "col": c,
            "x_mm": c,
            "y_mm": r,
            "radius_mm": rad,
            "score": s,
        }
    )


def _slices(n: int, lung: np.ndarray | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {"z_mm": np.arange(n, dtype=float), "lung": np.ones(n, bool) if lung is None else lung}
    )


def test_slices_take_the_most_probable_covering_candidate() -> None:
    c = _cands([(10, 50, 50, 3, 1.0), (11, 52, 50, 2, 0.5), (30, 80, 80, 2, 0.2)])
    p = np.array([[0.2, 0.3, 0.5], [0.9, 0.05, 0.05], [0.6, 0.4, 0.0]])
    f = study_findings(c, p, _slices(40))
    any_ = 1 - f.slice_probs[:, 0]
    assert any_[10] == pytest.approx(0.8)
    assert any_[7] == pytest.approx(0.8) and any_[13] == pytest.approx(0.8)  # radius 3 mm
    assert any_[6] == 0.0 and any_[20] == 0.0
    assert any_[30] == pytest.approx(0.4)
    assert f.slice_probs[10, 2] == pytest.approx(0.5)
    np.testing.assert_allclose(f.slice_probs.sum(axis=1), 1.0)


def test_candidates_on_one_finding_merge_and_findings_rank_by_p_nodule() -> None:
    c = _cands([(10, 50, 50, 3, 1.0), (11, 52, 50, 2, 0.5), (30, 80, 80, 2, 0.2)])
    p = np.array([[0.2, 0.3, 0.5], [0.1, 0.45, 0.45], [0.6, 0.4, 0.0]])
    f = study_findings(c, p, _slices(40), FindingsConfig(merge_mm=6.0))
    assert list(f.findings["candidate_id"]) == [1, 2]  # 0 merged into the more probable 1
    assert list(f.findings["n_merged"]) == [2, 1]
    assert list(f.findings["rank"]) == [1, 2]
    assert f.ranking()[:2].tolist() == [11, 30]


def test_no_lung_field_scores_zero_with_the_reason() -> None:
    lung = np.ones(20, bool)
    lung[:5] = False
    c = _cands([(2, 10, 10, 3, 1.0)])
    f = study_findings(c, np.array([[0.0, 0.0, 1.0]]), _slices(20, lung))
    assert (f.slice_probs[:5, 0] == 1.0).all()
    assert f.slice_reason[0] == "no lung field" and f.slice_reason[10] == ""


def test_study_scores_max_and_noisy_or() -> None:
    c = _cands([(5, 10, 10, 2, 1.0), (15, 50, 50, 2, 1.0), (25, 90, 90, 2, 1.0)])
    p = np.array([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.9, 0.1, 0.0]])
    f = study_findings(c, p, _slices(30), FindingsConfig(aggregator="noisy_or", noisy_or_top=2))
    assert f.scores["p_any_nodule.max"] == pytest.approx(0.5)
    assert f.scores["p_any_nodule.noisy_or"] == pytest.approx(1 - 0.5 * 0.5)
    assert f.scores["p_malignant.max"] == pytest.approx(0.5)
    assert f.scores["p_any_nodule"] == f.scores["p_any_nodule.noisy_or"]


def test_no_candidates_gives_empty_findings_and_zero_scores() -> None:
    f = study_findings(_cands([(1, 1, 1, 1, 1)]).iloc[:0], np.zeros((0, 3)), _slices(10))
    assert f.findings.empty and f.scores["p_any_nodule"] == 0.0
    assert (f.slice_probs[:, 0] == 1.0).all()


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ConfigError, match="aggregator"):
        FindingsConfig(aggregator="mean")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="2 candidates but 1 probability rows"):
        study_findings(_cands([(1, 1, 1, 1, 1), (2, 2, 2, 1, 1)]), np.zeros((1, 3)), _slices(5))
