"""Predict on a new study: slice probabilities, candidates, recommendations, outputs.

``predict(study_dir, model_dir, out_dir=...)`` runs the stages the model bundle
records (index -> HU -> 1 mm resampling -> inputs -> features -> head ->
aggregation) on every CT series of a study and, when given an output folder,
writes for each series:

- ``result.json``: the record described in ``docs/result-schema.md``;
- ``report.html``: one self-contained file for a reader;
- ``key_images.dcm``: a DICOM Key Object Selection document a PACS shows.

A study with one CT series writes them into ``out_dir``; with several, into
``out_dir/<SeriesInstanceUID>/``. No PatientName or BirthDate is written
anywhere unless asked for (``keep_patient_name``, key images only).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lungslice.dicom.discover import DicomIndex, index_tree, reason_category
from lungslice.dicom.geometry import LoadConfig
from lungslice.dicom.kos import write_key_images
from lungslice.dicom.resample import ResampledVolume, resample
from lungslice.dicom.volume import load_series
from lungslice.errors import BundleMismatchError, ConfigError, NoCTSeriesError
from lungslice.features.config import FeatureConfig
from lungslice.features.extract import extract_volume, make_runner
from lungslice.features.inputs import make_inputs
from lungslice.features.runtime import FeatureRunner
from lungslice.model.aggregate import StudyResult
from lungslice.model.bundle import ModelBundle, compare_feature_configs, load_bundle
from lungslice.model.findings import StudyFindings
from lungslice.outputs import staged_output
from lungslice.progress import ProgressCallback, report
from lungslice.provenance import config_dict, provenance

if TYPE_CHECKING:
    from lungslice.model.candidate_bundle import CandidateBundle

__all__ = ["RESULT_SCHEMA", "PredictConfig", "Predictor", "SeriesPrediction", "predict"]

log = logging.getLogger(__name__)

#: Identifier of the ``result.json`` layout (``docs/result-schema.md``).
RESULT_SCHEMA = "lungslice.result/1"


@dataclass(frozen=True)
class PredictConfig:
    """Settings of one prediction run.

    Attributes
    ----------
    series_uid : str or None
        Only this series of the study; None = every CT series.
    top_k : int
        Slices recommended per series.
    hide_patient_id : bool
        Leave PatientID out of ``report.html`` (``result.json`` keeps it for
        machines; never PatientName or BirthDate).
    keep_patient_name : bool
        Copy PatientName/BirthDate/Sex into ``key_images.dcm`` (off by default).
    write_report, write_key_images : bool
        Which files to write besides ``result.json``.
    heatmaps : bool
        Compute class activation maps for the report's thumbnails (whole-slice
        bundles; candidate bundles show crops around each finding).
    load : LoadConfig
        How the study's DICOM is loaded (gaps, tilt, rescale, HU check, minimum
        z-coverage, ...).
    """

    series_uid: str | None = None
    top_k: int = 5
    hide_patient_id: bool = False
    keep_patient_name: bool = False
    write_report: bool = True
    write_key_images: bool = True
    heatmaps: bool = True
    load: LoadConfig = field(default_factory=LoadConfig)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"PredictConfig.top_k: expected >= 1, got {self.top_k}")


@dataclass(frozen=True, eq=False)
class SeriesPrediction:
    """The prediction for one CT series.

    Attributes
    ----------
    result : dict
        The ``result.json`` record.
    probabilities : numpy.ndarray
        ``(n, 3)`` slice probabilities (non-nodule, benign, malignant) on the
        resampled slices.
    study : StudyResult or StudyFindings
        Aggregation output: whole-slice runs (``StudyResult``) or the candidate
        path's ranked findings with their locations (``StudyFindings``).
    resampled : ResampledVolume
        The 1 mm volume the probabilities belong to.
    outputs : dict
        Written files by kind (``result``, ``report``, ``key_images``).
    """

    result: dict[str, Any]
    probabilities: np.ndarray
    study: StudyResult | StudyFindings
    resampled: ResampledVolume
    outputs: dict[str, Path] = field(default_factory=dict)


def _feature_config(bundle: ModelBundle) -> FeatureConfig:
    # load_bundle rebuilt it with FeatureConfig.from_dict (model.json 'features' 'config')
    if bundle.feature_config is None:
        raise BundleMismatchError(
            f"model bundle {bundle.path}: model.json 'features' holds no feature settings "
            "('config'), so features cannot be made for it. Fix: train the bundle on a feature "
            "cache written by `lungslice extract`."
        )
    return bundle.feature_config


def _study_record(resampled: ResampledVolume) -> dict[str, Any]:
    """The ``result.json`` ``study`` record: identity and geometry of the series."""
    src = resampled.source
    return {
        "patient_id": src.patient_id,
        "study_uid": src.study_uid,
        "series_uid": src.series_uid,
        "n_original_slices": src.n_slices,
        "n_resampled_slices": resampled.n_slices,
        "slice_spacing_mm": float(resampled.spacing[0]),
        "pixel_spacing_mm": [float(resampled.spacing[1]), float(resampled.spacing[2])],
    }


def _domain_record(domain: Any, descriptor: np.ndarray) -> dict[str, Any]:
    """The ``result.json`` ``domain`` record: score, threshold, verdict, message."""
    if domain is None:
        return {
            "in_domain": None,
            "score": None,
            "threshold": None,
            "method": None,
            "message": "the model bundle has no domain guard; scores unchecked for this input",
        }
    rec = dict(domain.assess(descriptor))
    rec["score"] = None if rec.get("score") is None else round(float(rec["score"]), 4)
    rec["threshold"] = round(float(rec["threshold"]), 4)
    return rec


def _proba3(est: Any, X: np.ndarray) -> np.ndarray:
    from lungslice.model.candidate_eval import _proba3 as proba3

    return proba3(est, X)


def describe_contents(index: DicomIndex) -> str:
    """What a folder holds, for an error: e.g. ``2 files: 1 CR series, 1 XML``."""
    parts: Counter[str] = Counter()
    for row in index.series.itertuples():
        modality = str(row.modality or "unknown")
        parts[f"{modality} series"] += 1
    for row in index.files[index.files["series_uid"].isna()].itertuples():
        path = str(row.path)
        parts["XML" if path.lower().endswith(".xml") else reason_category(str(row.reason))] += 1
    listing = ", ".join(f"{n} {what}" for what, n in parts.most_common())
    return f"{len(index.files)} files" + (f": {listing}" if listing else "")


class Predictor:
    """A model bundle and its backbone, loaded once and used on many studies.

    Parameters
    ----------
    model : str, Path or ModelBundle
        A bundle directory written by ``lungslice train`` (or a loaded bundle).
    """

    def __init__(self, model: str | Path | ModelBundle) -> None:
        from lungslice.model.candidate_bundle import is_candidate_bundle, load_candidate_bundle

        self.candidates: CandidateBundle | None = None
        self._domain: dict[str, Any] = {}
        self.runner: FeatureRunner
        if not isinstance(model, ModelBundle) and is_candidate_bundle(model):
            self.candidates = load_candidate_bundle(model)
            self.feature_config = self.candidates.config.features
            self.runner = make_runner(self.feature_config)
            have = self.runner.backbone.weights_id
            want = str(self.candidates.manifest.get("weights_id", ""))
            if want and have != want:
                raise BundleMismatchError(
                    f"model bundle {self.candidates.path} was trained on features of weights "
                    f"{want[:12]}..., but backbone {self.feature_config.backbone} resolves to "
                    f"{have[:12]}... here. Fix: install the same backbone weights, or retrain."
                )
            return
        self.bundle = model if isinstance(model, ModelBundle) else load_bundle(model)
        self.feature_config = _feature_config(self.bundle)
        # Features here are made with the bundle's settings; what can still differ is
        # the weights this machine resolves (checksum) and the backbone's width.
        local = {"key_payload": self.feature_config.key_payload()}
        diffs = compare_feature_configs(self.bundle.feature_record, local)
        if diffs:
            raise BundleMismatchError(
                f"model bundle {self.bundle.path} cannot run here: " + "; ".join(diffs) + ". "
                "Fix: install the same backbone weights the bundle was trained with, or "
                "retrain the bundle on features made on this machine."
            )
        self.runner = make_runner(self.feature_config)
        width = self.runner.backbone.feature_dim
        if width != self.bundle.head.n_features:
            raise BundleMismatchError(
                f"model bundle {self.bundle.path}: its head expects {self.bundle.head.n_features} "
                f"features but backbone {self.feature_config.backbone} with layers "
                f"{','.join(self.feature_config.resolved_layers)} gives {width}. Fix: use the "
                "bundle with the backbone settings it was trained on (model.json 'features')."
            )

    # -- one series -------------------------------------------------------------------
    def predict_volume(
        self, resampled: ResampledVolume, config: PredictConfig = PredictConfig()
    ) -> tuple[np.ndarray, StudyResult, dict[str, float]]:
        """Probabilities and aggregation of one resampled volume, with stage timings."""
        timings: dict[str, float] = {}
        t = time.perf_counter()
        features = extract_volume(resampled, self.runner, self.feature_config)
        timings["features"] = time.perf_counter() - t
        t = time.perf_counter()
        probs = self.bundle.head.predict_proba(features)
        timings["head"] = time.perf_counter() - t
        t = time.perf_counter()
        study = self.bundle.aggregate(probs, np.asarray(resampled.z_positions))
        timings["aggregate"] = time.perf_counter() - t
        return probs, study, timings

    def heatmaps(self, resampled: ResampledVolume, indices: np.ndarray) -> np.ndarray:
        """Class activation maps for p(malignant) on the given resampled slices."""
        from lungslice.report.cam import activation_maps

        cfg = self.feature_config.inputs
        data_config = self.runner.backbone.data_config
        maps = []
        for i in indices:
            lo, hi = max(int(i) - 1, 0), min(int(i) + 2, resampled.n_slices)
            x = make_inputs(resampled.hu[lo:hi], cfg, data_config)[int(i) - lo : int(i) - lo + 1]
            maps.append(activation_maps(self.runner.backbone, self.bundle.head, x)[0])
        return np.stack(maps) if maps else np.zeros((0, 1, 1), dtype=np.float32)

    def _result(
        self,
        resampled: ResampledVolume,
        probs: np.ndarray,
        study: StudyResult,
        config: PredictConfig,
        timings: dict[str, float],
    ) -> dict[str, Any]:
        z = np.asarray(resampled.z_positions, dtype=np.float64)
        slices = [
            {
                "index": i,
                "z_mm": round(float(z[i]), 3),
                "p_non_nodule": round(float(probs[i, 0]), 5),
                "p_benign": round(float(probs[i, 1]), 5),
                "p_malignant": round(float(probs[i, 2]), 5),
                "sop_instance_uid": resampled.nearest_sop_instance_uid(i),
                "instance_number": resampled.nearest_instance_number(i),
            }
            for i in range(resampled.n_slices)
        ]
        candidate_of = np.full(resampled.n_slices, -1, dtype=np.int64)
        candidates = []
        for k, c in enumerate(study.candidates, start=1):
            candidate_of[c.start : c.end + 1] = k
            candidates.append(
                {
                    "id": k,
                    "z_min": round(min(c.z_start, c.z_end), 3),
                    "z_max": round(max(c.z_start, c.z_end), 3),
                    "n_slices": c.n_slices,
                    "peak_index": c.peak,
                    "peak_z": round(c.peak_z, 3),
                    "p_nodule": round(c.p_nodule, 5),
                    "mean_p_malignant": round(c.mean_p_malignant, 5),
                    "max_p_malignant": round(c.max_p_malignant, 5),
                    "mean_p_benign": round(c.mean_p_benign, 5),
                    "max_p_benign": round(c.max_p_benign, 5),
                    "peak_sop_instance_uid": resampled.nearest_sop_instance_uid(c.peak),
                }
            )
        recs = []
        for rank, i in enumerate(study.recommendations(config.top_k), start=1):
            cand = int(candidate_of[i])
            recs.append(
                {
                    "rank": rank,
                    "slice_index": int(i),
                    "z_mm": round(float(z[i]), 3),
                    "candidate": cand if cand > 0 else None,
                    "p_malignant": round(float(study.smoothed[i, 2]), 5),
                    "p_benign": round(float(study.smoothed[i, 1]), 5),
                    "sop_instance_uid": resampled.nearest_sop_instance_uid(int(i)),
                    "instance_number": resampled.nearest_instance_number(int(i)),
                }
            )
        m = self.bundle.manifest
        return {
            "schema": RESULT_SCHEMA,
            "study": _study_record(resampled),
            "scores": {
                "p_any_nodule": round(float(study.p_any_nodule), 5),
                "p_malignant": round(float(study.p_malignant), 5),
                "method": study.config.method,
            },
            "candidates": candidates,
            "recommendations": recs,
            "slices": slices,
            "model": {
                "bundle": str(self.bundle.path),
                "backbone": self.feature_config.backbone,
                "weights_id": self.runner.backbone.weights_id,
                "layers": list(self.feature_config.resolved_layers),
                "inputs": config_dict(self.feature_config.inputs),
                "head": m.get("head", {}).get("kind"),
                "label_rule": self.bundle.label_rule.to_dict(),
                "aggregate": config_dict(self.bundle.aggregate_config),
            },
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
            "provenance": provenance(config),
        }

    def write_outputs(
        self,
        prediction: SeriesPrediction,
        out_dir: Path,
        files_by_sop: dict[str, Path],
        config: PredictConfig,
    ) -> dict[str, Path]:
        """Write ``result.json``, ``report.html`` and ``key_images.dcm`` into ``out_dir``."""
        from lungslice.report.figures import slice_png, z_profile_png
        from lungslice.report.html import render_report

        out_dir.mkdir(parents=True, exist_ok=True)
        result, rs = prediction.result, prediction.resampled
        timings = result["timings_s"]
        outputs: dict[str, Path] = {}
        recs = result["recommendations"]
        idx = np.array([r["slice_index"] for r in recs], dtype=np.int64)
        if config.write_report:
            t = time.perf_counter()
            if isinstance(prediction.study, StudyFindings):
                thumbs, plot = self._candidate_thumbnails(prediction)
            else:
                heat = self.heatmaps(rs, idx) if config.heatmaps else [None] * len(idx)
                timings["heatmaps"] = round(time.perf_counter() - t, 4)
                t = time.perf_counter()
                src = rs.source
                thumbs = [
                    (
                        slice_png(src.hu[int(rs.nearest_source[i])]),
                        slice_png(src.hu[int(rs.nearest_source[i])], h),
                    )
                    for i, h in zip(idx, heat, strict=True)
                ]
                plot = z_profile_png(
                    np.asarray(rs.z_positions),
                    prediction.study.smoothed[:, 2],
                    prediction.study.smoothed[:, 1],
                    result["candidates"],
                    [r["z_mm"] for r in recs],
                )
            outputs["report"] = render_report(
                result,
                plot,
                thumbs,
                out_dir / "report.html",
                hide_patient_id=config.hide_patient_id,
            )
            timings["report"] = round(time.perf_counter() - t, 4)
        if config.write_key_images and recs:
            t = time.perf_counter()
            seen: dict[str, str] = {}
            domain = result.get("domain") or {}
            title = "lungslice: slices to read first"
            if domain.get("in_domain") is False:
                title += f" ({domain['message']})"
            for r in recs:  # several 1 mm slices can share one original image
                uid = r["sop_instance_uid"]
                note = (
                    f"rank {r['rank']}, z {r['z_mm']:.1f} mm, p(malignant) "
                    f"{r['p_malignant']:.2f}, p(benign) {r['p_benign']:.2f}"
                )
                if "row" in r:
                    note += (
                        f", finding at row {r['row']:.0f} column {r['column']:.0f} "
                        f"(x {r['x_mm']:.1f} mm, y {r['y_mm']:.1f} mm), "
                        f"radius {r['radius_mm']:.1f} mm"
                    )
                seen[uid] = f"{seen[uid]}; {note}" if uid in seen else note
            outputs["key_images"] = write_key_images(
                out_dir / "key_images.dcm",
                [files_by_sop[uid] for uid in seen],
                list(seen.values()),
                title=title,
                keep_patient_name=config.keep_patient_name,
                software_version=str(result["provenance"]["versions"].get("lungslice")),
            )
            timings["key_images"] = round(time.perf_counter() - t, 4)
        path = out_dir / "result.json"
        path.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
        outputs["result"] = path
        return outputs

    # -- the candidate path -------------------------------------------------------------
    def predict_candidates(
        self, resampled: ResampledVolume
    ) -> tuple[StudyFindings, pd.DataFrame, dict[str, float]]:
        """Findings of one resampled volume with a candidate bundle, with stage timings.

        Raises
        ------
        NotChestError
            When no slice of the volume has a lung field.
        """
        from lungslice.features.candidates import candidates_for_volume
        from lungslice.model.findings import study_findings

        assert self.candidates is not None
        sc = candidates_for_volume(resampled, self.runner, self.candidates.config)
        timings = {f"candidates.{k}": v for k, v in sc.timings.items()}
        t = time.perf_counter()
        probs = (
            _proba3(self.candidates.classifier, sc.features)
            if len(sc.features)
            else np.zeros((0, 3))
        )
        cal = self.candidates.calibration
        if "candidates" in cal and len(probs):
            probs = cal["candidates"].transform(probs)
        timings["classifier"] = time.perf_counter() - t
        t = time.perf_counter()
        findings = study_findings(sc.candidates, probs, sc.slices, self.candidates.findings)
        for name in ("p_any_nodule", "p_malignant"):
            if name in cal:
                # Platt scaling fitted on held-out training studies
                raw = findings.scores[name]
                findings.scores[f"{name}.uncalibrated"] = raw
                findings.scores[name] = float(cal[name].transform(np.array([raw]))[0])
        timings["findings"] = time.perf_counter() - t
        self._domain = _domain_record(self.candidates.domain, sc.descriptor)
        return findings, sc.candidates, timings

    def _candidate_result(
        self,
        resampled: ResampledVolume,
        findings: StudyFindings,
        config: PredictConfig,
        timings: dict[str, float],
    ) -> dict[str, Any]:
        assert self.candidates is not None
        z = np.asarray(resampled.z_positions, dtype=np.float64)
        probs = findings.slice_probs
        slices = [
            {
                "index": i,
                "z_mm": round(float(z[i]), 3),
                "p_non_nodule": round(float(probs[i, 0]), 5),
                "p_benign": round(float(probs[i, 1]), 5),
                "p_malignant": round(float(probs[i, 2]), 5),
                "reason": str(findings.slice_reason[i]) or None,
                "sop_instance_uid": resampled.nearest_sop_instance_uid(i),
                "instance_number": resampled.nearest_instance_number(i),
            }
            for i in range(resampled.n_slices)
        ]
        cands = []
        for f in findings.findings.to_dict(orient="records"):
            k = int(f["slice_index"])
            r = float(f["radius_mm"])
            cands.append(
                {
                    "id": int(f["rank"]),
                    "slice_index": k,
                    "z_mm": round(float(f["z_mm"]), 3),
                    "z_min": round(float(f["z_mm"]) - r, 3),
                    "z_max": round(float(f["z_mm"]) + r, 3),
                    "peak_index": k,
                    "peak_z": round(float(f["z_mm"]), 3),
                    "row": round(float(f["row"]), 1),
                    "column": round(float(f["col"]), 1),
                    "x_mm": round(float(f["x_mm"]), 2),
                    "y_mm": round(float(f["y_mm"]), 2),
                    "radius_mm": round(r, 2),
                    "p_nodule": round(float(f["p_nodule"]), 5),
                    "p_malignant": round(float(f["p_malignant"]), 5),
                    "p_benign": round(float(f["p_benign"]), 5),
                    "max_p_malignant": round(float(f["p_malignant"]), 5),
                    "mean_p_malignant": round(float(f["p_malignant"]), 5),
                    "max_p_benign": round(float(f["p_benign"]), 5),
                    "detector_score": round(float(f["detector_score"]), 5),
                    "peak_sop_instance_uid": resampled.nearest_sop_instance_uid(k),
                    "instance_number": resampled.nearest_instance_number(k),
                }
            )
        recs = [
            {
                "rank": c["id"],
                "slice_index": c["slice_index"],
                "z_mm": c["z_mm"],
                "candidate": c["id"],
                "row": c["row"],
                "column": c["column"],
                "x_mm": c["x_mm"],
                "y_mm": c["y_mm"],
                "radius_mm": c["radius_mm"],
                "p_nodule": c["p_nodule"],
                "p_malignant": c["p_malignant"],
                "p_benign": c["p_benign"],
                "sop_instance_uid": c["peak_sop_instance_uid"],
                "instance_number": c["instance_number"],
            }
            for c in cands[: config.top_k]
        ]
        b = self.candidates
        return {
            "schema": RESULT_SCHEMA,
            "study": {
                **_study_record(resampled),
                "n_lung_slices": int(sum(1 for r in findings.slice_reason if not r)),
            },
            "scores": {
                "p_any_nodule": round(float(findings.scores["p_any_nodule"]), 5),
                "p_malignant": round(float(findings.scores["p_malignant"]), 5),
                "method": b.findings.aggregator,
                "calibration": "Platt on held-out training studies"
                if "p_any_nodule.uncalibrated" in findings.scores
                else None,
                "p_any_nodule_uncalibrated": findings.scores.get("p_any_nodule.uncalibrated"),
                # False when the guard fires: the numbers are reported, not trusted
                "calibrated_for_input": self._domain.get("in_domain") is not False,
            },
            "domain": self._domain,
            "candidates": cands,
            "recommendations": recs,
            "slices": slices,
            "model": {
                "bundle": str(b.path),
                "kind": "candidates",
                "backbone": self.feature_config.backbone,
                "weights_id": self.runner.backbone.weights_id,
                "layers": list(self.feature_config.resolved_layers),
                "inputs": config_dict(b.config.patches),
                "head": b.manifest.get("classifier", {}).get("params"),
                "label_rule": b.label_rule,
                "aggregate": config_dict(b.findings),
                "detector": config_dict(b.config.detector),
            },
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
            "provenance": provenance(config),
        }

    def _candidate_thumbnails(
        self, prediction: SeriesPrediction
    ) -> tuple[list[tuple[bytes, bytes]], bytes]:
        from lungslice.report.figures import finding_png, z_profile_png

        rs = prediction.resampled
        recs = prediction.result["recommendations"]
        thumbs = []
        crop_mm = 48.0
        for r in recs:
            hu = rs.hu[int(r["slice_index"])]
            rad_px = float(r["radius_mm"]) / float(rs.spacing[1])
            thumbs.append(
                (
                    finding_png(hu, r["row"], r["column"], rad_px),
                    finding_png(
                        hu,
                        r["row"],
                        r["column"],
                        rad_px,
                        crop_px=max(16, round(crop_mm / float(rs.spacing[1]))),
                    ),
                )
            )
        probs = (
            prediction.study.slice_probs if isinstance(prediction.study, StudyFindings) else None
        )
        assert probs is not None
        plot = z_profile_png(
            np.asarray(rs.z_positions),
            probs[:, 2],
            probs[:, 1],
            prediction.result["candidates"][: max(len(recs), 10)],
            [r["z_mm"] for r in recs],
        )
        return thumbs, plot

    # -- a whole study ----------------------------------------------------------------
    def predict_study(
        self,
        study_dir: str | Path,
        out_dir: str | Path | None = None,
        config: PredictConfig = PredictConfig(),
        progress: ProgressCallback | None = None,
    ) -> list[SeriesPrediction]:
        """Predict every CT series of ``study_dir`` (or ``config.series_uid``)."""
        t0 = time.perf_counter()
        index = index_tree(study_dir, workers=1, config=config.load)
        t_index = time.perf_counter() - t0
        ct = index.ct_series()
        ct = ct[ct["modality"] == "CT"] if "modality" in ct else ct
        if config.series_uid is not None:
            ct = ct[ct["series_uid"] == config.series_uid]
            if ct.empty:
                raise NoCTSeriesError(
                    f"{study_dir}: no loadable CT series with SeriesInstanceUID "
                    f"{config.series_uid}; found {describe_contents(index)}. Fix: run "
                    "`lungslice index` on the folder to list its series."
                )
        if ct.empty:
            rejected = index.series[index.series["status"] != "ok"]
            why = "; ".join(f"{r.series_uid}: {r.reason}" for r in rejected.itertuples())
            raise NoCTSeriesError(
                f"{study_dir}: no CT series to predict on; found {describe_contents(index)}"
                + (f" (rejected: {why})" if why else "")
                + ". Fix: point predict at a folder holding a CT series."
            )
        files = index.files[index.files["status"] == "used"]
        files_by_sop = {
            str(u): Path(p) for u, p in zip(files["sop_instance_uid"], files["path"], strict=True)
        }
        results = []
        series = list(ct["series_uid"])
        run = {
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        for n, uid in enumerate(series):
            report(progress, n, len(series), f"series {n + 1}/{len(series)}")
            timings = {"index": t_index / len(series)}
            t = time.perf_counter()
            volume = load_series(index, series_uid=uid, config=index.config)
            timings["load"] = time.perf_counter() - t
            t = time.perf_counter()
            rs = resample(volume, slice_spacing=self.feature_config.slice_spacing)
            timings["resample"] = time.perf_counter() - t
            study: StudyResult | StudyFindings
            if self.candidates is not None:
                study, _, more = self.predict_candidates(rs)
                timings.update(more)
                probs = study.slice_probs
                result = self._candidate_result(rs, study, config, timings)
            else:
                probs, study, more = self.predict_volume(rs, config)
                timings.update(more)
                result = self._result(rs, probs, study, config, timings)
            pred = SeriesPrediction(result=result, probabilities=probs, study=study, resampled=rs)
            result["run"] = {
                **run,
                "study_uid": volume.study_uid,
                "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            }
            if out_dir is not None:
                target = Path(out_dir) if len(series) == 1 else Path(out_dir) / uid
                # written under a temporary name and swapped in whole; a run that fails
                # leaves the previous output untouched, and a concurrent run is refused
                with staged_output(target, run_id=volume.study_uid) as tmp:
                    written = self.write_outputs(pred, tmp, files_by_sop, config)
                pred.outputs.update({k: target / v.name for k, v in written.items()})
            log.info(
                "series %s: %d slices, p(malignant) %.3f, %d candidates",
                uid,
                rs.n_slices,
                result["scores"]["p_malignant"],
                len(result["candidates"]),
            )
            results.append(pred)
        report(progress, len(series), len(series), "done")
        return results


def predict(
    study_dir: str | Path,
    model: str | Path | ModelBundle,
    *,
    out_dir: str | Path | None = None,
    config: PredictConfig = PredictConfig(),
    progress: ProgressCallback | None = None,
) -> list[dict[str, Any]]:
    """Predict on a study and return one ``result.json`` record per CT series.

    Parameters
    ----------
    study_dir : str or Path
        Folder holding the study's DICOM files (any layout).
    model : str, Path or ModelBundle
        Model bundle directory.
    out_dir : str or Path, optional
        Where to write ``result.json``, ``report.html`` and ``key_images.dcm``;
        None writes nothing.
    config : PredictConfig
        Series selection, number of recommendations, privacy and output options.
    progress : ProgressCallback, optional
        Called per series.

    Returns
    -------
    list of dict
        The same records ``result.json`` holds (``docs/result-schema.md``).
    """
    predictor = Predictor(model)
    return [p.result for p in predictor.predict_study(study_dir, out_dir, config, progress)]


def results_table(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per series: identity, study scores, candidates, the top slice."""
    rows = []
    for r in results:
        top = r["recommendations"][0] if r["recommendations"] else {}
        rows.append(
            {
                "patient_id": r["study"]["patient_id"],
                "series_uid": r["study"]["series_uid"],
                "p_malignant": r["scores"]["p_malignant"],
                "p_any_nodule": r["scores"]["p_any_nodule"],
                "candidates": len(r["candidates"]),
                "top_z_mm": top.get("z_mm"),
                "top_instance_number": top.get("instance_number"),
            }
        )
    return pd.DataFrame(rows)
