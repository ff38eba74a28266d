"""Structures that look like nodules on a slice but are not: the phantom's confounders.

A slice classifier must not learn "a bright blob is a nodule". Real chests
offer many such blobs, none of which the LIDC readers outline as nodules
>= 3 mm: calcified granulomas <= 3 mm, scars and bands of atelectasis,
bronchi seen end-on (an air ring), vessels running across the slice (end-on,
of nodule size) and their bifurcations. Pleural plaques are drawn with the
chest wall (:mod:`lungslice.phantom.anatomy`). Every confounder keeps clear of
the scan's real nodules, and none enters the label tables: labels come only
from the readers' annotations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lungslice.phantom.anatomy import ChestShape, Segments, lung_mask, sample_lung

__all__ = ["GRANULOMA_MAX_DIAMETER_MM", "Confounders", "draw_confounders"]

#: Largest calcified granuloma drawn (mm across): below LIDC's 3 mm nodule size.
GRANULOMA_MAX_DIAMETER_MM = 3.0


@dataclass(frozen=True, eq=False)
class Confounders:
    """One patient's non-nodule look-alikes (image-frame millimetres).

    Attributes
    ----------
    granulomas : Segments
        Calcified granulomas: zero-length segments (spheres) of radius <= 1.5 mm.
    granuloma_hu : float
        Their density (HU, before partial volume and the kernel's blur).
    scars : Segments
        Linear scars and bands of atelectasis.
    scar_hu : float
        Their density (HU).
    vessels : Segments
        Vessels of nodule size running across the slices, joined to the tree,
        each ending in a bifurcation.
    bronchi : Segments
        Bronchi beside those vessels (lumens; the wall is grown around them).
    """

    granulomas: Segments
    granuloma_hu: float
    scars: Segments
    scar_hu: float
    vessels: Segments
    bronchi: Segments


def _pack(rows: list[tuple[np.ndarray, np.ndarray, float]]) -> Segments:
    return Segments(
        start=np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 3),
        end=np.array([r[1] for r in rows], dtype=np.float64).reshape(-1, 3),
        radius=np.array([r[2] for r in rows], dtype=np.float64),
        generation=np.zeros(len(rows), dtype=np.int64),
    )


def _clear(points: np.ndarray, nodules: np.ndarray, margin: float) -> np.ndarray:
    """Whether each point is further than a nodule's radius + ``margin`` from every nodule."""
    if not len(nodules) or not len(points):
        return np.ones(len(points), dtype=bool)
    d = np.sqrt(((points[:, None, :] - nodules[None, :, :3]) ** 2).sum(axis=2))
    return (d > nodules[None, :, 3] + margin).all(axis=1)


def _in_lung(shape: ChestShape, points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    return lung_mask(shape, p[:, 0], p[:, 1], p[:, 2])


def draw_confounders(
    shape: ChestShape,
    vessels: Segments,
    rng: np.random.Generator,
    nodule_points: np.ndarray | None = None,
    margin_mm: float = 10.0,
) -> Confounders:
    """Draw a patient's confounders inside its lungs, clear of its nodules.

    Parameters
    ----------
    shape : ChestShape
    vessels : Segments
        The patient's vessel tree (image frame); end-on vessels branch off it.
    rng : numpy.random.Generator
        The scan's confounder generator.
    nodule_points : numpy.ndarray, optional
        ``(n, 4)`` nodule centres and radii (mm); every confounder stays more than
        radius + ``margin_mm`` away.
    margin_mm : float

    Returns
    -------
    Confounders
    """
    nods = np.zeros((0, 4)) if nodule_points is None else np.asarray(nodule_points, np.float64)

    # calcified granulomas: 0-8 per patient, 1.5-3 mm across, calcium-dense
    n_gran = int(min(rng.poisson(2.5), 8))
    pts = sample_lung(shape, n_gran, rng) if n_gran else np.zeros((0, 3))
    radii = rng.uniform(0.75, GRANULOMA_MAX_DIAMETER_MM / 2.0, len(pts))
    ok = _clear(pts, nods, margin_mm)
    granulomas = _pack([(p, p, float(r)) for p, r, k in zip(pts, radii, ok, strict=True) if k])

    # scars and plate-like atelectasis: mostly in the lower lungs, near the pleura
    n_scar = int(min(rng.poisson(1.6), 6))
    rows: list[tuple[np.ndarray, np.ndarray, float]] = []
    if n_scar:
        cand = sample_lung(shape, 6 * n_scar, rng)
        low = shape.u(cand[:, 2]) < 0.55
        cand = np.concatenate([cand[low], cand[~low]])[:n_scar]
        for p in cand:
            ang = rng.uniform(0.0, np.pi)
            length = rng.uniform(14.0, 40.0)
            d = np.array([np.cos(ang), np.sin(ang), rng.uniform(-0.25, 0.25)]) * length / 2.0
            a, b = p - d, p + d
            mid = np.stack([a, p, b])
            if _in_lung(shape, mid).sum() >= 2 and _clear(mid, nods, margin_mm).all():
                rows.append((a, b, float(rng.uniform(0.6, 2.0))))
    scars = _pack(rows)

    # vessels running across the slice, of nodule size, joined to the tree and ending
    # in a bifurcation; a bronchus runs beside each
    v_rows: list[tuple[np.ndarray, np.ndarray, float]] = []
    b_rows: list[tuple[np.ndarray, np.ndarray, float]] = []
    big = np.flatnonzero((vessels.radius >= 1.3) & (vessels.radius <= 3.2))
    n_endon = int(rng.integers(2, 7)) if big.size else 0
    for i in rng.choice(big, size=min(n_endon, big.size), replace=False) if n_endon else []:
        r = float(vessels.radius[i])
        start = vessels.end[i]
        length = float(rng.uniform(12.0, 30.0)) * (1.0 if rng.random() < 0.5 else -1.0)
        tilt = rng.normal(0.0, 0.12, 2) * abs(length)
        end = start + np.array([tilt[0], tilt[1], length])
        fork = []
        for turn in (-1.0, 1.0):
            ang = rng.uniform(0.0, 2 * np.pi)
            spread = np.deg2rad(rng.uniform(25.0, 45.0))
            step = rng.uniform(10.0, 18.0)
            dvec = np.array(
                [
                    np.sin(spread) * np.cos(ang + turn * 0.5 * np.pi),
                    np.sin(spread) * np.sin(ang + turn * 0.5 * np.pi),
                    np.cos(spread) * np.sign(length),
                ]
            )
            fork.append((end, end + dvec * step, 0.75 * r))
        pts3 = np.stack([start, 0.5 * (start + end), end, fork[0][1], fork[1][1]])
        if not _in_lung(shape, pts3).all() or not _clear(pts3, nods, margin_mm).all():
            continue
        v_rows.append((start, end, r))
        v_rows.extend(fork)
        # the bronchus: beside the vessel, a lumen a little narrower than the vessel
        side = rng.normal(0.0, 1.0, 2)
        side = side / max(float(np.hypot(*side)), 1e-6) * (r + 0.8 * r + 1.8)
        off = np.array([side[0], side[1], 0.0])
        seg = np.stack([start + off, end + off])
        if _in_lung(shape, seg).all() and _clear(seg, nods, margin_mm).all():
            b_rows.append((start + off, end + off, 0.8 * r))
    return Confounders(
        granulomas=granulomas,
        granuloma_hu=float(rng.uniform(1400.0, 2600.0)),
        scars=scars,
        scar_hu=float(rng.uniform(-150.0, 20.0)),
        vessels=_pack(v_rows),
        bronchi=_pack(b_rows),
    )
