"""Heads learn synthetic classes, return (n, 3) in class order and are reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from lungslice.errors import ConfigError
from lungslice.lidc.labels import CLASSES
from lungslice.model.heads import HeadConfig, balanced_class_weights, train_head


def _split(synthetic):
    pids = synthetic.slices["patient_id"].to_numpy()
    test = np.isin(pids, np.unique(pids)[-3:])
    return pids, test


def test_logistic_head_learns_and_picks_c_by_inner_cv(synthetic) -> None:
    pids, test = _split(synthetic)
    X, y = synthetic.X, synthetic.y
    head = train_head(
        X[~test], y[~test], pids[~test], config=HeadConfig(C_grid=(0.01, 1.0)), seed=0
    )
    proba = head.predict_proba(X[test])
    assert proba.shape == (int(test.sum()), 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert (proba.argmax(axis=1) == y[test]).mean() > 0.9
    assert head.hyperparameters["C"] in (0.01, 1.0)
    assert len(head.hyperparameters["inner_cv"]) == 2


def test_mlp_head_is_seeded_and_learns(synthetic) -> None:
    pids, test = _split(synthetic)
    X, y = synthetic.X, synthetic.y
    cfg = HeadConfig(
        kind="mlp",
        hidden_grid=(16,),
        weight_decay_grid=(1e-4,),
        epochs=15,
        batch_size=32,
        learning_rate=1e-2,
    )
    a = train_head(X[~test], y[~test], pids[~test], config=cfg, seed=5)
    b = train_head(X[~test], y[~test], pids[~test], config=cfg, seed=5)
    c = train_head(X[~test], y[~test], pids[~test], config=cfg, seed=6)
    pa = a.predict_proba(X[test])
    np.testing.assert_array_equal(pa, b.predict_proba(X[test]))
    assert not np.array_equal(pa, c.predict_proba(X[test]))
    assert (pa.argmax(axis=1) == y[test]).mean() > 0.9


def test_missing_class_gets_near_zero_probability(synthetic) -> None:
    keep = synthetic.y != 2
    pids = synthetic.slices["patient_id"].to_numpy()
    head = train_head(
        synthetic.X[keep], synthetic.y[keep], pids[keep], config=HeadConfig(C_grid=(1.0,))
    )
    proba = head.predict_proba(synthetic.X)
    assert proba[:, 2].max() < 1e-6
    assert (proba[synthetic.y == 1].argmax(axis=1) == 1).mean() > 0.9


def test_balanced_weights() -> None:
    w = balanced_class_weights(np.array([0, 0, 0, 1]))
    np.testing.assert_allclose(w, [4 / 6, 2.0, 0.0])
    assert CLASSES == ("non-nodule", "benign", "malignant")


def test_bad_inputs_raise_with_fix(synthetic) -> None:
    X, y = synthetic.X[:10], synthetic.y[:10].copy()
    y[0] = -1
    with pytest.raises(ConfigError, match=r"y holds codes \[-1\].*Fix: drop excluded slices"):
        train_head(X, y, np.zeros(10))
    with pytest.raises(ConfigError, match=r"expected 'logistic' or 'mlp', got 'svm'"):
        HeadConfig(kind="svm")
    with pytest.raises(ConfigError, match=r"inner CV needs at least 3 patients.*got 1"):
        train_head(synthetic.X[:240], synthetic.y[:240], np.zeros(240), config=HeadConfig())
    head = train_head(
        synthetic.X, synthetic.y, np.arange(synthetic.y.size), config=HeadConfig(C_grid=(1.0,))
    )
    with pytest.raises(ConfigError, match=r"features have shape \(2, 4\), expected \(n, 16\)"):
        head.predict_proba(np.zeros((2, 4)))


def test_logistic_head_matches_scikit_learn(synthetic) -> None:
    from sklearn.linear_model import LogisticRegression

    X, y = synthetic.X, synthetic.y
    pids = synthetic.slices["patient_id"].to_numpy()
    head = train_head(X, y, pids, config=HeadConfig(C_grid=(0.05,), max_iter=500))
    Xs = (X - X.mean(axis=0)) / X.std(axis=0)
    w = balanced_class_weights(y)[y]
    ref = LogisticRegression(C=0.05, max_iter=2000, tol=1e-8).fit(Xs, y, sample_weight=w)
    np.testing.assert_allclose(head.predict_proba(X), ref.predict_proba(Xs), atol=2e-3)
