"""write_all: every output of a prediction, in one study, every reference resolving."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from lungslice.report import OutputOptions, write_all
from lungslice.report.result_json import result_record
from tests.report.synthetic import MODEL_ID, MakePrediction

#: The result.json keys (docs/result-schema.md), by bundle kind.
TOP = {"schema", "study", "scores", "candidates", "recommendations", "slices", "model"}
TOP |= {"timings_s", "provenance", "run"}
LOCATED = {
    "top": TOP | {"domain"},
    "study": {
        "patient_id",
        "study_uid",
        "series_uid",
        "n_original_slices",
        "n_resampled_slices",
        "slice_spacing_mm",
        "pixel_spacing_mm",
        "n_lung_slices",
    },
    "scores": {
        "p_any_nodule",
        "p_malignant",
        "method",
        "calibration",
        "p_any_nodule_uncalibrated",
        "calibrated_for_input",
    },
    "candidates": {
        "id",
        "slice_index",
        "z_mm",
        "z_min",
        "z_max",
        "peak_index",
        "peak_z",
        "row",
        "column",
        "x_mm",
        "y_mm",
        "radius_mm",
        "p_nodule",
        "p_malignant",
        "p_benign",
        "max_p_malignant",
        "mean_p_malignant",
        "max_p_benign",
        "detector_score",
        "peak_sop_instance_uid",
        "instance_number",
    },
    "recommendations": {
        "rank",
        "slice_index",
        "z_mm",
        "candidate",
        "row",
        "column",
        "x_mm",
        "y_mm",
        "radius_mm",
        "p_nodule",
        "p_malignant",
        "p_benign",
        "sop_instance_uid",
        "instance_number",
    },
    "slices": {
        "index",
        "z_mm",
        "p_non_nodule",
        "p_benign",
        "p_malignant",
        "reason",
        "sop_instance_uid",
        "instance_number",
    },
}
RUNS = {
    "top": TOP,
    "study": LOCATED["study"] - {"n_lung_slices"},
    "scores": {"p_any_nodule", "p_malignant", "method"},
    "candidates": {
        "id",
        "z_min",
        "z_max",
        "n_slices",
        "peak_index",
        "peak_z",
        "p_nodule",
        "mean_p_malignant",
        "max_p_malignant",
        "mean_p_benign",
        "max_p_benign",
        "peak_sop_instance_uid",
    },
    "recommendations": {
        "rank",
        "slice_index",
        "z_mm",
        "candidate",
        "p_malignant",
        "p_benign",
        "sop_instance_uid",
        "instance_number",
    },
    "slices": LOCATED["slices"] - {"reason"},
}


@pytest.mark.parametrize("located", [True, False])
def test_result_json_keeps_its_schema(make_prediction: MakePrediction, located: bool) -> None:
    record = result_record(make_prediction(located=located))
    want = LOCATED if located else RUNS
    assert set(record) == want["top"]
    assert record["schema"] == "lungslice.result/1"
    assert set(record["study"]) == want["study"]
    assert set(record["scores"]) == want["scores"]
    for key in ("candidates", "recommendations", "slices"):
        assert record[key], key
        for item in record[key]:
            assert set(item) == want[key], key
    assert record["model"]["id"] == MODEL_ID
    if located:
        assert set(record["domain"]) == {
            "in_domain",
            "score",
            "threshold",
            "method",
            "message",
            "furthest",
        }


def test_write_all_writes_every_output_into_the_source_study(
    make_prediction: MakePrediction, tmp_path: Path
) -> None:
    pred = make_prediction()
    paths = write_all(pred, tmp_path / "out")
    names = [p.name for p in paths]
    assert names == [
        "report.html",
        "key_images.dcm",
        "findings_sr.dcm",
        "summary_sc.dcm",
        "result.json",
    ]
    record = json.loads((tmp_path / "out" / "result.json").read_text())
    for kind in ("report", "key_images", "findings_sr", "summary_sc"):
        assert record["timings_s"][kind] >= 0.0
    sources = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
        for p in pred.source_files.values()
    }
    src = pydicom.dcmread(next(iter(sources.values())), stop_before_pixels=True)
    series, descriptions = set(), set()
    for path in paths:
        if path.suffix != ".dcm":
            continue
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == src.StudyInstanceUID, path
        assert ds.PatientID == src.PatientID, path
        assert str(ds.get("PatientName", "")) == "", path
        series.add(ds.SeriesInstanceUID)
        descriptions.add(ds.SeriesDescription)
        refs = [
            str(inst.ReferencedSOPInstanceUID)
            for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
            for s in study.ReferencedSeriesSequence
            for inst in s.ReferencedSOPSequence
        ] + [str(r.ReferencedSOPInstanceUID) for r in ds.get("SourceImageSequence", [])]
        assert refs and set(refs) <= set(sources), path  # every reference resolves
    assert len(series) == 3 and src.SeriesInstanceUID not in series
    assert descriptions == {
        f"lungslice key images {MODEL_ID}",
        f"lungslice findings SR {MODEL_ID}",
        f"lungslice summary {MODEL_ID}",
    }
    for path in (tmp_path / "out").iterdir():
        assert b"Doe^Jane" not in path.read_bytes(), path


def test_options_turn_outputs_off(make_prediction: MakePrediction, tmp_path: Path) -> None:
    options = OutputOptions(report=False, key_images=False, findings_sr=False, summary_sc=False)
    paths = write_all(make_prediction(), tmp_path / "out", options)
    assert [p.name for p in paths] == ["result.json"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["result.json"]


def test_no_recommendation_writes_no_key_images_and_says_why(
    make_prediction: MakePrediction, tmp_path: Path
) -> None:
    from lungslice.report.writers import write_outputs

    written = write_outputs(make_prediction(n_findings=0), tmp_path / "out")
    assert "key_images" not in written.paths
    assert written.skipped == {"key_images": "no recommended slice to reference"}
    assert (tmp_path / "out" / "findings_sr.dcm").is_file()
