"""Per-patient variety, parenchyma, confounders, scanner variety and the realism statistics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from lungslice.errors import ConfigError
from lungslice.lidc.nodules import find_nodules
from lungslice.lidc.records import LidcScan
from lungslice.phantom import PhantomConfig, render
from lungslice.phantom.anatomy import (
    HABITUS,
    Grid,
    chest_shape,
    lung_mask,
    render_slice,
    scan_key,
    vessel_tree,
)
from lungslice.phantom.calibrate import frechet_distance, glcm_contrast
from lungslice.phantom.confounders import GRANULOMA_MAX_DIAMETER_MM, draw_confounders
from lungslice.phantom.nodules import nodule_spheres
from lungslice.phantom.render import scan_scanner


def _shapes(n: int) -> list:
    return [
        chest_shape((-150.0, 150.0), np.random.default_rng([s, 1]), fov_half=240.0)
        for s in range(n)
    ]


def test_patients_differ_in_habitus_arms_heart_domes_and_position() -> None:
    shapes = _shapes(60)
    assert {s.habitus for s in shapes} == set(HABITUS)
    assert 3 <= sum(s.arms_down for s in shapes) <= 30
    fat = {h: [s.fat for s in shapes if s.habitus == h] for h in HABITUS}
    assert max(fat["thin"]) < min(fat["obese"])
    for attr in ("heart_ax", "heart_cx", "rotation", "shift_x", "table_y"):
        values = np.array([getattr(s, attr) for s in shapes])
        assert values.std() > 0, attr
    domes = np.array([s.dome_top for s in shapes])
    assert domes[:, 0].std() > 0.02 and (domes[:, 0] != domes[:, 1]).all()
    assert any(s.scoliosis != 0 for s in shapes) and any(s.scoliosis == 0 for s in shapes)
    assert any(s.emphysema for s in shapes) and any(not s.emphysema for s in shapes)
    assert any(s.plaques for s in shapes)
    sides = np.array([s.lung_sx for s in shapes])
    assert (sides[:, 0] != sides[:, 1]).all()  # left/right asymmetry
    # the same generator seed draws the same chest
    again = chest_shape((-150.0, 150.0), np.random.default_rng([7, 1]), fov_half=240.0)
    # arms beside the chest only in a field of view that holds them
    narrow = [chest_shape((-150.0, 150.0), np.random.default_rng([s, 1])) for s in range(60)]
    assert not any(s.arms_down for s in narrow)
    assert again == shapes[7]


def test_rotation_and_shift_move_the_whole_chest() -> None:
    shape = chest_shape((-150.0, 150.0), np.random.default_rng([3, 1]))
    straight = replace(shape, rotation=0.0, shift_x=0.0)
    turned = replace(shape, rotation=np.deg2rad(6.0), shift_x=12.0)
    rng = np.random.default_rng(0)
    p = rng.uniform(-150, 150, (4000, 3)).astype(np.float32)
    xi, yi = turned.to_image(p[:, 0], p[:, 1])
    xb, yb = turned.to_body(xi, yi)
    np.testing.assert_allclose(xb, p[:, 0], atol=1e-3)
    np.testing.assert_allclose(yb, p[:, 1], atol=1e-3)
    # a point is lung in the turned chest exactly where its body-frame point is lung
    np.testing.assert_array_equal(
        lung_mask(turned, xi, yi, p[:, 2]), lung_mask(straight, p[:, 0], p[:, 1], p[:, 2])
    )
    assert (lung_mask(turned, p[:, 0], p[:, 1], p[:, 2]) != lung_mask(straight, *p.T)).any()


def test_arms_down_puts_the_humeri_beside_the_chest() -> None:
    shape = next(s for s in _shapes(60) if s.arms_down)
    grid = Grid(256, 1.9)
    img, _ = render_slice(shape, grid, 0.0)
    x, y = grid.coords()
    bx, _ = shape.to_body(np.broadcast_to(x, img.shape), np.broadcast_to(y, img.shape))
    outside = np.abs(bx) > shape.half_width + shape.arm_gap
    assert (img[outside] > 500).sum() > 50  # humerus cortex on both sides
    assert (img[outside & (bx < 0)] > 500).any() and (img[outside & (bx > 0)] > 500).any()


def test_confounders_are_clear_of_nodules_and_granulomas_small_and_dense(
    mixed: LidcScan,
) -> None:
    nodules = find_nodules(mixed)
    spheres = nodule_spheres(mixed, nodules)
    key = scan_key(mixed.series_uid)
    z = mixed.slice_zvals
    shape = chest_shape(
        (float(z.min()), float(z.max())), np.random.default_rng([0, key, 1]), spheres
    )
    vessels, _ = vessel_tree(shape, np.random.default_rng([0, key, 2]))
    conf = draw_confounders(shape, vessels, np.random.default_rng([0, key, 6]), spheres)
    assert 2 * conf.granulomas.radius.max() <= GRANULOMA_MAX_DIAMETER_MM
    assert conf.granuloma_hu > 200
    for seg in (conf.granulomas, conf.scars, conf.vessels, conf.bronchi):
        for a, b in zip(seg.start, seg.end, strict=True):
            for t in (0.0, 0.5, 1.0):
                p = a + t * (b - a)
                d = np.sqrt(((spheres[:, :3] - p) ** 2).sum(axis=1))
                assert (d > spheres[:, 3] + 10.0).all()


def test_granulomas_render_above_200_hu_and_are_not_labelled(one_nodule: LidcScan) -> None:
    """A noise-free render: a granuloma >= 2.4 mm across centred on a slice peaks above
    200 HU, and rendering without nodules changes nothing outside the readers' slices
    (the confounders are part of the chest, not of the labels)."""
    scan = one_nodule
    key = scan_key(scan.series_uid)
    spheres = nodule_spheres(scan, find_nodules(scan))
    z = scan.slice_zvals
    found = None
    for seed in range(12):  # the first seeds that draw such a granuloma
        shape = chest_shape(
            (float(z.min()), float(z.max())),
            np.random.default_rng([seed, key, 1]),
            spheres,
            fov_half=256 * scan.pixel_spacing,
        )
        vessels, _ = vessel_tree(shape, np.random.default_rng([seed, key, 2]))
        conf = draw_confounders(shape, vessels, np.random.default_rng([seed, key, 6]), spheres)
        for c, r in zip(conf.granulomas.start, conf.granulomas.radius, strict=True):
            k = int(np.abs(z - c[2]).argmin())
            if r >= 1.2 and abs(z[k] - c[2]) < 0.4:
                found = seed, c, k
                break
        if found:
            break
    assert found is not None
    seed, c, k = found
    config = PhantomConfig(seed=seed, kernel="standard", noise_hu=0.0)
    ks = np.array(sorted({k, *range(0, scan.n_slices, 10)}))
    r = render(scan, config, ks)
    bare = render(scan, replace(config, nodules=False), ks)
    spacing = r.pixel_spacing
    origin = -511 / 2.0 * spacing
    i = int(np.flatnonzero(r.slice_indices == k)[0])
    row, col = round((c[1] - origin) / spacing), round((c[0] - origin) / spacing)
    assert bare.hu[i, row - 3 : row + 4, col - 3 : col + 4].max() > 200
    labelled = {scan.slice_index(c.z) for n in r.nodules for a in n.annotations for c in a.contours}
    for i, kk in enumerate(r.slice_indices):
        if int(kk) not in labelled:
            np.testing.assert_array_equal(r.hu[i], bare.hu[i])


def test_scanner_variety_is_drawn_per_scan_and_deterministic(
    one_nodule: LidcScan, mixed: LidcScan
) -> None:
    config = PhantomConfig(seed=0)
    shape = chest_shape((-100.0, 100.0), np.random.default_rng([1, 1]))
    a = scan_scanner(one_nodule, config, shape)
    assert a == scan_scanner(one_nodule, config, shape)
    assert a != scan_scanner(mixed, config, shape)
    assert a != scan_scanner(one_nodule, replace(config, seed=1), shape)
    obese = replace(shape, habitus="obese")
    thin = replace(shape, habitus="thin")
    assert (
        scan_scanner(one_nodule, config, obese).noise_scale
        > scan_scanner(one_nodule, config, thin).noise_scale
    )


def test_sharp_kernel_overshoots_at_edges(one_nodule: LidcScan) -> None:
    k = [int(one_nodule.n_slices * 0.5)]
    hu = {}
    for kernel in ("standard", "bone"):
        cfg = PhantomConfig(seed=0, kernel=kernel, noise_hu=0.0, matrix=256)
        hu[kernel] = render(one_nodule, cfg, np.array(k)).hu[0].astype(np.float32)
    # edge enhancement: the darkest lung pixels beside bright structures undershoot
    assert hu["bone"].max() > hu["standard"].max()
    inside = hu["standard"] > -1024
    assert np.percentile(hu["bone"][inside], 1) < np.percentile(hu["standard"][inside], 1)


def test_glcm_contrast_and_frechet_distance_on_known_inputs() -> None:
    flat = np.full((32, 32), -800.0)
    mask = np.ones((32, 32), dtype=bool)
    assert glcm_contrast(flat, mask) == 0.0
    # alternating columns two gray levels apart: horizontal pairs differ by 2, vertical by 0
    step = 1500.0 / 32
    cols = np.where(np.arange(32) % 2 == 0, -1350.0 + 0.5 * step, -1350.0 + 2.5 * step)
    stripes = np.tile(cols, (32, 1))
    assert glcm_contrast(stripes, mask) == pytest.approx(2.0)
    assert np.isnan(glcm_contrast(stripes, np.zeros((32, 32), dtype=bool)))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([3.0, 0.0, 4.0])
    assert frechet_distance(x, x + shift) == pytest.approx(25.0, rel=1e-6)
    # twice the spread: Tr(S + 4S - 2 * 2S) = Tr(S), plus the means' distance |mu|^2
    expected = np.trace(np.cov(x.T)) + float(x.mean(axis=0) @ x.mean(axis=0))
    assert frechet_distance(x, 2 * x) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ConfigError, match=r"expected two \(n >= 2, d\) arrays"):
        frechet_distance(x[:1], x)
