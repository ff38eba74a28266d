"""From slice probabilities to nodule candidates, study scores and slices to read.

1. Smooth each class's probability along z with a Gaussian (sigma in mm):
   nodules span several 1 mm slices, one-slice spikes (vessels, noise) do not.
2. Group consecutive slices whose smoothed p(nodule) = p(benign) + p(malignant)
   reaches a threshold into **candidates** at least ``min_length_mm`` long.
3. Score the study: p(any nodule) and p(any malignant nodule), by ``"max"``
   (the highest smoothed slice), by a leaky ``"noisy_or"`` over the top-k
   candidates (as in the Data Science Bowl 2017 winning solution:
   ``1 - (1 - leak) * prod(1 - p_i)``), or by a ``"learned"`` logistic
   aggregator over the top-k candidate scores (:class:`LearnedAggregator`; its
   fitted weights live in that object, not in :class:`AggregateConfig`).
   When a study has fewer than k candidates, its highest local maxima below the
   threshold fill the top-k, so scores still rank studies without candidates.
4. **Recommendations**: candidate peaks first (one slice per candidate), then
   sub-threshold peaks, then the remaining slices by smoothed p(nodule).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter1d

from lungslice.config import DictConfig
from lungslice.errors import ConfigError

__all__ = [
    "AGGREGATION_METHODS",
    "AggregateConfig",
    "AggregationMethod",
    "Candidate",
    "LearnedAggregator",
    "StudyResult",
    "aggregate",
    "fit_learned_aggregator",
    "map_to_source",
    "study_scores",
]

#: A study-score aggregator's name.
AggregationMethod = Literal["max", "noisy_or", "learned"]
#: Study-score aggregators. The one list: training, evaluation and the ablation use it.
AGGREGATION_METHODS: tuple[AggregationMethod, ...] = ("max", "noisy_or", "learned")


@dataclass(frozen=True)
class AggregateConfig(DictConfig):
    """How slice probabilities become candidates and study scores.

    Hyperparameters only (``to_dict``/``from_dict`` round-trip them through
    JSON); the ``"learned"`` aggregator's fitted weights are a
    :class:`LearnedAggregator`.

    Attributes
    ----------
    sigma_mm : float
        Gaussian smoothing along z (mm); 0 disables smoothing.
    threshold : float
        Smoothed p(nodule) a slice needs to join a candidate.
    min_length_mm : float
        Shortest candidate kept (extent along z, mm, counting one slice as its spacing).
    top_k : int
        Candidates (and sub-threshold peaks) the study score looks at.
    method : {"max", "noisy_or", "learned"}
        Study-score aggregator. ``noisy_or`` is the default: it had the best mean
        study ROC-AUC in 7 of 8 variants of the phantom ablation (docs/ablation.md);
        ``lungslice train`` still picks by cross-validation.
    leak : float
        Noisy-OR leak probability (a nodule the candidates missed).
    """

    sigma_mm: float = 2.0
    threshold: float = 0.5
    min_length_mm: float = 3.0
    top_k: int = 5
    method: AggregationMethod = "noisy_or"
    leak: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in AGGREGATION_METHODS:
            raise ConfigError(
                f"AggregateConfig.method: expected one of {', '.join(AGGREGATION_METHODS)}, "
                f"got {self.method!r}."
            )
        if not 0.0 <= self.threshold <= 1.0 or not 0.0 <= self.leak < 1.0:
            raise ConfigError(
                f"AggregateConfig: threshold must be in [0, 1] and leak in [0, 1), got "
                f"threshold={self.threshold}, leak={self.leak}."
            )
        if self.sigma_mm < 0 or self.min_length_mm < 0 or self.top_k < 1:
            raise ConfigError(
                f"AggregateConfig: expected sigma_mm >= 0, min_length_mm >= 0, top_k >= 1, got "
                f"{self.sigma_mm}, {self.min_length_mm}, {self.top_k}."
            )


@dataclass(frozen=True)
class Candidate:
    """Consecutive slices whose smoothed p(nodule) reaches the threshold.

    Indices are into the study's slice arrays; ``end`` is inclusive. The
    probabilities are the smoothed ones.
    """

    start: int
    end: int
    z_start: float
    z_end: float
    peak: int
    peak_z: float
    p_nodule: float
    mean_p_malignant: float
    max_p_malignant: float
    mean_p_benign: float
    max_p_benign: float

    @property
    def n_slices(self) -> int:
        """Number of slices in the candidate."""
        return self.end - self.start + 1


@dataclass(frozen=True, eq=False)
class StudyResult:
    """Aggregated view of one series' slice probabilities.

    Attributes
    ----------
    z_mm : numpy.ndarray
        ``(n,)`` slice positions.
    smoothed : numpy.ndarray
        ``(n, 3)`` smoothed probabilities (non-nodule, benign, malignant).
    candidates : tuple of Candidate
        Sorted by ``p_nodule``, highest first.
    peaks : numpy.ndarray
        Indices of local maxima of smoothed p(nodule) outside every
        candidate, highest first (they fill the top-k and the recommendations).
    topk : numpy.ndarray
        ``(top_k, 2)`` p(nodule), p(malignant) of the top-k candidates then peaks,
        zero-padded: the aggregator's input.
    p_any_nodule, p_malignant : float
        Study scores.
    config : AggregateConfig
        The settings that made it.
    """

    z_mm: np.ndarray
    smoothed: np.ndarray
    candidates: tuple[Candidate, ...]
    peaks: np.ndarray
    topk: np.ndarray
    p_any_nodule: float
    p_malignant: float
    config: AggregateConfig

    @property
    def scores(self) -> dict[str, float]:
        """``{"p_any_nodule": ..., "p_malignant": ...}``."""
        return {"p_any_nodule": self.p_any_nodule, "p_malignant": self.p_malignant}

    @property
    def slice_score(self) -> np.ndarray:
        """``(n,)`` smoothed p(nodule): the order slices are recommended in."""
        return np.asarray(self.smoothed[:, 1] + self.smoothed[:, 2])

    def ranking(self) -> np.ndarray:
        """Every slice index in reading order (candidates, peaks, then the rest)."""
        first = [c.peak for c in self.candidates] + [int(p) for p in self.peaks]
        score = self.slice_score
        rest = np.argsort(-score, kind="stable")
        seen = np.zeros(score.size, dtype=bool)
        seen[first] = True
        order = np.concatenate([np.asarray(first, dtype=np.int64), rest[~seen[rest]]])
        return order.astype(np.int64)

    def recommendations(self, k: int) -> np.ndarray:
        """The first ``k`` slices to read (distinct candidates first)."""
        if k < 0:
            raise ConfigError(f"recommendations(k): expected k >= 0, got {k}.")
        return self.ranking()[:k]


def _spacing(z: np.ndarray) -> float:
    if z.size < 2:
        return 1.0
    d = np.diff(z)
    if not (np.all(d > 0) or np.all(d < 0)):
        raise ConfigError(
            "z_mm must be strictly increasing or decreasing (one value per slice in order), "
            f"got {z.size} positions with {int((d == 0).sum())} repeats and mixed steps."
        )
    return float(np.median(np.abs(d)))


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    padded = np.concatenate([[False], mask, [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _noisy_or(p: np.ndarray, leak: float) -> float:
    return float(1.0 - (1.0 - leak) * np.prod(1.0 - np.clip(p, 0.0, 1.0)))


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def aggregate(
    probs: np.ndarray,
    z_mm: np.ndarray,
    config: AggregateConfig,
    *,
    learned: LearnedAggregator | None = None,
) -> StudyResult:
    """Aggregate one series' slice probabilities.

    Parameters
    ----------
    probs : numpy.ndarray
        ``(n, 3)`` slice probabilities (non-nodule, benign, malignant), slices in z order.
    z_mm : numpy.ndarray
        ``(n,)`` slice positions, strictly monotonic.
    config : AggregateConfig
        Smoothing, threshold, minimum length, top-k and aggregator.
    learned : LearnedAggregator, optional
        The fitted weights; needed when ``config.method == "learned"``.

    Returns
    -------
    StudyResult
        Candidates, study scores and the reading order.
    """
    probs = np.asarray(probs, dtype=np.float64)
    z = np.asarray(z_mm, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != 3 or z.shape != (probs.shape[0],):
        raise ConfigError(
            f"aggregate: expected probs (n, 3) and z_mm (n,), got {probs.shape} and {z.shape}."
        )
    spacing = _spacing(z)
    if config.sigma_mm > 0 and probs.shape[0] > 1:
        smoothed = gaussian_filter1d(probs, config.sigma_mm / spacing, axis=0, mode="nearest")
    else:
        smoothed = probs.copy()
    p_nod = smoothed[:, 1] + smoothed[:, 2]
    candidates = []
    for a, b in _runs(p_nod >= config.threshold):
        if (b - a + 1) * spacing < config.min_length_mm:
            continue
        seg = slice(a, b + 1)
        peak = a + int(np.argmax(p_nod[seg]))
        candidates.append(
            Candidate(
                start=a,
                end=b,
                z_start=float(min(z[a], z[b])),
                z_end=float(max(z[a], z[b])),
                peak=peak,
                peak_z=float(z[peak]),
                p_nodule=float(p_nod[peak]),
                mean_p_malignant=float(smoothed[seg, 2].mean()),
                max_p_malignant=float(smoothed[seg, 2].max()),
                mean_p_benign=float(smoothed[seg, 1].mean()),
                max_p_benign=float(smoothed[seg, 1].max()),
            )
        )
    candidates.sort(key=lambda c: (-c.p_nodule, c.start))
    inside = np.zeros(p_nod.size, dtype=bool)
    for c in candidates:
        inside[c.start : c.end + 1] = True
    padded = np.concatenate([[-1.0], p_nod, [-1.0]])  # edges count as maxima too
    from scipy.signal import find_peaks  # scipy.signal alone takes ~1 s to import

    peak_idx, _ = find_peaks(padded, plateau_size=1)
    peak_idx = peak_idx - 1
    peak_idx = peak_idx[~inside[peak_idx]]
    peaks = peak_idx[np.argsort(-p_nod[peak_idx], kind="stable")].astype(np.int64)

    rows = [(c.p_nodule, c.max_p_malignant) for c in candidates]
    rows += [(float(p_nod[i]), float(smoothed[i, 2])) for i in peaks]
    topk = np.zeros((config.top_k, 2))
    if rows:
        take = np.asarray(rows[: config.top_k])
        topk[: len(take)] = take
    p_any, p_mal = study_scores(smoothed, topk, config, learned=learned)
    return StudyResult(
        z_mm=z,
        smoothed=smoothed.astype(np.float32),
        candidates=tuple(candidates),
        peaks=peaks,
        topk=topk,
        p_any_nodule=p_any,
        p_malignant=p_mal,
        config=config,
    )


def study_scores(
    smoothed: np.ndarray,
    topk: np.ndarray,
    config: AggregateConfig,
    *,
    learned: LearnedAggregator | None = None,
) -> tuple[float, float]:
    """``(p_any_nodule, p_malignant)`` of a study by ``config.method``.

    Parameters
    ----------
    smoothed : numpy.ndarray
        ``(n, 3)`` smoothed slice probabilities (for ``"max"``).
    topk : numpy.ndarray
        ``(top_k, 2)`` candidate p(nodule), p(malignant) (for the others).
    config : AggregateConfig
        Aggregator and its parameters.
    learned : LearnedAggregator, optional
        The fitted weights of the ``"learned"`` aggregator.

    Raises
    ------
    ConfigError
        If ``config.method`` is ``"learned"`` and no fitted ``learned`` is given.
    """
    if config.method == "max":
        if smoothed.shape[0] == 0:
            return 0.0, 0.0
        return float((smoothed[:, 1] + smoothed[:, 2]).max()), float(smoothed[:, 2].max())
    if config.method == "noisy_or":
        return _noisy_or(topk[:, 0], config.leak), _noisy_or(topk[:, 1], config.leak)
    if learned is None:
        raise ConfigError(
            "study_scores: AggregateConfig(method='learned') needs the fitted weights, got "
            "learned=None. Fix: pass learned=fit_learned_aggregator(...) (a model bundle "
            "holds it as ModelBundle.learned_aggregator)."
        )
    return learned.predict(topk)


def _learned_features(topk: np.ndarray) -> np.ndarray:
    # sorted descending per column so the weights see "best, second best, ..."
    return np.concatenate([np.sort(topk[:, 0])[::-1], np.sort(topk[:, 1])[::-1]])


class LearnedAggregator:
    """The ``"learned"`` study aggregator: two logistic regressions over the top-k candidates.

    Its inputs are the study's top-k candidate p(nodule) and p(malignant), each
    sorted from highest (:attr:`StudyResult.topk`). As in scikit-learn, the
    constructor takes hyperparameters and :meth:`fit` sets the fitted
    attributes, whose names end in ``_``.

    Parameters
    ----------
    top_k : int
        Candidates per study the weights look at (``AggregateConfig.top_k``).
    C : float
        Inverse L2 strength of the two logistic regressions.
    seed : int
        Solver seed.

    Attributes
    ----------
    intercept_any_, intercept_malignant_ : float
        Intercepts of p(any nodule) and p(malignant).
    coef_any_, coef_malignant_ : numpy.ndarray
        ``(2 * top_k,)`` weights over sorted p(nodule) then sorted p(malignant).
    """

    def __init__(self, top_k: int = 5, *, C: float = 1.0, seed: int = 0) -> None:
        if top_k < 1 or not C > 0:
            raise ConfigError(
                f"LearnedAggregator: expected top_k >= 1 and C > 0, got top_k={top_k}, C={C}."
            )
        self.top_k = int(top_k)
        self.C = float(C)
        self.seed = int(seed)

    def __repr__(self) -> str:
        fitted = "fitted" if self.is_fitted else "not fitted"
        return f"LearnedAggregator(top_k={self.top_k}, C={self.C}, seed={self.seed}; {fitted})"

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has set the weights."""
        return hasattr(self, "coef_any_")

    def fit(
        self, results: Sequence[StudyResult], has_any: np.ndarray, has_malignant: np.ndarray
    ) -> Self:
        """Fit both regressions on studies with known outcomes.

        Parameters
        ----------
        results : sequence of StudyResult
            Aggregated training studies (any method; only ``topk`` is used).
        has_any, has_malignant : numpy.ndarray
            ``(n_studies,)`` bool: the study contains a nodule / a malignant nodule.

        Returns
        -------
        LearnedAggregator
            ``self``, fitted. A target with a single class gets a constant
            intercept (its base rate) and zero weights.
        """
        if len(results) != len(has_any) or len(results) != len(has_malignant):
            raise ConfigError(
                f"fit_learned_aggregator: {len(results)} studies but {len(has_any)} and "
                f"{len(has_malignant)} outcomes; expected one outcome of each per study."
            )
        feats = np.stack([_learned_features(r.topk[: self.top_k]) for r in results])
        if feats.shape[1] != 2 * self.top_k:
            raise ConfigError(
                f"results were aggregated with top_k={results[0].topk.shape[0]}, "
                f"config has {self.top_k}; aggregate them again with this config."
            )

        def fit(target: np.ndarray) -> tuple[float, np.ndarray]:
            t = np.asarray(target, dtype=bool)
            if t.all() or not t.any():
                rate = np.clip(t.mean(), 1e-3, 1 - 1e-3)
                return float(np.log(rate / (1 - rate))), np.zeros(feats.shape[1])
            from sklearn.linear_model import LogisticRegression

            model = LogisticRegression(C=self.C, random_state=self.seed, max_iter=1000)
            model.fit(feats, t)
            return float(model.intercept_[0]), np.asarray(model.coef_[0], dtype=np.float64)

        self.intercept_any_, self.coef_any_ = fit(has_any)
        self.intercept_malignant_, self.coef_malignant_ = fit(has_malignant)
        return self

    def predict(self, topk: np.ndarray) -> tuple[float, float]:
        """``(p_any_nodule, p_malignant)`` of one study from its ``(top_k, 2)`` ``topk``."""
        if not self.is_fitted:
            raise ConfigError(
                "LearnedAggregator is not fitted. Fix: call fit() or fit_learned_aggregator() "
                "first, or load a bundle that holds one."
            )
        feats = _learned_features(np.asarray(topk, dtype=np.float64))
        if feats.shape[0] != self.coef_any_.shape[0]:
            raise ConfigError(
                f"LearnedAggregator: fitted on top_k={self.coef_any_.shape[0] // 2}, the study "
                f"has {feats.shape[0] // 2} top-k rows. Fix: aggregate with the same top_k."
            )
        return (
            _sigmoid(float(self.intercept_any_ + feats @ self.coef_any_)),
            _sigmoid(float(self.intercept_malignant_ + feats @ self.coef_malignant_)),
        )

    def to_dict(self) -> dict[str, Any]:
        """Hyperparameters and (when fitted) weights as JSON-ready values."""
        out: dict[str, Any] = {"top_k": self.top_k, "C": self.C, "seed": self.seed}
        if self.is_fitted:
            out.update(
                intercept_any_=float(self.intercept_any_),
                coef_any_=[float(v) for v in self.coef_any_],
                intercept_malignant_=float(self.intercept_malignant_),
                coef_malignant_=[float(v) for v in self.coef_malignant_],
            )
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LearnedAggregator:
        """Rebuild from :meth:`to_dict` output.

        Raises
        ------
        ConfigError
            On unknown keys, or weights that do not fit ``2 * top_k``.
        """
        fitted = ("intercept_any_", "coef_any_", "intercept_malignant_", "coef_malignant_")
        unknown = sorted(set(data) - {"top_k", "C", "seed", *fitted})
        if unknown:
            raise ConfigError(
                f"LearnedAggregator.from_dict: unknown key(s) {unknown}; expected top_k, C, "
                "seed and the fitted weights. Fix: pass the dict LearnedAggregator.to_dict() wrote."
            )
        new = cls(
            int(data.get("top_k", 5)), C=float(data.get("C", 1.0)), seed=int(data.get("seed", 0))
        )
        present = [k for k in fitted if k in data]
        if present and len(present) != len(fitted):
            raise ConfigError(
                f"LearnedAggregator.from_dict: has {present} but not all of {list(fitted)}."
            )
        if present:
            n = 2 * new.top_k
            coef_any = np.asarray(data["coef_any_"], dtype=np.float64)
            coef_mal = np.asarray(data["coef_malignant_"], dtype=np.float64)
            if coef_any.shape != (n,) or coef_mal.shape != (n,):
                raise ConfigError(
                    f"LearnedAggregator.from_dict: expected {n} weights each (2 x top_k), got "
                    f"{coef_any.size} and {coef_mal.size}."
                )
            new.intercept_any_ = float(data["intercept_any_"])
            new.coef_any_ = coef_any
            new.intercept_malignant_ = float(data["intercept_malignant_"])
            new.coef_malignant_ = coef_mal
        return new


