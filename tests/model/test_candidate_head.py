"""Candidate classifier: sklearn conventions, balanced weights, grouped search, storage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold, cross_val_score
from sklearn.preprocessing import StandardScaler

from lungslice.errors import ConfigError
from lungslice.model.candidate_head import (
    CandidateClassifier,
    candidate_cv,
    fit_candidate_classifier,
    nodule_auc,
)


def _data(
    n_patients: int = 12, per_patient: int = 60, d: int = 10, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Imbalanced candidates: ~3 nodule rows per patient among many non-nodules."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.2, size=(3, d))
    X, y, g = [], [], []
    for p in range(n_patients):
        codes = np.zeros(per_patient, dtype=np.int64)
        codes[:3] = [1, 2, 1] if p % 2 else [2, 2, 1]
        codes[3] = -1 if p % 3 == 0 else 0
        X.append(centres[np.maximum(codes, 0)] + rng.normal(size=(per_patient, d)))
        y.append(codes)
        g += [f"P{p:02d}"] * per_patient
    return np.vstack(X), np.concatenate(y), np.array(g)


def test_sklearn_conventions() -> None:
    model = CandidateClassifier(C=0.5, pca_components=4)
    assert model.get_params()["C"] == 0.5
    copy = clone(model.set_params(C=2.0))
    assert copy.get_params()["C"] == 2.0 and copy is not model
    assert not hasattr(copy, "classes_")


def test_logistic_matches_sklearn_pipeline() -> None:
    X, y, _ = _data()
    keep = y >= 0
    X, y = X[keep], y[keep]
    ours = CandidateClassifier(C=0.3).fit(X, y)
    Z = StandardScaler().fit_transform(X)
    ref = LogisticRegression(C=0.3, class_weight="balanced", max_iter=1000, tol=1e-6).fit(Z, y)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(Z), atol=1e-6)
    np.testing.assert_array_equal(ours.classes_, [0, 1, 2])
    assert ours.predict(X).shape == y.shape


def test_balanced_weights_find_rare_nodules() -> None:
    X, y, _ = _data()
    keep = y >= 0
    model = CandidateClassifier(C=1.0).fit(X[keep], y[keep])
    pred = model.predict(X[keep])
    nodules = y[keep] > 0
    # ~5 % positives: unweighted fits would call almost everything non-nodule
    assert (pred[nodules] > 0).mean() > 0.8
    score = model.nodule_score(X[keep])
    assert roc_auc_score(nodules, score) > 0.9


def test_excluded_labels_rejected_by_fit() -> None:
    X, y, _ = _data()
    with pytest.raises(ConfigError, match="drop excluded candidates"):
        CandidateClassifier().fit(X, y)
    with pytest.raises(ConfigError, match="only class"):
        CandidateClassifier().fit(X[:5], np.zeros(5, dtype=int))


@pytest.mark.parametrize(
    "params",
    [
        {"kind": "logistic", "C": 0.1},
        {"kind": "logistic", "C": 1.0, "pca_components": 5},
        {"kind": "mlp", "hidden_layer_sizes": (8,), "alpha": 1e-3, "max_iter": 300},
        {"kind": "logistic", "C": 1.0, "pca_components": 3, "n_passthrough": 2},
        {"kind": "hgb", "pca_components": 4, "n_passthrough": 2, "max_iter": 20},
    ],
)
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_round_trip_without_pickle(params: dict, tmp_path: Path) -> None:
    X, y, _ = _data(n_patients=6)
    keep = y >= 0
    model = CandidateClassifier(**params).fit(X[keep], y[keep])
    np.savez(tmp_path / "m.npz", **model.to_arrays())
    (tmp_path / "m.json").write_text(json.dumps(model.params()))
    with np.load(tmp_path / "m.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    back = CandidateClassifier.from_arrays(json.loads((tmp_path / "m.json").read_text()), arrays)
    np.testing.assert_array_equal(back.predict_proba(X), model.predict_proba(X))
    np.testing.assert_array_equal(back.classes_, model.classes_)
    assert back.get_params() == model.get_params()


def test_passthrough_columns_bypass_the_pca() -> None:
    X, y, _ = _data()
    keep = y >= 0
    X, y = X[keep], y[keep]
    ours = CandidateClassifier(C=0.3, pca_components=3, n_passthrough=2).fit(X, y)
    assert ours.pca_components_.shape == (3, X.shape[1] - 2)
    Z = StandardScaler().fit_transform(X)
    pcs = (Z[:, :-2] - ours.pca_mean_) @ ours.pca_components_.T
    ref = LogisticRegression(C=0.3, class_weight="balanced", max_iter=1000, tol=1e-6).fit(
        np.hstack([pcs, Z[:, -2:]]), y
    )
    np.testing.assert_allclose(ours.coefs_[0], ref.coef_.T, atol=1e-5)
    with pytest.raises(ConfigError, match="n_passthrough 11 exceeds the 10 feature columns"):
        CandidateClassifier(n_passthrough=11).fit(X, y)
    with pytest.raises(ConfigError, match="n_passthrough: expected >= 0"):
        CandidateClassifier(n_passthrough=-1).fit(X, y)


@pytest.mark.parametrize("binary", [False, True])
def test_boosted_trees_predict_like_sklearn(binary: bool) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y, _ = _data()
    keep = y >= 0
    X, y = X[keep], y[keep]
    if binary:
        y = (y > 0).astype(np.int64)
    ours = CandidateClassifier(kind="hgb", max_iter=15, max_leaf_nodes=7).fit(X, y)
    ref = HistGradientBoostingClassifier(
        learning_rate=0.1,
        max_leaf_nodes=7,
        l2_regularization=1e-4,
        max_iter=15,
        class_weight="balanced",
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=20,
        random_state=0,
    ).fit(StandardScaler().fit_transform(X), y)
    # the trees are walked with NumPy from the stored node arrays
    Z = (X - ours.scaler_mean_) / ours.scaler_scale_
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(Z), atol=1e-9)
    assert roc_auc_score(y > 0, ours.nodule_score(X)) > 0.9
    arrays = ours.to_arrays()
    arrays.pop("trees")
    with pytest.raises(ConfigError, match="kind 'hgb' but no 'trees'"):
        CandidateClassifier.from_arrays(ours.params(), arrays)


def test_models_saved_before_passthrough_still_load() -> None:
    X, y, _ = _data(n_patients=6)
    keep = y >= 0
    model = CandidateClassifier(C=0.5).fit(X[keep], y[keep])
    old = {k: v for k, v in model.params().items() if k in ("kind", "C", "pca_components")}
    arrays = {k: v for k, v in model.to_arrays().items() if k not in ("trees", "tree_shape")}
    back = CandidateClassifier.from_arrays(old, arrays)
    np.testing.assert_array_equal(back.predict_proba(X), model.predict_proba(X))


def test_two_classes_and_full_proba() -> None:
    X, y, _ = _data(n_patients=4)
    y2 = np.where(y > 0, 2, 0)
    model = CandidateClassifier().fit(X, y2)
    np.testing.assert_array_equal(model.classes_, [0, 2])
    full = model.predict_proba_full(X)
    assert full.shape == (len(X), 3)
    np.testing.assert_allclose(full[:, 1], 0.0)
    np.testing.assert_allclose(full.sum(axis=1), 1.0)


def test_bad_inputs() -> None:
    X, y, _ = _data(n_patients=3)
    model = CandidateClassifier().fit(X[y >= 0], y[y >= 0])
    with pytest.raises(ConfigError, match=r"expected features \(n, 10\)"):
        model.predict_proba(X[:, :4])
    with pytest.raises(ConfigError, match="kind"):
        CandidateClassifier(kind="svm").fit(X[y >= 0], y[y >= 0])
    with pytest.raises(ConfigError, match="missing array"):
        CandidateClassifier.from_arrays({}, {"classes": np.array([0, 1])})
    with pytest.raises(ConfigError, match="not fitted"):
        CandidateClassifier().to_arrays()


def test_grid_search_folds_are_patient_grouped() -> None:
    X, y, g = _data()
    model, record = fit_candidate_classifier(
        X, y, g, param_grid={"C": [0.01, 1.0]}, n_splits=3, seed=0
    )
    assert record["n_excluded_dropped"] == int((y == -1).sum())
    keep = y != -1
    assert record["n_rows"] == int(keep.sum())
    folds = record["folds"]
    assert len(folds) == 3
    flat = [p for f in folds for p in f]
    assert sorted(flat) == sorted(set(g)) and len(flat) == len(set(flat))
    for train, test in candidate_cv(3, 0).split(X[keep], y[keep], g[keep]):
        assert not set(g[keep][train]) & set(g[keep][test])
    assert record["best_params"]["C"] in (0.01, 1.0)
    assert len(record["cv_results"]) == 2
    assert 0.5 < record["best_score"] <= 1.0
    json.dumps(record)
    assert model.get_params()["C"] == record["best_params"]["C"]


def test_grouped_cv_does_not_leak_patient_identity() -> None:
    # labels depend only on the patient and features identify the patient: any fold that
    # put one patient on both sides would score near 1; grouped folds cannot beat chance
    rng = np.random.default_rng(5)
    n_pat, per = 16, 20
    finger = rng.normal(0, 3, size=(n_pat, 32))
    X = np.repeat(finger, per, axis=0) + rng.normal(0, 0.1, size=(n_pat * per, 32))
    y = np.repeat(np.arange(n_pat) % 2, per)  # half the patients' rows are "nodules"
    g = np.repeat([f"P{p}" for p in range(n_pat)], per)
    grid = {"C": [1.0, 0.5]}  # two settings: a search, so a cross-validated score
    _, record = fit_candidate_classifier(X, y, g, param_grid=grid, n_splits=4, seed=0)
    assert record["best_score"] < 0.8
    # the same search over rows instead of patients "finds" the patient-level labels
    leaky = cross_val_score(
        CandidateClassifier(),
        X,
        y,
        cv=KFold(4, shuffle=True, random_state=0),
        scoring=lambda est, X_, y_: nodule_auc(y_, est.predict_proba(X_), classes=est.classes_),
    )
    assert leaky.mean() > 0.95


def test_fit_candidate_classifier_errors() -> None:
    X, y, g = _data(n_patients=2)
    with pytest.raises(ConfigError, match="patients cannot fill"):
        fit_candidate_classifier(X, y, g, n_splits=3)
    with pytest.raises(ConfigError, match="no nodule candidates"):
        fit_candidate_classifier(X, np.zeros_like(y), g, n_splits=2)


def test_classifier_grid_families() -> None:
    from lungslice.model.candidate_head import classifier_grid

    (trees,) = classifier_grid("hgb", (0.01,), 128)
    assert trees["kind"] == ["hgb"] and trees["pca_components"] == [32]
    (logistic,) = classifier_grid("logistic", (0.01, 0.1), 128)
    assert logistic["C"] == [0.01, 0.1] and logistic["pca_components"] == [128]
    both = classifier_grid("auto", (0.1,), None)
    assert [g["kind"] for g in both] == [["logistic"], ["hgb"]]
    assert both[1]["pca_components"] == [None]
    with pytest.raises(ConfigError, match="expected a kind in logistic, hgb, auto"):
        classifier_grid("forest")
    with pytest.raises(ConfigError, match="expected positive C values"):
        classifier_grid("logistic", (0.0,))


def test_fit_searches_between_families_by_patient() -> None:
    from lungslice.model.candidate_head import classifier_grid

    X, y, g = _data()
    grid = classifier_grid("auto", (0.1,), 4)
    grid[1]["max_iter"] = [10]
    model, record = fit_candidate_classifier(X, y, g, param_grid=grid, n_passthrough=2)
    assert len(record["cv_results"]) == 2
    assert model.n_passthrough == 2
    assert record["best_params"]["kind"] in ("logistic", "hgb")


def test_boosted_trees_fit_a_class_with_one_row() -> None:
    X, y, _ = _data(n_patients=4)
    keep = y >= 0
    X, y = X[keep], (y[keep] > 0).astype(np.int64)
    y[np.flatnonzero(y)[1:]] = 0  # one nodule row: no stratified validation split possible
    model = CandidateClassifier(kind="hgb", max_iter=5).fit(X, y)
    assert model.tree_shape_.shape[0] == 5  # all rounds, no early stopping
    assert model.predict_proba(X).shape == (len(y), 2)
