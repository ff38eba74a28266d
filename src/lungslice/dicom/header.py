"""One DICOM file's header facts, read without decoding pixels.

Both the index (:mod:`lungslice.dicom.discover`) and the loader
(:mod:`lungslice.dicom.volume`) turn a file into a :class:`SliceHeader`, so
they agree on what a file is and why it is skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from lungslice.dicom.rawheader import RawHeader, RawHeaderUnsupported, read_raw_header
from lungslice.errors import DicomReadError

__all__ = [
    "HEADER_TAGS",
    "DamagedPixelDataError",
    "SliceHeader",
    "header_from_dataset",
    "read_dataset",
    "read_header",
]

#: Keywords read by :func:`read_header` (everything else is skipped while parsing).
HEADER_TAGS: tuple[str, ...] = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "PatientID",
    "Modality",
    "ImageType",
    "Manufacturer",
    "ConvolutionKernel",
    "SeriesDescription",
    "SeriesNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "GantryDetectorTilt",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "PixelData",
)

_PIXEL_DATA_TAG = 0x7FE00010
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
_UNDEFINED_LENGTH = 0xFFFFFFFF
_DEFLATED = "1.2.840.10008.1.2.1.99"


@dataclass(frozen=True)
class SliceHeader:
    """What lungslice needs from one DICOM image header.

    Attributes are None where the file lacks the element. ``position`` is
    ImagePositionPatient, ``orientation`` ImageOrientationPatient,
    ``pixel_spacing`` PixelSpacing as ``(row, column)``; ``pixel_bytes`` the
    length of the PixelData value (None when encapsulated or absent) and
    ``pixel_offset`` where it starts in the file (None once loaded).
    ``has_rescale`` is False when RescaleSlope or RescaleIntercept is absent
    (``rescale_slope`` / ``rescale_intercept`` then hold 1 and 0).
    """

    path: Path
    sop_class_uid: str | None
    sop_instance_uid: str | None
    series_uid: str | None
    study_uid: str | None
    patient_id: str | None
    modality: str | None
    image_type: tuple[str, ...]
    manufacturer: str | None
    kernel: str | None
    series_description: str | None
    instance_number: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    gantry_tilt: float | None
    rows: int | None
    columns: int | None
    n_frames: int
    samples_per_pixel: int | None
    photometric: str | None
    bits_allocated: int | None
    bits_stored: int | None
    pixel_representation: int | None
    rescale_slope: float
    rescale_intercept: float
    padding_value: int | None
    padding_limit: int | None
    transfer_syntax: str | None
    has_pixels: bool
    pixel_bytes: int | None
    pixel_offset: int | None = None
    has_rescale: bool = True

    @property
    def is_dicomdir(self) -> bool:
        """True for a DICOMDIR (media directory) file."""
        return self.sop_class_uid == _DICOMDIR_CLASS

    @property
    def is_localizer(self) -> bool:
        """True for a scout / localizer image."""
        return "LOCALIZER" in self.image_type

    def expected_pixel_bytes(self) -> int | None:
        """Bytes the native PixelData should hold, from Rows/Columns/BitsAllocated."""
        if None in (self.rows, self.columns, self.bits_allocated):
            return None
        assert self.rows is not None and self.columns is not None
        assert self.bits_allocated is not None
        samples = self.samples_per_pixel or 1
        n_bits = self.rows * self.columns * samples * self.n_frames * self.bits_allocated
        return (n_bits + 7) // 8


_BINARY_US = frozenset(
    (
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "BitsAllocated",
        "BitsStored",
        "PixelRepresentation",
        "PixelPaddingValue",
        "PixelPaddingRangeLimit",
    )
)
_TAGS: dict[str, int] = {keyword: int(tag_for_keyword(keyword) or 0) for keyword in HEADER_TAGS}
_WANTED = frozenset(tag for keyword, tag in _TAGS.items() if keyword != "PixelData")


_TEXT_VRS = frozenset(
    (None, "AE", "AS", "CS", "DA", "DS", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UI")
)
_Getter = Callable[[str], Any]


class _NotSimple(Exception):
    """A raw value this module does not convert itself."""


def _convert_raw(keyword: str, vr: str | None, raw: bytes) -> Any:
    # Text, or unsigned 16 bit: all the header needs. pydicom's generic
    # conversion costs ~30 us an element, as much as parsing the file.
    if keyword in _BINARY_US:
        if vr not in (None, "US", "SS", "OB", "OW") or len(raw) < 2:
            raise _NotSimple(keyword)
        return int.from_bytes(raw[:2], "little")
    if vr in _TEXT_VRS:
        text = raw.decode("latin-1").strip(" \x00")
        return text.split("\\") if "\\" in text else text
    raise _NotSimple(keyword)


def _dataset_getter(ds: Dataset) -> _Getter:
    def get(keyword: str) -> Any:
        tag = _TAGS.get(keyword) or tag_for_keyword(keyword)
        if tag is None:
            return None
        elem = ds.get_item(tag)
        if elem is None:
            return None
        if isinstance(elem, RawDataElement) and elem.is_little_endian and elem.value is not None:
            try:
                return _convert_raw(keyword, elem.VR, elem.value)
            except _NotSimple:
                pass
        value = ds[tag].value
        if isinstance(value, pydicom.multival.MultiValue):
            return [str(v) for v in value]
        return value

    return get


def _raw_getter(raw: RawHeader) -> _Getter:
    def get(keyword: str) -> Any:
        item = raw.elements.get(_TAGS[keyword])
        return None if item is None else _convert_raw(keyword, item[0], item[1])

    return get


def _str(get: _Getter, keyword: str) -> str | None:
    value = get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _float(get: _Getter, keyword: str) -> float | None:
    value = get(keyword)
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list):
        value = value[0]
    return float(value)


def _present(get: _Getter, keyword: str) -> bool:
    value = get(keyword)
    return value is not None and value != "" and value != []


def _int(get: _Getter, keyword: str) -> int | None:
    value = get(keyword)
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list):
        value = value[0]
    return int(float(value)) if isinstance(value, str) else int(value)


def _floats(get: _Getter, keyword: str, n: int) -> tuple[float, ...] | None:
    value = get(keyword)
    if value is None or value == "":
        return None
    values = tuple(float(v) for v in value) if isinstance(value, list) else (float(value),)
    if len(values) != n:
        raise DicomReadError(f"{keyword} has {len(values)} values, expected {n}")
    return values


def _signed_padding(value: Any, pixel_representation: int | None) -> int | None:
    # Implicit-VR files store the "US or SS" padding tags as raw bits; GE writes
    # -2000 as 63536 with signed pixels.
    if value is None or value == "":
        return None
    if isinstance(value, bytes):
        value = int.from_bytes(value[:2], "little", signed=pixel_representation == 1)
    number = int(value)
    if pixel_representation == 1 and number > 32767:
        number -= 65536
    return number


def header_from_dataset(ds: Dataset, path: str | Path) -> SliceHeader:
    """Extract a :class:`SliceHeader` from a dataset read from ``path``.

    Raises
    ------
    DicomReadError
        If a geometry element holds the wrong number of values or a value
        that is not a number.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = media_class = None
    if meta is not None and "TransferSyntaxUID" in meta:
        syntax = str(meta.TransferSyntaxUID)
    if meta is not None and "MediaStorageSOPClassUID" in meta:
        media_class = str(meta.MediaStorageSOPClassUID)
    pixel_bytes: int | None = None
    pixel_offset: int | None = None
    has_pixels = _PIXEL_DATA_TAG in ds
    if has_pixels:
        raw = ds.get_item(_PIXEL_DATA_TAG, keep_deferred=True)
        length = getattr(raw, "length", None)
        if isinstance(length, int) and length != _UNDEFINED_LENGTH:
            pixel_bytes = length
            tell = getattr(raw, "value_tell", None)
            # In a deflated file the offset is into the inflated stream.
            if isinstance(tell, int) and syntax != _DEFLATED:
                pixel_offset = tell
        elif raw is not None and not getattr(raw, "is_raw", False):
            value = ds[_PIXEL_DATA_TAG].value
            if isinstance(value, bytes | bytearray) and not (
                syntax is not None and pydicom.uid.UID(syntax).is_compressed
            ):
                pixel_bytes = len(value)
    return _build(
        _dataset_getter(ds), Path(path), syntax, media_class, has_pixels, pixel_bytes, pixel_offset
    )


