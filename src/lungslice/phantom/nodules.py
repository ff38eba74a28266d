"""Nodules rasterised from the readers' real contours, styled by their mean ratings.

Each nodule (a cluster of readers' annotations from
:func:`lungslice.lidc.nodules.find_nodules`) is drawn on exactly the slices
its readers outlined. Its shape is the readers' contour interiors (pylidc's
``boolean_mask``: inside the polygon, the outline pixels themselves excluded)
— the >= 50 % consensus of the cluster's annotations, or one reader's. Where a
slice carries a contour but no consensus (the ends of a nodule that only
some readers outlined) the union of the readers' interiors is drawn at
60 % opacity, so every slice a reader outlined holds nodule pixels and no
other slice does.

Partial volume: each slice averages the nodule over the scan's real slice
thickness (:func:`slab_occupancy`: the outlines are interpolated between
slices and the nodule closes as a cap half-way to the first slice no reader
outlined),
as the vessels are averaged across the slab. The scanner's in-plane blur is
the kernel's, applied by :func:`lungslice.phantom.render.render` to the whole
slice (nodule, vessels and lung alike), so edge sharpness follows the kernel.

Its appearance follows the nodule's mean ratings, so the readers' malignancy
ratings correlate with appearance as their other ratings do:

- texture 1 (ground glass, -700..-450 HU) ... 5 (solid, +15..+45 HU, the
  published 0..+50 HU); in between a solid core inside a ground-glass rim,
  the core's share of the radius ``(texture - 1) / 4``;
- calcification 1-5 (popcorn, laminated, solid, non-central, central) paint
  bright 200-1000 HU regions, 6 = absent;
- internal structure 2/3/4: fluid, fat or air core;
- margin: poorly defined (1) ... sharp (5) adds 1.0 ... 0 mm of edge blur
  (a halo outside the outline) on top of the kernel's;
- lobulation and spiculation add boundary bumps and thin spicules;
- subtlety 1 (extremely subtle) ... 5 (obvious) adds 0.4 ... 0 mm more edge
  blur; it never changes the nodule's density.

:func:`nodule_core_hu` measures a rendered nodule's density the way the
published figures are taken (median HU of the inner half of its outline on
its central slice).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
from matplotlib.path import Path as MplPath
from scipy import ndimage as ndi

from lungslice.errors import ConfigError
from lungslice.lidc.nodules import Nodule
from lungslice.lidc.records import Annotation, Contour, LidcScan

__all__ = [
    "GGO_HU",
    "LIDC_MATRIX",
    "SLAB_SAMPLES",
    "SOLID_HU",
    "NoduleHU",
    "NodulePatch",
    "annotation_slice_mask",
    "central_slice",
    "deepest_pixels",
    "nodule_core_hu",
    "nodule_masks",
    "nodule_patches",
    "nodule_spheres",
    "slab_occupancy",
]

log = logging.getLogger(__name__)

#: LIDC-IDRI images (and so the contours' pixel indices) are 512 x 512.
LIDC_MATRIX = 512
_LUNG_BG = -860.0
_PAD = 14  # pixels around the contours for blur and spicules (even, for 2x2 blocks)

#: HU range a ground-glass component is drawn from (per nodule); published pure
#: ground-glass nodules measure -750 to -300 HU.
GGO_HU = (-700.0, -450.0)
#: HU range a solid component is drawn from (per nodule); published solid nodules
#: measure about 0 to +50 HU (malignant series: means of 30-50 HU).
SOLID_HU = (15.0, 45.0)
#: Planes averaged across each slice's thickness (partial volume in z).
SLAB_SAMPLES = 5
_MARGIN_BLUR_MM = 0.25  # extra edge blur per margin step below 5 (sharp)
_SUBTLETY_BLUR_MM = 0.1  # extra edge blur per subtlety step below 5 (obvious)


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
    margin = float(np.clip(r["margin"], 1, 5))
    subtlety = float(np.clip(r["subtlety"], 1, 5))
    return _Style(
        ggo=float(rng.uniform(*GGO_HU)),
        solid=float(rng.uniform(*SOLID_HU)),
        solid_fraction=(texture - 1.0) / 4.0,
        calc_hu=200.0 + 800.0 * calc_weight * float(rng.uniform(0.75, 1.0)),
        calc_pattern=int(pattern),
        core=int(core),
        # the margin's own fuzziness; the scanner's kernel blur comes on top in render()
        edge_sigma_mm=_MARGIN_BLUR_MM * (5.0 - margin) + _SUBTLETY_BLUR_MM * (5.0 - subtlety),
        lobes=rng.uniform(0, 2 * np.pi, n_lobes),
        lobe_size=0.15 + 0.05 * lob,
        spicules=spicules,
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


def _lobulate(mask: np.ndarray, style: _Style) -> np.ndarray:
    """The outline with the lobules' bumps added (fixed angles, so they continue across slices)."""
    if not style.lobes.size or not mask.any():
        return mask
    h, w = mask.shape
    cen = np.array(ndi.center_of_mass(mask))
    r_eq = np.sqrt(float(mask.sum()) / np.pi)
    ii, jj = np.mgrid[0:h, 0:w].astype(np.float64)
    out = mask.copy()
    for ang in style.lobes:
        c = cen + r_eq * np.array([np.sin(ang), np.cos(ang)])
        out |= (ii - c[0]) ** 2 + (jj - c[1]) ** 2 < (style.lobe_size * r_eq) ** 2
    return out


