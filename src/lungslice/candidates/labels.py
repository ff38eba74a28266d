"""Candidate labels: is a detected candidate inside a radiologists' nodule, and which.

A candidate is a point ``(z, row, col)`` in a resampled volume array; a
nodule is a sphere around its readers' centre
(:func:`lungslice.lidc.labels.nodule_centre`, columns ``centroid_row``,
``centroid_col``, ``centroid_z_mm``, ``radius_mm``, ``pixel_spacing_mm`` of
the nodule table). Both are converted to mm and a candidate hits a nodule
when its centre lies within ``max(radius_mm, 2) + margin_mm`` of the
nodule's centre (LUNA16 counts a hit within the nodule's radius; the margin
allows for the detector's and the readers' centre disagreeing by a voxel or
two). When several nodules contain it, the nearest wins.

In-plane positions are compared in mm from the image's edge,
``(index + 0.5) * spacing``, so an array whose slices were resized from the
original grid (e.g. a 256-pixel array of a 512-pixel scan, same field of
view) maps onto the nodules' original pixel indices correctly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lungslice.errors import AnnotationError, ConfigError
from lungslice.lidc.labels import LABEL_CODES

__all__ = ["MIN_RADIUS_MM", "candidate_mm", "match_candidates", "nodule_codes", "nodule_mm"]

log = logging.getLogger(__name__)

#: Smallest radius a nodule's sphere gets (mm), before the margin.
MIN_RADIUS_MM = 2.0

_CENTRE_COLUMNS = ("centroid_row", "centroid_col", "centroid_z_mm", "radius_mm", "pixel_spacing_mm")


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str, fix: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"match_candidates: {what} lacks column(s) {', '.join(missing)}; expected "
            f"{', '.join(columns)}; got {', '.join(map(str, frame.columns)) or 'no columns'}. "
            f"Fix: {fix}"
        )


def candidate_mm(
    candidates: pd.DataFrame, z_positions: np.ndarray, pixel_spacing: tuple[float, float]
) -> np.ndarray:
    """``(n, 3)`` candidate centres in mm ``(z, row, col)``.

    ``z`` is the slice position interpolated (and linearly extrapolated) from
    ``z_positions`` at the fractional slice index; row and column are mm from
    the image edge, ``(index + 0.5) * spacing``.
    """
    zp = np.asarray(z_positions, dtype=np.float64).reshape(-1)
    if zp.size == 0:
        raise ConfigError("match_candidates: z_positions is empty; expected one z per slice")
    if zp.size > 1 and not np.all(np.diff(zp) > 0):
        raise ConfigError(
            "match_candidates: z_positions must increase strictly (the resampled volume's "
            f"slice positions); got {zp[:5].tolist()}..."
        )
    k = candidates["z"].to_numpy(dtype=np.float64)
    if zp.size == 1:
        z = np.full_like(k, zp[0])
    else:
        idx = np.arange(zp.size, dtype=np.float64)
        z = np.interp(k, idx, zp)
        lo_slope, hi_slope = zp[1] - zp[0], zp[-1] - zp[-2]
        z = np.where(k < 0, zp[0] + k * lo_slope, z)
        z = np.where(k > zp.size - 1, zp[-1] + (k - (zp.size - 1)) * hi_slope, z)
    row = (candidates["row"].to_numpy(dtype=np.float64) + 0.5) * float(pixel_spacing[0])
    col = (candidates["col"].to_numpy(dtype=np.float64) + 0.5) * float(pixel_spacing[1])
    return np.column_stack([z, row, col])


def nodule_mm(nodules: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Nodule centres ``(m, 3)`` in mm ``(z, row, col)`` and radii ``(m,)`` (mm, unfloored)."""
    ps = nodules["pixel_spacing_mm"].to_numpy(dtype=np.float64)
    centre = np.column_stack(
        [
            nodules["centroid_z_mm"].to_numpy(dtype=np.float64),
            (nodules["centroid_row"].to_numpy(dtype=np.float64) + 0.5) * ps,
            (nodules["centroid_col"].to_numpy(dtype=np.float64) + 0.5) * ps,
        ]
    )
    return centre.reshape(-1, 3), nodules["radius_mm"].to_numpy(dtype=np.float64)


def nodule_codes(nodules: pd.DataFrame) -> np.ndarray:
    """Per-nodule label code: ``code`` column, else ``label`` names mapped (excluded -1).

    A nodule with ``counted`` False (fewer readers than the rule's
    ``min_readers``) gets -1: candidates on it are neither nodules nor
    non-nodules, as LUNA16 treats its irrelevant findings.
    """
    if "code" in nodules.columns:
        codes = nodules["code"].to_numpy(dtype=np.int64)
    elif "label" in nodules.columns:
        names = nodules["label"].astype(str)
        unknown = sorted(set(names) - set(LABEL_CODES))
        if unknown:
            raise ConfigError(
                f"match_candidates: nodule label(s) {', '.join(unknown)} unknown; expected "
                f"{', '.join(LABEL_CODES)}"
            )
        codes = names.map(LABEL_CODES).to_numpy(dtype=np.int64)
    else:
        raise ConfigError(
            "match_candidates: nodules need a 'code' (1 benign, 2 malignant, -1 excluded) or "
            "'label' column. Fix: label the nodule table with lungslice.lidc.labels.apply_rule."
        )
    if codes.size and not np.isin(codes, (-1, 1, 2)).all():
        bad = sorted(set(codes.tolist()) - {-1, 1, 2})
        raise ConfigError(
            f"match_candidates: nodule codes must be 1, 2 or -1 (a nodule is never "
            f"non-nodule), got {bad}"
        )
    if "counted" in nodules.columns:
        codes = np.where(nodules["counted"].to_numpy(dtype=bool), codes, -1)
    return codes


