"""Slice, nodule and study figures, each with a 95 % bootstrap CI over patients.

- Slice level: one-vs-rest ROC-AUC and PR-AUC (average precision) per class,
  macro ROC-AUC, and the confusion matrix at the operating point (argmax).
- Nodule level: recall@k, the fraction of nodules whose z range contains at
  least one of the top-k recommended slices of their series (malignant and
  benign separately), and the fraction of slices a reader may skip while still
  seeing 95 % of the nodules.
- Study level: ROC-AUC for "contains a malignant nodule" and "contains any nodule".

The bootstrap resamples *patients* with replacement (all of a patient's slices,
nodules and studies together), so intervals reflect patient-to-patient variation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from lungslice.errors import ConfigError

__all__ = [
    "EvalTables",
    "binary_auc",
    "bootstrap",
    "compute_figures",
    "confusion_matrix",
    "format_figure",
    "json_safe",
    "nodule_hits",
    "recall_at_k",
    "skippable_fraction",
    "slice_auc",
]

_CLASSES = ("non-nodule", "benign", "malignant")
DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10)


def slice_auc(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """One-vs-rest ROC-AUC and PR-AUC per class, and the macro ROC-AUC.

    A class absent (or the only class) in ``y`` gets NaN; the macro average
    is over the classes with a defined AUC.
    """
    out: dict[str, float] = {}
    rocs = []
    for c, name in enumerate(_CLASSES):
        pos = y == c
        if pos.all() or not pos.any():
            roc = ap = float("nan")
        else:
            roc = float(roc_auc_score(pos, probs[:, c]))
            ap = float(average_precision_score(pos, probs[:, c]))
            rocs.append(roc)
        out[f"roc_auc.{name}"] = roc
        out[f"pr_auc.{name}"] = ap
    out["roc_auc.macro"] = float(np.mean(rocs)) if rocs else float("nan")
    return out


def confusion_matrix(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``(3, 3)`` counts, rows = true class, columns = argmax prediction."""
    pred = np.argmax(probs, axis=1)
    cm = np.zeros((3, 3), dtype=np.int64)
    np.add.at(cm, (np.asarray(y, dtype=np.int64), pred), 1)
    return cm


