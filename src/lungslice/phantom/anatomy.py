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
from typing import Any

import numpy as np

__all__ = [
    "HABITUS",
    "HU",
    "ChestShape",
    "Grid",
    "Plaque",
    "Segments",
    "chest_shape",
    "lung_mask",
    "plaque_occupancy",
    "rasterise_segments",
    "render_slice",
    "sample_lung",
    "scan_key",
    "slice_planes",
    "streak_sources",
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
    "disc": 90.0,
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


def _rotate(x: Any, y: Any, angle: float) -> tuple[Any, Any]:
    """Rotate points by ``angle`` radians about the origin (keeps float32 arrays float32)."""
    c = np.asarray(np.cos(angle), dtype=np.asarray(x).dtype)
    s = np.asarray(np.sin(angle), dtype=np.asarray(x).dtype)
    return c * x - s * y, s * x + c * y


#: Body habitus classes and how often a patient is drawn from each.
HABITUS: dict[str, float] = {"thin": 0.2, "average": 0.4, "overweight": 0.22, "obese": 0.18}
#: Subcutaneous fat (mm) per habitus.
_FAT_MM = {
    "thin": (2.0, 7.0),
    "average": (6.0, 20.0),
    "overweight": (16.0, 32.0),
    "obese": (28.0, 55.0),
}
#: Depth / width of the trunk per habitus (obese trunks are rounder).
_ASPECT = {
    "thin": (0.56, 0.66),
    "average": (0.62, 0.72),
    "overweight": (0.66, 0.76),
    "obese": (0.7, 0.84),
}
#: Half-width and half-depth (mm) of the thoracic cavity inside the chest wall (skin,
#: fat, muscle, ribs): an adult's, whatever the field of view. A small field of view
#: (targeted on the lungs) must not squeeze the lungs out of an obese chest wall, nor a
#: 500 mm one blow a thin patient's lungs up to several litres a side.
CAVITY_HALF_WIDTH = (112.0, 145.0)
CAVITY_HALF_DEPTH = (62.0, 90.0)
#: Lung height (mm, base to apex): a scan longer than the chest (chest and abdomen)
#: holds lungs at most this tall, under its top; a short scan cuts longer lungs.
LUNG_HEIGHT = (200.0, 320.0)


@dataclass(frozen=True)
class ChestShape:
    """One patient's chest: sizes and positions (mm) drawn from the seed.

    Sizes are in the patient's own frame (the *body frame*: x to the patient's
    left, y to the back, the body centred on ``x = 0``); ``rotation`` (radians,
    about the body centre) and ``shift_x`` place it on the image grid, so a
    patient lying slightly rotated or off-centre on the table is drawn as such.
    ``pockets`` are ``(x, y, z, radius)`` spheres of lung (image frame) added
    around nodules that the lung outline would otherwise leave in soft tissue.
    Per-side tuples are ``(right, left)``; the patient's right is ``x < 0``.
    ``emphysema`` holds ``(x, y, z, radius, drop_hu)`` low-density patches and
    ``plaques`` pleural plaques (:class:`Plaque`, body frame).
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
    habitus: str = "average"
    rotation: float = 0.0
    shift_x: float = 0.0
    scoliosis: float = 0.0
    lung_sx: tuple[float, float] = (1.0, 1.0)
    lung_sy: tuple[float, float] = (1.0, 1.0)
    dome_top: tuple[float, float] = (0.24, 0.19)
    gradient_hu: float = 65.0
    dependent_hu: float = 120.0
    arms_down: bool = False
    arm_gap: float = 0.0
    arm_rx: float = 0.0
    arm_ry: float = 0.0
    fissures: bool = False
    fissure_level: tuple[float, float] = (0.4, 0.4)
    minor_fissure_u: float = 0.55
    emphysema: tuple[tuple[float, float, float, float, float], ...] = field(default=())
    plaques: tuple[Plaque, ...] = field(default=())

    def u(self, z: np.ndarray | float) -> np.ndarray:
        """Position between the lung bases (0) and apices (1)."""
        return (np.asarray(z, dtype=np.float32) - self.z_base) / (self.z_apex - self.z_base)

    def to_body(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Image-frame points (mm) in the patient's body frame."""
        if self.rotation == 0.0 and self.shift_x == 0.0:
            return x, y
        xb, yb = _rotate(
            x - np.float32(self.shift_x), y - np.float32(self.centre_y), -self.rotation
        )
        return xb, yb + np.float32(self.centre_y)

    def to_image(self, x: Any, y: Any) -> tuple[Any, Any]:
        """Body-frame points (mm) on the image grid (inverse of :meth:`to_body`)."""
        if self.rotation == 0.0 and self.shift_x == 0.0:
            return x, y
        xi, yi = _rotate(x, y - self.centre_y, self.rotation)
        return xi + self.shift_x, yi + self.centre_y

    def spine_x(self, u: np.ndarray | float) -> np.ndarray:
        """Lateral offset (mm) of the spine at each level (scoliosis)."""
        uu = np.clip((np.asarray(u, dtype=np.float32) + 0.2) / 1.4, 0.0, 1.0)
        return np.float32(self.scoliosis) * np.sin(np.float32(np.pi) * uu)

    def arm_centres(self) -> list[tuple[float, float]]:
        """Body-frame centres of the arms beside the chest (none with arms up)."""
        if not self.arms_down:
            return []
        cx = self.half_width + self.arm_gap + self.arm_rx
        cy = self.centre_y + 0.12 * self.half_depth
        return [(-cx, cy), (cx, cy)]


@dataclass(frozen=True)
class Plaque:
    """A pleural plaque on the parietal pleura (body frame; see :func:`plaque_occupancy`).

    Attributes
    ----------
    angle : float
        Position around the body (radians, 0 at the front, negative on the
        patient's right).
    z : float
        Centre level (mm).
    half_angle : float
        Half its extent along the rib it follows (radians).
    half_z : float
        Half its extent across the ribs (mm).
    thickness : float
        Plateau thickness (mm) into the lung; it tapers to 0 at the rim.
    hu : float
        Soft-tissue density (HU).
    calcium_hu : float
        Density of the calcified part (HU; 0: not calcified).
    calcium_size : float
        Radius of the calcified part relative to the plaque's.
    calcium_offset : tuple of float
        Centre of the calcified part (relative offsets along and across the rib).
    """

    angle: float
    z: float
    half_angle: float
    half_z: float
    thickness: float
    hu: float
    calcium_hu: float = 0.0
    calcium_size: float = 0.0
    calcium_offset: tuple[float, float] = (0.0, 0.0)

    @property
    def z_reach(self) -> float:
        """Half its extent in z (mm): across the ribs plus the rib's own slope."""
        return self.half_z + _RIB_SLOPE * 0.5 * self.half_angle


#: z drop (mm) of a rib from the back to the front: ribs run at constant z + slope * cos(angle / 2).
_RIB_SLOPE = 70.0


def _draw_plaques(rng: np.random.Generator, z_base: float, z_apex: float) -> tuple[Plaque, ...]:
    """Pleural plaques (18 % of patients): mostly bilateral, 1-3 per side on the
    lateral to posterolateral wall of the mid and lower chest, thin (1-5 mm),
    elongated along the ribs, soft tissue (50-150 HU), 40 % partly calcified."""
    if rng.random() > 0.18:
        return ()
    out = []
    first = 1.0 if rng.random() < 0.5 else -1.0
    sides = (first, -first) if rng.random() < 0.8 else (first,)
    for side in sides:
        for _ in range(int(rng.integers(1, 4))):
            calcified = rng.random() < 0.4
            out.append(
                Plaque(
                    angle=side * float(rng.uniform(1.2, 2.6)),  # lateral to posterolateral
                    z=z_base + float(rng.uniform(0.05, 0.6)) * (z_apex - z_base),
                    half_angle=float(rng.uniform(0.08, 0.25)),
                    half_z=float(rng.uniform(5.0, 14.0)),
                    thickness=float(rng.uniform(1.0, 5.0)),
                    hu=float(rng.uniform(50.0, 150.0)),
                    calcium_hu=float(rng.uniform(300.0, 900.0)) if calcified else 0.0,
                    calcium_size=float(rng.uniform(0.25, 0.6)) if calcified else 0.0,
                    calcium_offset=(
                        (float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3)))
                        if calcified
                        else (0.0, 0.0)
                    ),
                )
            )
    return tuple(out)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def plaque_occupancy(
    plaque: Plaque,
    angle: np.ndarray,
    theta: np.ndarray,
    inside: np.ndarray,
    z: float,
    pixel: float,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Partial-volume occupancy (0-1) and density (HU) of a plaque on one slice.

    The plaque is a lens on the wall: an elliptical footprint elongated along
    the rib it lies on (ribs run at constant ``z + 70 cos(angle / 2)``), a
    plateau of ``thickness`` mm that tapers smoothly to 0 at the rim, its
    surface following the wall's curve (``inside`` is the distance from the
    chest wall into the cavity, mm). Edges are partial volume; the kernel's
    blur is applied by the renderer afterwards.

    Parameters
    ----------
    plaque : Plaque
    angle, theta, inside : numpy.ndarray
        Angle around the body, ``cos(angle / 2)`` and depth inside the wall (mm),
        for the pixels to draw (any matching shapes).
    z : float
        Slice level (mm).
    pixel : float
        Pixel spacing (mm).

    Returns
    -------
    (occupancy, hu) or None
        None when the plaque does not reach this slice.
    """
    if abs(z - plaque.z) > plaque.z_reach + pixel:
        return None
    da = np.remainder(angle - np.float32(plaque.angle) + np.float32(np.pi), np.float32(2 * np.pi))
    da = (da - np.float32(np.pi)) / np.float32(plaque.half_angle)
    # across the rib: the level offset measured along the rib's own slope
    dz = (
        np.float32(z - plaque.z)
        + np.float32(_RIB_SLOPE) * (theta - np.float32(np.cos(plaque.angle / 2.0)))
    ) / np.float32(plaque.half_z)
    r = np.sqrt(da * da + dz * dz)
    # a plateau (r < 0.4) tapering smoothly to the rim, its surface gently undulating
    profile = _smoothstep((1.0 - r) / 0.6) * (1.0 + 0.12 * np.cos(np.float32(2.5 * np.pi) * da))
    t = np.float32(plaque.thickness) * profile
    occ = np.clip((t - inside) / np.float32(pixel) + 0.5, 0.0, 1.0) * (t > 0)
    hu = np.full(occ.shape, np.float32(plaque.hu), dtype=np.float32)
    if plaque.calcium_hu > 0:
        cx, cz = plaque.calcium_offset
        rc = np.sqrt((da - cx) ** 2 + (dz - cz) ** 2) / np.float32(plaque.calcium_size)
        # calcium lies in the plaque's deeper half, by the wall
        deep = np.clip(1.0 - inside / np.maximum(0.7 * t, 1e-3), 0.0, 1.0)
        cal = _smoothstep((1.0 - rc) / 0.4) * deep
        hu += (np.float32(plaque.calcium_hu) - hu) * cal.astype(np.float32)
    return occ.astype(np.float32), hu


def chest_shape(
    z_range: tuple[float, float],
    rng: np.random.Generator,
    nodule_points: np.ndarray | None = None,
    fov_half: float = 180.0,
) -> ChestShape:
    """Draw a patient's chest whose lungs span the scan and contain its nodules.

    Every patient differs: habitus (thin to obese, arms up or down beside the
    chest), lung size per side, heart size and position, diaphragm dome
    heights, scoliosis, rotation and position on the table, parenchymal
    density (dependent density, emphysema patches), fissures and pleural
    plaques.

    Parameters
    ----------
    z_range : (float, float)
        Lowest and highest slice z of the scan (mm).
    rng : numpy.random.Generator
        The scan's generator.
    fov_half : float
        Half the reconstructed field of view (mm): technologists fit it to the
        patient (arms included), so the body is drawn to fill most of it.
    nodule_points : numpy.ndarray, optional
        ``(n, 4)`` nodule centres ``(x, y, z)`` and radii (mm); the body is made
        large enough, the lungs long enough and, where needed, a pocket of lung
        is added so each nodule sits in the lung.

    Returns
    -------
    ChestShape
    """
    z_lo, z_hi = float(z_range[0]), float(z_range[1])
    a_need = b_need = 0.0
    length = max(z_hi - z_lo, 1.0)
    names = list(HABITUS)
    habitus = names[int(rng.choice(len(names), p=np.array(list(HABITUS.values()))))]
    # arms beside the chest need a field of view that holds them (technologists widen it)
    arms_down = bool(rng.random() < 0.22) and fov_half >= 215.0
    arm_rx = float(rng.uniform(30.0, 42.0)) * (1.25 if habitus in ("overweight", "obese") else 1.0)
    arm_ry = arm_rx * float(rng.uniform(1.05, 1.3))
    arm_gap = float(rng.uniform(2.0, 14.0))
    if arms_down:
        a = (fov_half - 2.0 * arm_rx - arm_gap) * float(rng.uniform(0.9, 1.0))
    else:
        a = float(rng.uniform(0.78, 0.93)) * fov_half
    b = a * float(rng.uniform(*_ASPECT[habitus]))
    centre_y = float(rng.uniform(-25.0, 10.0))
    rotation = float(np.deg2rad(rng.normal(0.0, 2.5)))
    shift_x = float(rng.uniform(-15.0, 15.0))
    # LIDC scans run from above the apices to below the bases, a few cm either side
    z_base = z_lo + float(rng.uniform(0.06, 0.14)) * length
    z_apex = z_hi - float(rng.uniform(0.03, 0.08)) * length
    if z_apex - z_base > LUNG_HEIGHT[1]:
        z_base = z_apex - LUNG_HEIGHT[1]
    elif z_apex - z_base < LUNG_HEIGHT[0]:
        grow_z = 0.5 * (LUNG_HEIGHT[0] - (z_apex - z_base))
        z_base, z_apex = z_base - grow_z, z_apex + grow_z
    if nodule_points is not None and len(nodule_points):
        pts = np.asarray(nodule_points, dtype=np.float64)
        bx, by = _rotate(pts[:, 0] - shift_x, pts[:, 1] - centre_y, -rotation)
        by = by + centre_y
        a_need = float(np.abs(bx).max() + pts[:, 3].max()) + 32.0
        b_need = float(np.abs(by - centre_y).max() + pts[:, 3].max()) + 32.0
        z_base = min(z_base, float((pts[:, 2] - pts[:, 3]).min()) - 25.0)
        z_apex = max(z_apex, float((pts[:, 2] + pts[:, 3]).max()) + 25.0)
    z_base = max(z_base, z_lo - 40.0)
    if z_apex - z_base < 60.0:
        z_apex = z_base + 60.0
    fat = float(rng.uniform(*_FAT_MM[habitus]))
    muscle = float(rng.uniform(7.0, 12.0) if habitus == "thin" else rng.uniform(10.0, 18.0))
    # the body is drawn to fill the field of view, the chest wall from the habitus: keep
    # the cavity between them an adult's (a body larger than a targeted field of view is
    # cut by it, as in a targeted reconstruction; a smaller one leaves air around it)
    wall = 2.0 + fat + muscle + 9.0
    # (and large enough to hold every nodule in its lungs)
    a = max(float(np.clip(a - wall, *CAVITY_HALF_WIDTH)) + wall, a_need)
    b = max(float(np.clip(b - wall, *CAVITY_HALF_DEPTH)) + wall, b_need)
    # the right dome sits higher than the left, by a varying amount
    dome_r = float(rng.uniform(0.16, 0.33))
    dome_l = max(dome_r - float(rng.uniform(-0.02, 0.1)), 0.1)
    heart_big = rng.random() < 0.12  # cardiomegaly
    emph = rng.random() < 0.3
    n_emph = int(rng.integers(2, 10)) if emph else 0
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
        heart_cx=float(rng.uniform(6.0, 34.0)),
        heart_cy=centre_y - float(rng.uniform(0.15, 0.3)) * b,
        heart_ax=float(rng.uniform(70.0, 86.0) if heart_big else rng.uniform(52.0, 70.0)),
        heart_ay=float(rng.uniform(52.0, 62.0) if heart_big else rng.uniform(42.0, 56.0)),
        spine_y=centre_y + b - fat - muscle - 48.0,
        mediastinum_half=float(rng.uniform(18.0, 30.0)),
        back_muscle=float(rng.uniform(28.0, 46.0)),
        table_y=centre_y + b + float(rng.uniform(2.0, 20.0)),
        rib_pitch=float(rng.uniform(24.0, 30.0)),
        rib_phase=float(rng.uniform(0.0, 1.0)),
        z_base=z_base,
        z_apex=z_apex,
        # inspiration depth and age make some lungs more lucent than others
        lung_hu=float(rng.uniform(-912.0, -848.0)),
        habitus=habitus,
        rotation=rotation,
        shift_x=shift_x,
        scoliosis=float(rng.normal(0.0, 9.0)) if rng.random() < 0.3 else 0.0,
        lung_sx=(float(rng.uniform(0.9, 1.08)), float(rng.uniform(0.88, 1.05))),
        lung_sy=(float(rng.uniform(0.93, 1.06)), float(rng.uniform(0.93, 1.06))),
        dome_top=(dome_r, dome_l),
        gradient_hu=float(rng.uniform(30.0, 90.0)),
        dependent_hu=float(rng.uniform(40.0, 230.0)),
        arms_down=arms_down,
        arm_gap=arm_gap,
        arm_rx=arm_rx,
        arm_ry=arm_ry,
        fissures=bool(rng.random() < 0.85),
        fissure_level=(float(rng.uniform(0.3, 0.5)), float(rng.uniform(0.3, 0.5))),
        minor_fissure_u=float(rng.uniform(0.45, 0.62)),
        plaques=_draw_plaques(rng, z_base, z_apex),
    )
    if n_emph:
        pts_e = sample_lung(shape, n_emph, rng, frame="body")
        drops = rng.uniform(50.0, 110.0, len(pts_e))
        radii = rng.uniform(6.0, 26.0, len(pts_e))
        shape = replace(
            shape,
            emphysema=tuple(
                (float(p[0]), float(p[1]), float(p[2]), float(r), float(d))
                for p, r, d in zip(pts_e, radii, drops, strict=True)
            ),
        )
    if nodule_points is None or not len(nodule_points):
        return _fit_arms(shape, fov_half)
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
        pbx, pby = shape.to_body(pb[:, 0], pb[:, 1])
        dy = pby - shape.centre_y
        depth = _body_depth(shape, pbx, pby)
        need = _wall(shape, pbx, pby) + 2.0
        rho = np.maximum(np.hypot(pbx, dy), 1.0)
        short = depth < need
        grow = 1.0
        if short.any() and shape.half_width < 1.25 * fov_half:
            # depth = rho (1/r - 1) along the ray; r scales as 1 / grow
            r_now = rho / np.maximum(rho + depth, 1e-3)
            grow = float(np.clip((r_now * (1.0 + need / rho))[short].max(), 1.0, 1.1))
        extra = (grow - 1.0) * shape.half_depth
        # the walls thin only where a nodule lies in them, so a central nodule keeps the
        # patient's habitus
        wall_k = 1.0 if not short.any() else 0.75
        shape = replace(
            shape,
            half_width=shape.half_width * grow,
            half_depth=shape.half_depth * grow,
            spine_y=shape.spine_y + extra,
            table_y=shape.table_y + extra,
            fat=shape.fat * wall_k,
            muscle=max(shape.muscle * (0.85 if short.any() else 1.0), 5.0),
            back_muscle=shape.back_muscle * (0.7 if short.any() else 1.0),
            mediastinum_half=max(shape.mediastinum_half * 0.85, 6.0),
            heart_ax=shape.heart_ax * 0.9,
            heart_ay=shape.heart_ay * 0.9,
            lung_ax=shape.lung_ax * 1.06,
            lung_ay=shape.lung_ay * 1.06,
            lung_sx=(max(shape.lung_sx[0], 1.0), max(shape.lung_sx[1], 1.0)),
            lung_sy=(max(shape.lung_sy[0], 1.0), max(shape.lung_sy[1], 1.0)),
        )
    # a nodule whose centre is lung but whose edge is not stays where it is: it abuts
    # the wall (or mediastinum, spine) as a juxtapleural nodule does
    centres = nods[:, :3].astype(np.float32)
    buried = ~lung_mask(shape, centres[:, 0], centres[:, 1], centres[:, 2])
    pockets = tuple((float(x), float(y), float(z), float(r) + 4.0) for x, y, z, r in nods[buried])
    # pleural plaques and emphysema keep clear of the nodules (they are not nodules, and a
    # plaque must not hide one)
    keep_p = []
    for pl in shape.plaques:
        cx, cy = (
            np.sin(pl.angle) * shape.half_width,
            shape.centre_y - np.cos(pl.angle) * shape.half_depth,
        )
        ix, iy = shape.to_image(np.float64(cx), np.float64(cy))
        d = np.sqrt((nods[:, 0] - ix) ** 2 + (nods[:, 1] - iy) ** 2 + (nods[:, 2] - pl.z) ** 2)
        if (d > nods[:, 3] + pl.z_reach + 40.0).all():
            keep_p.append(pl)
    return _fit_arms(replace(shape, pockets=pockets, plaques=tuple(keep_p)), fov_half)


def _fit_arms(shape: ChestShape, fov_half: float) -> ChestShape:
    """Arms beside a chest that grew to hold its nodules: slimmer, so most of them
    stays in the field of view (as technologists set it)."""
    if not shape.arms_down:
        return shape
    room = 1.02 * fov_half - shape.half_width - shape.arm_gap
    rx = float(np.clip(room / 2.0, 20.0, shape.arm_rx))
    return replace(shape, arm_rx=rx, arm_ry=shape.arm_ry * rx / shape.arm_rx)


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
    """Relative size of the diaphragm dome; the right (x < 0) dome usually sits higher."""
    top = np.where(side < 0, np.float32(shape.dome_top[0]), np.float32(shape.dome_top[1]))
    return np.sqrt(np.clip((top - u) / top, 0.0, 1.0)) * 1.2


def _per_side(x: np.ndarray, pair: tuple[float, float]) -> np.ndarray | np.float32:
    if pair[0] == pair[1]:
        return np.float32(pair[0])
    return np.where(x < 0, np.float32(pair[0]), np.float32(pair[1]))


def lung_mask(
    shape: ChestShape,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray | float,
    planes: dict[str, np.ndarray] | None = None,
    frame: str = "image",
) -> np.ndarray:
    """Whether points (broadcast arrays, mm) lie in either lung.

    ``planes`` (from :func:`slice_planes`, for ``x``, ``y`` of the grid) saves
    recomputing the z-independent body outline on every slice. ``frame`` says
    whether ``x``, ``y`` are image coordinates (default) or the body frame.
    """
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    u = shape.u(z)
    s = _lung_scale(u)
    if planes is not None:
        xb, yb = planes["xb"], planes["yb"]
        depth, cavity = planes["depth"], planes["cavity"]
    else:
        xb, yb = shape.to_body(x, y) if frame == "image" else (x, y)
        depth = _body_depth(shape, xb, yb)
        cavity = depth > _wall(shape, xb, yb)
    ax = np.abs(xb)
    sx, sy = _per_side(xb, shape.lung_sx), _per_side(xb, shape.lung_sy)
    ell = ((ax - shape.lung_cx) / (shape.lung_ax * sx * s + 1e-3)) ** 2 + (
        (yb - shape.lung_cy) / (shape.lung_ay * sy * s + 1e-3)
    ) ** 2 < 1.0
    d = _dome(shape, u, xb)
    dome = _dome_mask(shape, ax, yb, d)
    medi = np.abs(xb - 0.15 * (shape.heart_cx)) < _mediastinum_half(shape, yb, u)
    spine = ((xb - shape.spine_x(u)) / 27.0) ** 2 + ((yb - shape.spine_y - 12.0) / 32.0) ** 2 < 1.0
    hs = _heart_scale(u)
    heart = ((xb - shape.heart_cx) / (shape.heart_ax * hs + 1e-3)) ** 2 + (
        (yb - shape.heart_cy) / (shape.heart_ay * hs + 1e-3)
    ) ** 2 < 1.0
    lung = cavity & ell & ~dome & ~medi & ~spine & ~heart
    if frame == "image":
        for px, py, pz, pr in shape.pockets:
            pocket = (x - px) ** 2 + (y - py) ** 2 + (np.asarray(z, np.float32) - pz) ** 2 < pr**2
            lung = lung | (pocket & (depth > shape.skin + shape.fat + 4.0))
    return lung


def sample_lung(
    shape: ChestShape, n: int, rng: np.random.Generator, side: int = 0, frame: str = "image"
) -> np.ndarray:
    """Up to ``n`` points ``(x, y, z)`` (mm) drawn uniformly inside the lungs.

    ``side`` -1 or 1 keeps one lung (the sign of body-frame x), 0 both;
    ``frame`` is the frame of the returned points ("image" or "body").
    Rejection sampling in the lungs' bounding box, at most 40 rounds.
    """
    if side:
        x0 = side * shape.lung_cx
        lo = np.array([x0 - 1.1 * shape.lung_ax, shape.lung_cy - 1.1 * shape.lung_ay, shape.z_base])
        hi = np.array([x0 + 1.1 * shape.lung_ax, shape.lung_cy + 1.1 * shape.lung_ay, shape.z_apex])
    else:
        w = shape.lung_cx + 1.1 * shape.lung_ax
        lo = np.array([-w, shape.lung_cy - 1.1 * shape.lung_ay, shape.z_base])
        hi = np.array([w, shape.lung_cy + 1.1 * shape.lung_ay, shape.z_apex])
    kept: list[np.ndarray] = []
    total = 0
    for _ in range(40):
        p = rng.uniform(lo, hi, size=(4 * max(n, 1), 3)).astype(np.float32)
        m = lung_mask(shape, p[:, 0], p[:, 1], p[:, 2], frame="body")
        if side:
            m &= np.sign(p[:, 0]) == side
        kept.append(p[m])
        total += int(m.sum())
        if total >= n:
            break
    pts = np.concatenate(kept)[:n] if kept else np.zeros((0, 3), np.float32)
    pts = pts.astype(np.float64)
    if frame == "image":
        ix, iy = shape.to_image(pts[:, 0], pts[:, 1])
        pts = np.stack([ix, iy, pts[:, 2]], axis=1)
    return pts


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
    upper = 1.0 + 0.7 * np.clip((u - 0.55) / 0.3, 0.0, 1.0)
    return shape.mediastinum_half * (0.45 + 1.5 * bulge) * upper


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

    The segments are in image coordinates (the chest's rotation and shift applied).

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

    def image(x: float, y: float, z: float) -> np.ndarray:
        ix, iy = shape.to_image(np.float64(x), np.float64(y))
        return np.array([float(ix), float(iy), z])

    carina = image(0.0, shape.spine_y - 40.0, shape.z_base + 0.66 * height)
    top = image(0.0, shape.spine_y - 45.0, shape.z_apex + 60.0)
    airways.append((top, carina, 8.0, 0))
    for side in (-1, 1):
        hx = side * (shape.mediastinum_half + 8.0)
        for kind, zf, dy, r0 in (("artery", 0.56, -6.0, 7.0), ("vein", 0.42, -18.0, 6.0)):
            pts = sample_lung(shape, points_per_tree, rng, side=side)
            root = image(hx, shape.lung_cy + dy, shape.z_base + zf * height)
            tree = _grow(root, r0, pts, rng, leaf_points=5, min_radius=0.45)
            vessels.extend(tree)
            if kind == "artery":
                hilum = image(hx + side * 6.0, shape.lung_cy - 10.0, float(root[2]))
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
    """The z-independent in-plane maps of a chest (body-frame coordinates, depth below
    skin, wall, cavity, angle around the body, the arms beside the chest)."""
    gx, gy = grid.coords()
    x, y = shape.to_body(gx, gy)
    depth = _body_depth(shape, x, y)
    wall = _wall(shape, x, y)
    angle = _ring_angle(x, y, shape.centre_y)
    arm = np.zeros((grid.matrix, grid.matrix), dtype=np.float32)
    bone = np.zeros_like(arm)
    for cx, cy in shape.arm_centres():
        # 1 at the arm's skin, 0 at its centre; the humerus sits a little outside the centre
        r = np.sqrt(((x - cx) / shape.arm_rx) ** 2 + ((y - cy) / shape.arm_ry) ** 2)
        arm = np.where(r < 1.0, 1.0 - r + 1e-3, arm)
        hx = cx + np.sign(cx) * 0.12 * shape.arm_rx
        bone = np.maximum(bone, 13.0 - np.sqrt((x - hx) ** 2 + (y - cy) ** 2))
    ang_abs = np.abs(angle)
    d_in = wall - depth
    ring_idx = np.flatnonzero(((d_in > 0.5) & (d_in < 8.0) & (ang_abs > 0.3)).ravel())
    mid = shape.skin + shape.fat + 0.45 * shape.muscle
    blade_idx = np.flatnonzero(
        ((ang_abs > 1.5) & (ang_abs < 3.0) & (np.abs(depth - mid) < 3.5) & (depth > 0)).ravel()
    )
    return {
        "ring_idx": ring_idx,
        "blade_idx": blade_idx,
        "xb": np.asarray(x, dtype=np.float32),
        "yb": np.asarray(y, dtype=np.float32),
        "depth": depth,
        "wall": wall,
        "cavity": depth > wall,
        "angle": angle,
        "theta": np.cos(angle / 2.0),
        "front": np.abs(angle) > 0.45,
        "arm": arm,
        "humerus": bone,
    }


def _ribs(
    shape: ChestShape,
    planes: dict[str, np.ndarray],
    depth: np.ndarray,
    wall: np.ndarray,
    z: float,
    u: float,
    pixel: float,
    cached: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ribs on one slice: flat indices, partial-volume occupancy and HU (cortex, marrow).

    Each rib is an oval bar (about 8-10 mm high, 5 mm thick) just outside the
    pleura, running at constant ``z + 70 cos(angle / 2)`` (lower at the front);
    it tapers to its end beside the sternum (the costal cartilage is not drawn).
    Ribs are whole: a rib is drawn when its posterior level lies within the
    chest (never cut by a slice level).
    """
    if cached:
        idx = planes["ring_idx"]
    else:
        d_in = wall - depth
        idx = np.flatnonzero(
            ((d_in > 0.5) & (d_in < 8.0) & (np.abs(planes["angle"]) > 0.3)).ravel()
        )
    if not idx.size:
        return idx, np.zeros(0, np.float32), np.zeros(0, np.float32)
    dep = np.broadcast_to(depth, planes["depth"].shape).reshape(-1)[idx]
    wal = np.broadcast_to(wall, planes["depth"].shape).reshape(-1)[idx]
    ang = np.abs(planes["angle"].reshape(-1)[idx])
    th = planes["theta"].reshape(-1)[idx]
    pitch = np.float32(shape.rib_pitch)
    phase = (np.float32(z) + np.float32(_RIB_SLOPE) * th) / pitch + np.float32(shape.rib_phase)
    k = np.floor(phase - np.float32(0.15) + np.float32(0.5))
    s_mm = (phase - k - np.float32(0.15)) * pitch  # along z from the rib's centre line
    # whole ribs only: the rib's level at the back decides whether it exists
    back_u = shape.u((k + 0.15 - shape.rib_phase) * shape.rib_pitch)
    exists = (back_u > -0.15) & (back_u < 1.12)
    taper = np.sqrt(np.clip((ang - np.float32(0.35)) / np.float32(0.3), 0.0, 1.0)) * exists
    hs = np.float32(0.17) * pitch * taper + np.float32(1e-3)
    hr = np.float32(2.6) * taper + np.float32(1e-3)
    rn = np.sqrt((s_mm / hs) ** 2 + ((dep - (wal - np.float32(4.0))) / hr) ** 2)
    occ = np.clip((1.0 - rn) * hr / np.float32(pixel) + 0.5, 0.0, 1.0) * (taper > 0)
    hu = np.float32(HU["marrow"]) + np.float32(HU["cortical_bone"] - HU["marrow"]) * _smoothstep(
        (rn - np.float32(0.55)) / np.float32(0.3)
    )
    return idx, occ.astype(np.float32), hu.astype(np.float32)


