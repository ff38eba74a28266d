"""Render one LIDC scan's phantom: anatomy + vessels + the readers' nodules + kernel + noise.

Every random choice is drawn from generators seeded by ``(config.seed, scan,
purpose[, slice])``, never from global state, so a slice's pixels do not
depend on which other slices are rendered: a ``z_margin_mm`` crop holds the
very pixels of the full scan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from lungslice.lidc.nodules import Nodule, find_nodules
from lungslice.lidc.records import LidcScan
from lungslice.phantom.anatomy import (
    ChestShape,
    Grid,
    Segments,
    chest_shape,
    rasterise_segments,
    render_slice,
    scan_key,
    slice_planes,
    streak_sources,
    vessel_tree,
)
from lungslice.phantom.config import KERNELS, Kernel, PhantomConfig
from lungslice.phantom.confounders import draw_confounders
from lungslice.phantom.nodules import LIDC_MATRIX, NodulePatch, nodule_patches, nodule_spheres
from lungslice.progress import ProgressCallback, report

__all__ = [
    "PADDING_HU",
    "RenderedScan",
    "Scanner",
    "render",
    "render_scan",
    "scan_kernel",
    "scan_scanner",
    "select_slices",
]

log = logging.getLogger(__name__)

#: HU of pixels outside the reconstruction circle (raw -2000 with intercept -1024).
PADDING_HU = -3024
_VESSEL_HU = 40.0
_AIRWAY_WALL_HU = 20.0
_AIR_NOISE_RATIO = 0.45  # air around the body is less noisy than the body's interior
_TEXTURE_HU = 32.0


#: Noise relative to an average patient, per habitus (larger patients are noisier).
_HABITUS_NOISE = {"thin": 0.85, "average": 1.0, "overweight": 1.15, "obese": 1.4}


@dataclass(frozen=True)
class Scanner:
    """One scan's acquisition, drawn per scan from the seed.

    Attributes
    ----------
    noise_scale : float
        Multiplies the kernel's noise: the dose level times the habitus factor.
    motion_mm : float
        Gaussian sigma (mm) of breathing/cardiac blur along the anterior-posterior
        axis, strongest by the heart (0: no motion).
    streak_hu : float
        Depth (HU) of the photon-starvation streaks between dense structures
        (the humeri of arms beside the chest, the shoulders at the apices).
    """

    noise_scale: float = 1.0
    motion_mm: float = 0.0
    streak_hu: float = 0.0


def scan_scanner(scan: LidcScan, config: PhantomConfig, shape: ChestShape) -> Scanner:
    """Draw the scan's dose, motion and streak strength (seeded by seed and scan)."""
    rng = np.random.default_rng([config.seed, scan_key(scan.series_uid), 7])
    dose = float(rng.uniform(0.75, 1.35))
    motion = float(rng.uniform(0.5, 1.5)) if rng.random() < 0.3 else 0.0
    heavy = 1.4 if shape.habitus in ("overweight", "obese") else 1.0
    streak = float(rng.uniform(50.0, 140.0)) * heavy
    return Scanner(
        noise_scale=dose * _HABITUS_NOISE.get(shape.habitus, 1.0),
        motion_mm=motion,
        streak_hu=streak,
    )


def _streak_pattern(
    grid: Grid, sources: list[tuple[float, float]], rng: np.random.Generator
) -> np.ndarray:
    """Photon-starvation streaks of unit depth between dense sources: a dark band along
    the line joining each pair and three thin alternating streaks fanning out of each."""
    gx, gy = grid.coords()
    out = np.zeros((grid.matrix, grid.matrix), dtype=np.float32)
    for i in range(len(sources)):
        for j in range(i + 1, len(sources)):
            (x1, y1), (x2, y2) = sources[i], sources[j]
            length = float(np.hypot(x2 - x1, y2 - y1))
            if length < 1.0:
                continue
            nx, ny = (x2 - x1) / length, (y2 - y1) / length
            d = (gx - x1) * np.float32(ny) - (gy - y1) * np.float32(nx)
            width = np.float32(rng.uniform(4.0, 9.0))
            out -= np.exp(-((d / width) ** 2))
    for x1, y1 in sources:
        base = float(rng.uniform(0.0, np.pi))
        r = np.sqrt((gx - x1) ** 2 + (gy - y1) ** 2)
        for k in range(3):
            ang = base + k * np.pi / 3.0 + float(rng.normal(0.0, 0.15))
            d = (gx - x1) * np.float32(np.sin(ang)) - (gy - y1) * np.float32(np.cos(ang))
            a = np.float32((1.0 if k % 2 else -1.0) * 0.5 * rng.uniform(0.4, 1.0))
            out += a * np.exp(-((d / np.float32(1.2)) ** 2) - r / np.float32(160.0))
    return out


