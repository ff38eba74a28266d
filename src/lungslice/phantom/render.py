"""Render one LIDC scan's phantom: anatomy + vessels + the readers' nodules + kernel + noise.

Every random choice is drawn from generators seeded by ``(config.seed, scan,
purpose[, slice])``, never from global state, so a slice's pixels do not
depend on which other slices are rendered: a ``z_margin_mm`` crop holds the
very pixels of the full scan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from lungslice.lidc.nodules import Nodule, find_nodules
from lungslice.lidc.records import LidcScan
from lungslice.phantom.anatomy import (
    Grid,
    chest_shape,
    rasterise_segments,
    render_slice,
    scan_key,
    slice_planes,
    vessel_tree,
)
from lungslice.phantom.config import KERNELS, Kernel, PhantomConfig
from lungslice.phantom.nodules import LIDC_MATRIX, NodulePatch, nodule_patches, nodule_spheres
from lungslice.progress import ProgressCallback, report

__all__ = ["PADDING_HU", "RenderedScan", "render", "render_scan", "scan_kernel", "select_slices"]

log = logging.getLogger(__name__)

#: HU of pixels outside the reconstruction circle (raw -2000 with intercept -1024).
PADDING_HU = -3024
_VESSEL_HU = 40.0
_AIRWAY_WALL_HU = 20.0
_AIR_NOISE_RATIO = 0.45  # air around the body is less noisy than the body's interior
_TEXTURE_HU = 45.0


@dataclass(frozen=True, eq=False)
class RenderedScan:
    """A rendered phantom series and what decided it.

    Attributes
    ----------
    hu : numpy.ndarray
        ``(n, M, M)`` int16 HU; ``PADDING_HU`` outside the reconstruction circle.
    z_positions : numpy.ndarray
        ``(n,)`` float64 slice z (mm), ascending.
    slice_indices : numpy.ndarray
        ``(n,)`` indices of the slices into the scan's ``slice_zvals``.
    pixel_spacing : float
        mm per pixel on the render grid.
    kernel : Kernel
    nodules : list of Nodule
        The scan's nodules (drawn or not, see ``PhantomConfig.nodules``).
    z_ranges : list of (float, float)
        The z intervals kept (the whole scan, or the ``z_margin_mm`` bands).
    cropped : bool
        Whether slices were left out.
    lung_pockets : int
        Nodules whose centre the adapted chest still left outside the lung, so a
        pocket of lung was added around them (a local marker; see docs/phantom.md).
    """

    hu: np.ndarray
    z_positions: np.ndarray
    slice_indices: np.ndarray
    pixel_spacing: float
    kernel: Kernel
    nodules: list[Nodule]
    z_ranges: list[tuple[float, float]]
    cropped: bool
    lung_pockets: int = 0


def scan_kernel(scan: LidcScan, config: PhantomConfig) -> Kernel:
    """The kernel a scan is rendered with (``"auto"``: drawn per scan from the seed)."""
    if config.kernel != "auto":
        return KERNELS[config.kernel]
    names = sorted(KERNELS)
    pick = np.random.default_rng([config.seed, scan_key(scan.series_uid), 5]).integers(len(names))
    return KERNELS[names[int(pick)]]


def select_slices(
    scan: LidcScan, nodules: list[Nodule], z_margin_mm: float | None
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Indices of the slices to write and the z interval they come from.

    ``None`` keeps every slice. Otherwise one contiguous block from
    ``z_margin_mm`` below the lowest nodule contour to ``z_margin_mm`` above
    the highest (contiguous, so the crop loads as a gap-free series); a scan
    without nodules keeps the slices within ``z_margin_mm`` of its middle.
    """
    z = scan.slice_zvals
    if z_margin_mm is None:
        return np.arange(z.size), [(float(z.min()), float(z.max()))] if z.size else []
    m = float(z_margin_mm)
    if nodules:
        lo_z = min(n.z_min for n in nodules) - m
        hi_z = max(n.z_max for n in nodules) + m
    else:
        mid = 0.5 * (float(z.min()) + float(z.max()))
        lo_z, hi_z = mid - m, mid + m
    merged = [(lo_z, hi_z)]
    keep = np.zeros(z.size, dtype=bool)
    eps = 1e-6
    for lo, hi in merged:
        keep |= (z >= lo - eps) & (z <= hi + eps)
    if not keep.any() and z.size:
        # a margin thinner than the slice gap still keeps the nearest slice
        for lo, hi in merged:
            keep[int(np.abs(z - 0.5 * (lo + hi)).argmin())] = True
    return np.flatnonzero(keep), merged