def nodule_hits(
    ranking: np.ndarray,
    z_mm: np.ndarray,
    slice_score: np.ndarray,
    z_min: np.ndarray,
    z_max: np.ndarray,
    tolerance_mm: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Where each nodule of one series first appears in its reading order.

    Parameters
    ----------
    ranking : numpy.ndarray
        Slice indices in reading order (``StudyResult.ranking()``).
    z_mm, slice_score : numpy.ndarray
        ``(n,)`` slice positions and the score slices are ranked by.
    z_min, z_max : numpy.ndarray
        ``(m,)`` z range of each nodule (mm).
    tolerance_mm : float
        Slack on both ends of a nodule's range (half a 1 mm slice by default).

    Returns
    -------
    hit_rank : numpy.ndarray
        ``(m,)`` 0-based position of the first recommended slice inside the
        nodule's range (``inf`` when no slice of the series lies in it), so
        the nodule is found at k when ``hit_rank < k``.
    best_score : numpy.ndarray
        ``(m,)`` highest slice score inside the range (``-inf`` when none).
    """
    pos = np.empty(ranking.size, dtype=np.float64)
    pos[ranking] = np.arange(ranking.size)
    lo = np.minimum(z_min, z_max) - tolerance_mm
    hi = np.maximum(z_min, z_max) + tolerance_mm
    inside = (z_mm[None, :] >= lo[:, None]) & (z_mm[None, :] <= hi[:, None])
    hit = np.where(inside, pos[None, :], np.inf).min(axis=1, initial=np.inf)
    best = np.where(inside, slice_score[None, :], -np.inf).max(axis=1, initial=-np.inf)
    return hit, best


def recall_at_k(hit_rank: np.ndarray, k: int) -> float:
    """Fraction of nodules found among the first ``k`` recommendations (NaN if none)."""
    hit_rank = np.asarray(hit_rank, dtype=np.float64)
    return float(np.mean(hit_rank < k)) if hit_rank.size else float("nan")


def skippable_fraction(
    best_score: np.ndarray, slice_score: np.ndarray, recall: float = 0.95
) -> tuple[float, float]:
    """Slices a reader may skip and still see ``recall`` of the nodules.

    The threshold is the highest score such that at least ``recall`` of the
    nodules have a slice at or above it; slices below it are skippable.

    Returns
    -------
    fraction : float
        Fraction of all slices below the threshold (NaN without nodules).
    threshold : float
        The threshold.
    """
    best = np.sort(np.asarray(best_score, dtype=np.float64))[::-1]
    if best.size == 0 or slice_score.size == 0:
        return float("nan"), float("nan")
    need = max(1, math.ceil(recall * best.size - 1e-9))
    threshold = best[need - 1]
    if not np.isfinite(threshold):  # a nodule outside every slice: nothing can be skipped
        return 0.0, float(threshold)
    return float(np.mean(slice_score < threshold)), float(threshold)


def binary_auc(target: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC of a binary target; NaN when only one class is present."""
    target = np.asarray(target, dtype=bool).reshape(-1)
    if target.all() or not target.any():
        return float("nan")
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    if score.shape != target.shape:
        raise ValueError(f"binary_auc: {target.size} targets but {score.size} scores")
    if not np.isfinite(score).all():
        raise ValueError("binary_auc: scores must be finite")
    # Mann-Whitney U with mid-ranks for ties: equals roc_auc_score (the trapezoidal
    # area), without its input validation, which dominated the bootstrap's time
    from scipy.stats import rankdata

    ranks = rankdata(score)
    n_pos = int(target.sum())
    n_neg = target.size - n_pos
    u = float(ranks[target].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


@dataclass(frozen=True, eq=False)
class EvalTables:
    """Out-of-fold predictions in the three tables the figures are computed from.

    Attributes
    ----------
    slices : pandas.DataFrame
        One row per slice: ``patient_id``, ``y`` (0/1/2), ``p0``, ``p1``, ``p2``
        (slice probabilities) and ``score`` (smoothed p(nodule), the ranking score).
    nodules : pandas.DataFrame
        One row per nodule: ``patient_id``, ``label`` (1 benign, 2 malignant),
        ``hit_rank``, ``best_score`` (see :func:`nodule_hits`).
    studies : pandas.DataFrame
        One row per series: ``patient_id``, ``has_any``, ``has_malignant``,
        ``p_any_nodule``, ``p_malignant``, and optionally more score columns
        ``p_any_nodule.<method>`` / ``p_malignant.<method>`` (one study AUC each).
    """

    slices: pd.DataFrame
    nodules: pd.DataFrame
    studies: pd.DataFrame


def compute_figures(
    tables: EvalTables, ks: Sequence[int] = DEFAULT_KS, recall: float = 0.95
) -> dict[str, float]:
    """Every scalar figure, flat ``{"slice.roc_auc.malignant": 0.9, ...}``."""
    s, n, st = tables.slices, tables.nodules, tables.studies
    y = s["y"].to_numpy(dtype=np.int64)
    probs = s[["p0", "p1", "p2"]].to_numpy(dtype=np.float64)
    out = {f"slice.{k}": v for k, v in slice_auc(y, probs).items()}
    cm = confusion_matrix(y, probs)
    for c, name in enumerate(_CLASSES):
        row, col = cm[c].sum(), cm[:, c].sum()
        out[f"slice.sensitivity.{name}"] = float(cm[c, c] / row) if row else float("nan")
        out[f"slice.precision.{name}"] = float(cm[c, c] / col) if col else float("nan")
    hit = n["hit_rank"].to_numpy(dtype=np.float64)
    label = n["label"].to_numpy(dtype=np.int64)
    for k in ks:
        out[f"nodule.recall@{k}.malignant"] = recall_at_k(hit[label == 2], k)
        out[f"nodule.recall@{k}.benign"] = recall_at_k(hit[label == 1], k)
        out[f"nodule.recall@{k}.any"] = recall_at_k(hit[label >= 1], k)
    frac, _ = skippable_fraction(
        n["best_score"].to_numpy(dtype=np.float64)[label >= 1],
        s["score"].to_numpy(dtype=np.float64),
        recall,
    )
    out[f"nodule.skippable_at_{round(recall * 100)}_recall"] = frac
    # one pair of study AUCs per score column: "p_malignant", "p_malignant.noisy_or", ...
    for col in st.columns:
        for prefix, target, name in (
            ("p_malignant", "has_malignant", "malignant"),
            ("p_any_nodule", "has_any", "any_nodule"),
        ):
            if col == prefix or col.startswith(prefix + "."):
                out[f"study.roc_auc.{name}{col[len(prefix) :]}"] = binary_auc(
                    st[target].to_numpy(), st[col].to_numpy(dtype=np.float64)
                )
    return out


def _rows_by_patient(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    codes = frame["patient_id"].astype(str).to_numpy()
    order = np.argsort(codes, kind="stable")
    uniq, starts = np.unique(codes[order], return_index=True)
    return dict(zip(uniq, np.split(order, starts[1:]), strict=True))


def bootstrap(
    tables: EvalTables,
    n_boot: int = 200,
    seed: int = 0,
    ci: float = 0.95,
    figures: Callable[[EvalTables], dict[str, float]] = compute_figures,
) -> dict[str, dict[str, float]]:
    """Point estimates with percentile CIs from resampling patients.

    Parameters
    ----------
    tables : EvalTables
        Out-of-fold predictions.
    n_boot : int
        Bootstrap replicates.
    seed : int
        Seeds the patient draws (a local generator).
    ci : float
        Interval mass.
    figures : callable
        Maps tables to scalar figures; :func:`compute_figures` by default.

    Returns
    -------
    dict
        ``{name: {"value": v, "ci_low": lo, "ci_high": hi, "n_boot": valid}}``;
        replicates where a figure is undefined (e.g. no malignant patient drawn)
        are left out of its interval and counted in ``n_boot``.
    """
    if n_boot < 1:
        raise ConfigError(f"bootstrap: expected n_boot >= 1, got {n_boot}.")
    point = figures(tables)
    parts = [_rows_by_patient(t) for t in (tables.slices, tables.nodules, tables.studies)]
    patients = np.array(sorted(set().union(*[p.keys() for p in parts])))
    empty = np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_boot):
        draw = rng.choice(patients, size=patients.size, replace=True)
        frames = []
        for table, rows in zip((tables.slices, tables.nodules, tables.studies), parts, strict=True):
            idx = np.concatenate([rows.get(p, empty) for p in draw])
            frames.append(table.iloc[idx])
        rep = figures(EvalTables(*frames))
        for k in point:
            v = rep.get(k, float("nan"))
            if np.isfinite(v):
                samples[k].append(v)
    alpha = (1.0 - ci) / 2.0
    result = {}
    for k, v in point.items():
        arr = np.asarray(samples[k])
        lo, hi = (
            (float(np.quantile(arr, alpha)), float(np.quantile(arr, 1 - alpha)))
            if arr.size
            else (float("nan"), float("nan"))
        )
        result[k] = {"value": v, "ci_low": lo, "ci_high": hi, "n_boot": int(arr.size)}
    return result


def json_safe(value: Any) -> Any:
    """Replace NaN/inf floats by None (strict JSON), recursively."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_figure(fig: dict[str, float] | None) -> str:
    """``"0.812 [0.701, 0.905]"`` for a :func:`bootstrap` figure; ``"n/a"`` when undefined."""
    if not fig or fig.get("value") is None or not np.isfinite(fig["value"]):
        return "n/a"
    lo, hi = fig.get("ci_low"), fig.get("ci_high")
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{fig['value']:.3f}"
    return f"{fig['value']:.3f} [{lo:.3f}, {hi:.3f}]"