def match_candidates(
    candidates: pd.DataFrame,
    nodules: pd.DataFrame,
    *,
    z_positions: np.ndarray,
    pixel_spacing: tuple[float, float],
    margin_mm: float = 1.5,
) -> pd.DataFrame:
    """Label one series' candidates by the nodule (if any) each lies in.

    Parameters
    ----------
    candidates : pandas.DataFrame
        One series' candidates with voxel columns ``z``, ``row``, ``col`` of
        the resampled array (other columns are kept). With a ``series_uid``
        column (one value), only the nodules of that series are used.
    nodules : pandas.DataFrame
        Nodules (of this series, or of many with a ``series_uid`` column):
        ``nodule_id``, the centre columns of
        :func:`lungslice.lidc.labels.nodule_table` (``centroid_row``,
        ``centroid_col``, ``centroid_z_mm``, ``radius_mm``,
        ``pixel_spacing_mm``) and a ``code`` or ``label`` column (see
        :func:`nodule_codes`; e.g. ``TrainingSet.nodules`` merged with the
        centre columns, or the output of ``apply_rule``).
    z_positions : numpy.ndarray
        ``(n_slices,)`` z (mm) of each slice of the array, increasing.
    pixel_spacing : (float, float)
        In-plane (row, col) spacing of the array (mm), which may differ from
        the nodules' ``pixel_spacing_mm`` when the array was resized.
    margin_mm : float
        Added to each nodule's radius (floored at :data:`MIN_RADIUS_MM`).

    Returns
    -------
    pandas.DataFrame
        ``candidates`` (same order and index) plus ``nodule_id`` (the hit
        nodule, None for none), ``distance_mm`` (to the hit nodule's centre;
        without a hit, to the nearest nodule's centre; NaN when the series
        has no nodule) and ``label_code`` (0 non-nodule, 1 benign,
        2 malignant, -1 on an excluded or uncounted nodule).

    Raises
    ------
    ConfigError
        For missing columns, bad positions or codes, or candidates of several series.
    """
    _require(
        candidates,
        ("z", "row", "col"),
        "the candidate table",
        "pass the detector's table (voxel z, row, col of the resampled array).",
    )
    _require(
        nodules,
        ("nodule_id", *_CENTRE_COLUMNS),
        "the nodule table",
        "use a nodule table written by this version of lungslice.lidc.labels.nodule_table "
        "(relabel with `lungslice labels`).",
    )
    if not margin_mm >= 0:
        raise ConfigError(f"match_candidates: margin_mm must be >= 0, got {margin_mm}")
    if len(pixel_spacing) != 2 or not all(float(s) > 0 for s in pixel_spacing):
        raise ConfigError(
            f"match_candidates: pixel_spacing must be (row, col) mm > 0, got {pixel_spacing}"
        )
    nod = nodules
    if "series_uid" in candidates.columns and "series_uid" in nodules.columns and len(candidates):
        series = pd.unique(candidates["series_uid"])
        if len(series) != 1:
            raise ConfigError(
                f"match_candidates: candidates of {len(series)} series given; expected one "
                "series (one array). Fix: call it per series_uid."
            )
        nod = nodules[nodules["series_uid"] == series[0]]
    codes = nodule_codes(nod)
    centres, radius = nodule_mm(nod)
    bad = ~np.isfinite(centres).all(axis=1)
    if bad.any():
        raise AnnotationError(
            f"match_candidates: nodule {nod['nodule_id'].iloc[int(np.flatnonzero(bad)[0])]} has "
            "no centre (no contour points). Expected every nodule to have contours. Fix: drop "
            "it from the nodule table."
        )
    reach = np.fmax(np.nan_to_num(radius, nan=MIN_RADIUS_MM), MIN_RADIUS_MM) + margin_mm

    out = candidates.copy()
    n, m = len(candidates), len(nod)
    ids = np.full(n, None, dtype=object)
    dist = np.full(n, np.nan)
    label = np.zeros(n, dtype=np.int64)
    if n and m:
        pos = candidate_mm(candidates, z_positions, pixel_spacing)
        d = np.sqrt(((pos[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2))  # (n, m)
        inside = d <= reach[None, :]
        masked = np.where(inside, d, np.inf)
        best = masked.argmin(axis=1)
        hit = inside.any(axis=1)
        nearest = d.argmin(axis=1)
        pick = np.where(hit, best, nearest)
        dist = d[np.arange(n), pick]
        node_ids = nod["nodule_id"].to_numpy(dtype=object)
        ids[hit] = node_ids[best[hit]]
        label[hit] = codes[best[hit]]
    elif n:
        candidate_mm(candidates, z_positions, pixel_spacing)  # validate positions anyway
    out["nodule_id"] = pd.Series(ids, index=out.index, dtype=object)
    out["distance_mm"] = dist
    out["label_code"] = label
    log.debug("matched %d candidates to %d nodules: %d hits", n, m, int(pd.notna(ids).sum()))
    return out
