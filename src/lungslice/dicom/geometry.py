"""Decide how a series' slices stack into a volume, from headers alone.

:func:`plan_stack` runs every check the loader needs before touching pixels
(one series, CT, pixel data, same grid, axial, no tilt, no duplicates, no
gaps, regular spacing) and returns the slice order. The index runs the same
function on headers, so ``series.parquet`` says in advance which series load.

Decisions
---------
- Slices are ordered by their position along the slice normal
  (``normal . ImagePositionPatient``), never by InstanceNumber or file name.
- Duplicate positions: LIDC-IDRI has five CT series with a few repeated z
  positions; like pylidc, the image with the lower InstanceNumber is kept and
  the other recorded. When more than ``max_duplicate_fraction`` of the
  positions repeat (two acquisitions under one SeriesInstanceUID), or the
  InstanceNumbers cannot decide, it is an error. ``duplicates="error"`` makes
  any repeat an error.
- Gantry tilt (positions advance off the slice normal) is refused by
  default; ``tilt="correct"`` shears each slice back onto the normal.
- RescaleSlope and RescaleIntercept are required in CT images (DICOM CT
  Image module, type 1): without them stored values are not HU (often
  1024 too high) and the series is refused unless ``allow_missing_rescale``.
- ``min_coverage_mm`` (off by default, 30 mm for ``lungslice predict``)
  refuses series covering too little of the body along the slice normal.

Each refusal carries a :class:`~lungslice.errors.Fix` (the opt-out as
settings), phrased as ``LoadConfig(...)`` for Python and as flags by the CLI.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from lungslice.dicom.header import SliceHeader
from lungslice.errors import ConfigError, CoverageError, Fix, SeriesGeometryError

__all__ = [
    "DERIVED_SERIES",
    "CoverageStackError",
    "LoadConfig",
    "StackError",
    "StackPlan",
    "coverage_mm",
    "derive_missing_series",
    "plan_stack",
    "slice_normal",
]


@dataclass(frozen=True)
class LoadConfig:
    """How strictly a series is checked and how its pixels become HU.

    Attributes
    ----------
    allow_gaps : bool
        Accept missing slices (a step larger than ``gap_factor`` x the median
        spacing); the volume then keeps the real ``z_positions``.
    gap_factor : float
        A step this many times the median spacing or more is a gap.
    allow_irregular : bool
        Accept steps that differ from the median by more than
        ``spacing_tolerance`` (but are no gap).
    spacing_tolerance : float
        Relative tolerance on slice steps, pixel spacing and orientation.
    duplicates : {"keep_lower_instance", "error"}
        What to do with images at the same position (see module notes).
    max_duplicate_fraction : float
        Largest fraction of repeated positions resolved by InstanceNumber.
    tilt : {"refuse", "correct"}
        Gantry-tilted series: refuse, or shear the slices onto the normal.
    tilt_tolerance_deg : float
        Angle between the stacking direction and the slice normal tolerated
        as rounding.
    require_axial : bool
        Refuse series whose slice normal is more than 45 degrees off the
        patient's z axis (sagittal or coronal reconstructions).
    min_slices : int
        Fewest slices a volume may have.
    min_coverage_mm : float
        Shortest extent along the slice normal a series may cover
        (``(n - 1) x spacing + spacing``); 0 (the default) checks nothing,
        ``lungslice predict`` uses 30 mm.
    allow_missing_rescale : bool
        Load CT images that lack RescaleSlope / RescaleIntercept, taking the
        stored values as HU (slope 1, intercept 0). Off: such a series is
        refused, as its values are usually 1024 too high.
    hu_check : {"warn", "refuse", "off"}
        After loading, check that air outside the body is near -1000 HU and
        that lung-range voxels exist; warn (log and ``info["warnings"]``),
        refuse (:class:`~lungslice.errors.HounsfieldError`) or skip.
    air_hu : float
        HU written where pixels are padding or outside the scan field.
    out_of_field_below : float
        HU below which a pixel is taken as outside the field of view even
        without PixelPaddingValue (GE writes -3024, Siemens -3072).
    """

    allow_gaps: bool = False
    gap_factor: float = 1.5
    allow_irregular: bool = False
    spacing_tolerance: float = 0.05
    duplicates: Literal["keep_lower_instance", "error"] = "keep_lower_instance"
    max_duplicate_fraction: float = 0.1
    tilt: Literal["refuse", "correct"] = "refuse"
    tilt_tolerance_deg: float = 0.1
    require_axial: bool = True
    min_slices: int = 2
    min_coverage_mm: float = 0.0
    allow_missing_rescale: bool = False
    hu_check: Literal["warn", "refuse", "off"] = "warn"
    air_hu: float = -1000.0
    out_of_field_below: float = -2000.0

    def __post_init__(self) -> None:
        if self.duplicates not in ("keep_lower_instance", "error"):
            raise ConfigError(
                f"LoadConfig.duplicates must be 'keep_lower_instance' or 'error', "
                f"got {self.duplicates!r}"
            )
        if self.tilt not in ("refuse", "correct"):
            raise ConfigError(f"LoadConfig.tilt must be 'refuse' or 'correct', got {self.tilt!r}")
        if self.gap_factor <= 1.0:
            raise ConfigError(f"LoadConfig.gap_factor must be > 1, got {self.gap_factor}")
        if self.min_slices < 1:
            raise ConfigError(f"LoadConfig.min_slices must be >= 1, got {self.min_slices}")
        if not self.min_coverage_mm >= 0:
            raise ConfigError(
                f"LoadConfig.min_coverage_mm must be >= 0, got {self.min_coverage_mm}"
            )
        if self.hu_check not in ("warn", "refuse", "off"):
            raise ConfigError(
                f"LoadConfig.hu_check must be 'warn', 'refuse' or 'off', got {self.hu_check!r}"
            )


class StackError(SeriesGeometryError):
    """A series cannot be stacked; ``reason`` is a short category for tables.

    Parameters
    ----------
    reason : str
        Short category, e.g. ``"missing slices"`` (used in ``series.parquet``).
    message : str
        The full message: what, where, expected vs found, and the opt-out.
    fix : Fix, optional
        The opt-out as settings; the message holds ``fix.python()``, which
        the CLI rewrites as flags.
    """

    def __init__(self, reason: str, message: str, fix: Fix | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.fix = fix

    def __reduce__(self) -> tuple[Any, ...]:
        # Survive pickling between processes (args hold only the message).
        return (type(self), (self.reason, str(self), self.fix))


class CoverageStackError(StackError, CoverageError):
    """A series covers less than ``LoadConfig.min_coverage_mm`` along the slice normal."""


def coverage_mm(z: np.ndarray | Sequence[float], slice_spacing: float) -> float:
    """Extent a stack of slices covers along its normal: first to last position plus one step."""
    values = np.asarray(z, dtype=np.float64)
    if values.size == 0:
        return 0.0
    return float(values.max() - values.min()) + float(slice_spacing)


@dataclass(frozen=True)
class StackPlan:
    """The order and geometry of a stackable series.

    Attributes
    ----------
    headers : tuple of SliceHeader
        The slices kept, in ascending position along the slice normal.
    z : numpy.ndarray
        Their positions along the normal (mm).
    spacing : tuple of float
        ``(slice, row, column)`` in mm; slice spacing is the median step.
    normal : numpy.ndarray
        Unit slice normal.
    shifts : numpy.ndarray or None
        ``(n, 2)`` in-plane shift in pixels (rows, columns) that moves each
        slice onto the normal through the first slice (tilt correction only).
    dropped : tuple of dict
        Images left out (duplicates), each with ``sop_instance_uid``,
        ``instance_number``, ``path``, ``z`` and ``reason``.
    decisions : tuple of str
        What was decided and why, for ``CTVolume.info`` and ``lungslice show``.
    """

    headers: tuple[SliceHeader, ...]
    z: np.ndarray
    spacing: tuple[float, float, float]
    normal: np.ndarray
    shifts: np.ndarray | None = None
    dropped: tuple[dict[str, Any], ...] = ()
    decisions: tuple[str, ...] = field(default=())


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal (row cosine x column cosine) of an ImageOrientationPatient."""
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:6], dtype=np.float64)
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise ValueError(f"ImageOrientationPatient {tuple(orientation)} has parallel cosines")
    return normal / norm