def _build(
    get: _Getter,
    path: Path,
    syntax: str | None,
    media_class: str | None,
    has_pixels: bool,
    pixel_bytes: int | None,
    pixel_offset: int | None,
) -> SliceHeader:
    try:
        pixel_rep = _int(get, "PixelRepresentation")
        spacing = _floats(get, "PixelSpacing", 2)
        position = _floats(get, "ImagePositionPatient", 3)
        return SliceHeader(
            path=path,
            sop_class_uid=_str(get, "SOPClassUID") or media_class,
            sop_instance_uid=_str(get, "SOPInstanceUID"),
            series_uid=_str(get, "SeriesInstanceUID"),
            study_uid=_str(get, "StudyInstanceUID"),
            patient_id=_str(get, "PatientID"),
            modality=_str(get, "Modality"),
            image_type=tuple(v for v in (_str(get, "ImageType") or "").upper().split("\\") if v),
            manufacturer=_str(get, "Manufacturer"),
            kernel=_str(get, "ConvolutionKernel"),
            series_description=_str(get, "SeriesDescription"),
            instance_number=_int(get, "InstanceNumber"),
            position=None if position is None else (position[0], position[1], position[2]),
            orientation=_floats(get, "ImageOrientationPatient", 6),
            pixel_spacing=None if spacing is None else (spacing[0], spacing[1]),
            slice_thickness=_float(get, "SliceThickness"),
            gantry_tilt=_float(get, "GantryDetectorTilt"),
            rows=_int(get, "Rows"),
            columns=_int(get, "Columns"),
            n_frames=_int(get, "NumberOfFrames") or 1,
            samples_per_pixel=_int(get, "SamplesPerPixel"),
            photometric=_str(get, "PhotometricInterpretation"),
            bits_allocated=_int(get, "BitsAllocated"),
            bits_stored=_int(get, "BitsStored"),
            pixel_representation=pixel_rep,
            rescale_slope=_float(get, "RescaleSlope") or 1.0,
            rescale_intercept=_float(get, "RescaleIntercept") or 0.0,
            padding_value=_signed_padding(get("PixelPaddingValue"), pixel_rep),
            padding_limit=_signed_padding(get("PixelPaddingRangeLimit"), pixel_rep),
            transfer_syntax=syntax,
            has_pixels=has_pixels,
            pixel_bytes=pixel_bytes,
            pixel_offset=pixel_offset,
            has_rescale=_present(get, "RescaleSlope") and _present(get, "RescaleIntercept"),
        )
    except DicomReadError as err:
        raise DicomReadError(f"{path}: {err}") from None
    except (ValueError, TypeError) as err:
        raise DicomReadError(f"{path}: a header value is not valid: {err}") from None