def _signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance (pixels) to the outline: > 0 inside, the edge half-way between pixels."""
    inside = ndi.distance_transform_edt(mask)
    outside = ndi.distance_transform_edt(~mask)
    return np.where(mask, inside - 0.5, 0.5 - outside)


def slab_occupancy(
    shapes: dict[int, np.ndarray],
    slice_z: np.ndarray,
    slice_thickness: float,
    samples: int = SLAB_SAMPLES,
) -> dict[int, np.ndarray]:
    """How much of each slice's slab the nodule fills, per pixel (partial volume in z).

    A CT slice averages what lies within its thickness. The readers outlined
    the nodule on some slices only; between two outlined slices its surface
    is interpolated (linearly, on the outlines' signed distance maps), and
    beyond the first and last outlined slice it closes as an ellipsoidal cap
    that ends half-way to the next slice (so the next slice's slab, which no
    reader outlined, stays empty when slices are contiguous). Each slice's opacity is the mean
    occupancy of ``samples`` planes spread evenly across its thickness, so a
    nodule that only partly fills a slab is averaged with the lung around it,
    as the vessels are. Only the outlined slices are returned: the slabs of
    the other slices stay nodule-free, as the labels say.

    Parameters
    ----------
    shapes : dict
        ``slice_index -> (h, w)`` bool outline interior, every outlined slice
        of one nodule, all on the same window.
    slice_z : numpy.ndarray
        The scan's sorted slice z positions (mm).
    slice_thickness : float
        The slab each slice averages (mm); the scan's SliceThickness.
    samples : int
        Planes averaged per slab.

    Returns
    -------
    dict
        ``slice_index -> (h, w)`` float opacity 0-1.
    """
    if not shapes:
        return {}
    ks = sorted(shapes)
    z = np.asarray(slice_z, dtype=np.float64)
    steps = np.diff(z)
    steps = steps[steps > 0]
    default_step = float(np.median(steps)) if steps.size else max(slice_thickness, 1.0)

    def gap(k: int, direction: int) -> float:
        j = k + direction
        if 0 <= j < z.size and z[j] != z[k]:
            return abs(float(z[j] - z[k]))
        return default_step

    kz = np.array([float(z[k]) for k in ks])
    known = [_signed_distance(shapes[k]) for k in ks]
    # beyond the first and last outline the nodule closes as an ellipsoidal cap that
    # ends half-way to the next slice (whose slab the readers left empty)
    ends = (
        (kz[0], 0.5 * gap(ks[0], -1), known[0], max(float(known[0].max()), 0.5) + 1.0),
        (kz[-1], 0.5 * gap(ks[-1], 1), known[-1], max(float(known[-1].max()), 0.5) + 1.0),
    )
    thickness = max(float(slice_thickness), 1e-3)
    offsets = ((np.arange(samples) + 0.5) / samples - 0.5) * thickness
    out: dict[int, np.ndarray] = {}
    for k in ks:
        occ = np.zeros(shapes[k].shape, dtype=np.float64)
        for dz in offsets:
            zq = float(z[k]) + float(dz)
            if kz[0] <= zq <= kz[-1]:
                j = min(max(int(np.searchsorted(kz, zq, side="right")), 1), kz.size - 1)
                t = (zq - kz[j - 1]) / max(kz[j] - kz[j - 1], 1e-9) if kz.size > 1 else 0.0
                sd = (1.0 - t) * known[j - 1] + t * known[j] if kz.size > 1 else known[0]
            else:
                z_end, reach, sd_end, depth = ends[0] if zq < kz[0] else ends[1]
                s = abs(zq - z_end) / max(reach, 1e-9)
                if s >= 1.0:
                    continue
                sd = sd_end - depth * (1.0 - np.sqrt(1.0 - s * s))
            # the readers trace the edge: their outline pixels (just outside the
            # interior) are half nodule, half lung
            occ += np.clip(sd + 1.0, 0.0, 1.0)
        out[k] = occ / samples
    return out


def _draw_slice(
    mask: np.ndarray,
    occupancy: np.ndarray,
    style: _Style,
    spacing: float,
    radius_mm: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Opacity and HU of one slice's nodule pixels (512 grid).

    ``mask`` is the (lobulated) outline interior on this slice, ``occupancy``
    the share of the slab the nodule fills (:func:`slab_occupancy`).
    """
    h, w = mask.shape
    area = float(mask.sum())
    cen = np.array(ndi.center_of_mass(mask)) if area else np.array([h / 2.0, w / 2.0])
    r_eq = np.sqrt(area / np.pi)
    ii, jj = np.mgrid[0:h, 0:w].astype(np.float64)
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

    # a poorly defined margin fades outwards: the blur adds a halo but leaves the
    # occupied pixels as dense as the slab holds them
    sigma = style.edge_sigma_mm / spacing
    alpha = occupancy.astype(np.float64)
    if sigma > 0.05:
        alpha = np.maximum(alpha, ndi.gaussian_filter(alpha, sigma))
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
    slab_mm: float | None = None,
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
    slab_mm : float, optional
        The thickness each slice averages the nodule over (partial volume in
        z, :func:`slab_occupancy`); None: the scan's SliceThickness; 0: the
        outlines' own plane (for a caller that averages over its own slabs,
        e.g. insertion into another series).

    Returns
    -------
    list of NodulePatch

    Raises
    ------
    ConfigError
        If ``slab_mm`` is negative.
    """
    if slab_mm is not None and not slab_mm >= 0:
        raise ConfigError(
            f"nodule_patches: slab_mm must be >= 0 mm or None, got {slab_mm}. "
            "Fix: None for the scan's slice thickness, 0 for the outlines' own plane."
        )
    thickness = scan.slice_thickness if slab_mm is None else slab_mm
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
        if slice_indices is not None and not slice_indices.intersection(masks):
            continue
        shapes = {k: _lobulate(m, style) for k, (m, _) in masks.items()}
        occupancy = slab_occupancy(shapes, scan.slice_zvals, thickness)
        for k, (_, consensus) in sorted(masks.items()):
            srng = np.random.default_rng([seed, scan_key(scan.series_uid), n, k])
            if slice_indices is not None and k not in slice_indices:
                continue
            alpha, hu = _draw_slice(
                shapes[k], occupancy[k], style, scan.pixel_spacing, radius, srng
            )
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


@dataclass(frozen=True)
class NoduleHU:
    """A rendered nodule's density on its central slice.

    Attributes
    ----------
    nodule_id : str
    slice_index : int
        The central slice (index into the scan's ``slice_zvals``).
    texture : float
        Mean texture rating (1 ground glass ... 5 solid).
    diameter_mm : float
        Mean of the readers' greatest axial diameters.
    core_hu : float
        Median HU of the inner 50 % of the consensus mask's pixels (the deepest
        half, by distance to the outline).
    centre_hu : float
        Median HU of the deepest 10 % (at least one pixel): the solid part of a
        part-solid nodule.
    core_pixels : int
        Pixels ``core_hu`` is the median of (on the rendered grid).
    """

    nodule_id: str
    slice_index: int
    texture: float
    diameter_mm: float
    core_hu: float
    centre_hu: float
    core_pixels: int


def central_slice(scan: LidcScan, nodule: Nodule) -> int:
    """The slice where the nodule's >= 50 % consensus mask is largest (its widest section).

    Ties go to the slice nearest the middle of the outlined ones; slices
    outlined by a minority of readers only count if no slice has a consensus.
    """
    _, masks = nodule_masks(scan, nodule, "consensus")
    ks = sorted(k for k, (_, consensus) in masks.items() if consensus) or sorted(masks)
    mid = 0.5 * (ks[0] + ks[-1])
    return max(ks, key=lambda k: (int(masks[k][0].sum()), -abs(k - mid)))


def deepest_pixels(mask: np.ndarray, fraction: float) -> np.ndarray:
    """The ``fraction`` of a mask's pixels farthest from its outline (at least one pixel).

    Pixels are ranked by their distance to the outline, ties broken by
    closeness to the mask's centroid, and the first ``ceil(fraction * n)``
    are kept, so the share is exact even on a mask a few pixels wide.

    Parameters
    ----------
    mask : numpy.ndarray
        2-D bool.
    fraction : float
        Share of the mask's pixels to keep, in (0, 1].

    Returns
    -------
    numpy.ndarray
        Bool, a subset of ``mask``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(
            f"deepest_pixels: fraction must be in (0, 1], got {fraction}. "
            "Fix: pass e.g. 0.5 for the inner half."
        )
    out = np.zeros_like(mask, dtype=bool)
    if not mask.any():
        return out
    depth = ndi.distance_transform_edt(mask)
    rows, cols = np.nonzero(mask)
    r_c, c_c = rows.mean(), cols.mean()
    order = np.lexsort((np.hypot(rows - r_c, cols - c_c), -depth[rows, cols]))
    keep = order[: max(1, int(np.ceil(fraction * rows.size)))]
    out[rows[keep], cols[keep]] = True
    return out


