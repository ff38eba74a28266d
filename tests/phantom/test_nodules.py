"""Nodule density, edges and partial volume against the published figures.

Published: solid nodules have cores around 0 to +50 HU, pure ground-glass
nodules -750 to -300 HU, part-solid ones a solid core inside ground glass.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from scipy import ndimage as ndi

from lungslice.errors import ConfigError
from lungslice.lidc.db import read_database
from lungslice.lidc.nodules import Nodule, find_nodules
from lungslice.lidc.records import LidcScan
from lungslice.phantom import PhantomConfig, render
from lungslice.phantom.nodules import (
    central_slice,
    deepest_pixels,
    nodule_core_hu,
    nodule_masks,
    nodule_patches,
    slab_occupancy,
)

#: 102 slices of 3 mm: solid nodules (n4 11.1 mm, n6 29 mm), a pure ground-glass one
#: (n3) and two part-solid.
SCAN = "LIDC-IDRI-0526"
#: 108 slices; n1 is a 10 mm nodule all four readers rated calcified (pattern 3).
CALCIFIED = "LIDC-IDRI-0390"
#: Small scans with solid nodules of 7.7-20 mm in lung, rated subtlety 2.75-4.25 (0171,
#: 95 slices of 2.5 mm; the renderer before this test faded n2-n4 to -210..-370 HU on
#: the soft kernel), and a pure ground-glass nodule (0980/n2, 10.5 mm, 104 slices).
CORE_SCANS = ("LIDC-IDRI-0171", "LIDC-IDRI-0980")
#: Nodules narrower than this on their central slice's consensus (equivalent diameter)
#: are dominated by the kernel's blur, as on real CT; the test leaves them out.
MIN_SECTION_MM = 5.5


@pytest.fixture(scope="module")
def scan() -> LidcScan:
    (s,) = read_database(patient_ids=[SCAN])
    return s


@pytest.fixture(scope="module")
def nodules(scan: LidcScan) -> list[Nodule]:
    return find_nodules(scan)


@pytest.fixture(scope="module")
def core_cases() -> list[tuple[LidcScan, Nodule, int]]:
    """(scan, nodule, central slice) of the solid and ground-glass nodules to check."""
    cases = []
    for s in read_database(patient_ids=list(CORE_SCANS)):
        for n in find_nodules(s):
            t = n.mean_ratings["texture"]
            if n.mean_ratings["calcification"] <= 5.5 or 1.5 < t < 4.5:
                continue
            k = central_slice(s, n)
            _, masks = nodule_masks(s, n)
            section = 2.0 * np.sqrt(masks[k][0].sum() / np.pi) * s.pixel_spacing
            if section >= MIN_SECTION_MM:
                cases.append((s, n, k))
    textures = [n.mean_ratings["texture"] for _, n, _ in cases]
    assert sum(t >= 4.5 for t in textures) >= 4 and sum(t <= 1.5 for t in textures) >= 1
    return cases


def _core_hu(cases: list[tuple[LidcScan, Nodule, int]], config: PhantomConfig) -> list[Any]:
    out = []
    for s in {id(c[0]): c[0] for c in cases}.values():
        mine = [(n, k) for sc, n, k in cases if sc is s]
        r = render(s, config, np.array(sorted({k for _, k in mine})))
        for n, k in mine:
            out.append(nodule_core_hu(s, n, r.hu[int(np.flatnonzero(r.slice_indices == k)[0])], k))
    return out


@pytest.mark.slow
def test_checked_nodules_lie_in_lung(core_cases: list[tuple[LidcScan, Nodule, int]]) -> None:
    """Without the nodules their cores are lung, so the density test measures the nodules."""
    for m in _core_hu(core_cases, PhantomConfig(seed=0, kernel="standard", nodules=False)):
        assert m.core_hu < -550, m


@pytest.mark.parametrize(
    "kernel",
    [
        "soft",  # the blurriest: the hardest on a core
        pytest.param("standard", marks=pytest.mark.slow),
        pytest.param("lung", marks=pytest.mark.slow),
    ],
)
def test_solid_and_ground_glass_cores_in_published_ranges(
    core_cases: list[tuple[LidcScan, Nodule, int]], kernel: str
) -> None:
    for m in _core_hu(core_cases, PhantomConfig(seed=0, kernel=kernel)):
        if m.texture >= 4.5:
            assert m.core_hu >= -100, (kernel, m)
        else:
            assert -800 <= m.core_hu <= -250, (kernel, m)


def test_subtlety_changes_the_edge_not_the_density(scan: LidcScan, nodules: list[Nodule]) -> None:
    n4 = next(n for n in nodules if n.nodule_id.endswith("/n4"))
    k = central_slice(scan, n4)
    patches = {}
    for subtlety in (1.0, 5.0):
        nod = replace(n4, mean_ratings={**n4.mean_ratings, "subtlety": subtlety})
        (p,) = nodule_patches(scan, [nod], matrix=512, seed=0, slice_indices={k})
        patches[subtlety] = p
    _, masks = nodule_masks(scan, n4)
    inside = masks[k][0]
    subtle, obvious = patches[1.0], patches[5.0]
    np.testing.assert_array_equal(subtle.hu, obvious.hu)
    np.testing.assert_array_equal(subtle.alpha[inside], obvious.alpha[inside])
    assert obvious.alpha[deepest_pixels(inside, 0.5)].min() > 0.95
    # a subtle nodule's edge fades further out
    assert subtle.alpha[~inside].sum() > 1.2 * obvious.alpha[~inside].sum()


@pytest.mark.slow
def test_edge_sharpness_follows_the_kernel(scan: LidcScan, nodules: list[Nodule]) -> None:
    n6 = next(n for n in nodules if n.nodule_id.endswith("/n6"))
    k = central_slice(scan, n6)
    box, masks = nodule_masks(scan, n6)
    r0, c0, h, w = box
    mask = masks[k][0]
    outline = mask & ~ndi.binary_erosion(mask)
    steepest = {}
    for kernel in ("soft", "lung"):
        r = render(scan, PhantomConfig(seed=0, kernel=kernel, noise_hu=0.0), np.array([k]))
        img = r.hu[0, r0 : r0 + h, c0 : c0 + w].astype(np.float64)
        grad = np.hypot(*np.gradient(img))
        steepest[kernel] = float(np.median(ndi.maximum_filter(grad, 3)[outline]))
    # the same outline, blurred by sigma 0.9 mm vs 0.35 mm
    assert 1.5 * steepest["soft"] < steepest["lung"], steepest


def _sphere_outlines(radius_mm: float, px: float, zs: np.ndarray) -> dict[int, np.ndarray]:
    ii, jj = np.mgrid[-40:41, -40:41] * px
    out = {}
    for k, z in enumerate(zs):
        r2 = radius_mm**2 - z**2
        m = ii**2 + jj**2 < r2
        if m.any():
            out[k] = m
    return out


def test_partial_volume_follows_the_slice_thickness() -> None:
    zs = np.arange(-7.5, 7.6, 2.5)  # a 5 mm sphere at z = 0, slices 2.5 mm apart
    shapes = _sphere_outlines(5.0, 0.5, zs)
    assert sorted(shapes) == [2, 3, 4]  # outlined at z = -2.5, 0, 2.5
    thin = slab_occupancy(shapes, zs, 1.0)
    thick = slab_occupancy(shapes, zs, 5.0)
    assert sorted(thin) == sorted(thick) == sorted(shapes)  # nothing spills onto other slices
    for occ in (thin, thick):
        assert occ[3][40, 40] == pytest.approx(1.0)  # the middle of the middle slice is full
    for k in (2, 4):
        # a thin slab at the end holds the outline itself; a thick one also takes in the
        # cap closing beyond it, so even its centre is partly lung
        assert thin[k][40, 40] == pytest.approx(1.0)
        assert 0.5 < thick[k][40, 40] < 0.95
        partial = ((thick[k] > 0.02) & (thick[k] < 0.98)).sum()
        assert partial > 3 * ((thin[k] > 0.02) & (thin[k] < 0.98)).sum()
    # through the middle a thick slab averages the smaller sections above and below
    # (a sphere: 22.9 pi mm^2 over 5 mm vs 24.9 pi over 1 mm)
    ratio = thick[3].sum() / thin[3].sum()
    assert 0.85 < ratio < 0.97


def test_core_measurement_and_errors(scan: LidcScan, nodules: list[Nodule]) -> None:
    mask = np.zeros((9, 9), dtype=bool)
    mask[2:7, 2:8] = True
    for fraction, n in ((0.5, 15), (0.1, 3), (1.0, 30)):
        d = deepest_pixels(mask, fraction)
        assert d.sum() == n and not (d & ~mask).any()
    assert deepest_pixels(mask, 0.01).sum() == 1
    with pytest.raises(ConfigError, match="fraction must be in"):
        deepest_pixels(mask, 0.0)
    n = nodules[0]
    with pytest.raises(ConfigError, match="expected a 512 x 512 or 256 x 256 slice"):
        nodule_core_hu(scan, n, np.zeros((100, 100)))
    with pytest.raises(ConfigError, match="is not one its readers outlined"):
        nodule_core_hu(scan, n, np.zeros((512, 512)), slice_index=0)


def test_calcified_nodule_stays_bright() -> None:
    (s,) = read_database(patient_ids=[CALCIFIED])
    n1 = next(n for n in find_nodules(s) if n.nodule_id.endswith("/n1"))
    assert n1.mean_ratings["calcification"] == 3
    k = central_slice(s, n1)
    (p,) = nodule_patches(s, [n1], matrix=512, seed=0, slice_indices={k})
    _, masks = nodule_masks(s, n1)
    core = deepest_pixels(masks[k][0], 0.5)
    assert np.median(p.hu[core]) >= 200


def test_nodule_patches_are_seeded_per_nodule(scan: LidcScan, nodules: list[Nodule]) -> None:
    a = nodule_patches(scan, nodules, matrix=256, seed=4)
    b = nodule_patches(scan, nodules, matrix=256, seed=4)
    c = nodule_patches(scan, nodules, matrix=256, seed=5)
    assert len(a) == len(b) == len(c)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.hu, y.hu)
        np.testing.assert_array_equal(x.alpha, y.alpha)
    assert any(not np.array_equal(x.hu, z.hu) for x, z in zip(a, c, strict=True))


def test_slab_mm_zero_draws_the_outlines_own_plane(scan: LidcScan, nodules: list[Nodule]) -> None:
    n4 = next(n for n in nodules if n.nodule_id.endswith("/n4"))
    _, masks = nodule_masks(scan, n4)
    ends = [min(masks), max(masks)]
    flat = nodule_patches(scan, [n4], matrix=512, seed=0, slab_mm=0.0)
    slab = nodule_patches(scan, [n4], matrix=512, seed=0)
    for p, q in zip(flat, slab, strict=True):
        inside = masks[p.slice_index][0]
        # the plane: every interior pixel, at 60 % where only a minority outlined it
        assert p.alpha[inside].min() == pytest.approx(1.0 if p.consensus else 0.6)
        if p.slice_index in ends:
            assert q.alpha.sum() < p.alpha.sum()  # the 3 mm slab averages the closing cap
    with pytest.raises(ConfigError, match="slab_mm must be >= 0 mm or None"):
        nodule_patches(scan, [n4], matrix=512, seed=0, slab_mm=-1.0)
