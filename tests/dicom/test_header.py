"""Header reading: the fast raw reader agrees with pydicom, and falls back where it must."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from lungslice.dicom import header as H
from lungslice.dicom.header import read_header
from lungslice.dicom.rawheader import RawHeaderUnsupported
from lungslice.dicom.volume import load_series
from lungslice.errors import DicomReadError
from lungslice.testing import body_phantom, write_ct_series


def _nested(i: int) -> Sequence:
    inner = Dataset()
    inner.CodeValue = "123"
    inner.CodingSchemeDesignator = "DCM"
    item = Dataset()
    item.ReferencedSOPInstanceUID = f"1.2.3.{i}"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    return Sequence([item, Dataset()])


def _with_extras(folder: Path, syntax: str) -> list[Path]:
    paths = write_ct_series(
        folder,
        body_phantom(3, 32, 32),
        transfer_syntax=syntax,
        ReferencedImageSequence=_nested,
        PixelPaddingValue=-2000,
        SeriesDescription="chest\\lung",
    )
    for p in paths:  # a private block with a long value, as vendors write
        ds = pydicom.dcmread(p)
        block = ds.private_block(0x0009, "LUNGSLICE TEST", create=True)
        block.add_new(0x01, "OB", b"\x01\x02" * 3000)
        block.add_new(0x02, "LO", "vendor")
        ds.save_as(p, enforce_file_format=True)
    return paths


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless]
)
def test_fast_reader_agrees_with_pydicom(tmp_path: Path, syntax: str) -> None:
    for p in _with_extras(tmp_path, syntax):
        fast = H._fast_header(p)
        slow = H.header_from_dataset(H.read_dataset(p, pixels=False), p)
        assert fast == slow
        assert fast.padding_value == -2000
        assert fast.series_description == "chest\\lung"
        if syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            assert fast.pixel_offset is not None
            assert fast.pixel_offset + (fast.pixel_bytes or 0) == p.stat().st_size


def test_file_without_preamble_falls_back(tmp_path: Path) -> None:
    (p,) = write_ct_series(tmp_path, n_slices=1, rows=8, columns=8)
    ds = pydicom.dcmread(p)
    ds.preamble = None
    del ds.file_meta
    raw = tmp_path / "raw"
    ds.save_as(raw, implicit_vr=True, little_endian=True, enforce_file_format=False)
    with pytest.raises(RawHeaderUnsupported, match="no DICM preamble"):
        H._fast_header(raw)
    header = read_header(raw)
    assert header.sop_instance_uid == str(ds.SOPInstanceUID)
    assert (header.rows, header.columns) == (8, 8)


def test_deflated_series_loads_through_pydicom(tmp_path: Path) -> None:
    hu = np.rint(body_phantom(3, 16, 16))
    write_ct_series(tmp_path, hu, transfer_syntax=DeflatedExplicitVRLittleEndian)
    vol = load_series(tmp_path)
    np.testing.assert_array_equal(vol.hu, hu)


def test_header_cut_short(tmp_path: Path) -> None:
    (p,) = write_ct_series(tmp_path, n_slices=1, rows=8, columns=8)
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(RawHeaderUnsupported, match="ends inside an element"):
        H._fast_header(p)
    # pydicom reads what is there; the file has no pixel data then.
    assert read_header(p).has_pixels is False


def test_bad_number_names_the_file(tmp_path: Path) -> None:
    (p,) = write_ct_series(tmp_path, n_slices=1, rows=8, columns=8, ImagePositionPatient=[0, 1])
    with pytest.raises(
        DicomReadError, match=r"0000\.dcm: ImagePositionPatient has 2 values, expected 3$"
    ):
        read_header(p)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_fast_reader_agrees_on_pydicoms_own_test_files() -> None:
    root = Path(pydicom.data.__file__).parent / "test_files"
    files = [p for p in sorted(root.rglob("*")) if p.is_file()]
    same = fallback = 0
    for path in files:
        try:
            slow = H.header_from_dataset(H.read_dataset(path, pixels=False), path)
        except DicomReadError:
            continue  # not an image header pydicom reads either
        try:
            fast = H._fast_header(path)
        except RawHeaderUnsupported:
            fallback += 1
            continue
        assert fast == slow, path.name
        same += 1
    assert same > 100  # most of the corpus takes the fast path
    assert fallback > 0  # and the odd ones (big endian, deflated, no preamble) fall back


def test_loads_pydicoms_ct_small_like_pydicom() -> None:
    from lungslice.dicom.volume import LoadConfig

    path = Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm"
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    vol = load_series([path], config=LoadConfig(min_slices=1))
    np.testing.assert_array_equal(vol.hu[0], expected.astype(np.float32))
    assert vol.sop_instance_uids == (str(ds.SOPInstanceUID),)
    assert vol.spacing[1:] == tuple(float(v) for v in ds.PixelSpacing)
