"""Every LIDC patient's phantom chest has two lungs of an adult's size.

LIDC-IDRI-0513 (seed 0) once had none: a 276 mm field of view sized the body,
an obese chest wall (75 mm) filled it and the lung field finder found no lung
on any slice. These tests draw the chest of many real scans as
:func:`lungslice.phantom.render.render_scan` does and measure each lung's
volume on a coarse grid with the module's own :func:`lung_mask`.

``python tests/phantom/test_lung_volume.py [SEED ...]`` prints how many of the
1018 LIDC scans fall outside the bounds (and the extremes).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from lungslice.lidc.db import read_database
from lungslice.lidc.nodules import find_nodules
from lungslice.lidc.records import LidcScan
from lungslice.phantom.anatomy import ChestShape, chest_shape, lung_mask, scan_key
from lungslice.phantom.nodules import LIDC_MATRIX, nodule_spheres

#: Plausible volume (ml) of one adult lung in a chest CT (total lung capacity is
#: about 3.5-9 l for both lungs; a shallow breath or a short scan less).
LUNG_ML = (700.0, 5000.0)
#: Grid step (mm) of the volume estimate: 1.7 ml a voxel, coarse but far finer
#: than the bounds.
STEP_MM = 12.0


def scan_chest(scan: LidcScan, seed: int) -> ChestShape:
    """The chest that ``render_scan`` draws for ``scan`` (same arguments)."""
    z = np.asarray(scan.slice_zvals, dtype=np.float64)
    return chest_shape(
        (float(z.min()), float(z.max())),
        np.random.default_rng([seed, scan_key(scan.series_uid), 1]),
        nodule_spheres(scan, find_nodules(scan)),
        fov_half=LIDC_MATRIX / 2.0 * scan.pixel_spacing,
    )


def lung_volumes(shape: ChestShape, step: float = STEP_MM) -> tuple[float, float]:
    """Right and left lung volume (ml), voxels of ``step`` mm in the body frame."""
    sx = max(shape.lung_sx) * shape.lung_ax
    sy = max(shape.lung_sy) * shape.lung_ay
    xs = np.arange(-(shape.lung_cx + sx), shape.lung_cx + sx + step, step, dtype=np.float32)
    ys = np.arange(shape.lung_cy - sy, shape.lung_cy + sy + step, step, dtype=np.float32)
    zs = np.arange(shape.z_base - 0.1 * step, shape.z_apex + step, step, dtype=np.float32)
    x, y, z = np.meshgrid(xs + step / 2, ys, zs, indexing="ij")
    lung = lung_mask(shape, x, y, z, frame="body")
    ml = step**3 / 1000.0
    return float((lung & (x < 0)).sum() * ml), float((lung & (x > 0)).sum() * ml)


def implausible(scans: list[LidcScan], seed: int) -> list[tuple[str, float, float]]:
    """``(patient, right ml, left ml)`` of every scan whose lungs are out of bounds."""
    out = []
    for scan in scans:
        right, left = lung_volumes(scan_chest(scan, seed))
        if not (LUNG_ML[0] <= min(right, left) and max(right, left) <= LUNG_ML[1]):
            out.append((scan.patient_id, right, left))
    return out


@pytest.fixture(scope="module")
def all_scans() -> list[LidcScan]:
    return read_database()


@pytest.fixture(scope="module")
def nodule_free(all_scans: list[LidcScan]) -> list[LidcScan]:
    return [s for s in all_scans if not find_nodules(s)]


def test_lidc_0513_has_two_lungs_of_an_adults_size() -> None:
    (scan,) = read_database(patient_ids=["LIDC-IDRI-0513"])
    shape = scan_chest(scan, 0)
    assert shape.habitus == "obese"  # the draw that once left no lungs
    right, left = lung_volumes(shape)
    assert LUNG_ML[0] <= right <= LUNG_ML[1]
    assert LUNG_ML[0] <= left <= LUNG_ML[1]
    # the lungs are inside the field of view the scan reconstructs
    fov_half = LIDC_MATRIX / 2.0 * scan.pixel_spacing
    g = np.arange(-fov_half, fov_half, 8.0, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    z_mid = float(np.median(scan.slice_zvals))
    assert lung_mask(shape, gx, gy, z_mid).sum() * 64.0 > 10_000.0  # > 100 cm^2 on a mid slice


@pytest.mark.parametrize("seed", [0, 5])
def test_every_nodule_free_lidc_chest_has_plausible_lungs(
    nodule_free: list[LidcScan], seed: int
) -> None:
    # nodule-free scans: the chest is exactly as drawn (no growth to hold nodules)
    assert len(nodule_free) > 100
    assert implausible(nodule_free, seed) == []


@pytest.mark.parametrize("seed", [0, 5])
def test_no_lidc_chest_has_lungs_too_small(all_scans: list[LidcScan], seed: int) -> None:
    # every fourth scan (255), nodules included: none has (almost) no lung
    small = [
        (pid, r, left)
        for pid, r, left in implausible(all_scans[::4], seed)
        if min(r, left) < LUNG_ML[0]
    ]
    assert small == []


def main(seeds: list[int]) -> None:
    """Print, per seed, how many LIDC scans have implausible lungs."""
    scans = read_database()
    for seed in seeds:
        vols = np.array([lung_volumes(scan_chest(s, seed)) for s in scans])
        lo, hi = vols.min(axis=1), vols.max(axis=1)
        free = np.array([not find_nodules(s) for s in scans])
        bad = (lo < LUNG_ML[0]) | (hi > LUNG_ML[1])
        print(
            f"seed {seed}: {int(bad.sum())} of {len(scans)} scans outside {LUNG_ML} ml a lung "
            f"({int((lo < LUNG_ML[0]).sum())} too small, {int((hi > LUNG_ML[1]).sum())} too large; "
            f"nodule-free {int(bad[free].sum())} of {int(free.sum())}); "
            f"smallest {lo.min():.0f} ml, largest {hi.max():.0f} ml"
        )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [0])
