"""Calibrated probabilities: temperature and Platt scaling, ECE with CIs, reliability plots.

A classifier's probabilities are *calibrated* when, of the slices given
p = 0.3, about 30 % are positive. Heads trained on few patients are usually
over-confident (many outputs at 0 or 1). The fix fitted here is tiny and
cannot change a ranking:

- **temperature** scaling divides the logits by one number ``T`` (multiclass
  probabilities ``(n, C)`` or binary ``(n,)`` scores);
- **temperature with class bias** (``bias_temperature``; Alexandari et al.,
  ICML 2020) divides the logits by ``T`` and adds one bias per class. A head
  trained with balanced class weights over-states the rare classes by a
  constant factor in odds (the ratio of the weights), which a bias removes
  and one temperature cannot: temperature alone has to sharpen every output
  (``T < 1``) to pull the many negatives down, and saturates them at 0;
- **Platt** scaling maps a binary score's logit ``s`` to ``sigmoid(a s + b)``
  (with Platt's smoothed targets, so it never learns 0 or 1 exactly);
- **isotonic** regression (binary) fits a non-decreasing step function,
  clipped to ``[1 / (n + 2), 1 - 1 / (n + 2)]`` so that it never says 0 or 1.

Fit it on *out-of-fold* predictions (the cross-validation's held-out
predictions), never on the training predictions. :func:`cross_calibrate`
does the nested version (calibrator fitted on the other folds, applied to
each fold) so ECE before and after can be compared on the same folds.

Measures: :func:`expected_calibration_error` (equal-width bins; top-label
confidence for multiclass), :func:`ece_bootstrap` (percentile CI over
patients, in :func:`lungslice.model.metrics.format_figure`'s format),
:func:`saturation_rate` (outputs within 1e-3 of 0 or 1) and
:func:`plot_reliability` (PNG).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from scipy.optimize import minimize, minimize_scalar

from lungslice.errors import BundleMismatchError, ConfigError

__all__ = [
    "CANDIDATE_CALIBRATOR",
    "CANDIDATE_METHODS",
    "Calibrator",
    "cross_calibrate",
    "ece_bootstrap",
    "expected_calibration_error",
    "plot_reliability",
    "reliability_curve",
    "saturation_rate",
]

_METHODS = ("temperature", "bias_temperature", "platt", "isotonic")
#: Calibrators of multiclass (n, C) probabilities.
CANDIDATE_METHODS: tuple[str, ...] = ("temperature", "bias_temperature")
#: The candidate classifier's calibrator: its heads are trained with balanced class
#: weights, whose shift of the odds a class bias undoes (docs/domain.md, "Calibration").
CANDIDATE_CALIBRATOR = "bias_temperature"
#: log T is searched in [-_LOG_T_BOUND, _LOG_T_BOUND] (T in [0.05, 20]).
_LOG_T_BOUND = 3.0
#: Class biases are searched in [-_BIAS_BOUND, _BIAS_BOUND] (a class absent from the
#: fitting labels would otherwise drive its bias to minus infinity).
_BIAS_BOUND = 15.0
_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before taking logs


def _as_logits(p: np.ndarray, logits: bool) -> np.ndarray:
    """Binary ``(n,)`` -> logit; multiclass ``(n, C)`` -> log-probabilities (softmax logits)."""
    a = np.asarray(p, dtype=np.float64)
    if logits:
        return a
    if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 1):
        raise ConfigError(
            "Calibrator: probabilities must lie in [0, 1], got values in "
            f"[{np.nanmin(a):.3g}, {np.nanmax(a):.3g}]. Fix: pass logits=True for raw scores."
        )
    c = np.clip(a, _EPS, 1.0 - _EPS)
    if a.ndim == 1:
        out: np.ndarray = np.log(c) - np.log1p(-c)
        return out
    return np.log(c)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * x))
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def _check_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    if x.ndim not in (1, 2) or x.shape[0] != y.shape[0] or y.ndim != 1:
        raise ConfigError(
            "Calibrator: expected scores (n,) or (n, C) and labels (n,), "
            f"got {x.shape} and {y.shape}"
        )
    if x.shape[0] < 2:
        raise ConfigError(f"Calibrator: need >= 2 predictions to fit, got {x.shape[0]}")
    if not np.isfinite(x).all():
        raise ConfigError("Calibrator: scores must be finite")
    yi = y.astype(np.int64)
    n_classes = 2 if x.ndim == 1 else x.shape[1]
    if np.any(yi != y) or yi.min() < 0 or yi.max() >= n_classes:
        raise ConfigError(
            f"Calibrator: labels must be integers in 0..{n_classes - 1}, got values "
            f"{sorted(set(np.unique(y).tolist()))[:5]}"
        )
    return x, yi


class Calibrator:
    """Temperature, temperature with class bias, Platt or isotonic scaling of probabilities.

    Parameters
    ----------
    method : {"temperature", "bias_temperature", "platt", "isotonic"}
        ``"temperature"``: ``softmax(z / T)`` (one ``T``, binary ``(n,)`` or
        multiclass ``(n, C)`` inputs). ``"bias_temperature"``: ``softmax(z / T
        + bias)`` with one bias per class (the first class's is 0).
        ``"platt"``: ``sigmoid(a * logit(p) + b)`` with ``a >= 0`` (an
        uninformative score gives the base rate, never an inverted one),
        binary only. ``"isotonic"``: a non-decreasing step function of ``p``, binary only.

    Attributes
    ----------
    temperature_ : float
        ``T`` (1 = unchanged, > 1 softens over-confident outputs); searched in
        [0.05, 20].
    bias_ : numpy.ndarray
        ``(C,)`` class biases added to the logits (zeros unless ``bias_temperature``;
        searched in [-15, 15]).
    a_, b_ : float
        Platt's slope and intercept (``a_ = 1 / T``; for binary
        ``bias_temperature``, ``b_`` is the bias of class 1).
    iso_x_, iso_y_ : numpy.ndarray
        The isotonic step function's knots (``isotonic`` only; linear between them).
    n_fit_ : int
        Predictions it was fitted on.
    nll_before_, nll_after_ : float
        Mean negative log-likelihood on the fitting data before and after.
    """

    def __init__(self, method: str = "temperature") -> None:
        if method not in _METHODS:
            raise ConfigError(f"Calibrator: method must be one of {_METHODS}, got {method!r}")
        self.method = method

    @staticmethod
    def _nll(z: np.ndarray, y: np.ndarray, t: np.ndarray | None = None) -> float:
        if z.ndim == 1:
            target = y.astype(np.float64) if t is None else t
            # log(1 + exp(-z)) for y=1, log(1 + exp(z)) for y=0, stable
            return float(np.mean(np.logaddexp(0.0, z) - target * z))
        zs = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(zs).sum(axis=1))
        return float(np.mean(lse - zs[np.arange(z.shape[0]), y]))

    def fit(self, p_or_logits: np.ndarray, y: np.ndarray, *, logits: bool = False) -> Calibrator:
        """Fit on out-of-fold predictions.

        Parameters
        ----------
        p_or_logits : numpy.ndarray
            ``(n,)`` binary probabilities of class 1, or ``(n, C)`` class
            probabilities; with ``logits=True``, raw scores / logits instead.
        y : numpy.ndarray
            ``(n,)`` integer labels (0/1, or 0..C-1).
        logits : bool
            Whether ``p_or_logits`` are logits.

        Returns
        -------
        Calibrator
            ``self``.

        Raises
        ------
        ConfigError
            On shapes, labels or probabilities out of range, or a binary-only
            method (Platt, isotonic) with ``(n, C)`` input.
        """
        z, yi = _check_xy(_as_logits(p_or_logits, logits), np.asarray(y))
        if self.method in ("platt", "isotonic") and z.ndim != 1:
            raise ConfigError(
                f"Calibrator({self.method!r}) is binary: expected scores (n,), got {z.shape}. "
                "Fix: use method='temperature' or 'bias_temperature' for (n, C) probabilities."
            )
        self.n_classes_ = 2 if z.ndim == 1 else int(z.shape[1])
        self.nll_before_ = self._nll(z, yi)
        self.temperature_ = 1.0
        self.bias_ = np.zeros(self.n_classes_)
        self.a_, self.b_ = 1.0, 0.0
        self.iso_x_ = self.iso_y_ = np.zeros(0)
        if self.method == "temperature":
            res = minimize_scalar(
                lambda lt: self._nll(z / math.exp(lt), yi),
                bounds=(-_LOG_T_BOUND, _LOG_T_BOUND),
                method="bounded",
            )
            self.temperature_ = float(math.exp(res.x))
            self.a_ = 1.0 / self.temperature_
        elif self.method == "bias_temperature":
            self._fit_bias_temperature(z, yi)
        elif self.method == "platt":
            n_pos = int(yi.sum())
            n_neg = yi.size - n_pos
            t = np.where(yi == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))
            # slope >= 0: a score that ranks the fitting studies backwards (a handful of
            # studies, an uninformative score) gives the base rate, never an inverted score
            res = minimize(
                lambda ab: self._nll(ab[0] * z + ab[1], yi, t),
                x0=np.array([1.0, 0.0]),
                method="L-BFGS-B",
                bounds=[(0.0, None), (None, None)],
            )
            self.a_, self.b_ = float(res.x[0]), float(res.x[1])
            self.temperature_ = 1.0 / self.a_ if self.a_ != 0 else float("inf")
        else:
            self._fit_isotonic(_sigmoid(z), yi)
        self.n_fit_ = int(yi.size)
        after = np.clip(self.transform(z, logits=True), _EPS, 1.0 - _EPS)
        self.nll_after_ = self._nll(_as_logits(after, False), yi)
        return self

    def _fit_bias_temperature(self, z: np.ndarray, y: np.ndarray) -> None:
        """Minimise the NLL of ``z / T + bias`` over ``log T`` (bounded) and the biases."""
        zz = np.column_stack([np.zeros_like(z), z]) if z.ndim == 1 else z
        c = zz.shape[1]
        onehot = np.eye(c)[y]

        def nll_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            inv_t = math.exp(-theta[0])
            bias = np.concatenate([[0.0], theta[1:]])
            logit = zz * inv_t + bias
            q = _softmax(logit)
            lse = np.log(np.exp(logit - logit.max(axis=1, keepdims=True)).sum(axis=1))
            lse += logit.max(axis=1)
            nll = float(np.mean(lse - logit[np.arange(len(y)), y]))
            d = (q - onehot) / len(y)  # d nll / d logit
            g_logt = float(-np.sum(d * zz) * inv_t)
            return nll, np.concatenate([[g_logt], d.sum(axis=0)[1:]])

        bounds = [(-_LOG_T_BOUND, _LOG_T_BOUND)] + [(-_BIAS_BOUND, _BIAS_BOUND)] * (c - 1)
        res = minimize(nll_grad, np.zeros(c), jac=True, method="L-BFGS-B", bounds=bounds)
        self.temperature_ = float(math.exp(res.x[0]))
        bias = np.concatenate([[0.0], res.x[1:]])
        self.bias_ = bias if z.ndim == 2 else np.array([0.0, bias[1]])
        self.a_, self.b_ = 1.0 / self.temperature_, float(bias[1]) if c == 2 else 0.0

    def _fit_isotonic(self, p: np.ndarray, y: np.ndarray) -> None:
        from sklearn.isotonic import IsotonicRegression

        lo = 1.0 / (y.size + 2.0)
        iso = IsotonicRegression(y_min=lo, y_max=1.0 - lo, out_of_bounds="clip").fit(p, y)
        self.iso_x_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.iso_y_ = np.asarray(iso.y_thresholds_, dtype=np.float64)

    def transform(self, p_or_logits: np.ndarray, *, logits: bool = False) -> np.ndarray:
        """Calibrated probabilities, same shape as the input (``(n,)`` or ``(n, C)``)."""
        if not hasattr(self, "a_"):
            raise ConfigError("Calibrator: not fitted. Fix: call fit(...) or from_dict(...) first.")
        z = _as_logits(p_or_logits, logits)
        if z.ndim == 2:
            if self.method not in CANDIDATE_METHODS or z.shape[1] != self.n_classes_:
                raise BundleMismatchError(
                    f"Calibrator: fitted on {self.n_classes_}-class {self.method} inputs, "
                    f"got scores of shape {z.shape}"
                )
            return _softmax(z / self.temperature_ + self.bias_)
        if self.n_classes_ != 2:
            raise BundleMismatchError(
                f"Calibrator: fitted on {self.n_classes_}-class inputs, got binary scores {z.shape}"
            )
        if self.method == "isotonic":
            out: np.ndarray = np.interp(_sigmoid(z), self.iso_x_, self.iso_y_)
            return out
        return _sigmoid(self.a_ * z + self.b_)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters (for a bundle's ``model.json``)."""
        if not hasattr(self, "a_"):
            raise ConfigError("Calibrator: not fitted")
        d: dict[str, Any] = {
            "method": self.method,
            "n_classes": self.n_classes_,
            "temperature": self.temperature_ if math.isfinite(self.temperature_) else None,
            "a": self.a_,
            "b": self.b_,
            "n_fit": self.n_fit_,
            "nll_before": self.nll_before_,
            "nll_after": self.nll_after_,
        }
        if self.method == "bias_temperature":
            d["bias"] = [float(v) for v in self.bias_]
        if self.method == "isotonic":
            d["x"] = [float(v) for v in self.iso_x_]
            d["y"] = [float(v) for v in self.iso_y_]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibrator:
        """Rebuild a fitted calibrator from :meth:`to_dict`.

        Raises
        ------
        BundleMismatchError
            If a key is missing.
        """
        need = ["method", "n_classes", "a", "b"]
        need += {"bias_temperature": ["bias"], "isotonic": ["x", "y"]}.get(str(d.get("method")), [])
        missing = [k for k in need if k not in d]
        if missing:
            raise BundleMismatchError(f"Calibrator.from_dict: missing {', '.join(missing)}")
        c = cls(str(d["method"]))
        c.n_classes_ = int(d["n_classes"])
        c.a_, c.b_ = float(d["a"]), float(d["b"])
        t = d.get("temperature")
        c.temperature_ = float(t) if t is not None else float("inf")
        c.bias_ = np.asarray(d.get("bias", [0.0] * c.n_classes_), dtype=np.float64)
        if c.bias_.shape != (c.n_classes_,):
            raise BundleMismatchError(
                f"Calibrator.from_dict: {c.bias_.size} class biases for {c.n_classes_} classes"
            )
        c.iso_x_ = np.asarray(d.get("x", []), dtype=np.float64)
        c.iso_y_ = np.asarray(d.get("y", []), dtype=np.float64)
        c.n_fit_ = int(d.get("n_fit", 0))
        c.nll_before_ = float(d.get("nll_before", float("nan")))
        c.nll_after_ = float(d.get("nll_after", float("nan")))
        return c


