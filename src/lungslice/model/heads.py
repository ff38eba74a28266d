"""Three-class slice classifiers ("heads") trained on cached backbone features.

Two kinds, both standardising the features first and both returning
probabilities in :data:`lungslice.lidc.labels.CLASSES` order (non-nodule,
benign, malignant):

- ``"logistic"``: multinomial logistic regression with balanced class weights
  for the ~94 % non-nodule imbalance: scikit-learn's ``LogisticRegression``
  objective, minimised by scipy's L-BFGS on a float32 loss (4x faster than
  scikit-learn's own solver side by side at 50,000 x 1,280; benchmarks/train_head.py).
- ``"mlp"``: a small one-hidden-layer perceptron in torch (CPU), trained with
  class-weighted cross-entropy and AdamW.

Hyperparameters are chosen by an inner cross-validation grouped by patient
(a patient's slices are never split between inner train and validation).
A fitted head holds only arrays, so it saves without pickling objects.
"""

from __future__ import annotations

import itertools
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from lungslice.config import DictConfig
from lungslice.errors import ConfigError
from lungslice.lidc.labels import CLASSES
from lungslice.progress import ProgressCallback, report

__all__ = [
    "Head",
    "HeadConfig",
    "LogisticHead",
    "MLPHead",
    "balanced_class_weights",
    "train_head",
]

log = logging.getLogger(__name__)

_N_CLASSES = len(CLASSES)


#: Head kinds.
HeadKind = Literal["logistic", "mlp"]


@dataclass(frozen=True)
class HeadConfig(DictConfig):
    """How to train a head (``to_dict``/``from_dict`` round-trip it through JSON).

    Attributes
    ----------
    kind : {"logistic", "mlp"}
        Logistic regression (scikit-learn) or a small torch MLP.
    C_grid : tuple of float
        Inverse L2 strengths tried for the logistic head.
    hidden_grid : tuple of int
        Hidden-layer widths tried for the MLP.
    weight_decay_grid : tuple of float
        AdamW weight decays tried for the MLP.
    class_weight : {"balanced", "none"}
        ``"balanced"`` weighs each class by ``n / (n_classes * n_class)``.
    inner_folds : int
        Patient-grouped inner CV folds for choosing hyperparameters (used only
        when the grid has more than one point).
    max_iter : int
        L-BFGS iterations (logistic).
    epochs, batch_size, learning_rate, dropout : int, int, float, float
        MLP training settings.
    """

    kind: HeadKind = "logistic"
    C_grid: tuple[float, ...] = (0.01, 0.1, 1.0)
    hidden_grid: tuple[int, ...] = (128,)
    weight_decay_grid: tuple[float, ...] = (1e-4, 1e-2)
    class_weight: Literal["balanced", "none"] = "balanced"
    inner_folds: int = 3
    max_iter: int = 200
    epochs: int = 20
    batch_size: int = 512
    learning_rate: float = 1e-3
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in ("logistic", "mlp"):
            raise ConfigError(
                f"HeadConfig.kind: expected 'logistic' or 'mlp', got {self.kind!r}. "
                "Fix: pass --head logistic or --head mlp."
            )
        if self.class_weight not in ("balanced", "none"):
            raise ConfigError(
                f"HeadConfig.class_weight: expected 'balanced' or 'none', "
                f"got {self.class_weight!r}."
            )
        if self.inner_folds < 2:
            raise ConfigError(f"HeadConfig.inner_folds: expected >= 2, got {self.inner_folds}.")
        for name in ("C_grid", "hidden_grid", "weight_decay_grid"):
            if len(getattr(self, name)) == 0:
                raise ConfigError(f"HeadConfig.{name}: expected at least one value, got none.")

    def grid(self) -> list[dict[str, Any]]:
        """Every hyperparameter combination of this config's kind."""
        if self.kind == "logistic":
            return [{"C": float(c)} for c in self.C_grid]
        return [
            {"hidden": int(h), "weight_decay": float(w)}
            for h, w in itertools.product(self.hidden_grid, self.weight_decay_grid)
        ]