class _Streaks:
    """A scan's streaks: one pattern per set of sources (computed once), scaled per
    slice by the sources' weight and a drawn gain."""

    def __init__(self, grid: Grid, amp: float, seed: list[int]) -> None:
        self.grid, self.amp, self.seed = grid, amp, seed
        self.cache: dict[tuple[tuple[float, float], ...], np.ndarray] = {}

    def __call__(
        self, sources: list[tuple[float, float, float]], rng: np.random.Generator
    ) -> np.ndarray | None:
        if not sources or self.amp <= 0:
            return None
        key = tuple((round(x, 3), round(y, 3)) for x, y, _ in sources)
        if key not in self.cache:
            # seeded by the sources themselves, so a slice's streaks never depend on which
            # other slices were rendered before it
            tag = int(abs(sum(1000.0 * x + 7.0 * y for x, y in key))) % (2**32)
            pattern_rng = np.random.default_rng([*self.seed, len(key), tag])
            self.cache[key] = _streak_pattern(self.grid, list(key), pattern_rng)
        weight = min(w for _, _, w in sources) * float(rng.uniform(0.6, 1.2))
        return self.cache[key] * np.float32(self.amp * weight)


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
    shape : ChestShape or None
        The patient's drawn chest (habitus, arms, rotation, ...).
    scanner : Scanner or None
        The drawn acquisition (dose, motion, streaks).
    confounders : dict
        How many of each non-nodule look-alike were drawn.
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
    shape: ChestShape | None = None
    scanner: Scanner | None = None
    confounders: dict[str, int] = field(default_factory=dict)


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
    conf = draw_confounders(shape, vessels, np.random.default_rng([config.seed, key, 6]), spheres)
    scanner = scan_scanner(scan, config, shape)
    vessels = _join(vessels, conf.vessels)
    airways = _join(airways, conf.bronchi)
    slab = float(scan.slice_thickness)
    v_occ = rasterise_segments(vessels, grid, zs, slab=slab)
    a_wall = rasterise_segments(airways, grid, zs, grow=1.3, slab=slab)
    a_lumen = rasterise_segments(airways, grid, zs, slab=slab)
    extra: list[tuple[np.ndarray, float]] = []
    if len(conf.scars):
        extra.append((rasterise_segments(conf.scars, grid, zs, slab=slab), conf.scar_hu))
    if len(conf.granulomas):
        extra.append((rasterise_segments(conf.granulomas, grid, zs, slab=slab), conf.granuloma_hu))
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
    noise_hu = kernel.noise_hu * scanner.noise_scale if config.noise_hu is None else config.noise_hu
    motion_px = scanner.motion_mm / grid.spacing
    motion_w = _motion_weight(shape, planes) if motion_px > 0 else None
    streak = _Streaks(grid, scanner.streak_hu, [config.seed, key, 9])
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
        img, lung = render_slice(shape, grid, z, texture, planes, slab=slab)
        # airway walls and vessels in the lung, lumens in lung and mediastinum; the
        # occupancy is sparse, so only its pixels are touched
        flat = img.reshape(-1)
        soft = lung | ((img > -150.0) & (img < 100.0))
        for occ, value, region in (
            (a_wall[i], _AIRWAY_WALL_HU, lung),
            (v_occ[i], _VESSEL_HU, lung),
            *((e[i], hu_e, lung) for e, hu_e in extra),
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
        if motion_w is not None:
            # breathing and the beating heart blur along the anterior-posterior axis
            moved = ndi.gaussian_filter1d(img, motion_px, axis=0, mode="nearest")
            img += (moved - img) * motion_w
        rng = np.random.default_rng([config.seed, key, 4, k])
        noise = rng.standard_normal((m, m), dtype=np.float32)
        img += noise * np.where(img > -500.0, gain, air_gain)
        streaks = streak(streak_sources(shape, z), np.random.default_rng([config.seed, key, 8, k]))
        if streaks is not None:
            img += streaks * (img > -980.0)
        if blur_px > 0.05:
            img = ndi.gaussian_filter(img, blur_px, mode="nearest")
        if kernel.sharpen > 0:
            wide = ndi.gaussian_filter(img, 2.5 * max(blur_px, 0.3), mode="nearest")
            img += np.float32(kernel.sharpen) * (img - wide)
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
        shape=shape,
        scanner=scanner,
        confounders={
            "granulomas": len(conf.granulomas),
            "scars": len(conf.scars),
            "end_on_vessels": len(conf.vessels) // 3,
            "end_on_bronchi": len(conf.bronchi),
            "pleural_plaques": len(shape.plaques),
            "emphysema_patches": len(shape.emphysema),
        },
    )


def _join(a: Segments, b: Segments) -> Segments:
    if not len(b):
        return a
    return Segments(
        start=np.concatenate([a.start, b.start]),
        end=np.concatenate([a.end, b.end]),
        radius=np.concatenate([a.radius, b.radius]),
        generation=np.concatenate([a.generation, b.generation]),
    )


def _motion_weight(shape: ChestShape, planes: dict[str, np.ndarray]) -> np.ndarray:
    """How much motion blur each pixel gets: most by the heart, some everywhere."""
    d = np.sqrt((planes["xb"] - shape.heart_cx) ** 2 + (planes["yb"] - shape.heart_cy) ** 2)
    return np.clip(1.3 - d / 90.0, 0.3, 1.0).astype(np.float32)


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
