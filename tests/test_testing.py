"""Tests of lungslice.testing: the synthetic CT writer others build their tests on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from lungslice.dicom import write as dicom_write
from lungslice.errors import ConfigError
from lungslice.phantom import writer as phantom_writer
from lungslice.testing import body_phantom, make_uid, write_ct_series


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_writes_given_hu_and_geometry(tmp_path: Path) -> None:
    hu = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5) - 1000
    paths = write_ct_series(tmp_path, hu, spacing=(2.0, 0.5, 0.75), z0=10.0)
    assert [p.name for p in paths] == ["0000.dcm", "0001.dcm", "0002.dcm"]
    for i, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert (ds.Rows, ds.Columns) == (4, 5)
        assert [float(v) for v in ds.PixelSpacing] == [0.5, 0.75]
        assert float(ds.SliceThickness) == 2.0
        assert float(ds.ImagePositionPatient[2]) == pytest.approx(10.0 + 2.0 * i)
        assert ds.InstanceNumber == i + 1
        assert ds.PatientID == "TEST-0001"
        np.testing.assert_array_equal(_hu(ds), hu[i])
    # centred in-plane: first pixel at -(n-1)/2 * spacing
    ds0 = pydicom.dcmread(paths[0])
    assert float(ds0.ImagePositionPatient[0]) == pytest.approx(-2 * 0.75)
    assert float(ds0.ImagePositionPatient[1]) == pytest.approx(-1.5 * 0.5)


def test_deterministic_uids_depend_on_seed(tmp_path: Path) -> None:
    a = [pydicom.dcmread(p).SOPInstanceUID for p in write_ct_series(tmp_path / "a", n_slices=2)]
    b = [pydicom.dcmread(p).SOPInstanceUID for p in write_ct_series(tmp_path / "b", n_slices=2)]
    c = [
        pydicom.dcmread(p).SOPInstanceUID
        for p in write_ct_series(tmp_path / "c", n_slices=2, seed=1)
    ]
    assert a == b
    assert a[0] != a[1]
    assert set(a).isdisjoint(c)
    assert make_uid("x", 1) == make_uid("x", 1) != make_uid("x", 2)
    assert len(make_uid("x")) <= 64
    # one UID scheme: the phantom's namespace of the same helper
    assert make_uid("x") == dicom_write.make_uid("x", namespace="lungslice-testing")
    assert phantom_writer._uid("sop", 1) == dicom_write.make_uid(
        "sop", 1, namespace=phantom_writer.UID_NAMESPACE
    )
    assert all(u.startswith("2.25.") and pydicom.uid.UID(u).is_valid for u in a)


def test_default_phantom_is_body_like() -> None:
    hu = body_phantom(4, 32, 32, seed=3)
    assert hu.shape == (4, 32, 32)
    assert hu[0, 0, 0] == pytest.approx(-1000, abs=60)
    assert hu[0, 16, 7] == pytest.approx(-850, abs=60)  # right lung
    assert hu[0, 16, 16] == pytest.approx(40, abs=60)  # mediastinum
    np.testing.assert_array_equal(hu, body_phantom(4, 32, 32, seed=3))


def test_shuffle_overrides_and_file_names(tmp_path: Path) -> None:
    paths = write_ct_series(
        tmp_path,
        n_slices=6,
        rows=8,
        columns=8,
        shuffle_instance_numbers=True,
        file_name="x/{instance}",
        PixelData=lambda i: None if i == 2 else ...,
        Manufacturer="GE MEDICAL SYSTEMS",
    )
    numbers = [pydicom.dcmread(p).InstanceNumber for p in paths]
    assert sorted(numbers) == list(range(1, 7))
    assert numbers != list(range(1, 7))
    assert [p.name for p in paths] == [str(n) for n in numbers]
    ds2 = pydicom.dcmread(paths[2])
    assert "PixelData" not in ds2
    assert ds2.Manufacturer == "GE MEDICAL SYSTEMS"


def test_explicit_positions_and_tilt(tmp_path: Path) -> None:
    c, s = np.cos(np.radians(15)), np.sin(np.radians(15))
    paths = write_ct_series(
        tmp_path,
        n_slices=3,
        rows=4,
        columns=4,
        z_positions=[0.0, 1.0, 5.0],
        orientation=(1, 0, 0, 0, c, s),
        stack_direction=(0, 0, 1),
    )
    ipp = [[float(v) for v in pydicom.dcmread(p).ImagePositionPatient] for p in paths]
    assert [p[2] - ipp[0][2] for p in ipp] == pytest.approx([0.0, 1.0, 5.0])
    assert ipp[0][1] == ipp[2][1]


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, RLELossless])
def test_other_syntaxes_decode(tmp_path: Path, syntax: str) -> None:
    hu = body_phantom(2, 16, 16)
    paths = write_ct_series(tmp_path, hu, transfer_syntax=syntax)
    ds = pydicom.dcmread(paths[1])
    assert ds.file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(_hu(ds), np.rint(hu[1]))


def test_unencodable_syntax_keeps_headers(tmp_path: Path) -> None:
    paths = write_ct_series(
        tmp_path, n_slices=1, rows=4, columns=4, transfer_syntax=JPEGBaseline8Bit
    )
    ds = pydicom.dcmread(paths[0])
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert ds.Rows == 4


def test_rejects_values_outside_16_bit(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="do not fit signed 16 bit"):
        write_ct_series(tmp_path, np.full((1, 2, 2), 40000.0))
    with pytest.raises(ConfigError, match=r"z_positions needs 2 values, got 3"):
        write_ct_series(tmp_path, np.zeros((2, 2, 2)), z_positions=[0, 1, 2])