#: ``files.parquet`` ``series_uid_source`` of a SeriesInstanceUID derived by
#: :func:`derive_missing_series`.
DERIVED_SERIES = "derived: folder + geometry (no SeriesInstanceUID)"


def _derived_uid(h: SliceHeader) -> str:
    key = "|".join(
        str(v)
        for v in (
            h.path.parent,
            h.study_uid,
            h.modality,
            None if h.orientation is None else tuple(round(c, 4) for c in h.orientation),
            None if h.pixel_spacing is None else tuple(round(c, 4) for c in h.pixel_spacing),
            h.rows,
            h.columns,
        )
    )
    digest = hashlib.sha256(key.encode()).digest()[:16]
    return "2.25." + str(int.from_bytes(digest, "big"))


def derive_missing_series(
    headers: Sequence[SliceHeader],
) -> tuple[list[SliceHeader], dict[str, int]]:
    """Give images without a SeriesInstanceUID one derived from folder and geometry.

    Anonymisers sometimes strip SeriesInstanceUID. Images of one folder with
    the same study, modality, orientation, pixel spacing and matrix are taken
    as one series, named by a deterministic ``2.25.<hash>`` UID (the same on
    every run, so the index and the loader agree).

    Returns
    -------
    headers : list of SliceHeader
        Same order; those lacking the UID carry the derived one.
    derived : dict
        Derived UID -> number of images grouped under it (empty when none).
    """
    out: list[SliceHeader] = []
    derived: Counter[str] = Counter()
    for h in headers:
        if h.series_uid is None and not h.is_dicomdir and h.has_pixels:
            uid = _derived_uid(h)
            derived[uid] += 1
            h = dataclasses.replace(h, series_uid=uid)
        out.append(h)
    return out, dict(derived)


