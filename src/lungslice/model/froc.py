"""FROC and CPM of candidate detection (LUNA16's definitions), patient bootstrap, chance lines.

Definitions (Setio et al., Med. Image Anal. 2017, and the LUNA16 evaluation
script ``noduleCADEvaluationLUNA16.py``):

* A candidate that hits a counted nodule (``nodule_id`` from
  :func:`lungslice.candidates.labels.match_candidates`) is a true positive;
  of several hits on one nodule only the highest-scoring one counts, the
  others are neither true nor false positives.
* Candidates on an excluded nodule (``label_code`` -1: ambiguous malignancy
  under an excluding rule, or a nodule with too few readers) are ignored.
* Every other candidate is a false positive.
* Sensitivity is the fraction of all counted nodules of the evaluated scans
  that are hit (a nodule no candidate hits is a miss at every threshold);
  the FP rate is false positives divided by the number of evaluated scans
  (scans without candidates count).

Sweeping the score threshold from high to low traces the FROC curve. CPM is
the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 FPs per scan read off
the curve as LUNA16's script does, by linear interpolation (``np.interp``)
between the curve's operating points starting at (0, 0): where only false
positives are added between two points the curve is flat, so this is the
sensitivity of the lowest threshold whose FP rate is at most the target;
only where a true and a false positive share a score does it interpolate
along the diagonal. Beyond the last point the curve stays at its final
sensitivity (as in LUNA16).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungslice.errors import ConfigError

__all__ = [
    "CPM_FP_RATES",
    "cpm",
    "cpm_from_curve",
    "froc_bootstrap",
    "froc_curve",
    "plot_froc",
    "recall_at_k_chance",
]

log = logging.getLogger(__name__)

#: The seven FP-per-scan rates CPM averages.
CPM_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _rate_name(rate: float) -> str:
    return f"sens@{rate:g}"


@dataclass(frozen=True)
class _Entries:
    """Per-scan scored entries after de-duplication: one array set per scan."""

    scores: dict[str, np.ndarray]  # series_uid -> scores of kept entries
    is_tp: dict[str, np.ndarray]  # series_uid -> bool, same length
    n_nodules: dict[str, int]  # series_uid -> counted nodules


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"FROC: {what} lacks column(s) {', '.join(missing)}; expected {', '.join(columns)}, "
            f"got {', '.join(map(str, frame.columns)) or 'no columns'}"
        )


def _counted(nodules: pd.DataFrame) -> pd.DataFrame:
    _check_columns(nodules, ("nodule_id", "series_uid"), "the nodule table")
    if "code" in nodules.columns:
        return nodules[nodules["code"].to_numpy() != -1]
    return nodules


def _entries(candidates: pd.DataFrame, nodules: pd.DataFrame) -> _Entries:
    _check_columns(
        candidates, ("series_uid", "score", "nodule_id", "label_code"), "the candidate table"
    )
    counted = _counted(nodules)
    counted_ids = set(counted["nodule_id"].tolist())
    if len(counted_ids) != len(counted):
        raise ConfigError("FROC: the nodule table repeats a nodule_id; expected one row each")
    score = candidates["score"].to_numpy(dtype=np.float64)
    if not np.isfinite(score).all():
        raise ConfigError("FROC: candidate scores must be finite")
    code = candidates["label_code"].to_numpy(dtype=np.int64)
    nid = candidates["nodule_id"].to_numpy(dtype=object)
    has_nodule = pd.notna(nid)
    keep = code != -1
    # only the few hit rows need the lookup (np.isin on object ids sorts them all)
    hit_rows = np.flatnonzero(keep & has_nodule)
    unknown_rows = [int(i) for i in hit_rows if nid[i] not in counted_ids]
    if unknown_rows:
        i = unknown_rows[0]
        raise ConfigError(
            f"FROC: candidate {i} hits nodule {nid[i]!r} (label_code {code[i]}), which is not "
            "among the counted nodules passed. Expected the nodules of the evaluated scans "
            "(excluded ones with code -1 or left out, and their candidates with label_code -1). "
            "Fix: pass the same nodule table that labelled the candidates."
        )
    frame = pd.DataFrame(
        {
            "series_uid": candidates["series_uid"].to_numpy(dtype=object)[keep],
            "score": score[keep],
            "nodule_id": nid[keep],
            "hit": has_nodule[keep],
        }
    )
    # duplicates: keep each nodule's highest-scoring hit only
    hits = frame[frame["hit"]].sort_values("score", ascending=False, kind="stable")
    best = hits.drop_duplicates("nodule_id", keep="first")
    kept = pd.concat([best, frame[~frame["hit"]]])
    scores: dict[str, np.ndarray] = {}
    is_tp: dict[str, np.ndarray] = {}
    for uid, rows in kept.groupby("series_uid", sort=False):
        scores[str(uid)] = rows["score"].to_numpy(dtype=np.float64)
        is_tp[str(uid)] = rows["hit"].to_numpy(dtype=bool)
    n_nod = counted.groupby("series_uid").size()
    return _Entries(scores, is_tp, {str(k): int(v) for k, v in n_nod.items()})


def _operating_points(
    scores: np.ndarray, is_tp: np.ndarray, n_nodules: int, n_scans: int
) -> pd.DataFrame:
    """FROC points: one per distinct score (descending) after a (0, 0) start at +inf."""
    order = np.argsort(-scores, kind="stable")
    s, tp = scores[order], is_tp[order]
    ctp = np.cumsum(tp)
    cfp = np.cumsum(~tp)
    last = np.r_[s[1:] != s[:-1], True] if s.size else np.zeros(0, dtype=bool)
    thr = np.r_[np.inf, s[last]]
    n_tp = np.r_[0, ctp[last]].astype(np.int64)
    n_fp = np.r_[0, cfp[last]].astype(np.int64)
    sens = n_tp / n_nodules if n_nodules else np.full(n_tp.shape, np.nan)
    return pd.DataFrame(
        {
            "threshold": thr,
            "fps_per_scan": n_fp / n_scans,
            "sensitivity": sens,
            "n_tp": n_tp,
            "n_fp": n_fp,
        }
    )


def froc_curve(candidates: pd.DataFrame, nodules: pd.DataFrame, n_scans: int) -> pd.DataFrame:
    """The FROC curve of scored candidates.

    Parameters
    ----------
    candidates : pandas.DataFrame
        Candidates of the evaluated scans: ``series_uid``, ``score``,
        ``nodule_id`` (None for no hit) and ``label_code`` (-1 ignored).
    nodules : pandas.DataFrame
        The nodules of the evaluated scans: ``nodule_id``, ``series_uid``;
        rows with ``code`` -1 (if the column exists) are excluded nodules and
        do not count. Nodules no candidate hits count as misses.
    n_scans : int
        Evaluated scans (the FP-rate divisor), including scans without candidates.

    Returns
    -------
    pandas.DataFrame
        One row per distinct threshold, high to low, after a first row at
        ``threshold`` +inf: ``threshold``, ``fps_per_scan``, ``sensitivity``
        (NaN without counted nodules), ``n_tp``, ``n_fp``. Candidates scoring
        at least ``threshold`` are the detections of that row.
    """
    if n_scans < 1:
        raise ConfigError(f"froc_curve: expected n_scans >= 1, got {n_scans}")
    entries = _entries(candidates, nodules)
    scans = list(entries.scores)
    scores = np.concatenate([entries.scores[u] for u in scans] or [np.zeros(0)])
    is_tp = np.concatenate([entries.is_tp[u] for u in scans] or [np.zeros(0, dtype=bool)])
    return _operating_points(scores, is_tp, sum(entries.n_nodules.values()), n_scans)


def cpm_from_curve(curve: pd.DataFrame, rates: Sequence[float] = CPM_FP_RATES) -> dict[str, float]:
    """Sensitivities at ``rates`` and their mean (``"cpm"``) from a :func:`froc_curve`.

    Linear interpolation over the curve's points as LUNA16's script does (see
    the module docstring); NaN when there are no counted nodules.
    """
    fps = curve["fps_per_scan"].to_numpy(dtype=np.float64)
    sens = curve["sensitivity"].to_numpy(dtype=np.float64)
    out: dict[str, float] = {}
    if sens.size == 0 or np.isnan(sens).any():
        values = np.full(len(rates), np.nan)
    else:
        values = np.interp(np.asarray(rates, dtype=np.float64), fps, sens)
    for r, v in zip(rates, values, strict=True):
        out[_rate_name(r)] = float(v)
    out["cpm"] = float(np.mean(values))
    return out


def cpm(candidates: pd.DataFrame, nodules: pd.DataFrame, n_scans: int) -> dict[str, float]:
    """CPM of scored candidates: ``{"sens@0.125": ..., ..., "sens@8": ..., "cpm": mean}``.

    Arguments as :func:`froc_curve`.
    """
    return cpm_from_curve(froc_curve(candidates, nodules, n_scans))


def froc_bootstrap(
    candidates: pd.DataFrame,
    nodules: pd.DataFrame,
    scans: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict[str, dict[str, float]]:
    """CPM and its sensitivities with percentile CIs from resampling patients.

    Parameters
    ----------
    candidates, nodules
        As :func:`froc_curve`.
    scans : pandas.DataFrame
        Every evaluated scan: ``series_uid``, ``patient_id``. A replicate
        draws patients with replacement and takes all their scans (a patient
        drawn twice contributes its scans, nodules and candidates twice).
    n_boot : int
        Replicates.
    seed : int
        Seeds the draws (a local generator).
    ci : float
        Interval mass.

    Returns
    -------
    dict
        ``{name: {"value", "ci_low", "ci_high", "n_boot"}}`` for each
        ``sens@<rate>`` and ``cpm``, the format of
        :func:`lungslice.model.metrics.bootstrap` that
        :func:`lungslice.model.metrics.format_figure` prints. Replicates
        without a counted nodule are left out of the interval (``n_boot``
        counts the valid ones).
    """
    if n_boot < 1:
        raise ConfigError(f"froc_bootstrap: expected n_boot >= 1, got {n_boot}")
    if not 0 < ci < 1:
        raise ConfigError(f"froc_bootstrap: expected 0 < ci < 1, got {ci}")
    _check_columns(scans, ("series_uid", "patient_id"), "the scan table")
    uids = scans["series_uid"].astype(str).to_numpy()
    if len(set(uids)) != len(uids):
        raise ConfigError("froc_bootstrap: the scan table repeats a series_uid")
    entries = _entries(candidates, nodules)
    stray = sorted((set(entries.scores) | set(entries.n_nodules)) - set(uids))
    if stray:
        raise ConfigError(
            f"froc_bootstrap: {len(stray)} series with candidates or nodules are missing from "
            f"the scan table, e.g. {stray[0]}. Fix: list every evaluated scan in `scans`."
        )
    point = cpm_from_curve(_operating_points_of(entries, list(uids), len(uids)))
    by_patient: dict[str, list[str]] = {}
    for uid, pid in zip(uids, scans["patient_id"].astype(str), strict=True):
        by_patient.setdefault(pid, []).append(uid)
    patients = np.array(sorted(by_patient))
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(n_boot):
        draw = rng.choice(patients, size=patients.size, replace=True)
        series = [u for p in draw for u in by_patient[str(p)]]
        rep = cpm_from_curve(_operating_points_of(entries, series, len(series)))
        for k, v in rep.items():
            if np.isfinite(v):
                samples[k].append(v)
    alpha = (1.0 - ci) / 2.0
    result: dict[str, dict[str, float]] = {}
    for k, v in point.items():
        arr = np.asarray(samples[k])
        lo, hi = (
            (float(np.quantile(arr, alpha)), float(np.quantile(arr, 1 - alpha)))
            if arr.size
            else (float("nan"), float("nan"))
        )
        result[k] = {"value": v, "ci_low": lo, "ci_high": hi, "n_boot": int(arr.size)}
    return result


def _operating_points_of(entries: _Entries, series: Sequence[str], n_scans: int) -> pd.DataFrame:
    empty = np.zeros(0)
    scores = np.concatenate([entries.scores.get(u, empty) for u in series] or [empty])
    is_tp = np.concatenate(
        [entries.is_tp.get(u, np.zeros(0, dtype=bool)) for u in series] or [np.zeros(0, dtype=bool)]
    )
    n_nod = sum(entries.n_nodules.get(u, 0) for u in series)
    return _operating_points(scores, is_tp, n_nod, max(n_scans, 1))


def recall_at_k_chance(
    n_slices: int | np.ndarray, n_nodule_slices: int | np.ndarray, k: int | np.ndarray
) -> float | np.ndarray:
    """Chance that a random ranking puts at least one of a nodule's slices in the top ``k``.

    ``1 - C(n - m, k) / C(n, k)`` for ``n`` evaluated slices of which ``m``
    show the nodule: the recall@k of a ranking that knows nothing. Computed
    as the product ``prod_{i<m} (n - k - i) / (n - i)`` (the chance all ``m``
    slices fall outside the top ``k``), exact up to floating-point rounding,
    with NumPy broadcasting over arrays.

    Parameters
    ----------
    n_slices, n_nodule_slices, k : int or array of int
        ``n >= 1``, ``0 <= m <= n``, ``k >= 0`` (``k > n`` means all slices).

    Returns
    -------
    float or numpy.ndarray
        A float for scalar inputs, else an array of the broadcast shape.
    """
    n, m, kk = np.broadcast_arrays(
        np.asarray(n_slices, dtype=np.int64),
        np.asarray(n_nodule_slices, dtype=np.int64),
        np.asarray(k, dtype=np.int64),
    )
    if (n < 1).any() or (m < 0).any() or (m > n).any() or (kk < 0).any():
        raise ConfigError(
            "recall_at_k_chance: expected n_slices >= 1, 0 <= n_nodule_slices <= n_slices and "
            f"k >= 0; got n={n_slices!r}, m={n_nodule_slices!r}, k={k!r}"
        )
    kk = np.minimum(kk, n)
    # P(all m outside the top k) = prod_{i<m} (n-k-i)/(n-i); a term <= 0 means certainty
    steps = int(m.max()) if m.size else 0
    miss = np.ones(n.shape, dtype=np.float64)
    for i in range(steps):
        active = i < m
        term = np.where(active, np.clip((n - kk - i) / np.maximum(n - i, 1), 0.0, None), 1.0)
        miss = miss * term
    result = 1.0 - miss
    if result.ndim == 0:
        return float(result)
    return result


def plot_froc(
    curve: pd.DataFrame | dict[str, pd.DataFrame],
    path: str | Path,
    *,
    title: str = "",
    label: str = "",
    band: dict[str, dict[str, float]] | None = None,
) -> Path:
    """FROC curve as a PNG: log-x FP/scan from 1/8 to 8, the seven CPM points marked.

    Parameters
    ----------
    curve : pandas.DataFrame or dict
        From :func:`froc_curve`, or several by name (one line each, side by side).
    path : str or Path
        Output file.
    title, label : str
        Figure title; legend label (CPM is appended).
    band : dict, optional
        :func:`froc_bootstrap` output: the CPM points get their CIs as error bars.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = curve if isinstance(curve, dict) else {label: curve}
    grid = np.geomspace(CPM_FP_RATES[0], CPM_FP_RATES[-1], 400)
    fig: Any
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, c in curves.items():
        points = cpm_from_curve(c)
        fps = c["fps_per_scan"].to_numpy(dtype=np.float64)
        sens = c["sensitivity"].to_numpy(dtype=np.float64)
        ys = [points[_rate_name(r)] for r in CPM_FP_RATES]
        if not np.isnan(sens).any():
            (line,) = ax.plot(
                grid, np.interp(grid, fps, sens), lw=2, label=f"{name} CPM {points['cpm']:.3f}"
            )
            colour = line.get_color()
        else:
            colour = "tab:red"
        if band is not None and len(curves) == 1:
            lo = [band[_rate_name(r)]["ci_low"] for r in CPM_FP_RATES]
            hi = [band[_rate_name(r)]["ci_high"] for r in CPM_FP_RATES]
            err = np.abs(np.array([np.subtract(ys, lo), np.subtract(hi, ys)]))
            ax.errorbar(CPM_FP_RATES, ys, yerr=err, fmt="o", color=colour, capsize=3)
        else:
            ax.plot(CPM_FP_RATES, ys, "o", color=colour)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(CPM_FP_RATES), ["1/8", "1/4", "1/2", "1", "2", "4", "8"])
    ax.set_xlim(CPM_FP_RATES[0] / 1.2, CPM_FP_RATES[-1] * 1.2)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("average false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.grid(True, which="both", alpha=0.3)
    if title:
        ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
