"""CTVolume: a CT series as a Hounsfield-unit array with its geometry and identity.

:func:`load_series` reads a series from a folder, a list of files or a
:class:`~lungslice.dicom.discover.DicomIndex`, checks its geometry with
:func:`~lungslice.dicom.geometry.plan_stack` and decodes it into HU.

Speed: headers come from a small struct-based reader (~0.13 ms a file, see
:mod:`lungslice.dicom.rawheader`); after the slices are ordered, native
(uncompressed) pixel data is read from each file into one reused buffer,
viewed with ``np.frombuffer`` and rescaled in one pass into a preallocated
float32 volume. Compressed syntaxes go through pydicom's decoders.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from lungslice.dicom.geometry import (
    LoadConfig,
    StackError,
    coverage_mm,
    derive_missing_series,
    plan_stack,
)
from lungslice.dicom.header import SliceHeader, read_dataset, read_header
from lungslice.dicom.walk import reason_category, walk_files
from lungslice.errors import (
    ConfigError,
    CoverageError,
    DicomReadError,
    Fix,
    HounsfieldError,
    NoCTSeriesError,
    UnsupportedTransferSyntaxError,
)
from lungslice.progress import ProgressCallback, report
from lungslice.provenance import config_dict

if TYPE_CHECKING:  # pandas stays out of worker processes that only load files
    from lungslice.dicom.discover import DicomIndex

__all__ = ["CTVolume", "LoadConfig", "check_coverage", "check_hu", "load_series"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class CTVolume:
    """A CT series stacked along its slice normal, in Hounsfield units.

    Attributes
    ----------
    hu : numpy.ndarray
        ``(n_slices, rows, columns)`` float32 HU, slices in ascending position
        along the slice normal; padding / out-of-field pixels set to air (-1000).
    spacing : tuple of float
        ``(slice, row, column)`` spacing in mm; slice spacing is the median of
        the measured position differences.
    z_positions : numpy.ndarray
        ``(n_slices,)`` float64 position of each slice along the slice normal (mm);
        for an axial series this is ImagePositionPatient z.
    sop_instance_uids : tuple of str
        SOPInstanceUID of each slice (same order as ``hu``).
    instance_numbers : tuple of int or None
        InstanceNumber of each slice (None where absent).
    series_uid, study_uid, patient_id : str
        Identity of the series.
    origin : tuple of float
        ImagePositionPatient (x, y, z) of the first slice.
    orientation : tuple of float
        ImageOrientationPatient (6 direction cosines).
    info : dict
        Other header facts (modality, manufacturer, kernel, slice thickness,
        transfer syntax, rescale) and records of what loading decided (e.g. which
        duplicate slices were dropped and why).
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    z_positions: np.ndarray
    sop_instance_uids: tuple[str, ...]
    instance_numbers: tuple[int | None, ...]
    series_uid: str
    study_uid: str
    patient_id: str
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        """Number of slices."""
        return int(self.hu.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, columns)``."""
        s = self.hu.shape
        return (int(s[0]), int(s[1]), int(s[2]))


# --------------------------------------------------------------------------- loading

_SYNTAX_PACKAGES = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg (with pylibjpeg) or python-gdcm",
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg (with pylibjpeg) or python-gdcm",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg (with pylibjpeg) or python-gdcm",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg (with pylibjpeg) or python-gdcm",
    "1.2.840.10008.1.2.4.80": "pyjpegls, pylibjpeg-libjpeg (with pylibjpeg) or python-gdcm",
    "1.2.840.10008.1.2.4.81": "pyjpegls, pylibjpeg-libjpeg (with pylibjpeg) or python-gdcm",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg (with pylibjpeg) or python-gdcm",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg (with pylibjpeg) or python-gdcm",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (with pylibjpeg)",
}


def _syntax_name(uid: str) -> str:
    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def _unsupported(h: SliceHeader, uid: str, detail: str) -> UnsupportedTransferSyntaxError:
    package = _SYNTAX_PACKAGES.get(uid)
    fix = (
        f"install {package}"
        if package
        else "no Python decoder exists for it: convert the files to an uncompressed syntax "
        "first (e.g. dcmtk's dcmdjpeg or gdcmconv --raw)"
    )
    return UnsupportedTransferSyntaxError(
        f"{h.path} (SOPInstanceUID {h.sop_instance_uid}): pixel data is encoded as "
        f"{_syntax_name(uid)}, {detail}; {fix}"
    )


def _check_decodable(h: SliceHeader) -> None:
    uid = h.transfer_syntax or ""
    if not uid or not UID(uid).is_compressed:
        return
    try:
        decoder = get_decoder(UID(uid))
    except NotImplementedError:
        raise _unsupported(h, uid, "which pydicom cannot decode") from None
    if not decoder.is_available:
        raise _unsupported(h, uid, "which no installed decoder handles")


_DEFLATED = "1.2.840.10008.1.2.1.99"


def _native_dtype(h: SliceHeader) -> np.dtype[Any]:
    bits = h.bits_allocated or 16
    if bits not in (8, 16, 32):
        raise DicomReadError(
            f"{h.path} (SOPInstanceUID {h.sop_instance_uid}): BitsAllocated {bits}, "
            "expected 8, 16 or 32"
        )
    kind = "i" if h.pixel_representation == 1 else "u"
    order = ">" if h.transfer_syntax == "1.2.840.10008.1.2.2" else "<"
    return np.dtype(f"{order}{kind}{bits // 8}")


def _stored_values(h: SliceHeader, buffer: np.ndarray) -> np.ndarray:
    """The stored pixel values of one image.

    Native pixel data is read from the file straight into ``buffer`` (reused
    for every slice, so no per-slice allocation) and viewed with the right
    dtype; compressed data goes through pydicom's decoders.
    """
    assert h.rows is not None and h.columns is not None
    uid = h.transfer_syntax or ""
    if uid and UID(uid).is_compressed:
        _check_decodable(h)
        try:
            arr = read_dataset(h.path, pixels=True).pixel_array
        except Exception as err:  # decoders raise many types on damaged data
            raise DicomReadError(
                f"{h.path} (SOPInstanceUID {h.sop_instance_uid}): could not decode "
                f"{_syntax_name(uid)} pixel data: {type(err).__name__}: {err}"
            ) from None
        return np.asarray(arr).reshape(h.rows, h.columns)
    dtype = _native_dtype(h)
    count = h.rows * h.columns
    nbytes = count * dtype.itemsize
    if h.pixel_offset is not None and uid != _DEFLATED and nbytes <= buffer.nbytes:
        with open(h.path, "rb") as fh:
            fh.seek(h.pixel_offset)
            got = fh.readinto(buffer.data[:nbytes])
        data: bytes | np.ndarray = buffer
    else:
        data = read_dataset(h.path, pixels=True).PixelData
        got = len(data)
    if got < nbytes:
        raise DicomReadError(
            f"{h.path} (SOPInstanceUID {h.sop_instance_uid}): PixelData holds {got} bytes, "
            f"expected {nbytes} for {h.rows}x{h.columns} pixels of {dtype.itemsize * 8} bits - "
            "the file is truncated or damaged"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count).reshape(h.rows, h.columns)
    stored = h.bits_stored or dtype.itemsize * 8
    if stored < dtype.itemsize * 8:
        # Bits above BitsStored are not part of the value: mask or sign-extend.
        shift = dtype.itemsize * 8 - stored
        arr = (arr << shift) >> shift if h.pixel_representation == 1 else arr & ((1 << stored) - 1)
    return arr


def _to_hu(arr: np.ndarray, h: SliceHeader, out: np.ndarray, config: LoadConfig) -> int:
    """Write HU of one image into ``out``; returns how many pixels were set to air.

    Padding and out-of-field pixels are found on the stored values (half the
    bytes of float32) and the rescale is one fused pass into ``out``.
    """
    slope, intercept = h.rescale_slope, h.rescale_intercept
    if slope == 1.0:
        np.add(arr, np.float32(intercept), out=out, casting="unsafe")
    else:
        np.multiply(arr, np.float32(slope), out=out, casting="unsafe")
        out += np.float32(intercept)
    if slope > 0:
        below = arr < (config.out_of_field_below - intercept) / slope
    else:
        below = out < config.out_of_field_below
    pad = h.padding_value
    if pad is not None:
        if h.padding_limit is not None:
            lo, hi = sorted((pad, h.padding_limit))
            below |= (arr >= lo) & (arr <= hi)
        elif pad * slope + intercept >= config.out_of_field_below:
            below |= arr == pad
    n_air = int(np.count_nonzero(below))
    if n_air:
        # copyto(where=) is ~2x faster than putmask on a 512x512 slice.
        np.copyto(out, np.float32(config.air_hu), where=below)
    return n_air


@dataclass
class _Gathered:
    headers: list[SliceHeader]
    skipped: list[dict[str, str]]
    label: str
    derived: dict[str, int] = field(default_factory=dict)


def _derive(headers: list[SliceHeader]) -> tuple[list[SliceHeader], dict[str, int]]:
    headers, derived = derive_missing_series(headers)
    for uid, n in derived.items():
        log.warning(
            "%d image(s) have no SeriesInstanceUID: grouped by folder and geometry as series %s",
            n,
            uid,
        )
    return headers, derived


def _read_files(
    paths: Sequence[Path], progress: ProgressCallback | None
) -> tuple[list[SliceHeader], list[dict[str, str]]]:
    headers: list[SliceHeader] = []
    skipped: list[dict[str, str]] = []
    seen: dict[str, Path] = {}
    n = len(paths)
    for i, path in enumerate(paths):
        try:
            # Headers now, pixels later straight into the volume, in slice order.
            h = read_header(path)
        except DicomReadError as err:
            reason = str(err).removeprefix(f"{path}: ")
            if reason != "not DICOM":
                raise  # a damaged file may be one of the slices: never load without it
            skipped.append({"path": str(path), "reason": reason})
            continue
        if h.is_dicomdir:
            skipped.append({"path": str(path), "reason": "DICOMDIR"})
            continue
        if h.sop_instance_uid is not None and h.sop_instance_uid in seen:
            skipped.append(
                {
                    "path": str(path),
                    "reason": f"duplicate SOPInstanceUID: same as {seen[h.sop_instance_uid]}",
                }
            )
            continue
        if h.sop_instance_uid is not None:
            seen[h.sop_instance_uid] = path
        headers.append(h)
        if (i + 1) % 32 == 0 or i + 1 == n:
            report(progress, i + 1, n, "read")
    return headers, skipped


def _describe(headers: Sequence[SliceHeader]) -> str:
    groups: dict[str | None, list[SliceHeader]] = {}
    for h in headers:
        groups.setdefault(h.series_uid, []).append(h)
    parts = []
    for uid, hs in groups.items():
        first = hs[0]
        what = first.modality or "no Modality"
        if first.is_localizer:
            what += " localizer"
        desc = f", {first.series_description!r}" if first.series_description else ""
        parts.append(f"{uid} ({what}{desc}, {len(hs)} files)")
    return "; ".join(parts)


_SERIES_FIX = Fix.of("", series_uid="UID")


def _is_index(source: object) -> bool:
    return type(source).__name__ == "DicomIndex" and hasattr(source, "files_of")


def _gather(
    source: str | Path | Sequence[str | Path] | DicomIndex,
    series_uid: str | None,
    progress: ProgressCallback | None,
) -> _Gathered:
    if _is_index(source):
        return _gather_index(cast("DicomIndex", source), series_uid, progress)
    return _gather_files(cast("str | Path | Sequence[str | Path]", source), series_uid, progress)


def _gather_index(
    source: DicomIndex, series_uid: str | None, progress: ProgressCallback | None
) -> _Gathered:
    if series_uid is None:
        ok = source.ct_series()
        if len(ok) != 1:
            listed = ", ".join(ok["series_uid"].astype(str)) or "none"
            raise NoCTSeriesError(
                f"index of {source.root}: {len(ok)} loadable CT series ({listed}); "
                f"expected exactly one - pass {_SERIES_FIX.python()}"
            )
        series_uid = str(ok["series_uid"].iloc[0])
    try:
        paths = source.files_of(series_uid)
    except KeyError:
        raise NoCTSeriesError(
            f"index of {source.root}: no series {series_uid}; it holds "
            f"{len(source.series)} series - see its series table"
        ) from None
    headers, skipped = _read_files(paths, progress)
    headers, derived = _derive(headers)
    return _Gathered(headers, skipped, f"series {series_uid}", derived)


def _gather_files(
    source: str | Path | Sequence[str | Path],
    series_uid: str | None,
    progress: ProgressCallback | None,
) -> _Gathered:
    if isinstance(source, str | Path):
        root = Path(source)
        paths = walk_files(root)
        if not paths:
            raise NoCTSeriesError(
                f"{root}: the folder is empty; expected the DICOM files of one CT series"
            )
        where = f"{root}"
    else:
        paths = [Path(p) for p in source]
        if not paths:
            raise NoCTSeriesError("load_series: the list of files is empty")
        where = f"{len(paths)} files starting {paths[0]}"

    headers, skipped = _read_files(paths, progress)
    headers, derived = _derive(headers)
    if series_uid is not None:
        chosen = [h for h in headers if h.series_uid == series_uid]
        if not chosen:
            raise NoCTSeriesError(
                f"{where}: no files of series {series_uid}; found "
                f"{_describe(headers) or 'no DICOM images'}"
            )
    else:
        ct = {
            h.series_uid
            for h in headers
            if h.modality == "CT" and not h.is_localizer and h.series_uid is not None
        }
        if not ct:
            reasons = Counter(reason_category(s["reason"]) for s in skipped)
            found = _describe(headers)
            if reasons:
                found += ("; " if found else "") + ", ".join(
                    f"{n} file(s) skipped: {r}" for r, n in sorted(reasons.items())
                )
            raise NoCTSeriesError(
                f"{where}: no CT series; found {found or 'nothing'}; expected the DICOM files "
                "of one CT image series"
            )
        if len(ct) > 1 and isinstance(source, str | Path):
            raise StackError(
                "several series",
                f"{where}: holds {len(ct)} CT series: "
                f"{_describe([h for h in headers if h.series_uid in ct])}; expected one - "
                f"pass {_SERIES_FIX.python()} to choose",
                fix=_SERIES_FIX,
            )
        if len(ct) == 1:
            series_uid = next(iter(ct))
            chosen = [h for h in headers if h.series_uid == series_uid]
        else:
            chosen = headers  # plan_stack names the several series of a file list
    chosen_ids = {id(h) for h in chosen}
    for h in headers:
        if id(h) not in chosen_ids:
            skipped.append({"path": str(h.path), "reason": f"other series {h.series_uid}"})
    label = f"series {chosen[0].series_uid}" + (
        f" in {where}" if isinstance(source, str | Path) else ""
    )
    return _Gathered(chosen, skipped, label, derived)


#: HU window counted as lung parenchyma by :func:`check_hu`.
LUNG_RANGE_HU = (-950.0, -600.0)


def check_hu(hu: np.ndarray, label: str, config: LoadConfig = LoadConfig()) -> list[str]:
    """Check that a loaded volume looks like chest CT in Hounsfield units.

    Two facts, from a subsample of slices and pixels: the median of the
    image border (air outside the body, or the out-of-field fill) must be
    within 250 HU of -1000, and at least 0.5 % of the voxels must lie in the
    lung range (:data:`LUNG_RANGE_HU`).

    Parameters
    ----------
    hu : numpy.ndarray
        ``(slices, rows, columns)`` HU.
    label : str
        How messages name the series (e.g. its folder and UID).
    config : LoadConfig
        ``hu_check``: ``"warn"`` returns the problems (and logs them),
        ``"refuse"`` raises, ``"off"`` checks nothing.

    Returns
    -------
    list of str
        The problems found, with the numbers (empty when plausible).

    Raises
    ------
    HounsfieldError
        With ``hu_check="refuse"``, when a problem is found.
    """
    if config.hu_check == "off" or hu.size == 0:
        return []
    step = max(1, hu.shape[0] // 16)
    sample = hu[::step]
    rows, cols = sample.shape[1:]
    w = max(1, min(rows, cols) // 32)
    border = np.concatenate(
        [
            sample[:, :w, :].ravel(),
            sample[:, -w:, :].ravel(),
            sample[:, :, :w].ravel(),
            sample[:, :, -w:].ravel(),
        ]
    )
    inner = sample[:, :: max(1, rows // 128), :: max(1, cols // 128)]
    problems = []
    air = float(np.median(border))
    if abs(air - config.air_hu) > 250.0:
        problems.append(
            f"air outside the body (image border) reads {air:.0f} HU, expected about -1000 HU"
        )
    lo, hi = LUNG_RANGE_HU
    lung = float(np.count_nonzero((inner >= lo) & (inner <= hi))) / inner.size
    if lung < 0.005:
        problems.append(
            f"{lung:.2%} of voxels are in the lung range ({lo:g} to {hi:g} HU), expected at "
            "least 0.5 % in a chest series"
        )
    if not problems:
        return []
    fix = Fix.of(hu_check="warn")
    text = (
        f"{label}: implausible Hounsfield units: " + "; ".join(problems) + " - check "
        "RescaleSlope/RescaleIntercept and that this is a chest CT"
    )
    if config.hu_check == "refuse":
        raise HounsfieldError(f"{text}; pass {fix.python()} to load it anyway", fix=fix)
    log.warning("%s", text)
    return problems


def check_coverage(volume: CTVolume, min_mm: float) -> float:
    """Refuse a volume that covers less than ``min_mm`` along its slice normal.

    Parameters
    ----------
    volume : CTVolume
        A loaded series.
    min_mm : float
        Shortest acceptable extent (``lungslice predict`` uses 30 mm).

    Returns
    -------
    float
        The coverage in mm: first to last slice position plus one slice spacing.

    Raises
    ------
    CoverageError
        Naming the series, its folder, its coverage and the opt-out
        (``LoadConfig(min_coverage_mm=...)``; ``--min-coverage`` on the CLI).
    """
    covered = coverage_mm(volume.z_positions, volume.spacing[0])
    if covered < min_mm:
        fix = Fix.of(min_coverage_mm=int(covered))
        paths = volume.info.get("paths") or ["?"]
        raise CoverageError(
            f"series {volume.series_uid} ({Path(paths[0]).parent}): {volume.n_slices} slice(s) "
            f"{volume.spacing[0]:g} mm apart cover {covered:.4g} mm along the slice normal; "
            f"expected at least {min_mm:g} mm of the chest - load the full series, or pass "
            f"{fix.python()} to accept it",
            fix=fix,
        )
    return covered


def load_series(
    source: str | Path | Sequence[str | Path] | DicomIndex,
    *,
    series_uid: str | None = None,
    config: LoadConfig = LoadConfig(),
    progress: ProgressCallback | None = None,
    allocate: Callable[[tuple[int, int, int]], np.ndarray] | None = None,
) -> CTVolume:
    """Load one CT series as a Hounsfield-unit volume.

    Parameters
    ----------
    source : folder, sequence of files, or DicomIndex
        A folder (walked recursively) must hold exactly one CT image series
        unless ``series_uid`` is given; a list of files must be one series;
        an index needs ``series_uid`` unless it has a single loadable series.
    series_uid : str, optional
        SeriesInstanceUID to load.
    config : LoadConfig
        Strictness and opt-outs (gaps, duplicates, tilt) and the air value.
    progress : ProgressCallback, optional
        Called as ``progress(files_read, files_total, label)``.
    allocate : callable, optional
        Returns the float32 array of the given ``(slices, rows, columns)``
        shape that HU are written into (e.g. a memory map or shared memory,
        to hand the volume to another process without a copy); default
        ``numpy.empty``.

    Returns
    -------
    CTVolume
        Slices in ascending position along the slice normal; ``info`` records
        header facts, decisions, dropped duplicates, skipped files and the config.

    Raises
    ------
    NoCTSeriesError
        If the source holds no (or not the requested) CT series.
    SeriesGeometryError
        If the slices cannot be stacked (several series, mixed geometry,
        duplicates, gaps, tilt, irregular spacing); the message names the
        offending file and the opt-out.
    UnsupportedTransferSyntaxError
        If no installed decoder handles the pixel data (names the package).
    DicomReadError
        If a file's pixel data is damaged.
    HounsfieldError
        With ``config.hu_check="refuse"``, when the HU look implausible.
    """
    gathered = _gather(source, series_uid, progress)
    plan = plan_stack(gathered.headers, config, label=gathered.label)
    for h in plan.headers:
        _check_decodable(h)
    first = plan.headers[0]
    assert first.rows is not None and first.columns is not None
    shape = (len(plan.headers), first.rows, first.columns)
    hu = np.empty(shape, dtype=np.float32) if allocate is None else allocate(shape)
    if hu.shape != shape or hu.dtype != np.float32:
        raise ConfigError(
            f"load_series: allocate returned {hu.dtype} {hu.shape}, expected float32 {shape}"
        )
    buffer = np.empty(first.rows * first.columns * 4, dtype=np.uint8)
    n_air = 0
    for k, h in enumerate(plan.headers):
        arr = _stored_values(h, buffer)
        n_air += _to_hu(arr, h, hu[k], config)
    decisions = list(plan.decisions)
    if n_air:
        decisions.append(
            f"{n_air} padding / out-of-field pixels ({n_air / hu.size:.1%}) set to "
            f"{config.air_hu:g} HU"
        )
    if plan.shifts is not None:
        from scipy import ndimage

        for k, shift in enumerate(plan.shifts):
            if np.any(np.abs(shift) > 1e-3):
                hu[k] = ndimage.shift(
                    hu[k], shift, order=1, mode="constant", cval=config.air_hu, prefilter=False
                )
    for s in gathered.skipped:
        log.info("skipped %s: %s", s["path"], s["reason"])
    hu_label = f"{gathered.label} ({first.path.parent})"
    warnings = check_hu(hu, hu_label, config)
    if not first.has_rescale:
        warnings.append(
            "no RescaleSlope/RescaleIntercept: stored values taken as HU (allow_missing_rescale)"
        )
        decisions.append("stored values taken as HU: RescaleSlope/RescaleIntercept absent")
    for uid, n in gathered.derived.items():
        if uid == first.series_uid:
            decisions.append(
                f"no SeriesInstanceUID in {n} image(s): grouped by folder and geometry as {uid}"
            )
    info: dict[str, Any] = {
        "modality": first.modality,
        "manufacturer": first.manufacturer,
        "kernel": first.kernel,
        "series_description": first.series_description,
        "slice_thickness": first.slice_thickness,
        "transfer_syntax": first.transfer_syntax,
        "rescale_slope": first.rescale_slope,
        "rescale_intercept": first.rescale_intercept,
        "pixel_padding_value": first.padding_value,
        "n_air_filled_pixels": n_air,
        "gantry_tilt": first.gantry_tilt,
        "tilt_shifts_px": None if plan.shifts is None else plan.shifts.tolist(),
        "normal": plan.normal.tolist(),
        "paths": [str(h.path) for h in plan.headers],
        "dropped_duplicates": [d for d in plan.dropped if d["z"] is not None],
        "dropped_images": list(plan.dropped),
        "skipped_files": gathered.skipped,
        "decisions": decisions,
        "warnings": warnings,
        "series_uid_derived": first.series_uid in gathered.derived,
        "load_config": config_dict(config),
    }
    assert first.position is not None and first.orientation is not None
    return CTVolume(
        hu=hu,
        spacing=plan.spacing,
        z_positions=np.asarray(plan.z, dtype=np.float64),
        sop_instance_uids=tuple(str(h.sop_instance_uid) for h in plan.headers),
        instance_numbers=tuple(h.instance_number for h in plan.headers),
        series_uid=str(first.series_uid),
        study_uid=str(first.study_uid),
        patient_id=str(first.patient_id),
        origin=first.position,
        orientation=tuple(first.orientation),
        info=info,
    )