def _where(h: SliceHeader) -> str:
    return f"{h.path} (SOPInstanceUID {h.sop_instance_uid})"


def _fmt(values: Sequence[float] | None) -> str:
    if values is None:
        return "absent"
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


_SERIES_FIX = Fix.of("", series_uid="UID")


def _check_identity(headers: Sequence[SliceHeader], label: str, config: LoadConfig) -> None:
    series = Counter(h.series_uid for h in headers)
    if len(series) > 1:
        listed = ", ".join(f"{uid} ({n} files)" for uid, n in series.most_common())
        raise StackError(
            "several series",
            f"{label}: the files belong to {len(series)} series: {listed}; "
            f"expected one - pass {_SERIES_FIX.python()} to choose one",
            fix=_SERIES_FIX,
        )
    for h in headers:
        if h.modality != "CT":
            raise StackError(
                f"modality {h.modality}",
                f"{label}: {_where(h)} has Modality {h.modality!r}, expected 'CT'",
            )
        if h.n_frames > 1:
            raise StackError(
                "multi-frame",
                f"{label}: {_where(h)} holds {h.n_frames} frames (enhanced multi-frame CT); "
                "lungslice reads one image per file - convert it to single-frame images "
                "(e.g. with dcmtk's dcmconv or highdicom's legacy conversion)",
            )
        if not h.has_pixels:
            raise StackError(
                "no pixel data",
                f"{label}: {_where(h)} has no PixelData (7FE0,0010); expected an image - "
                "move the file out of the series folder",
            )
        missing = [
            name
            for name, value in (
                ("ImagePositionPatient", h.position),
                ("ImageOrientationPatient", h.orientation),
                ("PixelSpacing", h.pixel_spacing),
                ("Rows", h.rows),
                ("Columns", h.columns),
            )
            if value is None
        ]
        if missing:
            raise StackError(
                f"missing {missing[0]}",
                f"{label}: {_where(h)} lacks {', '.join(missing)}; "
                "expected them in every CT image - the slice cannot be placed",
            )
        if (h.samples_per_pixel or 1) != 1:
            raise StackError(
                "not grayscale",
                f"{label}: {_where(h)} has SamplesPerPixel {h.samples_per_pixel}, expected 1",
            )
    lacking = [h for h in headers if not h.has_rescale]
    if lacking and not config.allow_missing_rescale:
        h = lacking[0]
        fix = Fix.of(allow_missing_rescale=True)
        raise StackError(
            "missing rescale",
            f"{label}: {_where(h)} and {len(lacking) - 1} other file(s) of {len(headers)} lack "
            "RescaleSlope/RescaleIntercept (0028,1053)/(0028,1052), which every CT image must "
            "have; without them the stored values are not Hounsfield units (usually 1024 too "
            "high) - fix the export, or pass "
            f"{fix.python()} to take the stored values as HU",
            fix=fix,
        )