def cross_calibrate(
    p_or_logits: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    method: str = "temperature",
    *,
    logits: bool = False,
) -> np.ndarray:
    """Calibrated out-of-fold predictions: each fold by a calibrator fitted on the other folds.

    Parameters
    ----------
    p_or_logits, y : numpy.ndarray
        Out-of-fold predictions and labels (see :meth:`Calibrator.fit`).
    folds : numpy.ndarray
        ``(n,)`` fold of each prediction (patient-grouped, as the CV made them).
    method : str
        Calibrator method.
    logits : bool
        Whether inputs are logits.

    Returns
    -------
    numpy.ndarray
        Probabilities, same shape as the input; comparable fold for fold with
        the uncalibrated ones (the calibrator never saw the fold it is applied to).
    """
    folds = np.asarray(folds)
    y = np.asarray(y)
    x = np.asarray(p_or_logits, dtype=np.float64)
    if folds.shape != y.shape or x.shape[0] != y.shape[0]:
        raise ConfigError(
            f"cross_calibrate: {x.shape[0]} predictions, {y.shape[0]} labels, "
            f"{folds.shape[0]} folds"
        )
    uniq = np.unique(folds)
    if uniq.size < 2:
        raise ConfigError(f"cross_calibrate: need >= 2 folds, got {uniq.size}")
    out = np.empty(x.shape, dtype=np.float64)
    for f in uniq:
        test = folds == f
        cal = Calibrator(method).fit(x[~test], y[~test], logits=logits)
        out[test] = cal.transform(x[test], logits=logits)
    return out


