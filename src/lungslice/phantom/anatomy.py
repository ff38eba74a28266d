"""The phantom's chest: analytic body, lungs, mediastinum and bones plus a vessel tree.

Everything is a smooth analytic shape in patient millimetres (x to the
patient's left = image columns, y to the back = image rows, z = slice
position), evaluated on whole slices with NumPy. The vessel tree is grown by
recursively splitting points sampled inside each lung (every branch heads for
the centre of the lung territory it supplies), so it fills the lungs as real
pulmonary vessels do; its cross-sections are the bright round blobs on single
slices that move from slice to slice, the confounder that makes slice-level
nodule classification hard.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = [
    "HU",
    "ChestShape",
    "Grid",
    "Segments",
    "chest_shape",
    "lung_mask",
    "rasterise_segments",
    "render_slice",
    "scan_key",
    "slice_planes",
    "vessel_tree",
]

#: Tissue values (HU) the phantom paints with.
HU: dict[str, float] = {
    "air": -1000.0,
    "lung": -865.0,
    "fat": -100.0,
    "mediastinal_fat": -85.0,
    "skin": 30.0,
    "muscle": 45.0,
    "blood": 40.0,
    "liver": 58.0,
    "spleen": 45.0,
    "cortical_bone": 750.0,
    "marrow": 230.0,
    "csf": 12.0,
    "cartilage": 110.0,
    "table": 250.0,
    "foam": -940.0,
}


def scan_key(series_uid: str) -> int:
    """A stable 63-bit integer from a series UID, used to seed per-scan randomness."""
    return int.from_bytes(hashlib.sha256(series_uid.encode()).digest()[:8], "little") >> 1


@dataclass(frozen=True)
class Grid:
    """The in-plane pixel grid: ``matrix`` x ``matrix`` pixels of ``spacing`` mm.

    Pixel centres are symmetric about the isocentre (x = y = 0), as
    ImagePositionPatient = ``(origin, origin, z)`` states.
    """

    matrix: int
    spacing: float

    @property
    def origin(self) -> float:
        """x (and y) of the centre of the first pixel (mm)."""
        return -(self.matrix - 1) / 2.0 * self.spacing

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """``X`` with shape ``(1, M)`` and ``Y`` with shape ``(M, 1)`` in mm (float32)."""
        c = (self.origin + self.spacing * np.arange(self.matrix)).astype(np.float32)
        return c[None, :], c[:, None]


@dataclass(frozen=True)
class ChestShape:
    """One patient's chest: sizes and positions (mm) drawn from the seed.

    ``pockets`` are ``(x, y, z, radius)`` spheres of lung added around nodules
    that the generic lung outline would otherwise leave in soft tissue.
    """

    half_width: float
    half_depth: float
    centre_y: float
    skin: float
    fat: float
    muscle: float
    rib_depth: float
    lung_cx: float
    lung_cy: float
    lung_ax: float
    lung_ay: float
    heart_cx: float
    heart_cy: float
    heart_ax: float
    heart_ay: float
    spine_y: float
    mediastinum_half: float
    back_muscle: float
    table_y: float
    rib_pitch: float
    rib_phase: float
    z_base: float
    z_apex: float
    lung_hu: float = HU["lung"]
    pockets: tuple[tuple[float, float, float, float], ...] = field(default=())

    def u(self, z: np.ndarray | float) -> np.ndarray:
        """Position between the lung bases (0) and apices (1)."""
        return (np.asarray(z, dtype=np.float32) - self.z_base) / (self.z_apex - self.z_base)


def chest_shape(
    z_range: tuple[float, float],
    rng: np.random.Generator,
    nodule_points: np.ndarray | None = None,
    fov_half: float = 180.0,
) -> ChestShape:
    """Draw a patient's chest whose lungs span the scan and contain its nodules.

    Parameters
    ----------
    z_range : (float, float)
        Lowest and highest slice z of the scan (mm).
    rng : numpy.random.Generator
        The scan's generator.
    fov_half : float
        Half the reconstructed field of view (mm): technologists fit it to the
        patient, so the body is drawn to fill most of it.
    nodule_points : numpy.ndarray, optional
        ``(n, 4)`` nodule centres ``(x, y, z)`` and radii (mm); the body is made
        large enough, the lungs long enough and, where needed, a pocket of lung
        is added so each nodule sits in the lung.

    Returns
    -------
    ChestShape
    """
    z_lo, z_hi = float(z_range[0]), float(z_range[1])
    length = max(z_hi - z_lo, 1.0)
    a = float(rng.uniform(0.78, 0.93)) * fov_half
    b = a * float(rng.uniform(0.62, 0.72))
    centre_y = float(rng.uniform(-15.0, 5.0))
    # LIDC scans run from above the apices to below the bases, a few cm either side
    z_base = z_lo + float(rng.uniform(0.06, 0.14)) * length
    z_apex = z_hi - float(rng.uniform(0.03, 0.08)) * length
    if nodule_points is not None and len(nodule_points):
        pts = np.asarray(nodule_points, dtype=np.float64)
        a = max(a, float(np.abs(pts[:, 0]).max() + pts[:, 3].max()) + 32.0)
        b = max(b, float(np.abs(pts[:, 1] - centre_y).max() + pts[:, 3].max()) + 32.0)
        z_base = min(z_base, float((pts[:, 2] - pts[:, 3]).min()) - 25.0)
        z_apex = max(z_apex, float((pts[:, 2] + pts[:, 3]).max()) + 25.0)
    z_base = max(z_base, z_lo - 40.0)
    if z_apex - z_base < 60.0:
        z_apex = z_base + 60.0
    fat = float(rng.uniform(6.0, 26.0))
    muscle = float(rng.uniform(10.0, 18.0))
    shape = ChestShape(
        half_width=a,
        half_depth=b,
        centre_y=centre_y,
        skin=2.0,
        fat=fat,
        muscle=muscle,
        rib_depth=9.0,
        lung_cx=0.47 * a,
        lung_cy=centre_y + 0.05 * b,
        lung_ax=0.56 * a,
        lung_ay=1.05 * b,
        heart_cx=float(rng.uniform(12.0, 28.0)),
        heart_cy=centre_y - 0.22 * b,
        heart_ax=float(rng.uniform(52.0, 64.0)),
        heart_ay=float(rng.uniform(42.0, 52.0)),
        spine_y=centre_y + b - fat - muscle - 48.0,
        mediastinum_half=float(rng.uniform(16.0, 22.0)),
        back_muscle=38.0,
        table_y=centre_y + b + float(rng.uniform(4.0, 12.0)),
        rib_pitch=float(rng.uniform(24.0, 30.0)),
        rib_phase=float(rng.uniform(0.0, 1.0)),
        z_base=z_base,
        z_apex=z_apex,
        # inspiration depth and age make some lungs more lucent than others
        lung_hu=float(rng.uniform(-895.0, -840.0)),
    )
    if nodule_points is None or not len(nodule_points):
        return shape
    # the centre and four in-plane points half-way to each nodule's edge must be lung. The
    # whole chest is adapted first (thinner walls and mediastinum, larger lungs), so
    # nothing local marks where nodules are; only what is still outside gets a
    # pocket of lung just larger than the nodule
    steps = 0.5 * np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]])
    nods = np.asarray(nodule_points, dtype=np.float64)
    probes = (nods[:, None, :3] + nods[:, None, 3:4] * steps[None]).astype(np.float32)

    def outside(sh: ChestShape) -> np.ndarray:
        inside = lung_mask(sh, probes[..., 0], probes[..., 1], probes[..., 2])
        return np.flatnonzero(~inside.all(axis=1))

    for _ in range(5):
        bad = outside(shape)
        if not bad.size:
            break
        # probes in the chest wall: widen the body just enough (<= 10 % a step)
        pb = probes[bad].reshape(-1, 3)
        dy = pb[:, 1] - shape.centre_y
        depth = _body_depth(shape, pb[:, 0], pb[:, 1])
        need = _wall(shape, pb[:, 0], pb[:, 1]) + 2.0
        rho = np.maximum(np.hypot(pb[:, 0], dy), 1.0)
        short = depth < need
        grow = 1.0
        if short.any() and shape.half_width < 1.25 * fov_half:
            # depth = rho (1/r - 1) along the ray; r scales as 1 / grow
            r_now = rho / np.maximum(rho + depth, 1e-3)
            grow = float(np.clip((r_now * (1.0 + need / rho))[short].max(), 1.0, 1.1))
        extra = (grow - 1.0) * shape.half_depth
        shape = replace(
            shape,
            half_width=shape.half_width * grow,
            half_depth=shape.half_depth * grow,
            spine_y=shape.spine_y + extra,
            table_y=shape.table_y + extra,
            fat=shape.fat * 0.75,
            muscle=max(shape.muscle * 0.85, 5.0),
            back_muscle=shape.back_muscle * 0.7,
            mediastinum_half=max(shape.mediastinum_half * 0.85, 6.0),
            heart_ax=shape.heart_ax * 0.9,
            heart_ay=shape.heart_ay * 0.9,
            lung_ax=shape.lung_ax * 1.06,
            lung_ay=shape.lung_ay * 1.06,
        )
    # a nodule whose centre is lung but whose edge is not stays where it is: it abuts
    # the wall (or mediastinum, spine) as a juxtapleural nodule does
    centres = nods[:, :3].astype(np.float32)
    buried = ~lung_mask(shape, centres[:, 0], centres[:, 1], centres[:, 2])
    pockets = tuple((float(x), float(y), float(z), float(r) + 4.0) for x, y, z, r in nods[buried])
    return replace(shape, pockets=pockets)


def _body_depth(shape: ChestShape, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Depth (mm) below the skin along the ray from the body centre (< 0 outside)."""
    dx = x / shape.half_width
    dy = (y - shape.centre_y) / shape.half_depth
    # a superellipse: flatter back and sides than an ellipse
    p = 2.4
    r = (np.abs(dx) ** p + np.abs(dy) ** p) ** (1.0 / p)
    rho = np.sqrt(x * x + (y - shape.centre_y) ** 2)
    return rho * (1.0 / np.maximum(r, 1e-3) - 1.0)