def _noise_gain(sigma_px: float) -> float:
    """Factor that brings white noise blurred by ``sigma_px`` back to unit std."""
    if sigma_px <= 0.05:
        return 1.0
    radius = int(4.0 * sigma_px + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_px) ** 2)
    k /= k.sum()
    return float(1.0 / (k**2).sum())  # 2D separable: std = sum(k^2)


def _texture_fields(
    grid: Grid, rng: np.random.Generator, n: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sigma = 1.6 / grid.spacing
    fields = np.empty((n, grid.matrix, grid.matrix), dtype=np.float32)
    for i in range(n):
        f = ndi.gaussian_filter(rng.standard_normal((grid.matrix, grid.matrix)), sigma)
        fields[i] = f / f.std()
    freq = rng.uniform(1 / 40.0, 1 / 12.0, n) * 2 * np.pi
    phase = rng.uniform(0, 2 * np.pi, n)
    return fields, freq, phase


def render(
    scan: LidcScan,
    config: PhantomConfig = PhantomConfig(),
    slice_indices: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
) -> RenderedScan:
    """Render a scan's phantom (all slices, the ``z_margin_mm`` selection, or given ones).

    Parameters
    ----------
    scan : LidcScan
        Geometry and annotations, from :func:`lungslice.lidc.db.read_database`.
    config : PhantomConfig
    slice_indices : numpy.ndarray, optional
        Render exactly these slices (indices into ``scan.slice_zvals``),
        overriding ``config.z_margin_mm``.
    progress : ProgressCallback, optional
        Called per slice.

    Returns
    -------
    RenderedScan
    """
    key = scan_key(scan.series_uid)
    nodules = find_nodules(scan)
    z_all = np.asarray(scan.slice_zvals, dtype=np.float64)
    if slice_indices is None:
        sel, z_ranges = select_slices(scan, nodules, config.z_margin_mm)
    else:
        sel = np.unique(np.asarray(slice_indices, dtype=np.int64))
        z_ranges = [(float(z_all[i]), float(z_all[i])) for i in sel]
    zs = z_all[sel]
    grid = Grid(config.matrix, scan.pixel_spacing * LIDC_MATRIX / config.matrix)
    kernel = scan_kernel(scan, config)

    # the anatomy never depends on config.nodules, so a scan with and without its
    # nodules differs only in the nodules' pixels
    spheres = nodule_spheres(scan, nodules)
    shape = chest_shape(
        (float(z_all.min()), float(z_all.max())),
        np.random.default_rng([config.seed, key, 1]),
        spheres,
        fov_half=LIDC_MATRIX / 2.0 * scan.pixel_spacing,
    )
    vessels, airways = vessel_tree(shape, np.random.default_rng([config.seed, key, 2]))
    slab = float(scan.slice_thickness)
    v_occ = rasterise_segments(vessels, grid, zs, slab=slab)
    a_wall = rasterise_segments(airways, grid, zs, grow=1.3, slab=slab)
    a_lumen = rasterise_segments(airways, grid, zs, slab=slab)
    fields, freq, phase = _texture_fields(grid, np.random.default_rng([config.seed, key, 3]))

    by_slice: dict[int, list[NodulePatch]] = {}
    if config.nodules and nodules:
        for p in nodule_patches(
            scan,
            nodules,
            matrix=config.matrix,
            seed=config.seed,
            slice_indices={int(i) for i in sel},
            mode=config.mask_mode,
            reader=config.reader,
        ):
            by_slice.setdefault(p.slice_index, []).append(p)

    m = grid.matrix
    x, y = grid.coords()
    fov = (x**2 + y**2) > (m / 2.0 * grid.spacing) ** 2
    planes = slice_planes(shape, grid)
    blur_px = kernel.blur_mm / grid.spacing
    noise_hu = kernel.noise_hu if config.noise_hu is None else config.noise_hu
    # white noise blurred with the image: the kernel's blur sets its grain
    gain = np.float32(_noise_gain(blur_px) * noise_hu)
    air_gain = np.float32(_AIR_NOISE_RATIO) * gain
    out = np.empty((zs.size, m, m), dtype=np.int16)
    for i, (k, z) in enumerate(zip(sel.tolist(), zs.tolist(), strict=True)):
        w = np.cos(freq * z + phase)
        w = (w / np.sqrt((w**2).sum() + 1e-6) * _TEXTURE_HU).astype(np.float32)
        texture = fields[0] * w[0]
        for j in range(1, len(w)):
            texture += fields[j] * w[j]
        img, lung = render_slice(shape, grid, z, texture, planes)
        # airway walls and vessels in the lung, lumens in lung and mediastinum; the
        # occupancy is sparse, so only its pixels are touched
        flat = img.reshape(-1)
        soft = lung | ((img > -150.0) & (img < 100.0))
        for occ, value, region in (
            (a_wall[i], _AIRWAY_WALL_HU, lung),
            (v_occ[i], _VESSEL_HU, lung),
            (a_lumen[i], -1000.0, soft),
        ):
            idx = np.flatnonzero(occ)
            if idx.size:
                wgt = occ.reshape(-1)[idx] * np.float32(1 / 255) * region.reshape(-1)[idx]
                flat[idx] += (np.float32(value) - flat[idx]) * wgt
        for p in by_slice.get(k, []):
            h, w_ = p.alpha.shape
            r1, c1 = min(p.row0 + h, m), min(p.col0 + w_, m)
            region = img[p.row0 : r1, p.col0 : c1]
            a = p.alpha[: r1 - p.row0, : c1 - p.col0]
            target = np.maximum(region, p.hu[: r1 - p.row0, : c1 - p.col0])
            region += (target - region) * a
        rng = np.random.default_rng([config.seed, key, 4, k])
        noise = rng.standard_normal((m, m), dtype=np.float32)
        img += noise * np.where(img > -500.0, gain, air_gain)
        if blur_px > 0.05:
            img = ndi.gaussian_filter(img, blur_px, mode="nearest")
        np.clip(img, -1024.0, 3071.0, out=img)
        if config.fov_padding:
            img[fov] = PADDING_HU
        out[i] = np.rint(img).astype(np.int16)
        report(progress, i + 1, zs.size, scan.patient_id)
    return RenderedScan(
        hu=out,
        z_positions=zs,
        slice_indices=sel,
        pixel_spacing=grid.spacing,
        kernel=kernel,
        nodules=nodules,
        z_ranges=z_ranges,
        cropped=bool(sel.size < z_all.size),
        lung_pockets=len(shape.pockets),
    )


def render_scan(
    scan: LidcScan, config: PhantomConfig = PhantomConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """Render a scan's phantom in memory, without writing files.

    Parameters
    ----------
    scan : LidcScan
    config : PhantomConfig
        ``z_margin_mm`` decides which slices are rendered.

    Returns
    -------
    hu : numpy.ndarray
        ``(n, M, M)`` int16 HU, slices ascending in z.
    z_positions : numpy.ndarray
        ``(n,)`` float64 slice z (mm).
    """
    r = render(scan, config)
    return r.hu, r.z_positions
