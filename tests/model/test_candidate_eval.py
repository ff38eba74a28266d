"""FROC/CPM as LUNA16 defines it, the chance line, and the candidate figures."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lungslice.candidates.measures import MEASUREMENT_FEATURES
from lungslice.errors import ConfigError
from lungslice.lidc.labels import LabelRule
from lungslice.model.candidate_eval import (
    CPM_RATES,
    CandidateSet,
    candidate_figures,
    detector_probabilities,
    froc_curve_of,
)
from lungslice.model.froc import recall_at_k_chance
from lungslice.model.metrics import EvalTables


def test_froc_of_findings_counts_each_nodule_once_and_misses() -> None:
    # 2 scans, 4 nodules: found at 0.9, 0.5 and 0.2, one missed; FPs 0.8, 0.3 | 0.6, 0.1
    nodules = pd.DataFrame(
        {
            "series_uid": ["a", "a", "b", "b"],
            "detect_score": [0.9, 0.5, 0.2, -np.inf],
        }
    )
    studies = pd.DataFrame(
        {"series_uid": ["a", "b"], "fp_scores": [np.array([0.8, 0.3]), np.array([0.6, 0.1])]}
    )
    curve = froc_curve_of(EvalTables(pd.DataFrame(), nodules, studies))
    # threshold 0.5 -> 1 FP/scan (0.8, 0.6), 2 of 4 found; 0.2 -> 1.5 FP/scan, 3 of 4
    at = {
        float(r.threshold): (float(r.fps_per_scan), float(r.sensitivity))
        for r in curve.itertuples()
    }
    assert at[0.5] == (1.0, 0.5)
    assert at[0.2] == (1.5, 0.75)
    assert curve["sensitivity"].max() == 0.75  # the missed nodule is never found


def _tables(good: bool) -> EvalTables:
    rng = np.random.default_rng(1)
    rows, nods, studies = [], [], []
    for p in range(6):
        y = np.zeros(50, dtype=int)
        y[20:24] = 2 if p % 2 else 1
        score = rng.random(50) * 0.3 + (0.6 * (y > 0) if good else 0.0)
        rows.append(
            pd.DataFrame(
                {
                    "patient_id": f"P{p}",
                    "y": y,
                    "p0": 1 - score,
                    "p1": score * 0.5,
                    "p2": score * 0.5,
                }
            )
        )
        nods.append(
            {
                "patient_id": f"P{p}",
                "series_uid": f"S{p}",
                "label": 2 if p % 2 else 1,
                "hit_rank": 0.0 if good else 20.0,
                "located_rank": 0.0 if good else math.inf,
                "detect_score": 0.9 if good else -math.inf,
                "chance@1": 4 / 50,
                "chance@3": recall_at_k_chance(50, 4, 3),
                "chance@5": recall_at_k_chance(50, 4, 5),
                "chance@10": recall_at_k_chance(50, 4, 10),
            }
        )
        studies.append(
            {
                "patient_id": f"P{p}",
                "has_any": True,
                "has_malignant": bool(p % 2),
                "series_uid": f"S{p}",
                "fp_scores": np.array([0.2, 0.1]),
                "n_findings": 3,
                "p_any_nodule": 0.9,
                "p_malignant": 0.8 if p % 2 else 0.1,
            }
        )
    return EvalTables(pd.concat(rows, ignore_index=True), pd.DataFrame(nods), pd.DataFrame(studies))


def test_candidate_figures_separate_a_good_model_from_a_bad_one() -> None:
    good, bad = candidate_figures(_tables(True)), candidate_figures(_tables(False))
    assert good["froc.cpm"] == 1.0 and bad["froc.cpm"] == 0.0
    assert good["slice.roc_auc.nodule"] == 1.0 and bad["slice.roc_auc.nodule"] < 0.8
    assert good["nodule.recall@1.any"] == 1.0 and bad["nodule.recall@10.any"] == 0.0
    assert good["nodule.recall@5.chance"] == pytest.approx(recall_at_k_chance(50, 4, 5))
    assert good["study.roc_auc.malignant"] == 1.0
    assert len([k for k in good if k.startswith("froc.sensitivity@")]) == len(CPM_RATES)


def test_detector_probabilities_keep_the_detector_order() -> None:
    p = detector_probabilities(pd.DataFrame({"score": [3.0, 1.0, 2.0]}))
    assert np.argsort(-(p[:, 1] + p[:, 2])).tolist() == [0, 2, 1]
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def _candidate_set(measurements: bool) -> CandidateSet:
    rng = np.random.default_rng(0)
    n, d = 40, 20
    cands = pd.DataFrame(
        {
            "patient_id": [f"P{i % 4}" for i in range(n)],
            "series_uid": [f"S{i % 4}" for i in range(n)],
            "label_code": (np.arange(n) % 10 == 0).astype(np.int64),
        }
    )
    width = d + (len(MEASUREMENT_FEATURES) if measurements else 0)
    return CandidateSet(
        X=rng.normal(size=(n, width)).astype(np.float32),
        candidates=cands,
        slices=pd.DataFrame({"patient_id": [], "series_uid": []}),
        nodules=pd.DataFrame({"patient_id": [], "series_uid": []}),
        rule=LabelRule(),
        config={"config": {"measurements": measurements}},
    )


def test_feature_views_split_cnn_and_measurement_columns() -> None:
    cs = _candidate_set(True)
    k = len(MEASUREMENT_FEATURES)
    assert cs.n_measurements == k
    assert cs.feature_view("all") is cs
    cnn = cs.feature_view("cnn")
    assert cnn.X.shape == (40, 20) and cnn.n_measurements == 0
    np.testing.assert_array_equal(cnn.X, cs.X[:, :20])
    meas = cs.feature_view("measurements")
    assert meas.X.shape == (40, k) and meas.n_measurements == k
    np.testing.assert_array_equal(meas.X, cs.X[:, 20:])
    with pytest.raises(ConfigError, match="expected 'all', 'cnn' or 'measurements'"):
        cs.feature_view("pixels")
    old = _candidate_set(False)
    assert old.n_measurements == 0
    with pytest.raises(ConfigError, match="has no measurement columns"):
        old.feature_view("cnn")