def nodule_core_hu(
    scan: LidcScan, nodule: Nodule, hu_slice: np.ndarray, slice_index: int | None = None
) -> NoduleHU:
    """Core and centre HU of a rendered nodule on one slice (default: its central slice).

    Parameters
    ----------
    scan : LidcScan
    nodule : Nodule
    hu_slice : numpy.ndarray
        The rendered (or read-back DICOM) slice in HU, ``(512, 512)`` or
        ``(256, 256)`` (the mask is then reduced by 2 x 2 majority).
    slice_index : int, optional
        Which slice ``hu_slice`` is; default :func:`central_slice`.

    Returns
    -------
    NoduleHU

    Raises
    ------
    ConfigError
        If the slice's grid is not 512 or 256 square, or the nodule has no
        pixels on that slice.
    """
    k = central_slice(scan, nodule) if slice_index is None else int(slice_index)
    m = hu_slice.shape[0]
    if hu_slice.ndim != 2 or hu_slice.shape[1] != m or m not in (LIDC_MATRIX, LIDC_MATRIX // 2):
        raise ConfigError(
            f"nodule_core_hu({nodule.nodule_id}): expected a 512 x 512 or 256 x 256 slice, "
            f"got shape {hu_slice.shape}. Fix: pass one slice of the rendered volume."
        )
    box, masks = nodule_masks(scan, nodule, "consensus")
    if k not in masks:
        raise ConfigError(
            f"nodule_core_hu({nodule.nodule_id}): slice {k} is not one its readers outlined "
            f"(expected one of {sorted(masks)}). Fix: pass slice_index=None for the central one."
        )
    full = np.zeros((LIDC_MATRIX, LIDC_MATRIX), dtype=bool)
    r0, c0, h, w = box
    full[r0 : r0 + h, c0 : c0 + w] = masks[k][0]
    factor = LIDC_MATRIX // m
    if factor > 1:
        full = full.reshape(m, factor, m, factor).mean(axis=(1, 3)) >= 0.5
        if not full.any():
            raise ConfigError(
                f"nodule_core_hu({nodule.nodule_id}): the outline on slice {k} vanishes on a "
                f"{m} grid. Fix: render at matrix 512."
            )
    hu = np.asarray(hu_slice, dtype=np.float64)
    core = deepest_pixels(full, 0.5)
    centre = deepest_pixels(full, 0.1)
    return NoduleHU(
        nodule_id=nodule.nodule_id,
        slice_index=k,
        texture=float(nodule.mean_ratings["texture"]),
        diameter_mm=float(nodule.diameter_mm),
        core_hu=float(np.median(hu[core])),
        centre_hu=float(np.median(hu[centre])),
        core_pixels=int(core.sum()),
    )