def _check_same_grid(headers: Sequence[SliceHeader], label: str, tol: float) -> None:
    first = headers[0]
    for h in headers[1:]:
        if (h.rows, h.columns) != (first.rows, first.columns):
            raise StackError(
                "mixed rows/columns",
                f"{label}: {_where(h)} is {h.rows}x{h.columns} pixels, expected "
                f"{first.rows}x{first.columns} like {first.path}; move the files of other "
                "sizes out of the series folder",
            )
        assert h.orientation is not None and first.orientation is not None
        if not np.allclose(h.orientation, first.orientation, atol=1e-3):
            raise StackError(
                "mixed orientation",
                f"{label}: {_where(h)} has ImageOrientationPatient {_fmt(h.orientation)}, "
                f"expected {_fmt(first.orientation)} like {first.path}; move the files of "
                "other orientations out of the series folder",
            )
        assert h.pixel_spacing is not None and first.pixel_spacing is not None
        if not np.allclose(h.pixel_spacing, first.pixel_spacing, rtol=tol * 0.1, atol=1e-4):
            raise StackError(
                "mixed pixel spacing",
                f"{label}: {_where(h)} has PixelSpacing {_fmt(h.pixel_spacing)}, expected "
                f"{_fmt(first.pixel_spacing)} like {first.path}; move the files of other "
                "pixel spacings out of the series folder",
            )


def _resolve_duplicates(
    headers: list[SliceHeader], z: np.ndarray, label: str, config: LoadConfig
) -> tuple[list[SliceHeader], np.ndarray, list[dict[str, Any]]]:
    # Positions equal to 1/100 mm are the same slice.
    keys = np.round(z, 2)
    counts = Counter(keys.tolist())
    repeated = {k for k, n in counts.items() if n > 1}
    if not repeated:
        return headers, z, []
    groups = {k: [i for i in range(len(headers)) if keys[i] == k] for k in sorted(repeated)}
    k0 = min(groups)
    example = ", ".join(str(headers[i].path) for i in groups[k0][:3])
    where = f"{len(repeated)} position(s) hold more than one image, first at {k0:g} mm: {example}"
    if config.duplicates == "error":
        fix = Fix.of(duplicates="keep_lower_instance")
        raise StackError(
            "duplicate positions",
            f"{label}: {where}; expected one image per position - "
            f"pass {fix.python()} to keep the lower InstanceNumber",
            fix=fix,
        )
    fraction = len(repeated) / len(counts)
    if fraction > config.max_duplicate_fraction:
        raise StackError(
            "duplicate positions",
            f"{label}: {where}; {fraction:.0%} of positions repeat, expected at most "
            f"{config.max_duplicate_fraction:.0%} - this looks like two acquisitions under one "
            "SeriesInstanceUID; move the files of one acquisition into a folder of their own",
        )
    drop: set[int] = set()
    dropped: list[dict[str, Any]] = []
    for key, idx in groups.items():
        numbers = [headers[i].instance_number for i in idx]
        if any(n is None for n in numbers) or len(set(numbers)) < len(numbers):
            raise StackError(
                "duplicate positions",
                f"{label}: images at {key:g} mm ({', '.join(str(headers[i].path) for i in idx)}) "
                f"have InstanceNumbers {numbers}; expected distinct numbers to keep the lower - "
                "move the images you do not want out of the series folder",
            )
        keep = idx[int(np.argmin([n for n in numbers if n is not None]))]
        for i in idx:
            if i != keep:
                drop.add(i)
                dropped.append(
                    {
                        "sop_instance_uid": headers[i].sop_instance_uid,
                        "instance_number": headers[i].instance_number,
                        "path": str(headers[i].path),
                        "z": float(z[i]),
                        "reason": (
                            f"duplicate position: z={key:g} mm, kept InstanceNumber "
                            f"{headers[keep].instance_number} "
                            f"(SOPInstanceUID {headers[keep].sop_instance_uid})"
                        ),
                    }
                )
    kept = [i for i in range(len(headers)) if i not in drop]
    return [headers[i] for i in kept], z[kept], dropped


