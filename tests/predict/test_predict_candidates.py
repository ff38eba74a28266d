"""The candidate path end to end: phantom -> candidates -> bundle -> predict with locations."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lungslice.cli import app
from lungslice.dicom.kos import read_key_images
from lungslice.features.candidates import CandidateConfig, extract_candidates
from lungslice.lidc.db import read_database
from lungslice.lidc.labels import LabelRule, label_scans, write_labels
from lungslice.model.candidate_bundle import load_candidate_bundle, train_candidate_bundle
from lungslice.model.candidate_eval import build_candidate_set
from lungslice.phantom import PhantomConfig, synthesize
from lungslice.prediction import PredictConfig, predict

#: Malignant (four readers), mixed, and nodule-free.
PATIENTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0078", "LIDC-IDRI-0937")
MATRIX = 256


@dataclass(frozen=True)
class CandidatePipeline:
    root: Path
    model: Path
    nodules: pd.DataFrame

    def study(self, patient_id: str) -> Path:
        return self.root / "data" / "LIDC-IDRI" / patient_id


@pytest.fixture(scope="module")
def cpipe(tmp_path_factory: pytest.TempPathFactory) -> CandidatePipeline:
    root = tmp_path_factory.mktemp("candidate_pipeline")
    scans = read_database(patient_ids=PATIENTS)
    phantom = PhantomConfig(seed=1, matrix=MATRIX, z_margin_mm=12.0)
    synthesize(root / "data", PATIENTS, phantom, scans=scans)
    rule = LabelRule()
    slices, nodules = label_scans(scans, rule=rule)
    write_labels(root / "labels", slices, nodules, rule=rule, source="pylidc")
    extract_candidates(root / "data", root / "work", CandidateConfig())
    cs = build_candidate_set(root / "work", root / "labels")
    grid = {"C": [0.01], "pca_components": [64]}
    train_candidate_bundle(cs, root / "model", param_grid=grid, n_splits=0)
    return CandidatePipeline(root, root / "model", nodules)


def test_the_top_finding_lies_on_the_nodule(cpipe: CandidatePipeline, tmp_path: Path) -> None:
    (result,) = predict(cpipe.study("LIDC-IDRI-0001"), cpipe.model, out_dir=tmp_path)
    nod = cpipe.nodules[cpipe.nodules["patient_id"] == "LIDC-IDRI-0001"].iloc[0]
    top = result["recommendations"][0]
    scale = 512 / MATRIX  # nodule centres are on LIDC's 512 grid
    d_mm = np.hypot(
        top["row"] * scale - nod["centroid_row"], top["column"] * scale - nod["centroid_col"]
    ) * float(nod["pixel_spacing_mm"])
    assert d_mm <= float(nod["radius_mm"]) + 3.0
    assert nod["z_min"] - 3.0 <= top["z_mm"] <= nod["z_max"] + 3.0
    assert result["scores"]["p_any_nodule"] > 0.5
    assert result["model"]["kind"] == "candidates"
    assert result["domain"]["in_domain"] is None  # 3 training studies: no guard
    assert json.loads((tmp_path / "result.json").read_text()) == result


def test_slices_without_lung_score_zero_with_the_reason(
    cpipe: CandidatePipeline, tmp_path: Path
) -> None:
    (result,) = predict(cpipe.study("LIDC-IDRI-0078"), cpipe.model)
    for s in result["slices"]:
        if s["reason"] == "no lung field":
            assert s["p_non_nodule"] == 1.0
    assert result["study"]["n_lung_slices"] > 0


def test_key_images_and_report_name_the_location(cpipe: CandidatePipeline, tmp_path: Path) -> None:
    predict(
        cpipe.study("LIDC-IDRI-0001"),
        cpipe.model,
        out_dir=tmp_path,
        config=PredictConfig(top_k=3),
    )
    _, notes = read_key_images(tmp_path / "key_images.dcm")
    assert "finding at row" in notes[0] and "radius" in notes[0]
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 1 + 2 * 3
    assert "finding at row" in html


def test_bundle_round_trip_and_a_damaged_classifier_is_refused(
    cpipe: CandidatePipeline, tmp_path: Path
) -> None:
    import shutil

    from lungslice.errors import BundleMismatchError
    from lungslice.features.frozen import FrozenBackbone
    from lungslice.prediction import Predictor

    bundle = load_candidate_bundle(cpipe.model)
    assert bundle.config.key == CandidateConfig().key
    # the bundle carries its extractor (checksummed): predict needs no timm
    record = bundle.manifest["frozen_backbone"]
    assert bundle.manifest["files"][record["file"]] == record["sha256"]
    assert isinstance(Predictor(cpipe.model).runner.backbone, FrozenBackbone)
    copy = tmp_path / "model"
    shutil.copytree(cpipe.model, copy)
    with open(copy / "classifier.npz", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleMismatchError, match=r"classifier\.npz: checksum differs"):
        load_candidate_bundle(copy)


def test_cli_extract_reuses_the_cache_and_train_writes_a_bundle(
    cpipe: CandidatePipeline, tmp_path: Path
) -> None:
    runner = CliRunner()
    r = runner.invoke(
        app, ["candidates", "extract", str(cpipe.root / "data"), "--out", str(cpipe.root / "work")]
    )
    assert r.exit_code == 0, r.output
    assert "0 computed, 3 reused" in r.output
    r = runner.invoke(
        app,
        [
            "candidates",
            "train",
            str(cpipe.root / "work"),
            str(cpipe.root / "labels"),
            "--out",
            str(tmp_path / "m"),
            "--c",
            "0.01",
            "--folds",
            "0",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m" / "model.json").is_file()


def test_evaluation_and_a_cross_validated_bundle(cpipe: CandidatePipeline, tmp_path: Path) -> None:
    from lungslice.model.candidate_eval import evaluate_candidates

    cs = build_candidate_set(cpipe.root / "work", cpipe.root / "labels")
    grid = {"C": [0.01], "pca_components": [64]}
    record = evaluate_candidates(cs, tmp_path / "eval", n_splits=2, n_boot=20, param_grid=grid)
    figures = record["figures"]["classifier"]
    assert set(record["figures"]) == {"classifier", "detector score alone"}
    for name in ("froc.cpm", "slice.roc_auc.nodule", "nodule.recall@5.chance"):
        assert name in figures
    assert 0.0 <= figures["froc.cpm"]["value"] <= 1.0
    assert "ece_before" in record["calibration"]["candidates"]
    for name in ("metrics.json", "report.md", "froc.png", "reliability_candidates.png"):
        assert (tmp_path / "eval" / name).is_file()
    result = train_candidate_bundle(cs, tmp_path / "model", param_grid=grid, n_splits=2, n_boot=20)
    bundle = load_candidate_bundle(tmp_path / "model")
    assert "candidates" in bundle.calibration
    assert result.findings.aggregator in ("max", "noisy_or")
    (pred,) = predict(cpipe.study("LIDC-IDRI-0001"), tmp_path / "model")
    # 3 training studies: the candidates are calibrated, the study scores too few for Platt
    assert pred["scores"]["calibration"] is None
    assert pred["scores"]["p_any_nodule_uncalibrated"] is None
