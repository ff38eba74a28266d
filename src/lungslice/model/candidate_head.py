"""Candidate classifier: standardised features -> (PCA) -> balanced logistic / MLP / boosted trees.

The candidate approach (van Ginneken et al., ISBI 2015) puts a linear
classifier on frozen CNN features of each candidate's patches. Candidates
are mostly negatives (hundreds per scan against one to three nodules), so
classes are weighted inversely to their frequency (``class_weight=
"balanced"`` for the logistic model, the same weights as sample weights for
the MLP).

:class:`CandidateClassifier` follows scikit-learn's conventions
(hyper-parameters in ``__init__`` only, fitted attributes end in ``_``), so
``GridSearchCV``, ``clone`` and pipelines work with it;
:func:`fit_candidate_classifier` picks its hyper-parameters over
patient-grouped folds. Probabilities are computed from the fitted arrays
with NumPy, so a model stored with :meth:`CandidateClassifier.to_arrays` /
:meth:`CandidateClassifier.params` (an ``.npz`` and JSON, no pickle) and
read back with :meth:`CandidateClassifier.from_arrays` predicts the same
numbers (the boosted trees too: their nodes are stored as arrays and walked
with NumPy).

The last ``n_passthrough`` feature columns (the detector's measurements of
each candidate, :mod:`lungslice.candidates.measures`) are standardised but
kept out of the PCA, so the few numbers that describe a candidate directly
are not drowned by the thousands of CNN features.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.decomposition import PCA
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, ParameterGrid, StratifiedGroupKFold
from sklearn.neural_network import MLPClassifier
from sklearn.utils.class_weight import compute_sample_weight

from lungslice.errors import ConfigError

__all__ = [
    "CLASSES",
    "CandidateClassifier",
    "candidate_cv",
    "classifier_grid",
    "fit_candidate_classifier",
    "nodule_auc",
]

log = logging.getLogger(__name__)

#: Candidate classes: 0 non-nodule, 1 benign, 2 malignant.
CLASSES: tuple[int, ...] = (0, 1, 2)
_KINDS = ("logistic", "mlp", "hgb")
_PARAM_NAMES = (
    "kind",
    "C",
    "pca_components",
    "n_passthrough",
    "hidden_layer_sizes",
    "alpha",
    "learning_rate",
    "max_leaf_nodes",
    "max_iter",
    "random_state",
)
#: Boosted trees stop early on a stratified validation split, which needs this many rows
#: of every class.
_MIN_ROWS_EARLY_STOP = 2
_TREE_FIELDS = (
    "value",
    "feature_idx",
    "num_threshold",
    "missing_go_to_left",
    "left",
    "right",
    "is_leaf",
)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


class CandidateClassifier(ClassifierMixin, BaseEstimator):
    """Standardise, optionally reduce with PCA, classify with balanced class weights.

    Parameters
    ----------
    kind : {"logistic", "mlp", "hgb"}
        Multinomial logistic regression (L2, ``C``), a one-hidden-layer ReLU
        MLP (scikit-learn's ``MLPClassifier``, L2 ``alpha``, Adam), or
        gradient-boosted trees (``HistGradientBoostingClassifier``, balanced
        class weights, ``learning_rate``, ``max_leaf_nodes``, L2 ``alpha``).
    C : float
        Inverse L2 strength of the logistic model.
    pca_components : int or None
        Keep this many principal components of the standardised features
        (fitted on the training rows, the passthrough columns left out); None
        keeps all features.
    n_passthrough : int
        The last this many columns bypass the PCA (standardised only) and are
        appended to the components.
    hidden_layer_sizes : tuple of int
        MLP hidden layers.
    alpha : float
        MLP L2 penalty; for ``hgb`` its ``l2_regularization``.
    learning_rate : float
        ``hgb`` shrinkage.
    max_leaf_nodes : int
        ``hgb`` leaves per tree.
    max_iter : int
        Solver iterations (lbfgs for logistic, epochs for the MLP, boosting
        rounds for ``hgb``; ``hgb`` stops early on a 10 % validation split).
    random_state : int
        Seeds PCA's randomised solver and the MLP's initialisation.

    Attributes
    ----------
    classes_ : numpy.ndarray
        Classes seen in ``fit`` (a subset of 0, 1, 2), the column order of
        :meth:`predict_proba`.
    n_features_in_ : int
        Feature width.
    """

    def __init__(
        self,
        kind: str = "logistic",
        C: float = 1.0,
        pca_components: int | None = None,
        n_passthrough: int = 0,
        hidden_layer_sizes: tuple[int, ...] = (64,),
        alpha: float = 1e-4,
        learning_rate: float = 0.1,
        max_leaf_nodes: int = 15,
        max_iter: int = 1000,
        random_state: int = 0,
    ) -> None:
        self.kind = kind
        self.C = C
        self.pca_components = pca_components
        self.n_passthrough = n_passthrough
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.max_iter = max_iter
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.kind not in _KINDS:
            raise ConfigError(
                f"CandidateClassifier.kind: expected one of {', '.join(_KINDS)}, got {self.kind!r}"
            )
        if not self.C > 0:
            raise ConfigError(f"CandidateClassifier.C: expected > 0, got {self.C}")
        if self.pca_components is not None and int(self.pca_components) < 1:
            raise ConfigError(
                f"CandidateClassifier.pca_components: expected >= 1 or None, "
                f"got {self.pca_components}"
            )
        if int(self.n_passthrough) < 0:
            raise ConfigError(
                f"CandidateClassifier.n_passthrough: expected >= 0, got {self.n_passthrough}"
            )

    def fit(self, X: np.ndarray, y: np.ndarray) -> CandidateClassifier:
        """Fit on features ``X`` ``(n, d)`` and codes ``y`` in {0, 1, 2}.

        Raises
        ------
        ConfigError
            For codes outside 0-2 (drop excluded rows, code -1, first), fewer
            than two classes, or mismatched shapes.
        """
        self._check_params()
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y).astype(np.int64)
        if X.ndim != 2 or y.shape != (X.shape[0],):
            raise ConfigError(
                f"CandidateClassifier.fit: expected X (n, d) and y (n,), got {X.shape} and "
                f"{y.shape}"
            )
        bad = sorted(set(np.unique(y).tolist()) - set(CLASSES))
        if bad:
            raise ConfigError(
                f"CandidateClassifier.fit: labels {bad} are not candidate classes 0, 1, 2. "
                "Fix: drop excluded candidates (label_code -1) before fitting."
            )
        classes = np.unique(y)
        if classes.size < 2:
            raise ConfigError(
                f"CandidateClassifier.fit: only class {classes.tolist()} present; expected "
                "non-nodule candidates and at least one nodule class"
            )
        n_pass = int(self.n_passthrough)
        if n_pass > X.shape[1]:
            raise ConfigError(
                f"CandidateClassifier.fit: n_passthrough {n_pass} exceeds the {X.shape[1]} "
                "feature columns. Fix: use the candidate configuration's measurement count."
            )
        self.scaler_mean_ = X.mean(axis=0)
        scale = X.std(axis=0)
        self.scaler_scale_ = np.where(scale > 0, scale, 1.0)
        Z = (X - self.scaler_mean_) / self.scaler_scale_
        Zc, Zp = Z[:, : Z.shape[1] - n_pass], Z[:, Z.shape[1] - n_pass :]
        if self.pca_components is not None and Zc.shape[1]:
            k = min(int(self.pca_components), Zc.shape[0], Zc.shape[1])
            pca = PCA(n_components=k, random_state=self.random_state).fit(Zc)
            self.pca_mean_ = pca.mean_.astype(np.float64)
            self.pca_components_ = pca.components_.astype(np.float64)
            Z = np.hstack([(Zc - self.pca_mean_) @ self.pca_components_.T, Zp])
        else:
            self.pca_mean_ = np.zeros(0)
            self.pca_components_ = np.zeros((0, 0))
        self.trees_ = np.zeros((0, len(_TREE_FIELDS)))
        self.tree_shape_ = np.zeros((0, 2), dtype=np.int64)
        if self.kind == "hgb":
            self._fit_trees(Z, y)
        elif self.kind == "logistic":
            model = LogisticRegression(
                C=self.C, class_weight="balanced", max_iter=self.max_iter, tol=1e-6
            ).fit(Z, y)
            self.coefs_ = [model.coef_.T.astype(np.float64)]
            self.intercepts_ = [model.intercept_.astype(np.float64)]
        else:
            mlp = MLPClassifier(
                hidden_layer_sizes=tuple(self.hidden_layer_sizes),
                alpha=self.alpha,
                max_iter=self.max_iter,
                early_stopping=False,
                random_state=self.random_state,
            )
            mlp.fit(Z, y, sample_weight=compute_sample_weight("balanced", y))
            self.coefs_ = [c.astype(np.float64) for c in mlp.coefs_]
            self.intercepts_ = [b.astype(np.float64) for b in mlp.intercepts_]
        self.classes_ = classes
        self.n_features_in_ = X.shape[1]
        return self

    def _fit_trees(self, Z: np.ndarray, y: np.ndarray) -> None:
        """Boosted trees; their nodes flattened into arrays (no pickle needed).

        Early stopping holds out a stratified 10 % of the rows, so it is used
        only when every class has at least ``_MIN_ROWS_EARLY_STOP`` rows (a
        tiny training set runs all ``max_iter`` rounds).
        """
        counts = np.unique(y, return_counts=True)[1]
        hgb = HistGradientBoostingClassifier(
            learning_rate=self.learning_rate,
            max_leaf_nodes=int(self.max_leaf_nodes),
            l2_regularization=self.alpha,
            max_iter=self.max_iter,
            class_weight="balanced",
            early_stopping=bool(counts.min() >= _MIN_ROWS_EARLY_STOP),
            validation_fraction=0.1,
            n_iter_no_change=20,
            random_state=self.random_state,
        ).fit(Z, y)
        rows, shape = [], []
        for per_class in hgb._predictors:
            for tree in per_class:
                nodes = tree.nodes
                rows.append(np.column_stack([nodes[f].astype(np.float64) for f in _TREE_FIELDS]))
                shape.append(len(nodes))
        self.trees_ = np.concatenate(rows) if rows else np.zeros((0, len(_TREE_FIELDS)))
        n_per_iter = len(hgb._predictors[0]) if hgb._predictors else 1
        # tree_shape_: node count and output column of each tree, in fitting order
        self.tree_shape_ = np.column_stack(
            [np.asarray(shape, dtype=np.int64), np.arange(len(shape)) % n_per_iter]
        ).astype(np.int64)
        self.coefs_ = [np.zeros((0, 0))]
        self.intercepts_ = [np.asarray(hgb._baseline_prediction, dtype=np.float64).ravel()]

    def _tree_logits(self, h: np.ndarray) -> np.ndarray:
        base = self.intercepts_[-1]
        z = np.tile(base, (h.shape[0], 1))
        start = 0
        rows = np.arange(h.shape[0])
        for count, out_col in self.tree_shape_:
            nodes = self.trees_[start : start + int(count)]
            start += int(count)
            value, feat, thr, miss_left, left, right, leaf = (nodes[:, j] for j in range(7))
            is_leaf = leaf > 0
            node = np.zeros(h.shape[0], dtype=np.int64)
            for _ in range(int(count)):
                active = ~is_leaf[node]
                if not active.any():
                    break
                x = h[rows, feat[node].astype(np.int64)]
                go_left = np.where(np.isnan(x), miss_left[node] > 0, x <= thr[node])
                nxt = np.where(go_left, left[node], right[node]).astype(np.int64)
                node = np.where(active, nxt, node)
            z[:, int(out_col)] += value[node]
        return z

    def _transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ConfigError(
                f"CandidateClassifier: expected features (n, {self.n_features_in_}), got "
                f"shape {X.shape}. Fix: use features made with the model's patch and "
                "feature configuration."
            )
        Z = (X - self.scaler_mean_) / self.scaler_scale_
        if self.pca_components_.size:
            n_pass = int(self.n_passthrough)
            Zc, Zp = Z[:, : Z.shape[1] - n_pass], Z[:, Z.shape[1] - n_pass :]
            Z = np.hstack([(Zc - self.pca_mean_) @ self.pca_components_.T, Zp])
        return Z

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Logits: ``(n, n_classes)``, or ``(n,)`` for two classes (sklearn's convention)."""
        h = self._transform(X)
        if self.kind == "hgb":
            zt = self._tree_logits(h)
            return zt[:, 0] if zt.shape[1] == 1 else zt
        for w, b in zip(self.coefs_[:-1], self.intercepts_[:-1], strict=True):
            h = np.maximum(h @ w + b, 0.0)
        z = h @ self.coefs_[-1] + self.intercepts_[-1]
        return z[:, 0] if z.shape[1] == 1 else z

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(n, len(classes_))`` class probabilities, columns in :attr:`classes_` order."""
        z = self.decision_function(X)
        if z.ndim == 1:
            p = _sigmoid(z)
            return np.column_stack([1.0 - p, p])
        return _softmax(z)

    def predict_proba_full(self, X: np.ndarray) -> np.ndarray:
        """``(n, 3)`` probabilities of classes 0, 1, 2 (0 for a class unseen in ``fit``)."""
        p = self.predict_proba(X)
        full = np.zeros((p.shape[0], len(CLASSES)))
        full[:, self.classes_] = p
        return full

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most probable class per row."""
        out: np.ndarray = self.classes_[self.predict_proba(X).argmax(axis=1)]
        return out

    def nodule_score(self, X: np.ndarray) -> np.ndarray:
        """P(benign) + P(malignant) = 1 - P(non-nodule): the detection score."""
        out: np.ndarray = 1.0 - self.predict_proba_full(X)[:, 0]
        return out

    # ---- storage without pickle -------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """JSON-safe hyper-parameters (with ``hidden_layer_sizes`` as a list)."""
        out = {name: getattr(self, name) for name in _PARAM_NAMES}
        out["hidden_layer_sizes"] = [int(v) for v in self.hidden_layer_sizes]
        out["C"] = float(self.C)
        out["alpha"] = float(self.alpha)
        out["learning_rate"] = float(self.learning_rate)
        out["max_leaf_nodes"] = int(self.max_leaf_nodes)
        out["n_passthrough"] = int(self.n_passthrough)
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted state as named arrays (for ``numpy.savez``).

        Raises
        ------
        ConfigError
            When the classifier is not fitted.
        """
        if not hasattr(self, "classes_"):
            raise ConfigError("CandidateClassifier.to_arrays: the classifier is not fitted")
        arrays = {
            "classes": np.asarray(self.classes_, dtype=np.int64),
            "scaler_mean": self.scaler_mean_,
            "scaler_scale": self.scaler_scale_,
            "pca_mean": self.pca_mean_,
            "pca_components": self.pca_components_,
            "n_layers": np.asarray(len(self.coefs_), dtype=np.int64),
            "trees": self.trees_,
            "tree_shape": self.tree_shape_,
        }
        for i, (w, b) in enumerate(zip(self.coefs_, self.intercepts_, strict=True)):
            arrays[f"coef_{i}"] = w
            arrays[f"intercept_{i}"] = b
        return arrays

    @classmethod
    def from_arrays(
        cls, params: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
    ) -> CandidateClassifier:
        """Rebuild a fitted classifier from :meth:`params` and :meth:`to_arrays`.

        Raises
        ------
        ConfigError
            For unknown parameters or missing arrays.
        """
        unknown = set(params) - set(_PARAM_NAMES)
        if unknown:
            raise ConfigError(
                f"CandidateClassifier.from_arrays: unknown parameter(s) "
                f"{', '.join(sorted(unknown))}; expected some of {', '.join(_PARAM_NAMES)}"
            )
        kw = dict(params)
        if "hidden_layer_sizes" in kw:
            kw["hidden_layer_sizes"] = tuple(int(v) for v in kw["hidden_layer_sizes"])
        model = cls(**kw)
        need = ["classes", "scaler_mean", "scaler_scale", "pca_mean", "pca_components", "n_layers"]
        missing = [k for k in need if k not in arrays]
        n_layers = int(arrays["n_layers"]) if "n_layers" in arrays else 0
        missing += [
            k for i in range(n_layers) for k in (f"coef_{i}", f"intercept_{i}") if k not in arrays
        ]
        if missing or n_layers < 1:
            raise ConfigError(
                f"CandidateClassifier.from_arrays: missing array(s) "
                f"{', '.join(missing) or 'coef_0'}. Expected the output of to_arrays(). "
                "Fix: re-save the model."
            )
        model.classes_ = np.asarray(arrays["classes"], dtype=np.int64)
        model.scaler_mean_ = np.asarray(arrays["scaler_mean"], dtype=np.float64)
        model.scaler_scale_ = np.asarray(arrays["scaler_scale"], dtype=np.float64)
        model.pca_mean_ = np.asarray(arrays["pca_mean"], dtype=np.float64)
        model.pca_components_ = np.asarray(arrays["pca_components"], dtype=np.float64)
        model.coefs_ = [np.asarray(arrays[f"coef_{i}"], np.float64) for i in range(n_layers)]
        model.intercepts_ = [
            np.asarray(arrays[f"intercept_{i}"], np.float64) for i in range(n_layers)
        ]
        model.trees_ = np.asarray(
            arrays["trees"] if "trees" in arrays else np.zeros((0, len(_TREE_FIELDS))), np.float64
        )
        model.tree_shape_ = np.asarray(
            arrays["tree_shape"] if "tree_shape" in arrays else np.zeros((0, 2)), np.int64
        ).reshape(-1, 2)
        if model.kind == "hgb" and ("trees" not in arrays or not model.tree_shape_.size):
            raise ConfigError(
                "CandidateClassifier.from_arrays: kind 'hgb' but no 'trees'/'tree_shape' arrays. "
                "Fix: re-save the model."
            )
        model.n_features_in_ = int(model.scaler_mean_.shape[0])
        return model


def nodule_auc(y_true: np.ndarray, proba: np.ndarray, *, classes: np.ndarray) -> float:
    """ROC-AUC of nodule (classes 1, 2) versus non-nodule from ``predict_proba`` output."""
    y = np.asarray(y_true) > 0
    if y.all() or not y.any():
        return float("nan")
    score = 1.0 - proba[:, np.asarray(classes) == 0].sum(axis=1)
    return float(roc_auc_score(y, score))


def _nodule_auc_scorer(estimator: CandidateClassifier, X: np.ndarray, y: np.ndarray) -> float:
    return nodule_auc(y, estimator.predict_proba(X), classes=estimator.classes_)


def candidate_cv(n_splits: int = 3, seed: int = 0) -> StratifiedGroupKFold:
    """The patient-grouped, stratified folds :func:`fit_candidate_classifier` searches over."""
    if n_splits < 2:
        raise ConfigError(f"candidate_cv: expected n_splits >= 2, got {n_splits}")
    return StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)


#: Classifier families :func:`classifier_grid` knows; ``auto`` searches both.
GRID_KINDS = ("logistic", "hgb", "auto")


def classifier_grid(
    kind: str = "hgb",
    c_grid: Sequence[float] = (0.01,),
    pca_components: int | None = 128,
) -> list[dict[str, list[Any]]]:
    """The ``GridSearchCV`` grid of one classifier family (or of both, ``auto``).

    Parameters
    ----------
    kind : {"logistic", "hgb", "auto"}
        ``logistic``: balanced logistic regression over ``c_grid`` on
        ``pca_components`` principal components of the CNN features (plus the
        measurements); ``hgb``: boosted trees (learning rate 0.05, 15 leaves,
        up to 200 rounds with early stopping on a 10 % split) on at most 32
        components, one setting (no inner search: a fit costs ~2 min on the
        40-patient cohort on a busy 2-core machine); ``auto``: both families,
        chosen by the patient-grouped search.
    c_grid : sequence of float
        Logistic regularisation strengths.
    pca_components : int or None
        Components of the CNN features (None: no PCA, e.g. measurements only).

    Raises
    ------
    ConfigError
        For another kind or non-positive C.
    """
    if kind not in GRID_KINDS:
        raise ConfigError(
            f"classifier_grid: expected a kind in {', '.join(GRID_KINDS)}, got {kind!r}"
        )
    if not c_grid or any(not c > 0 for c in c_grid):
        raise ConfigError(f"classifier_grid: expected positive C values, got {list(c_grid)}")
    logistic: dict[str, list[Any]] = {
        "kind": ["logistic"],
        "C": [float(c) for c in c_grid],
        "pca_components": [pca_components],
    }
    trees: dict[str, list[Any]] = {
        "kind": ["hgb"],
        "pca_components": [None if pca_components is None else min(pca_components, 32)],
        "learning_rate": [0.05],
        "max_leaf_nodes": [15],
        "max_iter": [200],
    }
    return {"logistic": [logistic], "hgb": [trees], "auto": [logistic, trees]}[kind]


def _default_grid(kind: str) -> dict[str, list[Any]]:
    if kind == "mlp":
        return {"kind": ["mlp"], "alpha": [1e-4, 1e-2, 1.0]}
    if kind == "hgb":
        return {
            "kind": ["hgb"],
            "pca_components": [32],
            "learning_rate": [0.05, 0.1],
            "max_leaf_nodes": [7, 15],
            "max_iter": [200],
        }
    return {"kind": ["logistic"], "C": [0.001, 0.01, 0.1, 1.0]}


def fit_candidate_classifier(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    param_grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]] | None = None,
    n_splits: int = 3,
    seed: int = 0,
    n_jobs: int = 1,
    kind: str = "logistic",
    n_passthrough: int = 0,
) -> tuple[CandidateClassifier, dict[str, Any]]:
    """Choose hyper-parameters by patient-grouped CV, then refit on all rows.

    Parameters
    ----------
    X : numpy.ndarray
        ``(n, d)`` candidate features.
    y : numpy.ndarray
        ``(n,)`` label codes; rows with -1 (excluded candidates) are dropped
        here (callers may drop them first; the record counts them).
    groups : numpy.ndarray
        ``(n,)`` patient id per row: no patient is in the training and
        validation part of one fold (:func:`candidate_cv`).
    param_grid : dict or list of dict, optional
        ``GridSearchCV`` grid over :class:`CandidateClassifier` parameters;
        default: ``C`` in 0.001-1 for ``kind="logistic"``, ``alpha`` in
        1e-4-1 for ``kind="mlp"``.
    n_splits : int
        Folds.
    seed : int
        Seeds the folds and the classifier.
    n_jobs : int
        ``GridSearchCV`` workers.
    kind : {"logistic", "mlp", "hgb"}
        The model family of the default grid.
    n_passthrough : int
        Trailing feature columns kept out of the PCA (the candidate
        configuration's ``n_measurements``); a grid may override it.

    Returns
    -------
    CandidateClassifier
        Refitted on every non-excluded row with the best parameters.
    dict
        JSON-safe record: ``best_params``, ``best_score`` (mean validation
        nodule-vs-non-nodule ROC-AUC), ``cv_results`` (params, mean and std
        score per grid point), ``scoring``, ``n_splits``, ``seed``, row,
        patient and class counts, ``n_excluded_dropped``, ``folds`` (the
        validation patients of each fold) and ``seconds``.
    """
    X = np.asarray(X)
    y = np.asarray(y).astype(np.int64)
    groups = np.asarray(groups)
    if X.ndim != 2 or y.shape != (X.shape[0],) or groups.shape != y.shape:
        raise ConfigError(
            f"fit_candidate_classifier: expected X (n, d), y (n,) and groups (n,), got "
            f"{X.shape}, {y.shape} and {groups.shape}"
        )
    keep = y != -1
    X, y, groups = X[keep], y[keep], groups[keep]
    n_patients = int(np.unique(groups).size)
    if not (y > 0).any():
        raise ConfigError(
            "fit_candidate_classifier: no nodule candidates (codes 1/2) among the "
            f"{y.size} rows; expected some candidates on nodules"
        )
    grid = param_grid if param_grid is not None else _default_grid(kind)
    settings = list(ParameterGrid(grid))
    if len(settings) == 1:
        # one setting: nothing to choose, so no inner cross-validation (4x cheaper)
        start = time.perf_counter()
        base = CandidateClassifier(random_state=seed, n_passthrough=n_passthrough)
        only = base.set_params(**settings[0]).fit(X, y)
        single: dict[str, Any] = {
            "best_params": _json_safe(settings[0]),
            "best_score": None,
            "scoring": "one setting given: no search",
            "cv_results": [],
            "n_splits": 0,
            "seed": seed,
            "n_rows": int(y.size),
            "n_patients": n_patients,
            "rows_per_class": {str(c): int((y == c).sum()) for c in CLASSES},
            "n_excluded_dropped": int((~keep).sum()),
            "folds": [],
            "seconds": time.perf_counter() - start,
        }
        return only, single
    if n_patients < n_splits:
        raise ConfigError(
            f"fit_candidate_classifier: {n_patients} patients cannot fill {n_splits} "
            "patient-grouped folds. Fix: lower n_splits or add patients."
        )
    cv = candidate_cv(n_splits, seed)
    with warnings.catch_warnings():
        # a rare class (few malignant nodules) cannot reach every fold; scikit-learn
        # warns on stderr, the library logs it instead
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        folds = list(cv.split(X, y, groups))
    counts = np.bincount(np.asarray(y, dtype=np.int64)[np.asarray(y) >= 0])
    if counts.size and counts[counts > 0].min() < n_splits:
        log.info(
            "fit_candidate_classifier: class counts %s, fewer than %d folds for the rarest: "
            "some inner folds lack it",
            counts.tolist(),
            n_splits,
        )
    search = GridSearchCV(
        CandidateClassifier(random_state=seed, n_passthrough=n_passthrough),
        grid,
        scoring=_nodule_auc_scorer,
        cv=folds,
        refit=True,
        n_jobs=n_jobs,
        error_score=np.nan,
    )
    start = time.perf_counter()
    search.fit(X, y)
    seconds = time.perf_counter() - start
    best: CandidateClassifier = search.best_estimator_
    res = search.cv_results_
    record: dict[str, Any] = {
        "best_params": _json_safe(search.best_params_),
        "best_score": float(search.best_score_),
        "scoring": "nodule-vs-non-nodule ROC-AUC (1 - P(non-nodule)), patient-grouped folds",
        "cv_results": [
            {
                "params": _json_safe(p),
                "mean_score": float(m),
                "std_score": float(s),
            }
            for p, m, s in zip(
                res["params"], res["mean_test_score"], res["std_test_score"], strict=True
            )
        ],
        "n_splits": n_splits,
        "seed": seed,
        "n_rows": int(y.size),
        "n_patients": n_patients,
        "rows_per_class": {str(c): int((y == c).sum()) for c in CLASSES},
        "n_excluded_dropped": int((~keep).sum()),
        "folds": [sorted(map(str, np.unique(groups[test]))) for _, test in folds],
        "seconds": seconds,
    }
    log.info(
        "candidate classifier: best %s, CV nodule AUC %.3f (%d rows, %d patients, %.1f s)",
        record["best_params"],
        record["best_score"],
        y.size,
        n_patients,
        seconds,
    )
    return best, record


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
