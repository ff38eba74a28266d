"""Figures on hand-made cases with known answers, and patient bootstrap CIs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungslice.model.metrics import (
    EvalTables,
    bootstrap,
    compute_figures,
    confusion_matrix,
    nodule_hits,
    recall_at_k,
    skippable_fraction,
    slice_auc,
)


def test_recall_at_k_known_answer() -> None:
    # 10 slices at z = 0..9; reading order given; three nodules
    z = np.arange(10.0)
    ranking = np.array([7, 2, 8, 0, 1, 3, 4, 5, 6, 9])
    score = np.array([0.6, 0.5, 0.9, 0.4, 0.3, 0.2, 0.1, 1.0, 0.8, 0.0])
    z_min = np.array([7.0, 3.0, 20.0])  # first found at rank 0; at rank 5; outside the scan
    z_max = np.array([8.0, 4.0, 22.0])
    hit, best = nodule_hits(ranking, z, score, z_min, z_max, tolerance_mm=0.0)
    assert hit.tolist() == [0.0, 5.0, np.inf]
    assert best[:2].tolist() == [1.0, 0.4] and best[2] == -np.inf
    assert recall_at_k(hit, 1) == pytest.approx(1 / 3)
    assert recall_at_k(hit, 5) == pytest.approx(1 / 3)
    assert recall_at_k(hit, 6) == pytest.approx(2 / 3)
    assert np.isnan(recall_at_k(np.array([]), 3))
    # tolerance widens the range by half a slice on each side: [2.1, 3.1] holds slice 3 only
    hit_tol, _ = nodule_hits(ranking, z, score, np.array([2.6]), np.array([2.6]), 0.5)
    assert hit_tol.tolist() == [5.0]
    hit_none, _ = nodule_hits(ranking, z, score, np.array([2.6]), np.array([2.6]), 0.0)
    assert hit_none.tolist() == [np.inf]


def test_skippable_fraction() -> None:
    best = np.array([0.9, 0.8, 0.7, 0.2])
    scores = np.linspace(0, 1, 11)  # 0.0, 0.1, ..., 1.0
    frac, thr = skippable_fraction(best, scores, recall=0.75)
    assert thr == pytest.approx(0.7)
    assert frac == pytest.approx(7 / 11)  # 0.0 .. 0.6 lie below 0.7
    frac95, thr95 = skippable_fraction(best, scores, recall=0.95)
    assert thr95 == pytest.approx(0.2) and frac95 == pytest.approx(2 / 11)


def test_slice_auc_and_confusion() -> None:
    y = np.array([0, 0, 1, 2])
    probs = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    out = slice_auc(y, probs)
    assert out["roc_auc.malignant"] == 1.0 and out["roc_auc.macro"] == 1.0
    assert np.isnan(slice_auc(np.zeros(4, dtype=int), probs)["roc_auc.benign"])
    cm = confusion_matrix(y, probs)
    assert cm.tolist() == [[2, 0, 0], [0, 1, 0], [0, 0, 1]]


def _tables(n_patients: int = 30, seed: int = 0) -> EvalTables:
    rng = np.random.default_rng(seed)
    slices, nodules, studies = [], [], []
    for p in range(n_patients):
        pid = f"P{p}"
        y = rng.integers(0, 3, size=8)
        probs = rng.dirichlet(np.ones(3), size=8)
        probs[np.arange(8), y] += 0.5
        probs /= probs.sum(axis=1, keepdims=True)
        slices.append(
            pd.DataFrame(
                {
                    "patient_id": pid,
                    "y": y,
                    "p0": probs[:, 0],
                    "p1": probs[:, 1],
                    "p2": probs[:, 2],
                    "score": probs[:, 1] + probs[:, 2],
                }
            )
        )
        nodules.append(
            pd.DataFrame(
                {
                    "patient_id": [pid],
                    "label": [1 + p % 2],
                    "hit_rank": [float(p % 4)],
                    "best_score": [0.5],
                }
            )
        )
        studies.append(
            pd.DataFrame(
                {
                    "patient_id": [pid],
                    "has_any": [p % 3 > 0],
                    "has_malignant": [p % 3 == 2],
                    "p_any_nodule": [rng.random()],
                    "p_malignant": [rng.random()],
                }
            )
        )
    return EvalTables(*(pd.concat(t, ignore_index=True) for t in (slices, nodules, studies)))


def test_compute_figures_and_bootstrap_is_seeded() -> None:
    tables = _tables()
    figs = compute_figures(tables)
    # hit ranks cycle 0,1,2,3 over patients; label alternates benign/malignant
    assert figs["nodule.recall@1.benign"] == pytest.approx(8 / 15)  # p=0,4,...,28 are even
    assert figs["nodule.recall@1.malignant"] == 0.0  # odd p: ranks 1 or 3
    assert figs["nodule.recall@3.any"] == pytest.approx(23 / 30)
    assert figs["slice.roc_auc.macro"] > 0.7
    a = bootstrap(tables, n_boot=30, seed=1)
    b = bootstrap(tables, n_boot=30, seed=1)
    c = bootstrap(tables, n_boot=30, seed=2)
    assert a == b
    assert a != c
    auc = a["slice.roc_auc.macro"]
    assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]
    assert auc["ci_low"] < auc["ci_high"]
    assert set(a) == set(figs)


def test_binary_auc_equals_scikit_learn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    from lungslice.model.metrics import binary_auc

    rng = np.random.default_rng(3)
    for n in (2, 7, 300):
        y = rng.random(n) < 0.3
        y[0], y[-1] = True, False
        s = np.round(rng.random(n), 1)  # many ties
        assert binary_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(binary_auc(np.ones(4, bool), np.arange(4.0)))
    with pytest.raises(ValueError, match="finite"):
        binary_auc(np.array([True, False]), np.array([np.nan, 1.0]))