def _wall(shape: ChestShape, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Chest-wall thickness (skin + fat + muscle + ribs) at each in-plane point."""
    base = shape.skin + shape.fat + shape.muscle + shape.rib_depth
    # paraspinal muscles make the back wall thick beside the spine
    back = np.clip((y - shape.centre_y) / shape.half_depth, 0.0, 1.0)
    return base + shape.back_muscle * np.exp(-((x / 55.0) ** 2)) * back


def _lung_scale(u: np.ndarray) -> np.ndarray:
    # apices taper to a point; bases are cut by the diaphragm domes below
    apex = np.sqrt(np.clip((1.0 - u) / 0.3, 0.0, 1.0))
    return np.where((u >= -0.05) & (u <= 1.0), apex, 0.0)


def _dome(shape: ChestShape, u: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Relative size of the diaphragm dome; the right (x < 0) dome sits higher."""
    top = np.where(side < 0, 0.24, 0.19)
    return np.sqrt(np.clip((top - u) / top, 0.0, 1.0)) * 1.2


def lung_mask(
    shape: ChestShape,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray | float,
    planes: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Whether points (broadcast arrays, mm) lie in either lung.

    ``planes`` (from :func:`slice_planes`, for ``x``, ``y`` of the grid) saves
    recomputing the z-independent body outline on every slice.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    u = shape.u(z)
    s = _lung_scale(u)
    if planes is None:
        depth = _body_depth(shape, x, y)
        cavity = depth > _wall(shape, x, y)
    else:
        depth, cavity = planes["depth"], planes["cavity"]
    ax = np.abs(x)
    ell = ((ax - shape.lung_cx) / (shape.lung_ax * s + 1e-3)) ** 2 + (
        (y - shape.lung_cy) / (shape.lung_ay * s + 1e-3)
    ) ** 2 < 1.0
    d = _dome(shape, u, x)
    dome = _dome_mask(shape, ax, y, d)
    medi = np.abs(x - 0.15 * (shape.heart_cx)) < _mediastinum_half(shape, y, u)
    spine = (x / 27.0) ** 2 + ((y - shape.spine_y - 12.0) / 32.0) ** 2 < 1.0
    hs = _heart_scale(u)
    heart = ((x - shape.heart_cx) / (shape.heart_ax * hs + 1e-3)) ** 2 + (
        (y - shape.heart_cy) / (shape.heart_ay * hs + 1e-3)
    ) ** 2 < 1.0
    lung = cavity & ell & ~dome & ~medi & ~spine & ~heart
    for px, py, pz, pr in shape.pockets:
        pocket = (x - px) ** 2 + (y - py) ** 2 + (np.asarray(z, np.float32) - pz) ** 2 < pr**2
        lung = lung | (pocket & (depth > shape.skin + shape.fat + 4.0))
    return lung


def _dome_mask(shape: ChestShape, ax: np.ndarray, y: np.ndarray, d: np.ndarray) -> np.ndarray:
    # the domes rise in front: the lung bases end as crescents behind and beside them
    return ((ax - 0.8 * shape.lung_cx) / (0.8 * shape.lung_ax)) ** 2 + (
        (y - shape.lung_cy + 0.35 * shape.lung_ay) / (0.85 * shape.lung_ay)
    ) ** 2 < d**2


def _mediastinum_half(shape: ChestShape, y: np.ndarray, u: np.ndarray) -> np.ndarray:
    # a narrow anterior junction that bulges around the great vessels, aorta and
    # oesophagus in the middle, and widens above the heart
    mid = shape.centre_y + 0.05 * shape.half_depth
    bulge = np.exp(-(((y - mid) / (0.4 * shape.half_depth)) ** 2))
    upper = 1.0 + 0.4 * np.clip((u - 0.6) / 0.3, 0.0, 1.0)
    return shape.mediastinum_half * (0.3 + 1.3 * bulge) * upper


def _heart_scale(u: np.ndarray) -> np.ndarray:
    return np.where((u > 0.02) & (u < 0.56), np.sin(np.pi * np.clip((u - 0.02) / 0.54, 0, 1)), 0.0)


@dataclass(frozen=True)
class Segments:
    """Vessel (or airway) segments: ``(n, 3)`` start and end points (mm), radii, generation."""

    start: np.ndarray
    end: np.ndarray
    radius: np.ndarray
    generation: np.ndarray

    def __len__(self) -> int:
        return int(self.radius.shape[0])


def _sample_lung(shape: ChestShape, side: int, n: int, rng: np.random.Generator) -> np.ndarray:
    # rejection sampling in the lung's bounding box
    x0 = side * shape.lung_cx
    lo = np.array([x0 - shape.lung_ax, shape.lung_cy - shape.lung_ay, shape.z_base])
    hi = np.array([x0 + shape.lung_ax, shape.lung_cy + shape.lung_ay, shape.z_apex])
    kept: list[np.ndarray] = []
    total = 0
    for _ in range(40):
        p = rng.uniform(lo, hi, size=(4 * n, 3)).astype(np.float32)
        m = lung_mask(shape, p[:, 0], p[:, 1], p[:, 2]) & (np.sign(p[:, 0]) == side)
        kept.append(p[m])
        total += int(m.sum())
        if total >= n:
            break
    pts = np.concatenate(kept)[:n] if kept else np.zeros((0, 3), np.float32)
    return pts.astype(np.float64)


def _grow(
    root: np.ndarray,
    radius: float,
    points: np.ndarray,
    rng: np.random.Generator,
    leaf_points: int,
    min_radius: float,
) -> list[tuple[np.ndarray, np.ndarray, float, int]]:
    """Grow a tree one generation at a time, all branches of a generation at once."""
    out: list[tuple[np.ndarray, np.ndarray, float, int]] = []
    pts = np.asarray(points, dtype=np.float64)
    label = np.zeros(len(pts), dtype=np.int64)
    start = np.asarray(root, dtype=np.float64).reshape(1, 3)
    r = np.array([radius], dtype=np.float64)
    gen = 0
    while len(r) and len(pts):
        m = len(r)
        counts = np.bincount(label, minlength=m).astype(np.float64)
        centre = (
            np.stack([np.bincount(label, weights=pts[:, i], minlength=m) for i in range(3)], axis=1)
            / np.maximum(counts, 1.0)[:, None]
        )
        leaf = (counts <= leaf_points) | (r <= min_radius)
        frac = rng.uniform(0.3, 0.5, m)
        jitter = rng.normal(0.0, 0.6, (m, 3))
        end = np.where(
            leaf[:, None],
            start + 0.9 * (centre - start),
            start + frac[:, None] * (centre - start) + jitter,
        )
        out.extend((start[i], end[i], float(r[i]), gen) for i in range(m) if counts[i] > 0)
        # split each territory across its longest axis: each child supplies one half
        keep = ~leaf[label]
        pts, label = pts[keep], label[keep]
        if not len(pts):
            break
        d = pts - centre[label]
        cov = np.empty((m, 3, 3))
        for i in range(3):
            for j in range(i, 3):
                cov[:, i, j] = cov[:, j, i] = np.bincount(
                    label, weights=d[:, i] * d[:, j], minlength=m
                )
        axes = np.linalg.eigh(cov)[1][:, :, -1]
        proj = np.einsum("ij,ij->i", d, axes[label])
        order = np.lexsort((proj, label))
        n_in = np.bincount(label, minlength=m)
        first = np.cumsum(n_in) - n_in
        median = proj[order][np.minimum(first + n_in // 2, len(proj) - 1)]
        spread = np.sqrt(np.bincount(label, weights=proj * proj, minlength=m) / np.maximum(n_in, 1))
        cut = median + rng.normal(0.0, 0.1, m) * spread
        child = 2 * label + (proj > cut[label])
        child_counts = np.bincount(child, minlength=2 * m)
        alive = np.flatnonzero(child_counts)
        remap = np.full(2 * m, -1, dtype=np.int64)
        remap[alive] = np.arange(len(alive))
        label = remap[child]
        parent = alive // 2
        share = child_counts[alive] / np.maximum(n_in[parent], 1)
        start = end[parent]
        r = r[parent] * share ** (1.0 / 3.4)
        gen += 1
    return out


def vessel_tree(
    shape: ChestShape, rng: np.random.Generator, points_per_tree: int = 3600
) -> tuple[Segments, Segments]:
    """Pulmonary arteries and veins of both lungs, and the airways beside the arteries.

    Returns
    -------
    vessels : Segments
        Arteries and veins from each hilum to the periphery (radius 7 mm
        down to ~0.5 mm).
    airways : Segments
        Lumens of the trachea, main bronchi and the first generations of the
        bronchial tree (they run beside the arteries).
    """
    height = shape.z_apex - shape.z_base
    vessels: list[tuple[np.ndarray, np.ndarray, float, int]] = []
    airways: list[tuple[np.ndarray, np.ndarray, float, int]] = []
    carina = np.array([0.0, shape.spine_y - 40.0, shape.z_base + 0.66 * height])
    top = np.array([0.0, shape.spine_y - 45.0, shape.z_apex + 60.0])
    airways.append((top, carina, 8.0, 0))
    for side in (-1, 1):
        hx = side * (shape.mediastinum_half + 8.0)
        for kind, zf, dy, r0 in (("artery", 0.56, -6.0, 7.0), ("vein", 0.42, -18.0, 6.0)):
            pts = _sample_lung(shape, side, points_per_tree, rng)
            root = np.array([hx, shape.lung_cy + dy, shape.z_base + zf * height])
            tree = _grow(root, r0, pts, rng, leaf_points=5, min_radius=0.45)
            vessels.extend(tree)
            if kind == "artery":
                hilum = np.array([hx + side * 6.0, shape.lung_cy - 10.0, root[2]])
                airways.append((carina, hilum, 5.5, 1))
                for start, end, r, gen in tree:
                    if 1 <= gen <= 4:
                        # the bronchus runs beside its artery, slightly anterior and medial
                        off = np.array([-side * (r + 2.5), -(r + 1.5), 0.0])
                        airways.append((start + off, end + off, 0.85 * r, gen + 1))

    def pack(rows: list[tuple[np.ndarray, np.ndarray, float, int]]) -> Segments:
        return Segments(
            start=np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 3),
            end=np.array([r[1] for r in rows], dtype=np.float64).reshape(-1, 3),
            radius=np.array([r[2] for r in rows], dtype=np.float64),
            generation=np.array([r[3] for r in rows], dtype=np.int64),
        )

    return pack(vessels), pack(airways)


def rasterise_segments(
    segments: Segments,
    grid: Grid,
    z_positions: np.ndarray,
    grow: float = 0.0,
    slab: float = 0.0,
) -> np.ndarray:
    """Partial-volume occupancy (0-255) of segments on the given slices.

    Each voxel gets ``clip((r - d) / pixel + 0.5, 0, 1)`` with ``d`` its
    distance to the nearest segment, averaged over three depths across the
    slice's thickness (``slab``), as a thick slice averages what it cuts;
    only each segment's bounding box is visited.

    Parameters
    ----------
    segments : Segments
    grid : Grid
    z_positions : numpy.ndarray
        Sorted ascending z (mm) of the slices to draw.
    grow : float
        Added to every radius (mm), e.g. a wall around a lumen.
    slab : float
        Slice thickness (mm); 0 samples the slice centre only.

    Returns
    -------
    numpy.ndarray
        ``(n_slices, M, M)`` uint8.
    """
    zs = np.asarray(z_positions, dtype=np.float64)
    m = grid.matrix
    out = np.zeros((zs.size, m, m), dtype=np.uint8)
    px = grid.spacing
    depths = np.array([-slab / 3.0, 0.0, slab / 3.0]) if slab > 0 else np.zeros(1)
    for a, b, r0 in zip(segments.start, segments.end, segments.radius + grow, strict=True):
        r = float(r0)
        reach = r + px + float(depths.max())
        z_lo, z_hi = min(a[2], b[2]) - reach, max(a[2], b[2]) + reach
        k0, k1 = np.searchsorted(zs, [z_lo, z_hi])
        if k1 <= k0:
            continue
        c0 = int(np.floor((min(a[0], b[0]) - reach - grid.origin) / px))
        c1 = int(np.ceil((max(a[0], b[0]) + reach - grid.origin) / px)) + 1
        r0_ = int(np.floor((min(a[1], b[1]) - reach - grid.origin) / px))
        r1_ = int(np.ceil((max(a[1], b[1]) + reach - grid.origin) / px)) + 1
        c0, r0_ = max(c0, 0), max(r0_, 0)
        c1, r1_ = min(c1, m), min(r1_, m)
        if c1 <= c0 or r1_ <= r0_:
            continue
        xs = (grid.origin + px * np.arange(c0, c1))[None, None, :] - a[0]
        ys = (grid.origin + px * np.arange(r0_, r1_))[None, :, None] - a[1]
        zz = (zs[k0:k1][None, :] + depths[:, None])[:, :, None, None] - a[2]
        d = b - a
        dd = float(d @ d)
        t = (xs * d[0] + ys * d[1] + zz * d[2]) / dd if dd > 0 else np.zeros((1, 1, 1, 1))
        t = np.clip(t, 0.0, 1.0)
        dist2 = (xs - t * d[0]) ** 2 + (ys - t * d[1]) ** 2 + (zz - t * d[2]) ** 2
        occ = np.clip((r - np.sqrt(dist2)) / px + 0.5, 0.0, 1.0).mean(axis=0)
        block = out[k0:k1, r0_:r1_, c0:c1]
        np.maximum(block, (occ * 255.0 + 0.5).astype(np.uint8), out=block)
    return out


def _ring_angle(x: np.ndarray, y: np.ndarray, cy: float) -> np.ndarray:
    # 0 at the front, +-pi at the back
    return np.arctan2(x, -(y - cy))


def slice_planes(shape: ChestShape, grid: Grid) -> dict[str, np.ndarray]:
    """The z-independent in-plane maps of a chest (depth below skin, wall, cavity, angle)."""
    x, y = grid.coords()
    depth = _body_depth(shape, x, y)
    wall = _wall(shape, x, y)
    return {
        "depth": depth,
        "wall": wall,
        "cavity": depth > wall,
        "theta": np.cos(_ring_angle(x, y, shape.centre_y) / 2.0),
        "front": np.abs(_ring_angle(x, y, shape.centre_y)) > 0.45,
    }


def render_slice(
    shape: ChestShape,
    grid: Grid,
    z: float,
    texture: np.ndarray | None = None,
    planes: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One axial slice of the chest without vessels, noise or blur.

    Parameters
    ----------
    shape : ChestShape
    grid : Grid
    z : float
        Slice position (mm).
    texture : numpy.ndarray, optional
        ``(M, M)`` HU added to the lung parenchyma.
    planes : dict, optional
        :func:`slice_planes` of this shape and grid (computed if not given).

    Returns
    -------
    hu : numpy.ndarray
        ``(M, M)`` float32.
    lung : numpy.ndarray
        ``(M, M)`` bool lung mask.
    """
    x, y = grid.coords()
    u = float(shape.u(z))
    # above the apices the body narrows into neck and shoulders
    neck = float(np.clip((u - 1.0) / 0.5, 0.0, 1.0))
    if planes is None:
        planes = slice_planes(shape, grid)
    wall = planes["wall"]
    depth = planes["depth"] if neck == 0 else _body_depth(shape, x / (1.0 - 0.2 * neck), y)
    img = np.full((grid.matrix, grid.matrix), HU["air"], dtype=np.float32)

    body = depth > 0
    img[body] = HU["muscle"]
    sub = depth < shape.skin + shape.fat
    img[body & sub] = HU["fat"]
    img[body & (depth < shape.skin)] = HU["skin"]
    cavity = planes["cavity"] if neck == 0 else depth > wall
    img[cavity] = HU["mediastinal_fat"]

    # ribs: bands running obliquely around the wall, lower at the front
    ring = (depth > wall - shape.rib_depth) & ~cavity & (depth > shape.skin + shape.fat + 3.0)
    phase = (z + 70.0 * planes["theta"]) / shape.rib_pitch + shape.rib_phase
    frac = phase - np.floor(phase)
    rib = ring & (frac < 0.3) & planes["front"] & (u < 1.15) & (u > -0.1)
    rib_core = rib & (frac > 0.06) & (frac < 0.24) & (depth > wall - shape.rib_depth + 1.5)
    img[rib] = HU["cortical_bone"]
    img[rib_core] = HU["marrow"]

    # spine: vertebral body, canal, posterior arch
    sy = shape.spine_y
    vb = (x / 18.0) ** 2 + ((y - sy) / 16.0) ** 2
    img[vb < 1.0] = HU["cortical_bone"]
    img[vb < 0.75] = HU["marrow"]
    canal = (x / 8.5) ** 2 + ((y - sy - 27.0) / 8.0) ** 2
    arch = (x / 15.0) ** 2 + ((y - sy - 29.0) / 13.0) ** 2
    img[(arch < 1.0) & (canal >= 1.0)] = HU["cortical_bone"]
    spinous = (np.abs(x) < 3.5) & (y > sy + 38.0) & (y < sy + 58.0)
    img[spinous] = HU["cortical_bone"]
    img[canal < 1.0] = HU["csf"]

    hs = float(_heart_scale(np.asarray(u)))
    if hs > 0:
        heart = ((x - shape.heart_cx) / (shape.heart_ax * hs)) ** 2 + (
            (y - shape.heart_cy) / (shape.heart_ay * hs)
        ) ** 2
        img[heart < 1.0] = HU["blood"]
    # descending aorta beside the spine; ascending aorta in front of it
    if -0.1 < u < 0.8:
        da = (x - 24.0) ** 2 + (y - sy + 24.0) ** 2 < 12.0**2
        img[da] = HU["blood"]
    if 0.45 < u < 0.78:
        aa = (x - 8.0) ** 2 + (y - shape.heart_cy + 8.0) ** 2 < 15.0**2
        img[aa] = HU["blood"]
    if 0.72 <= u < 0.82:
        arch_ = ((x - 16.0) / 26.0) ** 2 + ((y - (sy - 10.0 + shape.heart_cy) / 2) / 12.0) ** 2 < 1
        img[arch_] = HU["blood"]
    if 0.4 < u < 1.2:
        st = (x / 16.0) ** 2 + (
            (y - (shape.centre_y - shape.half_depth + shape.skin + shape.fat + 8.0)) / 6.0
        ) ** 2
        img[st < 1.0] = HU["cortical_bone"]
        img[st < 0.5] = HU["marrow"]
    # trachea above the carina (its lumen comes from the airway segments)
    if u > 0.64:
        tr = (x / 11.0) ** 2 + ((y - sy + 45.0) / 10.0) ** 2 < 1.0
        img[tr & cavity] = HU["cartilage"]

    # below the domes: liver on the right, spleen and stomach on the left
    d = _dome(shape, np.asarray(u, dtype=np.float32), x)
    dome = _dome_mask(shape, np.abs(x), y, d)
    abdomen = cavity & (dome | (u < -0.02))
    img[abdomen & (x <= 0)] = HU["liver"]
    img[abdomen & (x > 0)] = HU["spleen"]

    if -0.06 < u < 1.0 or shape.pockets:
        lung = lung_mask(shape, x, y, z, planes if neck == 0 else None)
    else:
        lung = np.zeros(img.shape, dtype=bool)
    back = np.clip((y - shape.lung_cy) / shape.lung_ay, -1.0, 1.0)
    # dependent (posterior) lung is denser, most of all in its last 2-3 cm by the wall
    near_wall = np.clip(1.0 - (depth - wall) / 25.0, 0.0, 1.0) ** 2
    behind = np.clip((y - shape.lung_cy) / (0.3 * shape.half_depth), 0.0, 1.0)
    lung_hu = shape.lung_hu + 65.0 * back + 120.0 * near_wall * behind
    if texture is not None:
        lung_hu = lung_hu + texture
    img = np.where(lung, lung_hu, img).astype(np.float32)

    # scanner table: a curved cradle of two shells with foam between
    ty = shape.table_y
    curve = ty + 22.0 * (x / 210.0) ** 2
    within = np.abs(x) < 215.0
    top_shell = within & (np.abs(y - curve) < 1.2)
    bottom_shell = within & (np.abs(y - curve - 30.0) < 1.5)
    foam = within & (y > curve + 1.2) & (y < curve + 28.5) & ~body
    img[foam] = HU["foam"]
    img[(top_shell | bottom_shell) & ~body] = HU["table"]
    return img, lung
