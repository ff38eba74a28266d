"""Nodules rasterised from the readers' real contours, styled by their mean ratings.

Each nodule (a cluster of readers' annotations from
:func:`lungslice.lidc.nodules.find_nodules`) is drawn on exactly the slices
its readers outlined. Its shape is the readers' contour interiors (pylidc's
``boolean_mask``: inside the polygon, the outline pixels themselves excluded)
— the >= 50 % consensus of the cluster's annotations, or one reader's. Where a
slice carries a contour but no consensus (the ends of a nodule that only
some readers outlined) the union of the readers' interiors is drawn at
reduced contrast, so every slice a reader outlined holds nodule pixels and no
other slice does.

Its appearance follows the nodule's mean ratings, so the readers' malignancy
ratings correlate with appearance as their other ratings do:

- texture 1 (ground glass, ~ -650 HU) ... 5 (solid, ~ 20 HU); in between, a
  solid core inside a ground-glass rim;
- calcification 1-5 (popcorn, laminated, solid, non-central, central) paint
  bright 200-1000 HU regions, 6 = absent;
- internal structure 2/3/4: fluid, fat or air core;
- margin: poorly defined (1) ... sharp (5) sets the edge blur;
- lobulation and spiculation add boundary bumps and thin spicules;
- subtlety 1 (extremely subtle) ... 5 (obvious) scales the contrast to the lung.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
from matplotlib.path import Path as MplPath
from scipy import ndimage as ndi

from lungslice.lidc.nodules import Nodule
from lungslice.lidc.records import Annotation, Contour, LidcScan

__all__ = [
    "LIDC_MATRIX",
    "NodulePatch",
    "annotation_slice_mask",
    "nodule_masks",
    "nodule_patches",
    "nodule_spheres",
]

log = logging.getLogger(__name__)

#: LIDC-IDRI images (and so the contours' pixel indices) are 512 x 512.
LIDC_MATRIX = 512
_LUNG_BG = -860.0
_PAD = 14  # pixels around the contours for blur and spicules (even, for 2x2 blocks)


@dataclass(frozen=True, eq=False)
class NodulePatch:
    """A nodule's pixels on one slice, on the render grid.

    Attributes
    ----------
    nodule_id : str
    slice_index : int
        Index into the scan's sorted ``slice_zvals``.
    row0, col0 : int
        Top-left pixel of the patch on the render grid.
    alpha : numpy.ndarray
        ``(h, w)`` float32 opacity 0-1 (partial volume, soft margins).
    hu : numpy.ndarray
        ``(h, w)`` float32 nodule HU where ``alpha > 0``.
    consensus : bool
        False on slices drawn from a minority of readers (reduced contrast).
    """

    nodule_id: str
    slice_index: int
    row0: int
    col0: int
    alpha: np.ndarray
    hu: np.ndarray
    consensus: bool


def _polygon_mask(contour: Contour, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    # exactly pylidc's test: matplotlib's Path.contains_points on (i, j) = (row, col)
    ij = np.asarray(contour.ij, dtype=np.float64)
    if (ij[0] != ij[-1]).any():
        ij = np.vstack([ij, ij[:1]])
    ii, jj = np.mgrid[r0 : r0 + h, c0 : c0 + w]
    pts = np.column_stack([ii.ravel(), jj.ravel()])
    return MplPath(ij, closed=True).contains_points(pts).reshape(h, w)


def _contour_points(contour: Contour, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    ij = np.asarray(contour.ij, dtype=np.int64) - np.array([r0, c0])
    ok = (ij[:, 0] >= 0) & (ij[:, 0] < h) & (ij[:, 1] >= 0) & (ij[:, 1] < w)
    m[ij[ok, 0], ij[ok, 1]] = True
    return m


def annotation_slice_mask(
    scan: LidcScan,
    annotation: Annotation,
    slice_index: int,
    box: tuple[int, int, int, int],
    include_contour_points: bool = False,
) -> np.ndarray:
    """One reader's nodule pixels on one slice, as pylidc's ``boolean_mask`` draws them.

    Parameters
    ----------
    scan : LidcScan
    annotation : Annotation
    slice_index : int
        Index into ``scan.slice_zvals``.
    box : (row0, col0, height, width)
        The window (512-grid pixels) to draw in.
    include_contour_points : bool
        Keep the outline pixels of inclusion contours (pylidc drops them).

    Returns
    -------
    numpy.ndarray
        ``(height, width)`` bool.
    """
    r0, c0, h, w = box
    mask = np.zeros((h, w), dtype=bool)
    mine = [c for c in annotation.contours if scan.slice_index(c.z) == slice_index]
    for c in mine:
        if c.inclusion:
            mask |= _polygon_mask(c, r0, c0, h, w)
            if not include_contour_points:
                mask &= ~_contour_points(c, r0, c0, h, w)
            else:
                mask |= _contour_points(c, r0, c0, h, w)
    for c in mine:
        if not c.inclusion:
            mask &= ~_polygon_mask(c, r0, c0, h, w)
            mask &= ~_contour_points(c, r0, c0, h, w)
    return mask


def _cluster_box(annotations: tuple[Annotation, ...]) -> tuple[int, int, int, int]:
    pts = np.vstack([np.asarray(c.ij) for a in annotations for c in a.contours])
    lo = np.maximum(pts.min(axis=0) - _PAD, 0)
    hi = np.minimum(pts.max(axis=0) + _PAD + 1, LIDC_MATRIX)
    lo = lo - lo % 2  # even corners so the box maps onto 2x2 blocks of a 256 grid
    hi = hi + hi % 2
    return int(lo[0]), int(lo[1]), int(hi[0] - lo[0]), int(hi[1] - lo[1])


def nodule_masks(
    scan: LidcScan, nodule: Nodule, mode: str = "consensus", reader: int = 0
) -> tuple[tuple[int, int, int, int], dict[int, tuple[np.ndarray, bool]]]:
    """The nodule's pixels on each slice a reader outlined it (512 grid).

    Parameters
    ----------
    scan : LidcScan
    nodule : Nodule
    mode : {"consensus", "reader"}
        ">= 50 %" of the cluster's annotations, or annotation number ``reader``.
    reader : int
        Which annotation "reader" mode draws (clamped to the cluster's size).

    Returns
    -------
    box : (row0, col0, height, width)
        The window on the 512 grid the masks cover.
    masks : dict
        ``slice_index -> (mask, consensus)``; ``consensus`` is False where the
        mask is the union of a minority of readers (or, for outlines too small
        to have an interior, the outline pixels themselves).
    """
    anns = nodule.annotations
    if mode == "reader":
        anns = (anns[min(reader, len(anns) - 1)],)
    box = _cluster_box(nodule.annotations)
    slices = sorted({scan.slice_index(c.z) for a in anns for c in a.contours})
    out: dict[int, tuple[np.ndarray, bool]] = {}
    for k in slices:
        per = [annotation_slice_mask(scan, a, k, box) for a in anns]
        mask = np.mean(per, axis=0) >= 0.5
        consensus = bool(mask.any())
        if not consensus:
            mask = np.any(per, axis=0)
        if not mask.any():
            mask = np.any(
                [annotation_slice_mask(scan, a, k, box, include_contour_points=True) for a in anns],
                axis=0,
            )
        out[k] = (mask, consensus)
    return box, out


def nodule_spheres(scan: LidcScan, nodules: list[Nodule]) -> np.ndarray:
    """``(n, 4)`` centre ``(x, y, z)`` and radius (mm) of each nodule's contour points.

    x and y are relative to the image centre, as the phantom's grid places them.
    """
    rows = []
    centre = (LIDC_MATRIX - 1) / 2.0
    for nod in nodules:
        pts = []
        for a in nod.annotations:
            for c in a.contours:
                xy = np.asarray(c.xy, dtype=np.float64)
                z = np.full((xy.shape[0], 1), c.z)
                pts.append(np.hstack([(xy - centre) * scan.pixel_spacing, z]))
        p = np.vstack(pts)
        mid = p.mean(axis=0)
        radius = float(np.sqrt(((p - mid) ** 2).sum(axis=1)).max())
        rows.append([*mid.tolist(), max(radius, 1.0)])
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


@dataclass(frozen=True)
class _Style:
    ggo: float
    solid: float
    solid_fraction: float
    calc_hu: float
    calc_pattern: int
    core: int
    edge_sigma_mm: float
    lobes: np.ndarray  # angles (rad)
    lobe_size: float
    spicules: np.ndarray  # (n, 2): angle, length (mm)
    contrast: float


def _style(nodule: Nodule, rng: np.random.Generator, radius_mm: float) -> _Style:
    r = nodule.mean_ratings
    texture = float(np.clip(r["texture"], 1, 5))
    calc = float(np.clip(r["calcification"], 1, 6))
    calc_weight = float(np.clip((6.0 - calc) / 5.0, 0.0, 1.0))
    patterns = Counter(a.ratings["calcification"] for a in nodule.annotations)
    patterns.pop(6, None)
    pattern = patterns.most_common(1)[0][0] if patterns and calc_weight >= 0.1 else 6
    lob = float(np.clip(r["lobulation"], 1, 5))
    spic = float(np.clip(r["spiculation"], 1, 5))
    n_lobes = round((lob - 1.0) * 1.5)
    n_spic = round((spic - 1.0) * 2.0)
    spicules = np.column_stack(
        [
            rng.uniform(0, 2 * np.pi, n_spic),
            (0.4 + 0.6 * rng.random(n_spic)) * (0.6 * radius_mm + 1.5 * spic),
        ]
    ).reshape(-1, 2)
    core = round(float(np.clip(r["internal_structure"], 1, 4)))
    return _Style(
        ggo=-650.0 + float(rng.uniform(-60, 60)),
        solid=20.0 + float(rng.uniform(-20, 25)),
        solid_fraction=(texture - 1.0) / 4.0,
        calc_hu=200.0 + 800.0 * calc_weight * float(rng.uniform(0.75, 1.0)),
        calc_pattern=int(pattern),
        core=int(core),
        edge_sigma_mm=0.15 + 0.3 * (5.0 - float(np.clip(r["margin"], 1, 5))),
        lobes=rng.uniform(0, 2 * np.pi, n_lobes),
        lobe_size=0.15 + 0.05 * lob,
        spicules=spicules,
        contrast=0.45 + 0.55 * (float(np.clip(r["subtlety"], 1, 5)) - 1.0) / 4.0,
    )


def _segment_occupancy(
    shape: tuple[int, int], p0: np.ndarray, p1: np.ndarray, width: float
) -> np.ndarray:
    ii, jj = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    d = p1 - p0
    dd = float(d @ d) or 1.0
    t = np.clip(((ii - p0[0]) * d[0] + (jj - p0[1]) * d[1]) / dd, 0.0, 1.0)
    dist = np.hypot(ii - p0[0] - t * d[0], jj - p0[1] - t * d[1])
    # spicules taper towards their tips
    return np.clip((width * (1.0 - 0.7 * t) - dist) + 0.5, 0.0, 1.0)


def _draw_slice(
    mask: np.ndarray, style: _Style, spacing: float, radius_mm: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Opacity and HU of one slice's nodule pixels (512 grid)."""
    h, w = mask.shape
    area = float(mask.sum())
    cen = np.array(ndi.center_of_mass(mask)) if area else np.array([h / 2.0, w / 2.0])
    r_eq = np.sqrt(area / np.pi)
    mask = mask.copy()
    ii, jj = np.mgrid[0:h, 0:w].astype(np.float64)
    for ang in style.lobes:
        # lobules: bumps on the outline at fixed angles, so they continue across slices
        c = cen + r_eq * np.array([np.sin(ang), np.cos(ang)])
        mask |= (ii - c[0]) ** 2 + (jj - c[1]) ** 2 < (style.lobe_size * r_eq) ** 2
    depth = ndi.distance_transform_edt(mask) * spacing
    dn = np.clip(depth / max(radius_mm, 1.0), 0.0, 1.0)

    fs = style.solid_fraction
    if fs >= 0.999:
        wsolid = np.ones_like(dn)
    else:
        wsolid = np.clip((dn - (1.0 - fs)) / 0.15 + 0.5, 0.0, 1.0) * (fs > 0.001)
    hu = style.ggo + (style.solid - style.ggo) * wsolid
    grain = ndi.gaussian_filter(rng.standard_normal((h, w)), 1.2)
    hu = hu + grain * (45.0 - 30.0 * wsolid) * 2.5
    if style.core in (2, 3, 4) and radius_mm >= 2.5:
        core_hu = {2: 10.0, 3: -90.0, 4: -950.0}[style.core]
        hu = np.where(dn > 0.6, core_hu, hu)
    hu = _LUNG_BG + (hu - _LUNG_BG) * style.contrast

    if style.calc_pattern != 6:
        p = style.calc_pattern
        if p == 3:
            calc = dn > 0.12
        elif p == 5:
            calc = dn > 0.5
        elif p == 2:
            calc = (np.sin(dn * 3.0 * np.pi) > 0.3) & (dn > 0.05)
        elif p == 4:
            ang = 1.0 + float(style.lobes.sum())
            c = cen + 0.45 * r_eq * np.array([np.sin(ang), np.cos(ang)])
            calc = ((ii - c[0]) ** 2 + (jj - c[1]) ** 2 < (0.35 * r_eq) ** 2) & mask
        else:  # 1: popcorn
            calc = np.zeros_like(mask)
            for ang in np.linspace(0, 2 * np.pi, 5, endpoint=False) + 0.4:
                c = cen + 0.45 * r_eq * np.array([np.sin(ang), np.cos(ang)])
                calc |= (ii - c[0]) ** 2 + (jj - c[1]) ** 2 < (0.22 * r_eq + 0.5) ** 2
            calc &= mask
        hu = np.where(calc, np.maximum(hu, style.calc_hu), hu)

    sigma = style.edge_sigma_mm / spacing
    alpha = ndi.gaussian_filter(mask.astype(np.float64), sigma) if sigma > 0.05 else mask * 1.0
    alpha = np.maximum(alpha, mask * 0.85)
    for ang, length in style.spicules:
        start = cen + 0.8 * r_eq * np.array([np.sin(ang), np.cos(ang)])
        end = start + (length / spacing) * np.array([np.sin(ang), np.cos(ang)])
        alpha = np.maximum(alpha, 0.8 * _segment_occupancy(mask.shape, start, end, 0.9))
    # outside the outline the nodule keeps its nearest edge value, so blur does not darken it
    if mask.any():
        idx = ndi.distance_transform_edt(~mask, return_distances=False, return_indices=True)
        hu = hu[idx[0], idx[1]]
    return alpha.astype(np.float32), hu.astype(np.float32)


def _to_matrix(alpha: np.ndarray, hu: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    if factor == 1:
        return alpha, hu
    h, w = alpha.shape
    a = alpha.reshape(h // factor, factor, w // factor, factor)
    ah = (alpha * hu).reshape(a.shape)
    sa = a.sum(axis=(1, 3))
    hu_small = np.where(sa > 0, ah.sum(axis=(1, 3)) / np.maximum(sa, 1e-6), _LUNG_BG)
    return (sa / factor**2).astype(np.float32), hu_small.astype(np.float32)


def nodule_patches(
    scan: LidcScan,
    nodules: list[Nodule],
    *,
    matrix: int,
    seed: int,
    slice_indices: set[int] | None = None,
    mode: str = "consensus",
    reader: int = 0,
) -> list[NodulePatch]:
    """Every nodule's pixels on every slice it was outlined on.

    Parameters
    ----------
    scan : LidcScan
    nodules : list of Nodule
        From :func:`lungslice.lidc.nodules.find_nodules`.
    matrix : int
        The render grid (512 or 256).
    seed : int
        Seeds the nodules' texture, lobules and spicules (per nodule).
    slice_indices : set of int, optional
        Only patches on these slices.
    mode, reader
        As :func:`nodule_masks`.

    Returns
    -------
    list of NodulePatch
    """
    from lungslice.phantom.anatomy import scan_key

    factor = LIDC_MATRIX // matrix
    patches: list[NodulePatch] = []
    for n, nodule in enumerate(nodules):
        box, masks = nodule_masks(scan, nodule, mode, reader)
        if not masks:
            continue
        radius = max(
            float(ndi.distance_transform_edt(m).max()) * scan.pixel_spacing
            for m, _ in masks.values()
        )
        rng = np.random.default_rng([seed, scan_key(scan.series_uid), n, 7])
        style = _style(nodule, rng, radius)
        for k, (mask, consensus) in sorted(masks.items()):
            srng = np.random.default_rng([seed, scan_key(scan.series_uid), n, k])
            if slice_indices is not None and k not in slice_indices:
                continue
            alpha, hu = _draw_slice(mask, style, scan.pixel_spacing, radius, srng)
            if not consensus:
                alpha = alpha * 0.6
            alpha, hu = _to_matrix(alpha, hu, factor)
            patches.append(
                NodulePatch(
                    nodule_id=nodule.nodule_id,
                    slice_index=k,
                    row0=box[0] // factor,
                    col0=box[1] // factor,
                    alpha=alpha,
                    hu=hu,
                    consensus=consensus,
                )
            )
    log.debug("%s: %d nodule patches", scan.patient_id, len(patches))
    return patches
