"""Nodule insertion into a host series (lungslice.phantom.insert, ``synth --into``)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from lungslice.cli import app
from lungslice.dicom.volume import load_series
from lungslice.errors import ConfigError, LungsliceError
from lungslice.lidc.labels import read_labels
from lungslice.lidc.records import CHARACTERISTICS, Annotation, Contour, LidcScan
from lungslice.phantom.insert import INSERTION_FILE, InsertConfig, insert_nodules
from lungslice.testing import write_ct_series

REALCT = Path(__file__).resolve().parents[2] / ".." / "shared" / "realct"
runner = CliRunner()


def _host_hu(seed: int = 1) -> np.ndarray:
    """20 slices of 160 x 160: air, an elliptic body (40 HU), two lungs (-850 HU), noise."""
    n, size = 20, 160
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    body = ((yy - 80) / 62) ** 2 + ((xx - 80) / 74) ** 2 < 1
    right = ((yy - 80) / 44) ** 2 + ((xx - 48) / 26) ** 2 < 1
    left = ((yy - 80) / 44) ** 2 + ((xx - 112) / 26) ** 2 < 1
    sl = np.where(body, 40.0, -1000.0)
    sl = np.where(right | left, -850.0, sl)
    rng = np.random.default_rng(seed)
    return (sl[None] + rng.normal(0, 20, (n, size, size))).astype(np.float32)


def _circle(cx: float, cy: float, r: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    pts = np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)]).round().astype(int)
    keep = np.any(pts != np.roll(pts, 1, axis=0), axis=1)  # drop repeated points, keep order
    return pts[keep]


def _scan() -> LidcScan:
    """One solid 8 mm nodule outlined by two readers on 5 slices of 1.25 mm (0.7 mm pixels)."""
    zs = np.arange(-50.0, -10.0, 1.25)
    ratings = dict.fromkeys(CHARACTERISTICS, 3) | {"texture": 5, "calcification": 6}
    anns = []
    for a in range(2):
        contours = tuple(
            Contour(z=float(zs[k]), inclusion=True, xy=_circle(256, 256, r), image_ref=f"{k}.dcm")
            for k, r in zip(range(14, 19), (3, 5, 6, 5, 3), strict=True)
        )
        anns.append(Annotation(a + 1, f"N{a}", None, dict(ratings), contours))
    return LidcScan(
        scan_id=1,
        patient_id="LIDC-IDRI-9999",
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        slice_thickness=1.25,
        pixel_spacing=0.7,
        slice_zvals=zs,
        annotations=tuple(anns),
    )


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("host")
    write_ct_series(folder, _host_hu(), spacing=(2.5, 0.8, 0.8), z0=-60.0, kernel="LUNG")
    return folder


@pytest.fixture(scope="module")
def inserted(host: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("inserted")
    return insert_nodules(host, [_scan()], out, config=InsertConfig(), seed=5)


def _stored(folder: Path) -> dict[float, tuple[np.ndarray, pydicom.Dataset]]:
    out = {}
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        out[float(ds.ImagePositionPatient[2])] = (ds.pixel_array.copy(), ds)
    return out


def test_pixels_outside_the_nodule_are_bit_identical(host: Path, inserted) -> None:  # type: ignore[no-untyped-def]
    (nod,) = inserted.nodules
    before, after = _stored(host), _stored(inserted.series_dir)
    assert sorted(before) == sorted(after)
    yy, xx = np.mgrid[0:160, 0:160]
    changed = 0
    reach_px = (nod.radius_mm + 3 * inserted.edge_sigma_mm + 2.0) / 0.8
    for z, (raw, _) in before.items():
        diff = after[z][0] != raw
        changed += int(diff.sum())
        far = np.hypot(yy - nod.centre_row, xx - nod.centre_col) > reach_px
        if abs(z - nod.centre_z_mm) > nod.radius_mm + 2.5:
            far[:] = True
        assert not (diff & far).any(), f"pixels changed far from the nodule at z {z}"
        assert np.array_equal(after[z][0][far], raw[far])
    assert 0 < changed <= nod.n_pixels


def test_inserted_nodule_is_dense_and_keeps_host_noise(host: Path, inserted) -> None:  # type: ignore[no-untyped-def]
    (nod,) = inserted.nodules
    h, d = load_series(host), load_series(inserted.series_dir)
    k = int(np.abs(h.z_positions - nod.centre_z_mm).argmin())
    yy, xx = np.mgrid[0:160, 0:160]
    core = np.hypot(yy - nod.centre_row, xx - nod.centre_col) < 2.0 / 0.8
    assert h.hu[k][core].mean() < -700
    assert d.hu[k][core].mean() > h.hu[k][core].mean() + 300
    # the host's own noise is inside the nodule: the change is smooth, the noise is not
    delta = d.hu[k][core] - h.hu[k][core]
    assert np.corrcoef(d.hu[k][core] - d.hu[k][core].mean(), h.hu[k][core])[0, 1] > 0.2
    assert delta.std() < h.hu[k][core].std() * 3


def test_derived_series_has_new_uids_and_host_geometry(host: Path, inserted) -> None:  # type: ignore[no-untyped-def]
    before, after = _stored(host), _stored(inserted.series_dir)
    host_sops = {ds.SOPInstanceUID for _, ds in before.values()}
    new_sops = {ds.SOPInstanceUID for _, ds in after.values()}
    assert len(new_sops) == len(after) and not new_sops & host_sops
    for z, (_, ds) in after.items():
        src = before[z][1]
        assert ds.SeriesInstanceUID == inserted.series_uid != src.SeriesInstanceUID
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert "LIDC nodules" in ds.SeriesDescription
        for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            assert list(ds[tag].value) == list(src[tag].value)
        assert ds.StudyInstanceUID == src.StudyInstanceUID


def test_labels_and_record(host: Path, inserted) -> None:  # type: ignore[no-untyped-def]
    (nod,) = inserted.nodules
    labels = read_labels(inserted.out_dir)
    assert len(labels.slices) == 20
    assert set(labels.slices["series_uid"]) == {inserted.series_uid}
    row = labels.nodules.iloc[0]
    assert row["source_nodule_id"] == "LIDC-IDRI-9999/n1" and row["n_annotations"] == 2
    assert row["centre_row"] == pytest.approx(nod.centre_row)
    assert list(row["slice_indices"]) == list(nod.slice_indices) and row["radius_mm"] > 3
    labelled = labels.slices[labels.slices["label"] != "non-nodule"]["slice_index"].tolist()
    assert labelled == list(nod.slice_indices) and labels.slices["label"].iloc[0] == "non-nodule"
    record = json.loads((inserted.out_dir / INSERTION_FILE).read_text())
    assert record["host"]["series_uid"] == inserted.host_series_uid
    assert record["host"]["kernel"] == "LUNG" and record["seed"] == 5
    assert record["nodules"][0]["source_patient_id"] == "LIDC-IDRI-9999"
    assert record["config"]["pleura_margin_mm"] == 3.0


def test_same_seed_same_series_other_seed_elsewhere(host: Path, tmp_path: Path, inserted) -> None:  # type: ignore[no-untyped-def]
    again = insert_nodules(host, [_scan()], tmp_path / "a", seed=5)
    assert again.series_uid == inserted.series_uid and again.nodules == inserted.nodules
    other = insert_nodules(host, [_scan()], tmp_path / "b", seed=6)
    assert other.series_uid != inserted.series_uid


def test_nodule_that_fits_nowhere_is_an_error(host: Path, tmp_path: Path) -> None:
    with pytest.raises(LungsliceError, match="fits into the host's lung field") as err:
        insert_nodules(host, [_scan()], tmp_path, config=InsertConfig(pleura_margin_mm=40.0))
    assert "LIDC-IDRI-9999/n1: no lung-field voxel lies" in str(err.value)


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="mask_mode must be 'consensus' or 'reader'"):
        InsertConfig(mask_mode="union")
    with pytest.raises(ConfigError, match="max_nodules must be >= 1"):
        InsertConfig(max_nodules=0)


def test_cli_into_needs_patients(host: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["synth", "--into", str(host), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "synth --into: give the LIDC-IDRI patients" in result.output


@pytest.mark.realct
@pytest.mark.slow
@pytest.mark.skipif(not REALCT.is_dir(), reason=f"{REALCT} is absent")
def test_cli_into_real_ge_series(tmp_path: Path) -> None:
    name = "chest-ct-ge-petct-4mm"
    with tarfile.open(REALCT / f"{name}.tar.xz") as tar:
        tar.extractall(tmp_path, filter="data")
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["synth", "--into", str(tmp_path / name), "--patients", "LIDC-IDRI-0078",
         "--max-nodules", "1", "--out", str(out), "--seed", "1"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    host, derived = load_series(tmp_path / name), load_series(out / "dicom")
    assert derived.n_slices == host.n_slices == 99
    record = json.loads((out / INSERTION_FILE).read_text())
    (nod,) = record["nodules"]
    assert record["host"]["manufacturer"] == "GE MEDICAL SYSTEMS"
    k = int(np.abs(host.z_positions - nod["centre_z_mm"]).argmin())
    r, c = round(nod["centre_row"]), round(nod["centre_col"])
    assert derived.hu[k, r - 2 : r + 3, c - 2 : c + 3].mean() > -300
    assert host.hu[k, r - 2 : r + 3, c - 2 : c + 3].mean() < -500
    changed = derived.hu != host.hu
    assert 0 < changed.sum() <= nod["pixels_changed"]
    assert not changed[: max(k - 10, 0)].any() and not changed[k + 11 :].any()