def _confidence(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted probability, outcome) pairs: binary as is, multiclass by top label."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y)
    if p.ndim == 1:
        return p, (y == 1).astype(np.float64)
    if p.ndim != 2:
        raise ConfigError(f"expected probabilities (n,) or (n, C), got shape {p.shape}")
    top = np.argmax(p, axis=1)
    return p[np.arange(p.shape[0]), top], (top == y).astype(np.float64)


def reliability_curve(
    y: np.ndarray, p: np.ndarray, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: mean predicted probability, observed frequency, count.

    Binary ``p`` ``(n,)`` is the probability of class 1; multiclass ``(n, C)``
    uses the top label's probability and whether the top label is right.
    Empty bins hold NaN and count 0.
    """
    if n_bins < 1:
        raise ConfigError(f"n_bins must be >= 1, got {n_bins}")
    conf, hit = _confidence(y, p)
    if conf.shape != hit.shape:
        raise ConfigError(f"{conf.shape[0]} probabilities for {hit.shape[0]} labels")
    idx = np.clip((conf * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, conf, minlength=n_bins) / count
        freq = np.bincount(idx, hit, minlength=n_bins) / count
    return mean_p, freq, count


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """ECE: mean over equal-width bins of ``|observed - predicted|``, weighted by bin size.

    Parameters
    ----------
    y : numpy.ndarray
        ``(n,)`` labels (0/1 for binary ``p``; 0..C-1 for ``(n, C)`` ``p``).
    p : numpy.ndarray
        ``(n,)`` probability of class 1, or ``(n, C)`` (top-label ECE).
    n_bins : int
        Bins on [0, 1].

    Returns
    -------
    float
        In [0, 1]; NaN without predictions.
    """
    mean_p, freq, count = reliability_curve(y, p, n_bins)
    n = int(count.sum())
    if n == 0:
        return float("nan")
    ok = count > 0
    return float(np.sum(count[ok] * np.abs(freq[ok] - mean_p[ok])) / n)


def ece_bootstrap(
    y: np.ndarray,
    p: np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    n_boot: int = 200,
    seed: int = 0,
    *,
    n_bins: int = 10,
    ci: float = 0.95,
) -> dict[str, float]:
    """ECE with a percentile bootstrap CI resampling patients (all of a patient's rows together).

    Returns
    -------
    dict
        ``{"value", "ci_low", "ci_high", "n_boot"}``, the format of
        :func:`lungslice.model.metrics.bootstrap` that
        :func:`~lungslice.model.metrics.format_figure` prints.
    """
    if n_boot < 1:
        raise ConfigError(f"ece_bootstrap: expected n_boot >= 1, got {n_boot}")
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    g = np.asarray([str(x) for x in groups])
    if g.shape[0] != y.shape[0] or p.shape[0] != y.shape[0]:
        raise ConfigError(
            f"ece_bootstrap: {p.shape[0]} probabilities, {y.shape[0]} labels, {g.shape[0]} groups"
        )
    value = expected_calibration_error(y, p, n_bins)
    uniq, inv = np.unique(g, return_inverse=True)
    rows = [np.flatnonzero(inv == i) for i in range(uniq.size)]
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        draw = rng.integers(0, uniq.size, size=uniq.size)
        idx = np.concatenate([rows[i] for i in draw])
        reps.append(expected_calibration_error(y[idx], p[idx], n_bins))
    arr = np.asarray(reps)
    arr = arr[np.isfinite(arr)]
    alpha = (1.0 - ci) / 2.0
    lo, hi = (
        (float(np.quantile(arr, alpha)), float(np.quantile(arr, 1 - alpha)))
        if arr.size
        else (float("nan"), float("nan"))
    )
    return {"value": value, "ci_low": lo, "ci_high": hi, "n_boot": int(arr.size)}


def saturation_rate(p: np.ndarray, eps: float = 1e-3) -> float:
    """Share of saturated outputs: binary ``p`` below ``eps`` or above ``1 - eps``;
    multiclass rows whose top probability is above ``1 - eps``. NaN when empty."""
    a = np.asarray(p, dtype=np.float64)
    if a.size == 0:
        return float("nan")
    if a.ndim == 1:
        return float(np.mean((a < eps) | (a > 1.0 - eps)))
    return float(np.mean(a.max(axis=1) > 1.0 - eps))


def plot_reliability(
    y: np.ndarray,
    p_before: np.ndarray,
    p_after: np.ndarray,
    path: str | Path,
    *,
    n_bins: int = 10,
    title: str = "",
    labels: tuple[str, str] = ("before", "after"),
) -> Path:
    """Reliability diagram (observed vs predicted per bin) of two sets of probabilities, as PNG.

    Each curve's legend gives its ECE and saturated-output rate; a histogram
    of the predicted probabilities sits below.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(path)
    fig, (ax, axh) = plt.subplots(
        2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
    )
    ax.plot([0, 1], [0, 1], color="black", lw=0.7, ls=":", label="perfectly calibrated")
    for p, name, colour in zip((p_before, p_after), labels, ("tab:red", "tab:blue"), strict=True):
        mean_p, freq, count = reliability_curve(y, p, n_bins)
        ok = count > 0
        ece = expected_calibration_error(y, p, n_bins)
        sat = saturation_rate(p)
        ax.plot(
            mean_p[ok],
            freq[ok],
            marker="o",
            color=colour,
            label=f"{name}: ECE {ece:.3f}, saturated {sat:.1%}",
        )
        conf, _ = _confidence(y, p)
        axh.hist(conf, bins=n_bins, range=(0, 1), color=colour, alpha=0.5, label=name)
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        ylabel="observed frequency",
        title=title or "reliability",
    )
    ax.legend(loc="upper left", fontsize=8)
    axh.set(xlabel="predicted probability", ylabel="count")
    axh.set_yscale("log")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
