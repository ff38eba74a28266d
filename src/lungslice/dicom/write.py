"""Write CT images: the one CT DICOM writer and the one deterministic-UID helper.

Both the phantom (:mod:`lungslice.phantom.writer`, LIDC-layout series from
annotation geometry) and the test-series writer (:mod:`lungslice.testing`)
write their files through :func:`write_ct_images`, and name what they write
with :func:`make_uid`. Only pydicom and NumPy are imported here.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
)

from lungslice.errors import ConfigError

__all__ = ["make_uid", "write_ct_images"]


def make_uid(*parts: object, namespace: str = "lungslice") -> str:
    """A DICOM UID derived deterministically from ``parts``.

    A name-based (version 5) UUID of ``namespace/part1/part2/...`` written as a
    ``2.25.<integer>`` UID (PS3.5 B.2), so no organisation root is needed and
    the same parts always give the same UID. (pydicom's ``generate_uid`` with
    ``prefix=None`` ignores its entropy sources and is random.)

    Parameters
    ----------
    *parts
        Anything with a ``str``.
    namespace : str
        Separates the UIDs of different writers (the phantom uses
        ``"lungslice-phantom"``).

    Returns
    -------
    str
        At most 44 characters.
    """
    name = "/".join([namespace, *map(str, parts)])
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


def _encodable(syntax: UID) -> bool:
    from pydicom.pixels import get_encoder

    try:
        return bool(get_encoder(syntax).is_available)
    except (NotImplementedError, ValueError, KeyError):
        return False


def _encapsulate_as_is(ds: Dataset) -> None:
    from pydicom.encaps import encapsulate

    data = bytes(ds.PixelData)
    ds.PixelData = encapsulate([data + b"\x00" * (len(data) % 2)])
    ds["PixelData"].VR = "OB"


def write_ct_images(
    paths: Sequence[str | Path],
    template: Dataset,
    stored: np.ndarray,
    *,
    sop_uids: Sequence[str],
    instance_numbers: Sequence[int],
    positions: Sequence[Sequence[object]],
    slice_locations: Sequence[object],
    transfer_syntax: str = ExplicitVRLittleEndian,
    finish: Callable[[int, Dataset], None] | None = None,
) -> list[Path]:
    """Write one CT Image Storage file per slice of ``stored``.

    Each file is ``template`` (the series' shared elements: identity, geometry,
    pixel module) plus the slice's SOPInstanceUID, InstanceNumber,
    ImagePositionPatient, SliceLocation and pixels, in DICOM Part 10 format.

    Parameters
    ----------
    paths : sequence of path
        One file per slice (parent folders are created).
    template : pydicom.dataset.Dataset
        Elements every slice shares; copied per slice, not changed.
    stored : numpy.ndarray
        ``(n, rows, columns)`` stored pixel values (e.g. int16 little endian).
    sop_uids, instance_numbers, positions, slice_locations : sequence
        Per slice; values are stored as given (strings or numbers).
    transfer_syntax : str
        Native syntaxes store the pixels as they are; syntaxes pydicom can
        encode (RLE Lossless, JPEG 2000 / JPEG-LS lossless with their plugins)
        are compressed; any other compressed syntax gets the native bytes
        encapsulated as-is (valid headers, undecodable pixels: for testing
        decoder errors).
    finish : callable, optional
        ``finish(index, dataset)`` changes a slice's dataset before its pixels
        are encoded and it is written (e.g. test overrides).

    Returns
    -------
    list of Path
        The written files, in slice order.
    """
    n = int(stored.shape[0])
    counts = {
        "paths": len(paths),
        "sop_uids": len(sop_uids),
        "instance_numbers": len(instance_numbers),
        "positions": len(positions),
        "slice_locations": len(slice_locations),
    }
    wrong = {k: v for k, v in counts.items() if v != n}
    if wrong:
        raise ConfigError(
            f"write_ct_images: {n} slices of pixels but {wrong}; expected one value per slice."
        )
    syntax = UID(transfer_syntax)
    compress = syntax.is_compressed and _encodable(syntax)
    written: list[Path] = []
    for i in range(n):
        ds = copy.deepcopy(template)  # Dataset.copy() shares the elements with the template
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uids[i])
        # ds.compress() switches the syntax itself after encoding native pixels.
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if compress else syntax
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uids[i]
        ds.InstanceNumber = int(instance_numbers[i])
        ds.ImagePositionPatient = list(positions[i])
        ds.SliceLocation = slice_locations[i]
        ds.PixelData = stored[i].tobytes()
        if finish is not None:
            finish(i, ds)
        if "PixelData" in ds:
            if compress:
                ds.compress(syntax)
            elif syntax.is_compressed:
                _encapsulate_as_is(ds)
        path = Path(paths[i])
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
