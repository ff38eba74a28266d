"""The chest wall's structures are smooth, not boxes: pleural plaques, ribs, scapulae, discs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lungslice.phantom.anatomy import (
    HU,
    ChestShape,
    Grid,
    Plaque,
    chest_shape,
    plaque_occupancy,
    render_slice,
    slice_planes,
)

GRID = Grid(320, 1.0)


def _chest(plaques: tuple[Plaque, ...] = ()) -> ChestShape:
    shape = chest_shape((-150.0, 150.0), np.random.default_rng([3, 1]), fov_half=160.0)
    return replace(shape, rotation=0.0, shift_x=0.0, plaques=plaques, fissures=False)


def _plaque_diff(plaque: Plaque, z: float, slab: float = 0.0) -> np.ndarray:
    with_p, _ = render_slice(_chest((plaque,)), GRID, z, slab=slab)
    without, _ = render_slice(_chest(), GRID, z, slab=slab)
    return with_p - without


def _thickness(diff: np.ndarray, planes: dict[str, np.ndarray], angle: float) -> float:
    """Plaque occupancy summed over the narrow wedge at ``angle`` (relative thickness)."""
    ray = np.abs(planes["angle"] - angle) < 0.01
    return float(np.clip(diff[ray] / diff.max(), 0.0, 1.0).sum())


SOFT = Plaque(angle=-1.8, z=0.0, half_angle=0.2, half_z=10.0, thickness=4.0, hu=100.0)


def test_plaque_is_a_tapered_lens_with_soft_edges() -> None:
    planes = slice_planes(_chest(), GRID)
    centre = _plaque_diff(SOFT, 0.0)
    lung_hu = float(np.median((render_slice(_chest(), GRID, 0.0)[0])[centre > 0]))
    # soft tissue at the plateau: the deepest plaque pixels reach the plaque's density
    assert centre.max() == pytest.approx(SOFT.hu - lung_hu, abs=60.0)
    # partial volume at the surface: occupancy between 5 % and 95 % on some pixels
    frac = centre[centre > 0] / centre.max()
    assert ((frac > 0.05) & (frac < 0.95)).sum() >= 10
    # thickness: the plateau, thinner towards the ends along the rib and across it
    mid = _thickness(centre, planes, SOFT.angle)
    end = _thickness(centre, planes, SOFT.angle + 0.8 * SOFT.half_angle)
    assert 0.0 < end < 0.8 * mid
    rim = _plaque_diff(SOFT, 0.8 * SOFT.half_z)
    ring = np.abs(planes["angle"] - SOFT.angle) < 0.4
    assert 0.0 < np.abs(rim[ring]).sum() < 0.8 * np.abs(centre[ring]).sum()
    assert not _plaque_diff(SOFT, SOFT.z_reach + 3.0).any()
    # only the plaque's own stretch of wall changes, on the patient's right
    changed = np.abs(_plaque_diff(SOFT, 0.0)) > 0
    assert (np.abs(planes["angle"][changed] - SOFT.angle) < SOFT.half_angle + 0.05).all()


def test_thick_slices_average_the_plaque() -> None:
    thin = _plaque_diff(SOFT, 0.9 * SOFT.half_z)
    thick = _plaque_diff(SOFT, 0.9 * SOFT.half_z, slab=5.0)
    assert np.abs(thick).sum() > np.abs(thin).sum()  # the slab reaches the plateau


def test_calcified_part_is_dense_and_partial() -> None:
    calc = replace(SOFT, calcium_hu=700.0, calcium_size=0.5)
    angle = np.linspace(-2.1, -1.5, 200, dtype=np.float32)
    theta = np.cos(angle / 2.0)
    inside = np.full(angle.shape, 0.5, dtype=np.float32)
    occ, hu = plaque_occupancy(calc, angle, theta, inside, 0.0, 1.0) or (None, None)
    assert occ is not None and hu is not None
    drawn = occ > 0.5
    assert hu[drawn].max() > 500.0
    assert 0.1 < (hu[drawn] > 300.0).mean() < 0.8  # partly calcified, mostly soft tissue
    assert plaque_occupancy(calc, angle, theta, inside, 40.0, 1.0) is None


def test_plaques_are_mostly_bilateral_thin_and_soft_tissue() -> None:
    shapes = [
        chest_shape((-150.0, 150.0), np.random.default_rng([s, 1]), fov_half=240.0)
        for s in range(150)
    ]
    with_p = [s.plaques for s in shapes if s.plaques]
    assert 10 <= len(with_p) <= 50
    both = sum(len({np.sign(p.angle) for p in ps}) == 2 for ps in with_p)
    assert both >= 0.6 * len(with_p)
    every = [p for ps in with_p for p in ps]
    assert all(1.0 <= p.thickness <= 5.0 and 50.0 <= p.hu <= 150.0 for p in every)
    assert any(p.calcium_hu > 0 for p in every) and any(p.calcium_hu == 0 for p in every)


def test_ribs_scapulae_and_spine_are_not_boxes() -> None:
    shape = _chest()
    planes = slice_planes(shape, GRID)
    zs = np.arange(-40.0, 40.0, 1.0)
    lateral = (np.abs(planes["angle"] + np.pi / 2) < 0.01) & (planes["depth"] < planes["wall"])
    bone = np.array([(render_slice(shape, GRID, z)[0][lateral] > 300.0).sum() for z in zs])
    # along z, each rib's bone thickness on a lateral ray rises and falls (an oval),
    # never a flat-topped box
    ribs = np.flatnonzero(np.diff(np.r_[0, (bone > 0).astype(int), 0]) != 0).reshape(-1, 2)
    assert len(ribs) >= 2
    for a, b in ribs:
        prof = bone[a:b]
        if b - a >= 5:
            assert prof[[0, -1]].max() < prof.max()
    # partial volume at the ribs' and scapulae's edges: intermediate densities in the wall
    img, _ = render_slice(shape, GRID, shape.z_base + 0.7 * (shape.z_apex - shape.z_base))
    wall = (planes["depth"] > 0) & (planes["depth"] < planes["wall"])
    mid = (img > HU["muscle"] + 100.0) & (img < HU["cortical_bone"] - 100.0) & wall
    assert mid.sum() >= 20
    # the vertebral column has discs: the vertebral body's density varies along z
    spine = (np.abs(planes["xb"] - shape.spine_x(0.5)) < 4.0) & (
        np.abs(planes["yb"] - shape.spine_y) < 4.0
    )
    levels = [float(render_slice(shape, GRID, z)[0][spine].mean()) for z in np.arange(0, 30, 1.5)]
    assert min(levels) < HU["disc"] + 30.0 < HU["marrow"] - 50.0 < max(levels)
