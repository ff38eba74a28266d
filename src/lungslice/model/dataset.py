"""Cached slice features joined with slice labels: the rows a head trains on.

Each feature row is a resampled 1 mm slice; its label is that of the nearest
original slice (ties to the more severe, :func:`lungslice.lidc.labels.resampled_labels`),
found through the resampling provenance columns of the feature slice table:
the positions of its two source slices (``source_z_lower``/``source_z_upper``)
are matched to labelled slices by z (within 0.05 mm), so a z-cropped series or
one that lost duplicated positions still gets the right labels. Slices
labelled ``"excluded"`` (code -1) are dropped and recorded in
``TrainingSet.rejected`` with their reason, as are the slices of series
without labels when ``allow_unlabelled=True``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungslice.errors import AnnotationError, FeatureError
from lungslice.features.cache import FeatureCache, load_features
from lungslice.lidc.labels import (
    CLASSES,
    LabelRule,
    apply_rule,
    labels_for_positions,
    read_labels,
    resampled_labels,
    rule_from_provenance,
)
from lungslice.model.cv import patient_strata
from lungslice.provenance import config_dict

__all__ = ["TrainingSet", "build_training_set", "join_labels", "load_cached_features"]

log = logging.getLogger(__name__)

_NODULE_CODES = {"benign": 1, "malignant": 2, "excluded": -1}
_Z_TOLERANCE_MM = 0.05


@dataclass(frozen=True, eq=False)
class TrainingSet:
    """Features, labels and groups of the labelled slices.

    Attributes
    ----------
    X : numpy.ndarray
        ``(n, d)`` float32 features.
    y : numpy.ndarray
        ``(n,)`` int64 codes 0/1/2 in :data:`lungslice.lidc.labels.CLASSES` order.
    groups : numpy.ndarray
        ``(n,)`` patient id of each row (CV groups).
    slices : pandas.DataFrame
        The feature slice table of the kept rows (same order) with ``label_code``.
    nodules : pandas.DataFrame
        Counted nodules of the kept series: ``nodule_id``, ``patient_id``,
        ``series_uid``, ``z_min``, ``z_max``, ``label`` (name), ``code`` (1, 2 or -1).
    rejected : pandas.DataFrame
        Dropped slices: ``series_uid``, ``slice_index``, ``reason``.
    rule : LabelRule
        The label rule applied.
    feature_config : dict
        The features' ``config.json`` (empty when features were passed in directly).
    """

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    slices: pd.DataFrame
    nodules: pd.DataFrame
    rejected: pd.DataFrame
    rule: LabelRule
    feature_config: dict[str, Any] = field(default_factory=dict)

    @property
    def strata(self) -> np.ndarray:
        """Per-row patient stratum (2 malignant, 1 benign-only, 0 none)."""
        return patient_strata(self.groups, self.y)

    def summary(self) -> dict[str, Any]:
        """Patients, series, slices per class, nodules per class, rejected slices by reason."""
        counts = np.bincount(self.y, minlength=len(CLASSES))
        strata = pd.Series(self.strata).groupby(self.groups).first()
        return {
            "patients": int(np.unique(self.groups).size),
            "series": int(self.slices["series_uid"].nunique()),
            "slices": int(self.y.size),
            "feature_dim": int(self.X.shape[1]),
            "slices_per_class": {name: int(counts[i]) for i, name in enumerate(CLASSES)},
            "nodules_per_class": {
                name: int((self.nodules["label"] == name).sum())
                for name in ("benign", "malignant", "excluded")
            },
            "patients_per_stratum": {
                "malignant": int((strata == 2).sum()),
                "benign-only": int((strata == 1).sum()),
                "none": int((strata == 0).sum()),
            },
            "rejected_slices": {
                str(k): int(v) for k, v in self.rejected["reason"].value_counts().items()
            },
            "label_rule": config_dict(self.rule),
            "label_rule_name": self.rule.name,
        }


def _rejections(series: np.ndarray, index: np.ndarray, reason: str) -> pd.DataFrame:
    return pd.DataFrame({"series_uid": series, "slice_index": index, "reason": reason})


def join_labels(
    X: np.ndarray,
    feature_slices: pd.DataFrame,
    label_slices: pd.DataFrame,
    label_nodules: pd.DataFrame,
    rule: LabelRule,
    *,
    allow_unlabelled: bool = False,
    feature_config: dict[str, Any] | None = None,
) -> TrainingSet:
    """Label feature rows under ``rule`` and drop (recording) excluded ones.

    Parameters
    ----------
    X : numpy.ndarray
        ``(n, d)`` features, rows matching ``feature_slices``.
    feature_slices : pandas.DataFrame
        Feature slice table (``series_uid``, ``patient_id``, ``z_mm``,
        ``source_lower``, ``source_upper``, ``weight_lower``, ``weight_upper``...).
    label_slices, label_nodules : pandas.DataFrame
        ``slices.parquet`` / ``nodules.parquet`` of ``lungslice labels`` (any rule;
        ``rule`` is re-applied).
    rule : LabelRule
        Label rule.
    allow_unlabelled : bool
        Drop (and record) series that have features but no labels instead of failing.
    feature_config : dict, optional
        Stored with the result.

    Raises
    ------
    AnnotationError
        A series has features but no labels (unless ``allow_unlabelled``), or its
        resampled positions disagree with the labelled slices' z positions.
    """
    if len(X) != len(feature_slices):
        raise FeatureError(
            f"features have {len(X)} rows but the slice table has {len(feature_slices)}; "
            "expected one row per slice. Fix: re-extract the features."
        )
    lab, nod = apply_rule(label_slices, label_nodules, rule)
    by_series: dict[Any, pd.DataFrame] = {
        uid: g.sort_values("slice_index") for uid, g in lab.groupby("series_uid")
    }
    y = np.full(len(feature_slices), -2, dtype=np.int64)  # -2: no labels
    rejected = []
    fs = feature_slices.reset_index(drop=True)
    for uid, rows in fs.groupby("series_uid", sort=False).indices.items():
        part = fs.iloc[rows]
        labelled = by_series.get(uid)
        if labelled is None:
            if not allow_unlabelled:
                raise AnnotationError(
                    f"series {uid} (patient {part['patient_id'].iloc[0]}) has features but no "
                    "labels in the labels directory. Expected every feature series to be "
                    "labelled. Fix: label its patient, or pass allow_unlabelled=True "
                    "(--allow-unlabelled) to drop it with a recorded reason."
                )
            rejected.append(
                _rejections(
                    np.asarray([uid] * len(rows)), part["slice_index"].to_numpy(), "no labels"
                )
            )
            continue
        # Match source slices to labelled slices by z, not by index: the features may
        # come from a z-crop of the labelled scan (phantom --z-margin, partial series)
        # or from a volume that dropped duplicated positions.
        if "source_z_lower" not in part.columns or "source_z_upper" not in part.columns:
            raise FeatureError(
                f"series {uid}: the feature slice table lacks source_z_lower/source_z_upper "
                "(positions of the source slices), needed to match labels by z. Expected a "
                "cache written by this lungslice. Fix: re-run `lungslice extract`."
            )
        z_src = np.stack([part["source_z_lower"], part["source_z_upper"]], axis=1)
        w = np.stack([part["weight_lower"], part["weight_upper"]], axis=1).astype(np.float64)
        z_unique, where = np.unique(z_src.astype(np.float64), return_inverse=True)
        codes = labels_for_positions(labelled, z_unique, tol=_Z_TOLERANCE_MM)
        y[rows] = resampled_labels(codes, where.reshape(-1, 2), w)
    excluded = y == -1
    if excluded.any():
        rejected.append(
            _rejections(
                fs["series_uid"].to_numpy()[excluded],
                fs["slice_index"].to_numpy()[excluded],
                f"excluded by label rule {rule.name}",
            )
        )
    keep = y >= 0
    kept = fs[keep].reset_index(drop=True)
    kept["label_code"] = y[keep]
    series = set(kept["series_uid"])
    nodules = nod[nod["counted"] & nod["series_uid"].isin(series)]
    nodules = nodules[["nodule_id", "patient_id", "series_uid", "z_min", "z_max", "label"]].copy()
    nodules["code"] = nodules["label"].map(_NODULE_CODES).astype(np.int64)
    rej = (
        pd.concat(rejected, ignore_index=True)
        if rejected
        else _rejections(np.zeros(0, dtype=object), np.zeros(0, dtype=np.int64), "")
    )
    log.info("training set: %d slices kept, %d rejected (%s)", keep.sum(), len(rej), rule.name)
    return TrainingSet(
        X=np.ascontiguousarray(X[keep], dtype=np.float32),
        y=y[keep],
        groups=kept["patient_id"].astype(str).to_numpy(),
        slices=kept,
        nodules=nodules.reset_index(drop=True),
        rejected=rej,
        rule=rule,
        feature_config=dict(feature_config or {}),
    )


def load_cached_features(
    features: str | Path, *, key: str | None = None, dtype: np.dtype | type | None = np.float32
) -> tuple[np.ndarray, pd.DataFrame, dict[str, Any]]:
    """Features, slice table and ``config.json`` record of the cache a user points at.

    Parameters
    ----------
    features : path
        A work folder (with one feature cache, or ``key``) or ``WORK/features/<key>``
        (:meth:`FeatureCache.resolve`).
    key : str, optional
        Feature cache key inside a work folder.
    dtype : numpy dtype or None
        See :func:`lungslice.features.cache.load_features`.

    Returns
    -------
    X : numpy.ndarray
    slices : pandas.DataFrame
    record : dict
        The cache's ``config.json`` record ({} when absent).
    """
    cache = FeatureCache.resolve(features, key)
    X, slices = load_features(cache.work_dir, cache.key, dtype=dtype)
    return X, slices, cache.read_config() or {}


def build_training_set(
    features: str | Path,
    labels_dir: str | Path,
    *,
    rule: LabelRule | None = None,
    key: str | None = None,
    allow_unlabelled: bool = False,
) -> TrainingSet:
    """Load cached features and written labels and join them.

    Parameters
    ----------
    features : path
        A work folder (with one feature cache, or ``key``) or ``WORK/features/<key>``.
    labels_dir : path
        Output of ``lungslice labels``.
    rule : LabelRule, optional
        Label rule; defaults to the one the labels were written with.
    key : str, optional
        Feature cache key inside a work folder.
    allow_unlabelled : bool
        See :func:`join_labels`.
    """
    X, slices, feature_config = load_cached_features(features, key=key)
    labels = read_labels(labels_dir)
    rule = rule or rule_from_provenance(labels.provenance)
    return join_labels(
        X,
        slices,
        labels.slices,
        labels.nodules,
        rule,
        allow_unlabelled=allow_unlabelled,
        feature_config=feature_config,
    )
