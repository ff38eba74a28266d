"""render_scan / render: determinism, crops, geometry and nodules exactly on labelled slices."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from scipy import ndimage as ndi

from lungslice.lidc.labels import label_scans
from lungslice.lidc.records import LidcScan
from lungslice.phantom import PhantomConfig, render, render_scan
from lungslice.phantom.calibrate import lung_field
from lungslice.phantom.nodules import annotation_slice_mask
from lungslice.phantom.render import PADDING_HU

SMALL = PhantomConfig(seed=1, matrix=256)


@pytest.fixture(scope="module")
def mixed_render(mixed: LidcScan) -> Any:
    return render(mixed, SMALL)


def test_geometry_and_dtype(mixed: LidcScan, mixed_render: Any) -> None:
    r = mixed_render
    assert r.hu.shape == (mixed.n_slices, 256, 256)
    assert r.hu.dtype == np.int16
    np.testing.assert_array_equal(r.z_positions, mixed.slice_zvals)
    assert r.pixel_spacing == pytest.approx(2 * mixed.pixel_spacing)
    assert not r.cropped
    # GE-style padding outside the reconstruction circle, HU inside
    assert r.hu[0, 0, 0] == PADDING_HU
    inside = r.hu[:, 128, 128]
    assert inside.min() >= -1024 and inside.max() <= 3071


def test_same_seed_same_pixels_other_seed_other_pixels(mixed: LidcScan, mixed_render: Any) -> None:
    hu2, z2 = render_scan(mixed, SMALL)
    np.testing.assert_array_equal(hu2, mixed_render.hu)
    np.testing.assert_array_equal(z2, mixed.slice_zvals)
    hu3, _ = render_scan(mixed, replace(SMALL, seed=2, z_margin_mm=0.0))
    k = render(mixed, replace(SMALL, seed=2, z_margin_mm=0.0)).slice_indices
    assert not np.array_equal(hu3, mixed_render.hu[k])


def test_z_margin_crop_holds_the_full_scans_pixels(mixed: LidcScan, mixed_render: Any) -> None:
    crop = render(mixed, replace(SMALL, z_margin_mm=5.0))
    assert crop.cropped
    z = mixed.slice_zvals
    lo = min(n.z_min for n in crop.nodules) - 5.0
    hi = max(n.z_max for n in crop.nodules) + 5.0
    np.testing.assert_array_equal(crop.slice_indices, np.flatnonzero((z >= lo) & (z <= hi)))
    assert crop.z_ranges == [(lo, hi)]
    np.testing.assert_array_equal(crop.hu, mixed_render.hu[crop.slice_indices])


def test_nodule_pixels_on_exactly_the_labelled_slices(mixed: LidcScan, mixed_render: Any) -> None:
    """Every slice the label stage calls malignant/benign has nodule pixels inside the
    readers' contours; no non-nodule slice has any nodule pixel."""
    bare = render(mixed, replace(SMALL, nodules=False))
    nodule_pixels = mixed_render.hu != bare.hu
    slices, nodules = label_scans([mixed])
    assert set(nodules["label"]) == {"malignant", "benign"}
    labelled = set(slices.loc[slices["label"] != "non-nodule", "slice_index"].tolist())
    assert set(np.flatnonzero(nodule_pixels.any(axis=(1, 2))).tolist()) == labelled
    for k in sorted(labelled):
        outlined = np.zeros((512, 512), dtype=bool)
        for a in mixed.annotations:
            outlined |= annotation_slice_mask(
                mixed, a, k, (0, 0, 512, 512), include_contour_points=True
            )
        outlined_256 = outlined.reshape(256, 2, 256, 2).any(axis=(1, 3))
        assert (nodule_pixels[k] & outlined_256).any(), f"slice {k}"


def test_vessel_cross_sections_are_round_blobs_that_move(one_nodule: LidcScan) -> None:
    scan = one_nodule
    r = render(scan, PhantomConfig(seed=0, kernel="soft", nodules=False), np.array([66, 68]))
    bright = []
    for sl in r.hu:
        b = (sl > -400) & lung_field(sl)
        lab, _ = ndi.label(b)
        sizes = np.bincount(lab.ravel())[1:]
        # many small (a few mm) cross-sections on one slice
        assert ((sizes >= 3) & (sizes <= 150)).sum() >= 20
        bright.append(b)
    # 5 mm further most of them are gone (a nodule of >= 5 mm would still be there)
    lab, n = ndi.label(bright[0])
    persisting = set(np.unique(lab[bright[1]]).tolist()) - {0}
    assert len(persisting) < 0.5 * n


def test_reader_mode_draws_one_readers_slices(mixed: LidcScan, mixed_render: Any) -> None:
    config = replace(SMALL, mask_mode="reader", reader=1)
    r = render(mixed, config)
    bare = render(mixed, replace(SMALL, nodules=False))
    drawn = set(np.flatnonzero((r.hu != bare.hu).any(axis=(1, 2))).tolist())
    expected = set()
    for nodule in r.nodules:
        ann = nodule.annotations[min(1, len(nodule.annotations) - 1)]
        expected |= {mixed.slice_index(c.z) for c in ann.contours}
    assert drawn == expected
    # outside the nodules the scan is the same as in consensus mode
    assert np.array_equal(r.hu[~np.isin(np.arange(r.hu.shape[0]), sorted(drawn))],
                          bare.hu[~np.isin(np.arange(r.hu.shape[0]), sorted(drawn))])  # fmt: skip


def test_nodule_free_scan_crops_around_its_middle() -> None:
    from lungslice.lidc.db import read_database

    (scan,) = read_database(patient_ids=["LIDC-IDRI-0100"])  # no annotations
    r = render(scan, PhantomConfig(seed=0, matrix=256, z_margin_mm=3.0))
    z = scan.slice_zvals
    mid = 0.5 * (z.min() + z.max())
    assert r.nodules == [] and r.cropped
    assert r.z_ranges == [(mid - 3.0, mid + 3.0)]
    np.testing.assert_array_equal(r.z_positions, z[(z >= mid - 3.0) & (z <= mid + 3.0)])
    assert r.hu.shape[0] >= 2