def _scapulae(
    shape: ChestShape,
    planes: dict[str, np.ndarray],
    depth: np.ndarray,
    body: np.ndarray,
    u: float,
    pixel: float,
    cached: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scapulae on one slice: triangular plates in the posterolateral muscle, widest
    near the apices and narrowing to the inferior angle, 1-3.6 mm thick, thinner at
    their borders (flat indices, occupancy, HU)."""
    lo, hi = min(max((u - 0.4) / 0.4, 0.0), 1.0), min(max((1.2 - u) / 0.12, 0.0), 1.0)
    width = 0.36 * lo * lo * (3.0 - 2.0 * lo) * hi * hi * (3.0 - 2.0 * hi)
    empty = np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.float32)
    if width <= 0.0:
        return empty
    mid = np.float32(shape.skin + shape.fat + 0.45 * shape.muscle)
    if cached:
        idx = planes["blade_idx"]
    else:
        ang_all = np.abs(planes["angle"])
        idx = np.flatnonzero(
            ((ang_all > 1.5) & (ang_all < 3.0) & (np.abs(depth - mid) < 3.5) & body).ravel()
        )
    if not idx.size:
        return empty
    dep = np.broadcast_to(depth, planes["depth"].shape).reshape(-1)[idx]
    da = np.abs(np.abs(planes["angle"].reshape(-1)[idx]) - np.float32(2.3))
    rel = np.clip(1.0 - (da / np.float32(width)) ** 2, 0.0, 1.0)
    half_t = np.float32(0.5) + np.float32(1.3) * np.sqrt(rel)
    radius = np.float32(0.9 * shape.half_width)
    edge = np.clip((np.float32(width) - da) * radius / np.float32(pixel) + 0.5, 0.0, 1.0)
    occ = np.clip((half_t - np.abs(dep - mid)) / np.float32(pixel) + 0.5, 0.0, 1.0) * edge
    hu = np.full(idx.size, np.float32(HU["cortical_bone"]), dtype=np.float32)
    return idx, occ.astype(np.float32), hu


def _disc_fraction(shape: ChestShape, z: float, slab: float) -> float:
    """Share of the slab (0-1) inside an intervertebral disc (5 mm high, at the level of
    each rib's head, one per rib pitch)."""
    s = ((z / shape.rib_pitch + shape.rib_phase - 0.15 + 0.5) % 1.0 - 0.5) * shape.rib_pitch
    h = max(slab / 2.0, 0.25)
    return float(max(0.0, min(s + h, 2.5) - max(s - h, -2.5)) / (2.0 * h))


def _fissure_hu(
    shape: ChestShape, x: np.ndarray, y: np.ndarray, u: float, slab: float
) -> np.ndarray | None:
    """HU added by the oblique (major) fissures and the right minor fissure on one slice."""
    if not shape.fissures or not 0.02 < u < 0.85:
        return None
    height = shape.z_apex - shape.z_base
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=np.float32)
    ax = np.abs(x)
    for i, side in enumerate((-1.0, 1.0)):
        sy = shape.lung_sy[i]
        slope = 1.5 * shape.lung_ay * sy  # mm of y per unit u: the fissure runs obliquely
        # posterior at the top, anterior at the bases; the lateral end lies further back
        yf = shape.lung_cy + slope * (u - shape.fissure_level[i]) + 0.45 * (ax - shape.lung_cx)
        # a fissure cut obliquely by a thick slice is a broader, fainter band
        width = float(np.sqrt(0.35**2 + (slab * slope / height) ** 2 / 12.0))
        amp = np.float32(500.0 * min(0.35 / width, 1.0))
        d = np.broadcast_to(y - yf, out.shape)
        near = np.flatnonzero((np.abs(d) < 3.0 * width).ravel())
        if near.size:
            xs = np.broadcast_to(x, out.shape).ravel()[near]
            band = amp * np.exp(-((d.ravel()[near] / np.float32(width)) ** 2))
            out.ravel()[near] += np.where(xs * side > 0, band, 0.0).astype(np.float32)
        if side < 0:
            dz = (u - shape.minor_fissure_u) * height
            w = np.exp(-((dz / max(slab, 1.5)) ** 2))
            if w > 0.05:
                minor = (x < 0) & (y < yf - 4.0) & (ax > 0.6 * shape.lung_cx)
                out += np.where(minor, np.float32(70.0 * w), 0.0).astype(np.float32)
    return out


def render_slice(
    shape: ChestShape,
    grid: Grid,
    z: float,
    texture: np.ndarray | None = None,
    planes: dict[str, np.ndarray] | None = None,
    slab: float = 0.0,
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
    slab : float
        Slice thickness (mm): oblique fissures broaden and fade on thick slices.

    Returns
    -------
    hu : numpy.ndarray
        ``(M, M)`` float32.
    lung : numpy.ndarray
        ``(M, M)`` bool lung mask.
    """
    gx, gy = grid.coords()
    if planes is None:
        planes = slice_planes(shape, grid)
    x, y = planes["xb"], planes["yb"]
    u = float(shape.u(z))
    # above the apices the body narrows into neck and shoulders
    neck = float(np.clip((u - 1.0) / 0.5, 0.0, 1.0))
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

    # arms beside the chest: skin, fat, muscle and the humerus
    arm = planes["arm"]
    if shape.arms_down:
        in_arm = (arm > 0) & ~body
        rel = shape.skin / shape.arm_rx, (shape.skin + 0.5 * shape.fat + 3.0) / shape.arm_rx
        img[in_arm] = HU["muscle"]
        img[in_arm & (arm < rel[1])] = HU["fat"]
        img[in_arm & (arm < rel[0])] = HU["skin"]
        hum = planes["humerus"]
        img[in_arm & (hum > 0)] = HU["cortical_bone"]
        img[in_arm & (hum > 3.5)] = HU["marrow"]
        body = body | in_arm

    # ribs: oval bars running obliquely around the wall, lower at the front; scapulae:
    # tapering plates in the posterolateral muscle of the upper chest (partial-volume edges)
    flat = img.reshape(-1)
    for idx, occ, bone_hu in (
        _ribs(shape, planes, depth, wall, z, u, grid.spacing, neck == 0),
        _scapulae(shape, planes, depth, body, u, grid.spacing, neck == 0),
    ):
        if idx.size:
            flat[idx] += (bone_hu - flat[idx]) * occ

    # spine: vertebral body, canal, posterior arch (shifted sideways by a scoliosis)
    sy = shape.spine_y
    sxo = float(shape.spine_x(u))
    xs = x - np.float32(sxo)
    vb = (xs / 18.0) ** 2 + ((y - sy) / 16.0) ** 2
    img[vb < 1.0] = HU["cortical_bone"]
    img[vb < 0.75] = HU["marrow"]
    disc = _disc_fraction(shape, z, slab)
    if disc > 0:
        # an intervertebral disc at each rib head's level (partial volume over the slab)
        img[vb < 1.0] += (np.float32(HU["disc"]) - img[vb < 1.0]) * np.float32(disc)
    canal = (xs / 8.5) ** 2 + ((y - sy - 27.0) / 8.0) ** 2
    arch = (xs / 15.0) ** 2 + ((y - sy - 29.0) / 13.0) ** 2
    img[(arch < 1.0) & (canal >= 1.0)] = HU["cortical_bone"]
    spinous = (np.abs(xs) < 3.5) & (y > sy + 38.0) & (y < sy + 58.0)
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
        da = (x - 24.0 - sxo) ** 2 + (y - sy + 24.0) ** 2 < 12.0**2
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
        if neck == 0:
            lung = lung_mask(shape, gx, gy, z, planes)
        else:
            lung = lung_mask(shape, gx, gy, z)
    else:
        lung = np.zeros(img.shape, dtype=bool)
    back = np.clip((y - shape.lung_cy) / shape.lung_ay, -1.0, 1.0)
    # dependent (posterior) lung is denser, most of all in its last 2-3 cm by the wall
    near_wall = np.clip(1.0 - (depth - wall) / 25.0, 0.0, 1.0) ** 2
    behind = np.clip((y - shape.lung_cy) / (0.3 * shape.half_depth), 0.0, 1.0)
    dependent = np.float32(shape.dependent_hu) * near_wall * behind
    if texture is not None:
        # patchy, not a smooth ramp: the texture modulates the dependent density
        dependent = dependent * (1.0 + 0.6 * np.tanh(texture / np.float32(45.0)))
    lung_hu = shape.lung_hu + np.float32(shape.gradient_hu) * back + dependent
    if texture is not None:
        lung_hu = lung_hu + texture
    for ex, ey, ez, er, drop in shape.emphysema:
        dz = z - ez
        if abs(dz) >= er:
            continue
        rr = float(np.sqrt(er * er - dz * dz))
        dist = np.sqrt((x - ex) ** 2 + (y - ey) ** 2)
        w = np.clip(1.0 - dist / rr, 0.0, 1.0) ** 0.5
        holes = 1.0 if texture is None else 0.7 + 0.5 * (texture > 20.0)
        lung_hu = lung_hu - np.float32(drop) * w * holes
    fis = _fissure_hu(shape, x, y, u, slab)
    if fis is not None:
        lung_hu = lung_hu + fis
    near = [pl for pl in shape.plaques if abs(z - pl.z) <= pl.z_reach + grid.spacing + slab / 3.0]
    img = np.where(lung, lung_hu, img).astype(np.float32)
    if near:
        # pleural plaques: lenses on the parietal pleura, drawn over the lung by the wall
        idx = np.flatnonzero(lung & (depth - wall < 6.0))
        inside = (depth - wall).reshape(-1)[idx]
        ang_p = np.broadcast_to(planes["angle"], img.shape).reshape(-1)[idx]
        th_p = np.broadcast_to(planes["theta"], img.shape).reshape(-1)[idx]
        flat_img, flat_lung = img.reshape(-1), lung.reshape(-1)
        # a thick slice averages the plaque over three depths, as it does the vessels
        offsets = (-slab / 3.0, 0.0, slab / 3.0) if slab > 0 else (0.0,)
        for pl in near:
            occ = np.zeros(idx.size, np.float32)
            mass = np.zeros(idx.size, np.float32)
            for dz in offsets:
                drawn = plaque_occupancy(pl, ang_p, th_p, inside, z + dz, grid.spacing)
                if drawn is not None:
                    occ += drawn[0]
                    mass += drawn[0] * drawn[1]
            if not occ.any():
                continue
            p_hu = mass / np.maximum(occ, np.float32(1e-6))
            occ /= np.float32(len(offsets))
            flat_img[idx] += (p_hu - flat_img[idx]) * occ
            flat_lung[idx] &= occ < 0.5

    # scanner table (image frame: the patient lies rotated on a level table): a curved
    # cradle of two shells with foam between
    ty = shape.table_y
    curve = ty + 22.0 * (gx / 210.0) ** 2
    within = np.abs(gx) < 215.0
    top_shell = within & (np.abs(gy - curve) < 1.2)
    bottom_shell = within & (np.abs(gy - curve - 30.0) < 1.5)
    foam = within & (gy > curve + 1.2) & (gy < curve + 28.5) & ~body
    img[foam] = HU["foam"]
    img[(top_shell | bottom_shell) & ~body] = HU["table"]
    return img, lung


def streak_sources(shape: ChestShape, z: float) -> list[tuple[float, float, float]]:
    """Dense structures that cast photon-starvation streaks on a slice.

    Returns ``(x, y, weight)`` in image coordinates: the humeri of arms beside
    the chest (every level), and the shoulders near and above the apices
    (weight growing towards them).
    """
    out: list[tuple[float, float, float]] = []
    for cx, cy in shape.arm_centres():
        hx = cx + np.sign(cx) * 0.12 * shape.arm_rx
        ix, iy = shape.to_image(np.float64(hx), np.float64(cy))
        out.append((float(ix), float(iy), 1.0))
    u = float(shape.u(z))
    w = float(np.clip((u - 0.75) / 0.3, 0.0, 1.0))
    if w > 0:
        for side in (-1.0, 1.0):
            ix, iy = shape.to_image(
                np.float64(side * 0.8 * shape.half_width), np.float64(shape.centre_y)
            )
            out.append((float(ix), float(iy), w))
    return out
