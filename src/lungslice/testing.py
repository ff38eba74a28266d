"""Write tiny synthetic CT series with pydicom, for tests and examples.

The files are valid DICOM Part 10 CT images with the geometry and identity
tags lungslice reads, so a test can build exactly the series it needs in a
temporary folder::

    from lungslice.testing import write_ct_series

    paths = write_ct_series(tmp_path / "s1", spacing=(2.5, 0.7, 0.7), n_slices=8)

Every UID is derived from ``seed`` (and ``patient_id``), so the same call
always writes the same files. Per-slice variations (a wrong position, a
missing tag) go through ``**overrides``. The files are written by
:func:`lungslice.dicom.write.write_ct_images`, the writer the phantom uses too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset as _Dataset
from pydicom.uid import ExplicitVRLittleEndian

from lungslice.dicom.write import make_uid as _make_uid
from lungslice.dicom.write import write_ct_images
from lungslice.errors import ConfigError

__all__ = ["body_phantom", "make_uid", "write_ct_series"]


def make_uid(*parts: object) -> str:
    """A valid DICOM UID derived deterministically from ``parts``.

    :func:`lungslice.dicom.write.make_uid` in this module's own namespace.

    Parameters
    ----------
    *parts
        Anything with a ``str``; the same parts always give the same UID.

    Returns
    -------
    str
        A ``2.25.<integer>`` UID of at most 44 characters.
    """
    return _make_uid(*parts, namespace="lungslice-testing")


def body_phantom(
    n_slices: int = 8, rows: int = 32, columns: int = 32, *, seed: int = 0, noise: float = 10.0
) -> np.ndarray:
    """A simple deterministic chest-like HU array ``(z, y, x)``.

    Air (-1000) outside an elliptic body of soft tissue (40 HU) holding two
    elliptic lungs (-850 HU) and, in the right lung, a small soft-tissue
    nodule on the middle slices; Gaussian noise of standard deviation
    ``noise`` drawn from ``seed``.

    Parameters
    ----------
    n_slices, rows, columns : int
        Shape of the array.
    seed : int
        Seed of the noise.
    noise : float
        Noise standard deviation in HU (0 for a noise-free array).

    Returns
    -------
    numpy.ndarray
        float32 HU of shape ``(n_slices, rows, columns)``.
    """
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float64)
    cy, cx = (rows - 1) / 2.0, (columns - 1) / 2.0
    ny, nx = (y - cy) / (rows / 2.0), (x - cx) / (columns / 2.0)
    plane = np.full((rows, columns), -1000.0)
    plane[(nx / 0.9) ** 2 + (ny / 0.7) ** 2 <= 1.0] = 40.0
    lung_r = ((nx + 0.42) / 0.32) ** 2 + (ny / 0.5) ** 2 <= 1.0
    lung_l = ((nx - 0.42) / 0.32) ** 2 + (ny / 0.5) ** 2 <= 1.0
    plane[lung_r | lung_l] = -850.0
    hu = np.repeat(plane[None], n_slices, axis=0)
    nodule = ((nx + 0.42) / 0.1) ** 2 + (ny / 0.1) ** 2 <= 1.0
    mid = n_slices // 2
    hu[max(mid - 1, 0) : mid + 1, nodule] = 30.0
    if noise > 0:
        hu = hu + np.random.default_rng(seed).normal(0.0, noise, hu.shape)
    return hu.astype(np.float32)


def write_ct_series(
    folder: str | Path,
    hu: np.ndarray | None = None,
    *,
    spacing: tuple[float, float, float] = (2.5, 0.7, 0.7),
    z0: float = -100.0,
    n_slices: int = 8,
    rows: int = 32,
    columns: int = 32,
    patient_id: str = "TEST-0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    seed: int = 0,
    rescale_intercept: float = -1024.0,
    rescale_slope: float = 1.0,
    modality: str = "CT",
    transfer_syntax: str = ExplicitVRLittleEndian,
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    file_name: str = "{index:04d}.dcm",
    shuffle_instance_numbers: bool = False,
    z_positions: Sequence[float] | None = None,
    stack_direction: Sequence[float] | None = None,
    manufacturer: str = "LUNGSLICE-TESTING",
    kernel: str = "STANDARD",
    **overrides: Any,
) -> list[Path]:
    """Write a synthetic CT series, one DICOM file per slice.

    Parameters
    ----------
    folder : str or Path
        Where to write (created if needed).
    hu : numpy.ndarray, optional
        HU values ``(z, y, x)`` to store; its shape replaces ``n_slices``,
        ``rows`` and ``columns``. Default: :func:`body_phantom` of that shape.
    spacing : tuple of float
        ``(slice, row, column)`` spacing in mm. PixelSpacing is
        ``[row, column]``, SliceThickness the slice spacing.
    z0 : float
        Position of the first slice along the stacking direction (mm).
    n_slices, rows, columns : int
        Shape when ``hu`` is None.
    patient_id : str
        PatientID (PatientName is ``"Test^<patient_id>"``).
    study_uid, series_uid : str, optional
        Default: derived from ``seed`` and ``patient_id``.
    seed : int
        Seed of every derived UID, of the default noise and of the shuffle.
    rescale_intercept, rescale_slope : float
        Stored value = round((HU - intercept) / slope), as signed 16 bit.
    modality : str
        Modality (e.g. ``"CR"`` to write a non-CT series).
    transfer_syntax : str
        Transfer syntax UID. Native syntaxes (implicit/explicit VR little
        endian) and syntaxes pydicom can encode (RLE Lossless, and JPEG 2000 /
        JPEG-LS lossless when their plugins are installed) hold real pixels.
        Any other compressed syntax gets the native bytes encapsulated as-is:
        valid headers, undecodable pixels - for testing decoder errors.
    orientation : sequence of 6 float
        ImageOrientationPatient.
    file_name : str
        Format of each file name; fields ``index`` (slice order, 0-based) and
        ``instance`` (InstanceNumber).
    shuffle_instance_numbers : bool
        Give the slices a random permutation of 1..n as InstanceNumber, so a
        reader that sorts by InstanceNumber gets them wrong.
    z_positions : sequence of float, optional
        Explicit slice positions along the stacking direction (mm), instead of
        ``z0 + i * spacing[0]``; for gaps, duplicates, irregular spacing.
    stack_direction : sequence of 3 float, optional
        Direction along which slice positions advance; default the slice
        normal (row cosine x column cosine). ``(0, 0, 1)`` with a tilted
        ``orientation`` gives a gantry-tilted series.
    manufacturer, kernel : str
        Manufacturer and ConvolutionKernel.
    **overrides
        DICOM keyword -> value set on every slice after the defaults; a
        callable value is called with the slice index and returns the value;
        a value of None deletes the element (e.g. ``PixelData=None``) and
        ``...`` keeps the default (e.g. ``PixelData=lambda i: None if i == 2
        else ...`` drops the pixels of one slice only).

    Returns
    -------
    list of Path
        The written files, in slice order.

    Raises
    ------
    ConfigError
        If the arguments are inconsistent or the HU values do not fit 16 bits.
    """
    folder = Path(folder)
    if hu is None:
        hu = body_phantom(n_slices, rows, columns, seed=seed)
    hu = np.asarray(hu, dtype=np.float64)
    if hu.ndim != 3:
        raise ConfigError(f"write_ct_series: hu must be 3-D (z, y, x), got shape {hu.shape}")
    n_slices, rows, columns = (int(s) for s in hu.shape)
    if len(orientation) != 6:
        raise ConfigError(f"write_ct_series: orientation needs 6 values, got {len(orientation)}")
    if z_positions is None:
        positions_1d = z0 + spacing[0] * np.arange(n_slices, dtype=np.float64)
    else:
        positions_1d = np.asarray(z_positions, dtype=np.float64)
        if positions_1d.shape != (n_slices,):
            raise ConfigError(
                f"write_ct_series: z_positions needs {n_slices} values, got {positions_1d.size}"
            )
    stored = np.rint((hu - rescale_intercept) / rescale_slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ConfigError(
            "write_ct_series: HU values do not fit signed 16 bit with "
            f"slope {rescale_slope} and intercept {rescale_intercept}"
        )
    pixels = stored.astype("<i2")

    row_cos = np.asarray(orientation[:3], dtype=np.float64)
    col_cos = np.asarray(orientation[3:], dtype=np.float64)
    normal = np.cross(row_cos, col_cos)
    direction = normal if stack_direction is None else np.asarray(stack_direction, float)
    # Centre the image on the stacking axis, like a scanner's reconstruction.
    corner = -(columns - 1) / 2.0 * spacing[2] * row_cos - (rows - 1) / 2.0 * spacing[1] * col_cos

    study_uid = study_uid or make_uid("study", patient_id, seed)
    series_uid = series_uid or make_uid("series", patient_id, seed)
    instance_numbers = np.arange(1, n_slices + 1)
    if shuffle_instance_numbers:
        instance_numbers = np.random.default_rng(seed).permutation(instance_numbers)

    ds = _Dataset()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDate = "20000101"
    ds.SeriesDate = "20000101"
    ds.StudyTime = "120000"
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.PatientName = f"Test^{patient_id}"
    ds.PatientID = patient_id
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.FrameOfReferenceUID = make_uid("frame", patient_id, seed)
    ds.ImageOrientationPatient = [round(float(v), 8) for v in orientation]
    ds.SliceThickness = float(spacing[0])
    ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
    ds.ConvolutionKernel = kernel
    ds.KVP = 120
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = float(rescale_intercept)
    ds.RescaleSlope = float(rescale_slope)
    ds.RescaleType = "HU"
    ds.WindowCenter = -600
    ds.WindowWidth = 1500

    def apply_overrides(i: int, slice_ds: _Dataset) -> None:
        for keyword, value in overrides.items():
            value = value(i) if callable(value) else value
            if value is Ellipsis:
                continue
            if value is None:
                if keyword in slice_ds:
                    delattr(slice_ds, keyword)
            else:
                setattr(slice_ds, keyword, value)

    positions = [corner + positions_1d[i] * direction for i in range(n_slices)]
    folder.mkdir(parents=True, exist_ok=True)
    return write_ct_images(
        [
            folder / file_name.format(index=i, instance=int(instance_numbers[i]))
            for i in range(n_slices)
        ],
        ds,
        pixels,
        sop_uids=[make_uid("sop", series_uid, seed, i) for i in range(n_slices)],
        instance_numbers=[int(k) for k in instance_numbers],
        positions=[[round(float(v), 6) for v in p] for p in positions],
        slice_locations=[round(float(p[2]), 6) for p in positions],
        transfer_syntax=transfer_syntax,
        finish=apply_overrides if overrides else None,
    )
