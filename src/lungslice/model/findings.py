"""From candidate probabilities to what a reader sees: slices, findings, a study verdict.

A slice's class probabilities come from the candidates whose extent covers it
(the most probable one wins), so a slice holds a nodule exactly when a
candidate on it does; a slice without a lung field scores 0, with that reason.
Findings are the candidates ranked by p(nodule), each at its best slice with
its in-plane position, after merging candidates that lie on one finding. The
study scores aggregate the findings: ``max`` (the most probable finding) or
``noisy_or`` over the top few (independent findings, each may be real).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from lungslice.errors import ConfigError

__all__ = ["FINDING_AGGREGATORS", "FindingsConfig", "StudyFindings", "study_findings"]

log = logging.getLogger(__name__)

#: Study aggregators of candidate probabilities.
FINDING_AGGREGATORS = ("max", "noisy_or")


@dataclass(frozen=True)
class FindingsConfig:
    """How candidate probabilities become slices, findings and study scores.

    Attributes
    ----------
    aggregator : {"max", "noisy_or"}
        Study score from the findings' probabilities.
    noisy_or_top : int
        Findings the noisy-OR combines (the most probable ones).
    merge_mm : float
        Candidates closer than this (3D, mm) to a more probable one are the same finding.
    min_extent_mm : float
        A candidate covers the slices within max(radius, this) of its centre along z.
    """

    aggregator: Literal["max", "noisy_or"] = "max"
    noisy_or_top: int = 3
    merge_mm: float = 6.0
    min_extent_mm: float = 1.5

    def __post_init__(self) -> None:
        if self.aggregator not in FINDING_AGGREGATORS:
            raise ConfigError(
                f"FindingsConfig.aggregator: expected one of {', '.join(FINDING_AGGREGATORS)}, "
                f"got {self.aggregator!r}"
            )
        if self.noisy_or_top < 1:
            raise ConfigError(
                f"FindingsConfig.noisy_or_top: expected >= 1, got {self.noisy_or_top}"
            )


@dataclass(frozen=True, eq=False)
class StudyFindings:
    """One series' slice probabilities, ranked findings and study scores.

    Attributes
    ----------
    slice_probs : numpy.ndarray
        ``(n_slices, 3)`` p(non-nodule), p(benign), p(malignant) per resampled slice.
    slice_reason : numpy.ndarray
        ``(n_slices,)`` object: ``""``, or why a slice scores 0 (``"no lung field"``).
    findings : pandas.DataFrame
        Merged candidates ranked by ``p_nodule`` (descending): ``rank``,
        ``candidate_id``, ``slice_index``, ``z_mm``, ``row``, ``col``, ``x_mm``,
        ``y_mm``, ``radius_mm``, ``p_nodule``, ``p_benign``, ``p_malignant``,
        ``detector_score``, ``n_merged``.
    scores : dict
        ``p_any_nodule`` and ``p_malignant`` of the study (the configured
        aggregator), plus ``<score>.<aggregator>`` for every aggregator.
    """

    slice_probs: np.ndarray
    slice_reason: np.ndarray
    findings: pd.DataFrame
    scores: dict[str, float]

    @property
    def slice_score(self) -> np.ndarray:
        """p(nodule) per slice (what slices are ranked by)."""
        return 1.0 - self.slice_probs[:, 0]

    def ranking(self) -> np.ndarray:
        """Slice indices in reading order: findings' slices first, then by slice score."""
        first = list(dict.fromkeys(self.findings["slice_index"].astype(int).tolist()))
        rest = np.argsort(-self.slice_score, kind="stable")
        seen = set(first)
        return np.asarray(first + [int(i) for i in rest if int(i) not in seen], dtype=np.int64)


def _merge(cands: pd.DataFrame, p_any: np.ndarray, merge_mm: float) -> np.ndarray:
    """Index of the finding (a more probable candidate) each candidate merges into."""
    order = np.argsort(-p_any, kind="stable")
    xyz = cands[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=np.float64)
    owner = np.full(len(cands), -1, dtype=np.int64)
    heads: list[int] = []
    for i in order:
        if heads:
            d = np.linalg.norm(xyz[heads] - xyz[i], axis=1)
            j = int(np.argmin(d))
            if d[j] < merge_mm:
                owner[i] = heads[j]
                continue
        owner[i] = i
        heads.append(int(i))
    return owner