def fit_learned_aggregator(
    results: Sequence[StudyResult],
    has_any: np.ndarray,
    has_malignant: np.ndarray,
    config: AggregateConfig,
    *,
    C: float = 1.0,
    seed: int = 0,
) -> LearnedAggregator:
    """Fit the ``"learned"`` aggregator on studies with known outcomes.

    Parameters
    ----------
    results : sequence of StudyResult
        Aggregated training studies (any method; only ``topk`` is used).
    has_any, has_malignant : numpy.ndarray
        ``(n_studies,)`` bool: the study contains a nodule / a malignant nodule.
    config : AggregateConfig
        Its ``top_k`` sizes the weights.
    C : float
        Inverse L2 strength of the two logistic regressions.
    seed : int
        Solver seed.

    Returns
    -------
    LearnedAggregator
        Fitted; use it with ``config.replace(method="learned")``. A target with
        a single class gets a constant intercept (its base rate).
    """
    return LearnedAggregator(config.top_k, C=C, seed=seed).fit(results, has_any, has_malignant)


def map_to_source(indices: np.ndarray, slices: pd.DataFrame) -> pd.DataFrame:
    """The original DICOM images behind resampled slice positions.

    Parameters
    ----------
    indices : numpy.ndarray
        Row positions into ``slices`` (one series' slice table in z order).
    slices : pandas.DataFrame
        The feature slice table (``slice_index``, ``z_mm``, ``sop_instance_uid``,
        ``instance_number``, ...).

    Returns
    -------
    pandas.DataFrame
        One row per index, in the given order, with ``rank`` (from 1), ``slice_index``,
        ``z_mm``, ``sop_instance_uid`` and ``instance_number`` of the nearest source image.
    """
    needed = ["slice_index", "z_mm", "sop_instance_uid", "instance_number"]
    missing = [c for c in needed if c not in slices.columns]
    if missing:
        raise ConfigError(
            f"slice table lacks columns {missing}; expected the feature slice table "
            "(load_features) with resampling provenance."
        )
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= len(slices)):
        raise ConfigError(
            f"slice positions {idx.min()}..{idx.max()} fall outside the table's {len(slices)} rows."
        )
    table = slices.iloc[idx][needed].reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, idx.size + 1))
    return table