class Head(ABC):
    """A fitted three-class slice classifier.

    Attributes
    ----------
    kind : str
        ``"logistic"`` or ``"mlp"``.
    hyperparameters : dict
        The chosen hyperparameters.
    mean, scale : numpy.ndarray
        ``(d,)`` standardisation applied before the classifier.
    """

    kind: ClassVar[str]

    def __init__(
        self, hyperparameters: dict[str, Any], mean: np.ndarray, scale: np.ndarray
    ) -> None:
        self.hyperparameters = dict(hyperparameters)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.scale = np.asarray(scale, dtype=np.float32)

    @property
    def n_features(self) -> int:
        """Feature dimension the head expects."""
        return int(self.mean.shape[0])

    def _standardise(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ConfigError(
                f"features have shape {X.shape}, expected (n, {self.n_features}) for this "
                f"{self.kind} head. Fix: use features made with the bundle's backbone settings."
            )
        return (X - self.mean) / self.scale

    @abstractmethod
    def logits(self, X: np.ndarray) -> np.ndarray:
        """``(n, 3)`` unnormalised scores."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(n, 3)`` class probabilities in :data:`~lungslice.lidc.labels.CLASSES` order."""
        z = self.logits(X).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    @abstractmethod
    def state(self) -> dict[str, np.ndarray]:
        """The arrays that define the head (besides ``mean``/``scale``)."""


class LogisticHead(Head):
    """Multinomial logistic regression on standardised features."""

    kind = "logistic"

    def __init__(
        self,
        hyperparameters: dict[str, Any],
        mean: np.ndarray,
        scale: np.ndarray,
        coef: np.ndarray,
        intercept: np.ndarray,
    ) -> None:
        super().__init__(hyperparameters, mean, scale)
        self.coef = np.asarray(coef, dtype=np.float32)
        self.intercept = np.asarray(intercept, dtype=np.float32)

    def logits(self, X: np.ndarray) -> np.ndarray:
        return self._standardise(X) @ self.coef.T + self.intercept

    def state(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": self.intercept}


class _MLP(torch.nn.Module):
    def __init__(self, d: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(d, hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, _N_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class MLPHead(Head):
    """One-hidden-layer perceptron (torch) on standardised features."""

    kind = "mlp"

    def __init__(
        self,
        hyperparameters: dict[str, Any],
        mean: np.ndarray,
        scale: np.ndarray,
        state_dict: dict[str, torch.Tensor],
    ) -> None:
        super().__init__(hyperparameters, mean, scale)
        self.module = _MLP(
            self.n_features,
            int(hyperparameters["hidden"]),
            float(hyperparameters.get("dropout", 0.0)),
        )
        self.module.load_state_dict(state_dict)
        self.module.eval()

    def logits(self, X: np.ndarray) -> np.ndarray:
        Xs = torch.from_numpy(np.ascontiguousarray(self._standardise(X)))
        chunks = []
        with torch.inference_mode():
            for start in range(0, Xs.shape[0], 65536):
                chunks.append(self.module(Xs[start : start + 65536]).numpy())
        if not chunks:
            return np.zeros((0, _N_CLASSES), dtype=np.float32)
        return np.concatenate(chunks)

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.module.state_dict().items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The torch parameters, for ``torch.save`` (tensors only)."""
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}


def balanced_class_weights(y: np.ndarray) -> np.ndarray:
    """``(3,)`` weights ``n / (k * n_c)`` over the k classes present (0 for absent ones)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=_N_CLASSES)[:_N_CLASSES]
    present = counts > 0
    w = np.zeros(_N_CLASSES, dtype=np.float64)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def _check_inputs(X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> None:
    if X.ndim != 2:
        raise ConfigError(f"X: expected a 2-D (n, d) feature array, got shape {X.shape}.")
    if y.shape != (X.shape[0],) or groups.shape != (X.shape[0],):
        raise ConfigError(
            f"X has {X.shape[0]} rows but y has shape {y.shape} and groups {groups.shape}; "
            "expected one label and one patient id per row."
        )
    bad = np.setdiff1d(np.unique(y), np.arange(_N_CLASSES))
    if bad.size:
        raise ConfigError(
            f"y holds codes {bad.tolist()}, expected only 0/1/2 ({', '.join(CLASSES)}). "
            "Fix: drop excluded slices (code -1) before training."
        )
    if np.unique(y).size < 2:
        raise ConfigError(
            f"y holds a single class ({CLASSES[int(y[0])] if y.size else 'none'}); a head "
            "needs at least two classes to learn from."
        )


def _scaler(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # chunked float64 sums: no full-size temporary for 300,000 x 1,280 features
    total = np.zeros(X.shape[1])
    total_sq = np.zeros(X.shape[1])
    for start in range(0, X.shape[0], 16384):
        chunk = X[start : start + 16384].astype(np.float64)
        total += chunk.sum(axis=0)
        total_sq += (chunk * chunk).sum(axis=0)
    n = max(X.shape[0], 1)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0))
    std[std < 1e-6] = 1.0  # constant features: leave them centred, not divided by zero
    return mean.astype(np.float32), std.astype(np.float32)


_BLAS_THREADS_FROM = 50_000_000  # feature values; below this the logistic fit uses 1 thread


def _logistic_loss_grad(
    params: np.ndarray,
    X: np.ndarray,
    onehot: np.ndarray,
    sw: np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
    l2: float,
) -> tuple[float, np.ndarray]:
    """Weighted mean multinomial log-loss + L2 on standardised weights, and its gradient.

    Standardisation is folded into the weights (``X @ (W / scale) - mean @ (W / scale)``)
    so the raw features are used without a standardised copy.
    """
    d, k = X.shape[1], onehot.shape[1]
    W = params[: d * k].reshape(d, k)
    b = params[d * k :]
    V = (W / scale[:, None]).astype(np.float32)
    z = (X @ V).astype(np.float64) + (b - mean @ V)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    sw_sum = float(sw.sum())
    loss = -float((sw * (onehot * logp).sum(axis=1)).sum()) / sw_sum
    r = (np.exp(logp) - onehot) * (sw / sw_sum)[:, None]
    r32 = r.astype(np.float32)
    gV = (X.T @ r32).astype(np.float64)  # X.T @ R: the fast BLAS path, not R.T @ X
    r_sum = r32.sum(axis=0, dtype=np.float64)
    gW = (gV - np.outer(mean, r_sum)) / scale[:, None]
    loss += 0.5 * l2 * float((W * W).sum())
    grad = np.concatenate([(gW + l2 * W).ravel(), r_sum])
    return loss, grad


def _fit_logistic(
    X: np.ndarray, y: np.ndarray, params: dict[str, Any], config: HeadConfig, seed: int
) -> LogisticHead:
    # scikit-learn's LogisticRegression objective (multinomial, penalty 1 / (2 C sum(w)) on the
    # standardised weights), minimised with scipy's L-BFGS on a float32 loss/gradient:
    # scikit-learn 1.9 computes the multinomial gradient as R.T @ X, which OpenBLAS runs far
    # slower than X.T @ R for 3 columns (2.2 s vs 0.08 s at 50,000 x 1,280 in one measurement
    # here). tests/model/test_heads.py checks agreement with scikit-learn.
    mean, scale = _scaler(X)
    present = np.flatnonzero(np.bincount(y, minlength=_N_CLASSES)[:_N_CLASSES] > 0)
    col = np.full(_N_CLASSES, -1)
    col[present] = np.arange(present.size)
    onehot = np.zeros((y.size, present.size), dtype=np.float64)
    onehot[np.arange(y.size), col[y]] = 1.0
    weights = (
        balanced_class_weights(y) if config.class_weight == "balanced" else np.ones(_N_CLASSES)
    )
    sw = weights[y].astype(np.float64)
    l2 = 1.0 / (float(params["C"]) * float(sw.sum()))
    d, k = X.shape[1], present.size
    # small problems: one BLAS thread. Two threads on a (2048 x 1712) product cost 7x the CPU
    # time and 3x the wall time on a busy 2-core machine (barrier waits, no gain).
    threads = 1 if X.size < _BLAS_THREADS_FROM else None
    from scipy.optimize import minimize  # here: predict loads heads without fitting them

    with threadpool_limits(limits=threads, user_api="blas"):
        result = minimize(
            _logistic_loss_grad,
            np.zeros(d * k + k),
            args=(X, onehot, sw, mean, scale, l2),
            method="L-BFGS-B",
            jac=True,
            options={"maxiter": config.max_iter, "gtol": 1e-4, "maxls": 50},
        )
    if not result.success:
        log.info(
            "logistic head: L-BFGS stopped after %d iterations: %s", result.nit, result.message
        )
    W = result.x[: d * k].reshape(d, k)
    coef = np.zeros((_N_CLASSES, d), dtype=np.float32)
    intercept = np.full(_N_CLASSES, -30.0, dtype=np.float32)  # absent classes: p ~ 0
    coef[present] = W.T
    intercept[present] = result.x[d * k :]
    hyper = {**params, "n_iter": int(result.nit)}
    return LogisticHead(hyper, mean, scale, coef, intercept)


def _fit_mlp(
    X: np.ndarray, y: np.ndarray, params: dict[str, Any], config: HeadConfig, seed: int
) -> MLPHead:
    mean, scale = _scaler(X)
    Xs = torch.from_numpy(np.ascontiguousarray((X - mean) / scale, dtype=np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    module = _MLP(X.shape[1], int(params["hidden"]), config.dropout)
    with torch.no_grad():  # seeded init from the local generator, not the global RNG
        for layer in module.modules():
            if isinstance(layer, torch.nn.Linear):
                bound = 1.0 / float(np.sqrt(layer.in_features))
                layer.weight.uniform_(-bound, bound, generator=gen)
                layer.bias.uniform_(-bound, bound, generator=gen)
    weights = (
        balanced_class_weights(y) if config.class_weight == "balanced" else np.ones(_N_CLASSES)
    )
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32))
    opt = torch.optim.AdamW(
        module.parameters(), lr=config.learning_rate, weight_decay=params["weight_decay"]
    )
    module.train()
    threads = torch.get_num_threads()
    # tiny batches: thread hand-off costs more than it saves (40x slower on a busy 2-core box)
    small = config.batch_size * X.shape[1] * int(params["hidden"]) < 20_000_000
    if small:
        torch.set_num_threads(1)
    try:
        _train_epochs(module, Xs, yt, loss_fn, opt, config, gen)
    finally:
        torch.set_num_threads(threads)
    hyper = {**params, "dropout": config.dropout}
    return MLPHead(hyper, mean, scale, module.state_dict())


def _train_epochs(
    module: torch.nn.Module,
    Xs: torch.Tensor,
    yt: torch.Tensor,
    loss_fn: torch.nn.Module,
    opt: torch.optim.Optimizer,
    config: HeadConfig,
    gen: torch.Generator,
) -> None:
    n = Xs.shape[0]
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            # dropout draws from the global RNG; fork it so training stays reproducible
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                loss = loss_fn(module(Xs[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
            opt.step()


def _fit(
    X: np.ndarray, y: np.ndarray, params: dict[str, Any], config: HeadConfig, seed: int
) -> Head:
    if config.kind == "logistic":
        return _fit_logistic(X, y, params, config, seed)
    return _fit_mlp(X, y, params, config, seed)


def _weighted_log_loss(y: np.ndarray, proba: np.ndarray, weights: np.ndarray) -> float:
    p = np.clip(proba[np.arange(y.size), y], 1e-7, 1.0)
    w = weights[y]
    return float(-(w * np.log(p)).sum() / w.sum())


def train_head(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    config: HeadConfig | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> Head:
    """Train a head, choosing hyperparameters by patient-grouped inner CV.

    Parameters
    ----------
    X : numpy.ndarray
        ``(n, d)`` slice features.
    y : numpy.ndarray
        ``(n,)`` int codes 0/1/2 (non-nodule, benign, malignant); no -1.
    groups : numpy.ndarray
        ``(n,)`` patient id of each row: inner folds never split a patient.
    config : HeadConfig, optional
        Kind and grid; defaults to ``HeadConfig()`` (logistic).
    seed : int
        Seeds the MLP's init/shuffling and the solver; nothing global.
    progress : ProgressCallback, optional
        Called once per fitted model.

    Returns
    -------
    Head
        Refitted on all rows with the hyperparameters of lowest class-balanced
        validation log-loss; ``head.hyperparameters["inner_cv"]`` records the scores.

    Raises
    ------
    ConfigError
        On mismatched shapes, codes outside 0/1/2, a single class, or fewer
        patients than inner folds while the grid has several points.
    """
    config = config or HeadConfig()
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y).astype(np.int64)
    groups = np.asarray(groups)
    _check_inputs(X, y, groups)
    grid = config.grid()
    n_groups = np.unique(groups).size
    total = len(grid) * config.inner_folds + 1 if len(grid) > 1 else 1
    done = 0
    scores: list[float] = []
    if len(grid) > 1:
        if n_groups < config.inner_folds:
            raise ConfigError(
                f"inner CV needs at least {config.inner_folds} patients to choose among "
                f"{len(grid)} hyperparameter settings, got {n_groups}. Fix: give one value "
                "per grid or lower HeadConfig.inner_folds."
            )
        from sklearn.model_selection import GroupKFold  # ~1 s import; training only

        weights = balanced_class_weights(y)
        folds = list(GroupKFold(n_splits=config.inner_folds).split(X, y, groups))
        for params in grid:
            losses = []
            for tr, va in folds:
                if np.unique(y[tr]).size < 2:
                    continue  # a fold without two classes cannot score this setting
                head = _fit(X[tr], y[tr], params, config, seed)
                losses.append(_weighted_log_loss(y[va], head.predict_proba(X[va]), weights))
                done += 1
                report(progress, done, total, f"inner CV {params}")
            scores.append(float(np.mean(losses)) if losses else float("inf"))
            log.info("inner CV %s: balanced log-loss %.4f", params, scores[-1])
        best = grid[int(np.argmin(scores))]
    else:
        best = grid[0]
    head = _fit(X, y, best, config, seed)
    head.hyperparameters["inner_cv"] = [
        {**params, "balanced_log_loss": s} for params, s in zip(grid, scores, strict=False)
    ]
    report(progress, total, total, "final fit")
    return head