def study_findings(
    candidates: pd.DataFrame,
    probs: np.ndarray,
    slices: pd.DataFrame,
    config: FindingsConfig = FindingsConfig(),
) -> StudyFindings:
    """Slice probabilities, findings and study scores of one series.

    Parameters
    ----------
    candidates : pandas.DataFrame
        The series' candidate table (``slice_index``, ``z_mm``, ``row``, ``col``,
        ``x_mm``, ``y_mm``, ``radius_mm``, ``score``, ``candidate_id``).
    probs : numpy.ndarray
        ``(n_candidates, 3)`` p(non-nodule), p(benign), p(malignant).
    slices : pandas.DataFrame
        The series' resampled slice table (``z_mm``, ``lung``), in slice order.
    config : FindingsConfig

    Returns
    -------
    StudyFindings
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, 3)
    if len(candidates) != len(probs):
        raise ConfigError(
            f"study_findings: {len(candidates)} candidates but {len(probs)} probability rows"
        )
    n = len(slices)
    z = slices["z_mm"].to_numpy(dtype=np.float64)
    lung = slices["lung"].to_numpy(dtype=bool) if "lung" in slices.columns else np.ones(n, bool)
    p_any = probs[:, 1] + probs[:, 2]
    p_mal = probs[:, 2]
    slice_any = np.zeros(n)
    slice_mal = np.zeros(n)
    if len(candidates):
        cz = candidates["z_mm"].to_numpy(dtype=np.float64)
        ext = np.maximum(candidates["radius_mm"].to_numpy(dtype=np.float64), config.min_extent_mm)
        cover = np.abs(z[:, None] - cz[None, :]) <= ext[None, :]
        slice_any = np.where(cover, p_any[None, :], 0.0).max(axis=1)
        slice_mal = np.where(cover, p_mal[None, :], 0.0).max(axis=1)
    slice_any = np.where(lung, slice_any, 0.0)
    slice_mal = np.minimum(np.where(lung, slice_mal, 0.0), slice_any)
    slice_probs = np.column_stack([1.0 - slice_any, slice_any - slice_mal, slice_mal])
    reason = np.where(lung, "", "no lung field").astype(object)

    if len(candidates):
        owner = _merge(candidates, p_any, config.merge_mm)
        heads = np.flatnonzero(owner == np.arange(len(candidates)))
        heads = heads[np.argsort(-p_any[heads], kind="stable")]
        counts = np.bincount(owner, minlength=len(candidates))
        c = candidates.iloc[heads]
        findings = pd.DataFrame(
            {
                "rank": np.arange(1, len(heads) + 1),
                "candidate_id": c["candidate_id"].to_numpy(dtype=np.int64),
                "slice_index": c["slice_index"].to_numpy(dtype=np.int64),
                "z_mm": c["z_mm"].to_numpy(dtype=np.float64),
                "row": c["row"].to_numpy(dtype=np.float64),
                "col": c["col"].to_numpy(dtype=np.float64),
                "x_mm": c["x_mm"].to_numpy(dtype=np.float64),
                "y_mm": c["y_mm"].to_numpy(dtype=np.float64),
                "radius_mm": c["radius_mm"].to_numpy(dtype=np.float64),
                "p_nodule": p_any[heads],
                "p_benign": probs[heads, 1],
                "p_malignant": p_mal[heads],
                "detector_score": c["score"].to_numpy(dtype=np.float64),
                "n_merged": counts[heads],
            }
        )
    else:
        findings = pd.DataFrame(
            columns=[
                "rank",
                "candidate_id",
                "slice_index",
                "z_mm",
                "row",
                "col",
                "x_mm",
                "y_mm",
                "radius_mm",
                "p_nodule",
                "p_benign",
                "p_malignant",
                "detector_score",
                "n_merged",
            ]
        )
    scores: dict[str, float] = {}
    fa = findings["p_nodule"].to_numpy(dtype=np.float64)
    fm = findings["p_malignant"].to_numpy(dtype=np.float64)
    for method in FINDING_AGGREGATORS:
        if method == "max":
            a = float(fa.max(initial=0.0))
            m = float(fm.max(initial=0.0))
        else:
            k = config.noisy_or_top
            a = float(1.0 - np.prod(1.0 - np.sort(fa)[::-1][:k]))
            m = float(1.0 - np.prod(1.0 - np.sort(fm)[::-1][:k]))
        scores[f"p_any_nodule.{method}"] = a
        scores[f"p_malignant.{method}"] = m
    scores["p_any_nodule"] = scores[f"p_any_nodule.{config.aggregator}"]
    scores["p_malignant"] = scores[f"p_malignant.{config.aggregator}"]
    return StudyFindings(
        slice_probs=slice_probs, slice_reason=reason, findings=findings, scores=scores
    )
