"""The findings SR: TID 1500 that round-trips, coded classes, regions on source images."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from lungslice.errors import LungsliceError
from lungslice.report.sr import OUT_OF_DOMAIN_TEXT, reported_findings, write_findings_sr
from lungslice.study import StudyPrediction
from tests.report.synthetic import MODEL_ID, MakePrediction


def _texts(sr: hd.sr.ComprehensiveSR) -> list[str]:
    out = []
    for group in sr.content.get_image_measurement_groups():
        out += [str(i.TextValue) for i in group[0].ContentSequence if i.ValueType == "TEXT"]
    return out


def _source_uids(prediction: StudyPrediction) -> set[str]:
    return {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in prediction.source_files.values()
    }


def test_sr_round_trips_with_one_region_per_reported_finding(
    make_prediction: MakePrediction, tmp_path: Path
) -> None:
    pred = make_prediction(top_k=3)
    out = write_findings_sr(pred, tmp_path / "findings_sr.dcm")
    sr = hd.sr.srread(out)
    assert isinstance(sr, hd.sr.ComprehensiveSR)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)
    groups = report.get_planar_roi_measurement_groups()
    reported = reported_findings(pred)
    assert [f.id for f in reported] == [1, 2, 3]  # the recommended ones, not all 4
    assert len(groups) == len(reported)
    sources = _source_uids(pred)
    spacing = pred.series.pixel_spacing_mm[1]
    for group, f in zip(groups, reported, strict=True):
        assert group.finding_type.value == "27925004"  # SCT Nodule
        (cls,) = group.get_qualitative_evaluations()
        want = {"malignant": "21594007", "benign": "30807003", "non-nodule": "17621005"}
        assert cls.value.value == want[f.label]
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        assert values["Probability of cancer"] == pytest.approx(f.p_malignant)
        assert values["Probability of nodule"] == pytest.approx(f.p_nodule)
        assert values["Radius"] == pytest.approx(f.radius_mm)
        roi = group.roi
        assert roi is not None and roi.graphic_type == hd.sr.GraphicTypeValues.CIRCLE
        assert f.row is not None and f.column is not None and f.radius_mm is not None
        centre, edge = np.asarray(roi.value)
        assert centre == pytest.approx([f.column + 0.5, f.row + 0.5], abs=1e-3)
        assert edge[0] - centre[0] == pytest.approx(f.radius_mm / spacing, abs=1e-3)
        ref = str(roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        assert ref == f.sop_instance_uid and ref in sources
    # the labels of the three: malignant, benign, non-nodule (p_nodule 0.3)
    assert [f.label for f in reported] == ["malignant", "benign", "non-nodule"]
    # every image the regions reference is in the evidence, which holds only source images
    evidence = {
        str(inst.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for inst in series.ReferencedSOPSequence
    }
    assert evidence == {f.sop_instance_uid for f in reported}
    assert evidence <= sources


def test_sr_identity_privacy_and_notices(make_prediction: MakePrediction, tmp_path: Path) -> None:
    pred = make_prediction()
    out = write_findings_sr(pred, tmp_path / "sr.dcm")
    ds = pydicom.dcmread(out)
    src = pydicom.dcmread(next(iter(pred.source_files.values())), stop_before_pixels=True)
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.PatientID == src.PatientID
    assert ds.SeriesDescription == f"lungslice findings SR {MODEL_ID}"
    assert str(ds.PatientName) == "" and b"Doe^Jane" not in out.read_bytes()
    assert b"19450203" not in out.read_bytes()
    texts = _texts(hd.sr.srread(out))
    assert "lungslice: research use only, not for diagnosis" in texts
    assert OUT_OF_DOMAIN_TEXT not in texts
    kept = write_findings_sr(pred, tmp_path / "named.dcm", keep_patient_name=True)
    assert str(pydicom.dcmread(kept).PatientName) == "Doe^Jane"


def test_sr_says_when_the_domain_guard_fired(
    make_prediction: MakePrediction, tmp_path: Path
) -> None:
    out = write_findings_sr(make_prediction(out_of_domain=True), tmp_path / "sr.dcm")
    assert OUT_OF_DOMAIN_TEXT in _texts(hd.sr.srread(out))


def test_whole_slice_findings_reference_their_image(
    make_prediction: MakePrediction, tmp_path: Path
) -> None:
    pred = make_prediction(located=False, top_k=2)
    sr = hd.sr.srread(write_findings_sr(pred, tmp_path / "sr.dcm"))
    assert sr.content.get_planar_roi_measurement_groups() == []
    groups = [
        g
        for g in sr.content.get_image_measurement_groups()
        if str(g.tracking_identifier).startswith("lungslice finding")
    ]
    assert len(groups) == 2
    for g, f in zip(groups, pred.findings, strict=False):
        (src,) = g.source_images
        assert str(src.referenced_sop_instance_uid) == f.sop_instance_uid


def test_sr_without_findings_holds_the_study_scores(
    make_prediction: MakePrediction, tmp_path: Path
) -> None:
    pred = make_prediction(n_findings=0)
    sr = hd.sr.srread(write_findings_sr(pred, tmp_path / "sr.dcm"))
    assert sr.content.get_planar_roi_measurement_groups() == []
    (study,) = sr.content.get_image_measurement_groups()
    values = {m.name.meaning: m.value for m in study.get_measurements()}
    assert values["Probability of any nodule"] == pytest.approx(0.93)
    assert any(t.startswith("0 of 0 findings reported") for t in _texts(sr))


def test_sr_uids_are_stable_per_study_and_model(
    make_prediction: MakePrediction, tmp_path: Path
) -> None:
    a = pydicom.dcmread(write_findings_sr(make_prediction(), tmp_path / "a.dcm"))
    b = pydicom.dcmread(write_findings_sr(make_prediction(), tmp_path / "b.dcm"))
    other = make_prediction(model_id="ba9876543210")
    c = pydicom.dcmread(write_findings_sr(other, tmp_path / "c.dcm"))
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    assert c.SeriesInstanceUID != a.SeriesInstanceUID
    assert c.SeriesDescription == "lungslice findings SR ba9876543210"


def test_a_finding_outside_the_source_series_is_refused(
    make_prediction: MakePrediction, tmp_path: Path
) -> None:
    pred = make_prediction()
    f = dataclasses.replace(pred.findings[0], sop_instance_uid="1.2.3.999")
    bad = dataclasses.replace(pred, findings=(f, *pred.findings[1:]))
    with pytest.raises(LungsliceError, match=r"SOPInstanceUID 1\.2\.3\.999 is not an image of"):
        write_findings_sr(bad, tmp_path / "sr.dcm")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) absent")
@pytest.mark.parametrize("located", [True, False])
def test_dciodvfy_finds_no_error(
    make_prediction: MakePrediction, tmp_path: Path, located: bool
) -> None:
    out = write_findings_sr(make_prediction(located=located), tmp_path / "sr.dcm")
    run = subprocess.run(
        ["dciodvfy", str(out)], capture_output=True, text=True, timeout=60, check=False
    )
    report = run.stdout + run.stderr
    assert "ComprehensiveSR" in report
    assert "Error" not in report, report