def _fast_header(path: Path) -> SliceHeader:
    raw = read_raw_header(path, _WANTED)
    try:
        return _build(
            _raw_getter(raw),
            path,
            raw.transfer_syntax,
            raw.media_class,
            raw.has_pixels,
            raw.pixel_bytes,
            raw.pixel_offset,
        )
    except _NotSimple as err:
        raise RawHeaderUnsupported(f"value of {err}") from None


def _looks_like_raw_dicom(path: Path) -> bool:
    # DICOM written without the 128-byte preamble starts with a group 0x0008
    # (or 0x0002) tag, little endian.
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return len(head) == 4 and head[1] == 0 and head[0] in (0x02, 0x08) and head[3] == 0


def read_dataset(path: str | Path, *, pixels: bool) -> Dataset:
    """Read a DICOM file; headers only (pixel data deferred) unless ``pixels``.

    Files without the Part 10 preamble are read too when they start like a
    DICOM data set.

    Raises
    ------
    DicomReadError
        ``"<path>: not DICOM"`` or ``"<path>: unreadable: <error>"``.
    """
    path = Path(path)
    kwargs: dict[str, Any] = (
        {} if pixels else {"specific_tags": list(HEADER_TAGS), "defer_size": 1024}
    )
    try:
        try:
            return pydicom.dcmread(path, **kwargs)
        except InvalidDicomError:
            if not _looks_like_raw_dicom(path):
                raise DicomReadError(f"{path}: not DICOM") from None
            return pydicom.dcmread(path, force=True, **kwargs)
    except DicomReadError:
        raise
    except Exception as err:  # pydicom raises many types on damaged files
        raise DicomReadError(f"{path}: unreadable: {type(err).__name__}: {err}") from None


def read_header(path: str | Path) -> SliceHeader:
    """Read one file's header without decoding its pixels.

    Also checks that a native (uncompressed) PixelData value is complete, so
    a truncated file is caught here rather than when loading.

    Raises
    ------
    DicomReadError
        When the file is not DICOM, cannot be parsed, or is truncated.
    """
    path = Path(path)
    try:
        header = _fast_header(path)
    except RawHeaderUnsupported:
        header = header_from_dataset(read_dataset(path, pixels=False), path)
    except OSError as err:
        raise DicomReadError(f"{path}: unreadable: {type(err).__name__}: {err}") from None
    expected = header.expected_pixel_bytes()
    if header.pixel_bytes is not None and expected is not None and header.pixel_bytes < expected:
        raise DamagedPixelDataError(
            f"{path}: unreadable: PixelData holds {header.pixel_bytes} bytes, expected "
            f"{expected} for {header.n_frames} frame(s) of {header.rows}x{header.columns} pixels",
            header,
        )
    if header.pixel_offset is not None and header.pixel_bytes is not None:
        size = os.path.getsize(path)
        if header.pixel_offset + header.pixel_bytes > size:
            raise DamagedPixelDataError(
                f"{path}: unreadable: truncated file: PixelData needs "
                f"{header.pixel_offset + header.pixel_bytes} bytes, the file has {size}",
                header,
            )
    return header


class DamagedPixelDataError(DicomReadError):
    """The header reads but the pixel data is short; ``header`` says whose file it is."""

    def __init__(self, message: str, header: SliceHeader) -> None:
        super().__init__(message)
        self.header = header

    def __reduce__(self) -> tuple[type[DamagedPixelDataError], tuple[str, SliceHeader]]:
        return (type(self), (str(self), self.header))
