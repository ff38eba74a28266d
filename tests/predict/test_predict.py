"""predict on a study: recommendations on nodules, outputs, errors, privacy."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from lungslice.cli import app
from lungslice.dicom.kos import read_key_images
from lungslice.errors import BundleMismatchError, NoCTSeriesError
from lungslice.prediction import PredictConfig, Predictor, predict
from lungslice.testing import write_ct_series
from tests.helpers import Pipeline


def test_recommendations_fall_on_the_nodule(pipeline: Pipeline, tmp_path: Path) -> None:
    (result,) = predict(pipeline.study("LIDC-IDRI-0001"), pipeline.model, out_dir=tmp_path)
    nodule = pipeline.nodules[pipeline.nodules["patient_id"] == "LIDC-IDRI-0001"].iloc[0]
    top = result["recommendations"][0]
    assert nodule["z_min"] - 1.0 <= top["z_mm"] <= nodule["z_max"] + 1.0
    assert result["candidates"], "the nodule should form a candidate"
    assert result["scores"]["p_any_nodule"] > 0.5
    assert len(result["slices"]) == result["study"]["n_resampled_slices"]
    for name in ("result.json", "report.html", "key_images.dcm"):
        assert (tmp_path / name).is_file()
    assert json.loads((tmp_path / "result.json").read_text()) == result


def test_key_images_reference_input_images(pipeline: Pipeline, tmp_path: Path) -> None:
    study = pipeline.study("LIDC-IDRI-0078")
    (result,) = predict(study, pipeline.model, out_dir=tmp_path)
    uids, notes = read_key_images(tmp_path / "key_images.dcm")
    inputs = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in study.rglob("*.dcm")
    }
    assert uids and set(uids) <= inputs
    assert uids[0] == result["recommendations"][0]["sop_instance_uid"]
    assert len(notes) == len(uids) and "p(malignant)" in notes[0]
    kos = pydicom.dcmread(tmp_path / "key_images.dcm")
    assert kos.StudyInstanceUID == pydicom.dcmread(next(study.rglob("*.dcm"))).StudyInstanceUID


def test_report_html_shows_recommendations(pipeline: Pipeline, tmp_path: Path) -> None:
    predict(
        pipeline.study("LIDC-IDRI-0001"),
        pipeline.model,
        out_dir=tmp_path,
        config=PredictConfig(top_k=3),
    )
    html = (tmp_path / "report.html").read_text()
    # z plot + 2 thumbnails (plain, heat map) per recommendation
    assert html.count("data:image/png;base64,") == 1 + 2 * 3
    assert "LIDC-IDRI-0001" in html


def test_folder_without_ct_lists_what_it_found(pipeline: Pipeline, tmp_path: Path) -> None:
    write_ct_series(tmp_path / "xray", n_slices=1, modality="CR")
    (tmp_path / "reader.xml").write_text("<LidcReadMessage/>")
    with pytest.raises(NoCTSeriesError, match=r"found 2 files: 1 CR series, 1 XML"):
        predict(tmp_path, pipeline.model)


def test_bundle_from_another_backbone_is_refused(pipeline: Pipeline, tmp_path: Path) -> None:
    bundle = tmp_path / "model"
    shutil.copytree(pipeline.model, bundle)
    manifest = json.loads((bundle / "model.json").read_text())
    manifest["features"]["key_payload"]["backbone"] = "resnet18"
    (bundle / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(
        BundleMismatchError,
        match=r"backbone: bundle trained with 'resnet18', features made with "
        r"'efficientnet_lite0'",
    ):
        Predictor(bundle)


def test_no_patient_name_in_outputs_or_logs(
    pipeline: Pipeline, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study = tmp_path / "study"
    shutil.copytree(pipeline.study("LIDC-IDRI-0001"), study)
    for path in study.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.PatientName = "Sensitive^Person"
        ds.PatientBirthDate = "19450203"
        ds.save_as(path)
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        result = CliRunner().invoke(
            app, ["-vv", "predict", str(study), "--model", str(pipeline.model), "--out", str(out)]
        )
    assert result.exit_code == 0, result.output
    assert "Sensitive" not in result.output and "Sensitive" not in caplog.text
    assert "19450203" not in caplog.text
    for path in out.rglob("*"):
        data = path.read_bytes()
        assert b"Sensitive" not in data and b"19450203" not in data, path


def test_hide_patient_id(pipeline: Pipeline, tmp_path: Path) -> None:
    predict(
        pipeline.study("LIDC-IDRI-0001"),
        pipeline.model,
        out_dir=tmp_path,
        config=PredictConfig(hide_patient_id=True, heatmaps=False),
    )
    assert "LIDC-IDRI-0001" not in (tmp_path / "report.html").read_text()


def test_top_level_api_is_the_same_function() -> None:
    import lungslice
    import lungslice.prediction

    assert lungslice.predict is lungslice.prediction.predict


def test_cli_json_format_matches_api(pipeline: Pipeline) -> None:
    study = pipeline.study("LIDC-IDRI-0937")
    # the fixture's series cover ~16 mm (a z-crop); the CLI refuses < 30 mm by default
    cmd = ["predict", str(study), "--model", str(pipeline.model), "--format", "json"]
    result = CliRunner().invoke(app, [*cmd, "--min-coverage", "0"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    (api,) = predict(study, pipeline.model)
    assert printed["slices"] == api["slices"]
    assert printed["recommendations"] == api["recommendations"]