def plan_stack(
    headers: Sequence[SliceHeader], config: LoadConfig | None = None, label: str | None = None
) -> StackPlan:
    """Check a series' headers and work out its slice order and spacing.

    Parameters
    ----------
    headers : sequence of SliceHeader
        One per file of the series, in any order.
    config : LoadConfig, optional
        Strictness and opt-outs; default ``LoadConfig()``.
    label : str, optional
        How errors name the series (default ``"series <SeriesInstanceUID>"``).

    Returns
    -------
    StackPlan

    Raises
    ------
    StackError
        (a :class:`~lungslice.errors.SeriesGeometryError`) naming the series,
        the offending file and SOPInstanceUID, expected vs found and the opt-out.
    """
    config = config or LoadConfig()
    if not headers:
        raise StackError("no images", f"{label or 'series'}: no image files to stack")
    label = label or f"series {headers[0].series_uid}"
    localizers: list[dict[str, Any]] = []
    if any(h.is_localizer for h in headers) and not all(h.is_localizer for h in headers):
        # A scout filed under the axial series' UID is not one of its slices.
        localizers = [
            {
                "sop_instance_uid": h.sop_instance_uid,
                "instance_number": h.instance_number,
                "path": str(h.path),
                "z": None,
                "reason": "localizer image (ImageType LOCALIZER)",
            }
            for h in headers
            if h.is_localizer
        ]
        headers = [h for h in headers if not h.is_localizer]
    _check_identity(headers, label, config)
    _check_same_grid(headers, label, config.spacing_tolerance)
    first = headers[0]
    assert first.orientation is not None and first.pixel_spacing is not None
    decisions: list[str] = []
    normal = slice_normal(first.orientation)
    if config.require_axial and abs(normal[2]) < math.cos(math.radians(45)):
        raise StackError(
            "not axial",
            f"{label}: ImageOrientationPatient {_fmt(first.orientation)} of {first.path} is not "
            f"axial (slice normal {_fmt(normal.round(3).tolist())}, expected close to [0, 0, 1]); "
            "lungslice classifies axial slices - load the axial series",
        )
    if normal[2] < 0:
        # Stack towards the head either way, so z_positions stay patient z.
        normal = -normal
        decisions.append("row x column normal points to the feet: stacked along its reverse")
    positions = np.array([h.position for h in headers], dtype=np.float64)
    z = positions @ normal
    order = np.argsort(z, kind="stable")
    hs = [headers[i] for i in order]
    z = z[order]
    positions = positions[order]

    hs, z, dropped = _resolve_duplicates(hs, z, label, config)
    dropped = localizers + dropped
    if localizers:
        decisions.append(f"left out {len(localizers)} localizer image(s) of the series")
    if len(dropped) > len(localizers):
        positions = np.array([h.position for h in hs], dtype=np.float64)
        decisions.append(
            f"dropped {len(dropped) - len(localizers)} image(s) at duplicate positions, keeping "
            "the lower InstanceNumber (as pylidc does)"
        )
    if len(hs) < config.min_slices:
        fix = Fix.of(min_slices=max(len(hs), 1))
        raise StackError(
            "too few slices",
            f"{label}: {len(hs)} slice(s), expected at least {config.min_slices} - "
            f"pass {fix.python()} to load it anyway",
            fix=fix,
        )

    shifts = None
    if len(hs) > 1:
        steps = np.diff(z)
        median = float(np.median(steps))
        # Tilt: positions advance off the normal by more than rounding.
        travel = positions[-1] - positions[0]
        along = float(travel @ normal)
        off = float(np.linalg.norm(travel - along * normal))
        angle = math.degrees(math.atan2(off, abs(along))) if along else 90.0
        tilt_tag = first.gantry_tilt or 0.0
        if angle > config.tilt_tolerance_deg:
            if config.tilt == "refuse":
                fix = Fix.of(tilt="correct")
                raise StackError(
                    "gantry tilt",
                    f"{label}: slice positions advance {angle:.2f} degrees off the slice normal "
                    f"(GantryDetectorTilt {tilt_tag:g}; first {first.path}); expected stacking "
                    f"along the normal - pass {fix.python()} to shear the slices back onto it",
                    fix=fix,
                )
            row_cos = np.asarray(first.orientation[:3])
            col_cos = np.asarray(first.orientation[3:6])
            rel = positions - positions[0]
            # ImagePositionPatient moves by d: pixel (r, c) of that slice sits d
            # further; to line slices up, shift their content by +d in pixels.
            shifts = np.stack(
                [
                    rel @ col_cos / first.pixel_spacing[0],
                    rel @ row_cos / first.pixel_spacing[1],
                ],
                axis=1,
            )
            decisions.append(
                f"gantry tilt of {angle:.2f} degrees corrected by shearing slices in-plane"
            )
        big = steps > config.gap_factor * median
        if big.any():
            i = int(np.argmax(big))
            if not config.allow_gaps:
                fix = Fix.of(allow_gaps=True)
                raise StackError(
                    "missing slices",
                    f"{label}: step of {steps[i]:.3g} mm between z={z[i]:g} "
                    f"({_where(hs[i])}) and z={z[i + 1]:g} ({_where(hs[i + 1])}), expected about "
                    f"{median:.3g} mm (gap > {config.gap_factor:g} x median): "
                    f"{int(big.sum())} gap(s) - pass {fix.python()} to load anyway",
                    fix=fix,
                )
            decisions.append(f"accepted {int(big.sum())} gap(s) in z (allow_gaps)")
        uneven = ~big & (np.abs(steps - median) > config.spacing_tolerance * median)
        if uneven.any():
            i = int(np.argmax(uneven))
            if not config.allow_irregular:
                fix = Fix.of(allow_irregular=True)
                raise StackError(
                    "irregular spacing",
                    f"{label}: step of {steps[i]:.4g} mm between z={z[i]:g} ({_where(hs[i])}) "
                    f"and z={z[i + 1]:g}, expected {median:.4g} mm within "
                    f"{config.spacing_tolerance:.0%}: {int(uneven.sum())} irregular step(s) - "
                    f"pass {fix.python()} to load anyway",
                    fix=fix,
                )
            decisions.append(f"accepted {int(uneven.sum())} irregular step(s) (allow_irregular)")
        slice_spacing = round(median, 6)  # positions carry ~6 decimals
    else:
        slice_spacing = float(first.slice_thickness or 1.0)
        decisions.append("single slice: slice spacing taken from SliceThickness")
    thickness = first.slice_thickness
    if thickness is not None and len(hs) > 1:
        if thickness > slice_spacing * 1.05:
            decisions.append(
                f"overlapping slices: thickness {thickness:g} mm > spacing {slice_spacing:g} mm"
            )
        elif thickness < slice_spacing * 0.95:
            decisions.append(
                f"spacing {slice_spacing:g} mm > thickness {thickness:g} mm "
                "(regular spacing, not a gap)"
            )
    if config.min_coverage_mm > 0:
        covered = coverage_mm(z, slice_spacing)
        if covered < config.min_coverage_mm:
            fix = Fix.of(min_coverage_mm=math.floor(covered))
            raise CoverageStackError(
                "too little coverage",
                f"{label}: {len(hs)} slice(s) {slice_spacing:g} mm apart cover {covered:.4g} mm "
                f"along the slice normal (z {float(z[0]):g} to {float(z[-1]):g}, first "
                f"{hs[0].path}); expected at least {config.min_coverage_mm:g} mm of the chest - "
                f"load the full series, or pass {fix.python()} to accept it",
                fix=fix,
            )
    spacing = (slice_spacing, float(first.pixel_spacing[0]), float(first.pixel_spacing[1]))
    return StackPlan(
        headers=tuple(hs),
        z=z,
        spacing=spacing,
        normal=normal,
        shifts=shifts,
        dropped=tuple(dropped),
        decisions=tuple(decisions),
    )
