"""Predict on a new study: slice probabilities, findings, recommendations.

The stages, each a function or method:

- :func:`find_ct_series` indexes a study folder and picks its CT series;
- :class:`Predictor` holds one model bundle (whole-slice or candidate) and its
  backbone and turns a resampled series into a typed
  :class:`lungslice.study.StudyPrediction` (inference only: it writes nothing);
- :func:`predict_series` loads and resamples one series and predicts on it;
- :func:`lungslice.report.write_all` writes every output of a prediction
  (``result.json``, ``report.html``, ``key_images.dcm``, ``findings_sr.dcm``,
  ``summary_sc.dcm``).

:func:`predict_study` (and :meth:`Predictor.predict_study`) chains them for
every CT series of a folder: a study with one CT series writes into
``out_dir``, with several into ``out_dir/<SeriesInstanceUID>/``. No
PatientName or BirthDate is written anywhere unless asked for
(``keep_patient_name``, DICOM outputs only).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
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
from lungslice.dicom.resample import ResampledVolume, resample
from lungslice.dicom.volume import load_series
from lungslice.errors import BundleMismatchError, ConfigError, NoCTSeriesError
from lungslice.features.config import FeatureConfig
from lungslice.features.extract import bundle_runner, extract_volume, whole_slice_descriptor
from lungslice.features.inputs import make_inputs
from lungslice.features.runtime import FeatureRunner
from lungslice.model.aggregate import StudyResult
from lungslice.model.bundle import FORMAT as WHOLE_SLICE_FORMAT
from lungslice.model.bundle import (
    ModelBundle,
    compare_feature_configs,
    load_bundle,
    read_manifest,
)
from lungslice.model.findings import StudyFindings
from lungslice.outputs import staged_output
from lungslice.progress import ProgressCallback, report
from lungslice.provenance import config_dict, provenance
from lungslice.report.result_json import RESULT_SCHEMA, result_record
from lungslice.study import (
    DomainVerdict,
    Finding,
    ModelInfo,
    Recommendation,
    Scores,
    SeriesInfo,
    SliceScores,
    StudyPrediction,
    model_id,
)

if TYPE_CHECKING:
    from lungslice.model.candidate_bundle import CandidateBundle

__all__ = [
    "RESULT_SCHEMA",
    "CTSeries",
    "PredictConfig",
    "Predictor",
    "SeriesPrediction",
    "find_ct_series",
    "predict",
    "predict_series",
    "predict_study",
    "results_table",
]

log = logging.getLogger(__name__)


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
        Copy PatientName/BirthDate/Sex into the DICOM outputs (off by default).
    write_report, write_key_images, write_findings_sr, write_summary : bool
        Which files to write besides ``result.json``: ``report.html``,
        ``key_images.dcm``, ``findings_sr.dcm``, ``summary_sc.dcm``.
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
    write_findings_sr: bool = True
    write_summary: bool = True
    heatmaps: bool = True
    load: LoadConfig = field(default_factory=LoadConfig)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"PredictConfig.top_k: expected >= 1, got {self.top_k}")


@dataclass(frozen=True, eq=False)
class SeriesPrediction:
    """The prediction for one CT series and what was written for it.

    Attributes
    ----------
    prediction : StudyPrediction
        The typed prediction.
    result : dict
        The ``result.json`` record (with the writers' timings when written).
    outputs : dict
        Written files by kind (``result``, ``report``, ``key_images``,
        ``findings_sr``, ``summary_sc``).
    """

    prediction: StudyPrediction
    result: dict[str, Any]
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def resampled(self) -> ResampledVolume:
        """The 1 mm volume the slice probabilities belong to."""
        assert self.prediction.volume is not None
        return self.prediction.volume

    @property
    def probabilities(self) -> np.ndarray:
        """``(n, 3)`` slice probabilities (non-nodule, benign, malignant)."""
        return self.prediction.slices.probs


@dataclass(frozen=True, eq=False)
class CTSeries:
    """The CT series of a study folder that predict runs on.

    Attributes
    ----------
    index : DicomIndex
        The folder's index (every file accounted for).
    series_uids : tuple of str
        The CT series to predict on, in index order.
    files_by_sop : dict
        SOPInstanceUID -> file of every image the index uses.
    index_s : float
        Seconds the indexing took.
    """

    index: DicomIndex
    series_uids: tuple[str, ...]
    files_by_sop: dict[str, Path]
    index_s: float = 0.0

    def files_of(self, series_uid: str) -> dict[str, Path]:
        """SOPInstanceUID -> file of one series' images."""
        files = self.index.files
        rows = files[(files["status"] == "used") & (files["series_uid"] == series_uid)]
        return {
            str(u): Path(p) for u, p in zip(rows["sop_instance_uid"], rows["path"], strict=True)
        }


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


def find_ct_series(
    study_dir: str | Path, load: LoadConfig = LoadConfig(), series_uid: str | None = None
) -> CTSeries:
    """Index ``study_dir`` and choose the CT series to predict on.

    Parameters
    ----------
    study_dir : str or Path
        Folder holding the study's DICOM files (any layout).
    load : LoadConfig
        Ingestion checks the index applies.
    series_uid : str, optional
        Only this SeriesInstanceUID.

    Raises
    ------
    NoCTSeriesError
        If the folder holds no loadable CT series (or not ``series_uid``); the
        message lists what it holds and why series were rejected.
    """
    t0 = time.perf_counter()
    index = index_tree(study_dir, workers=1, config=load)
    index_s = time.perf_counter() - t0
    ct = index.ct_series()
    ct = ct[ct["modality"] == "CT"] if "modality" in ct else ct
    if series_uid is not None:
        ct = ct[ct["series_uid"] == series_uid]
        if ct.empty:
            raise NoCTSeriesError(
                f"{study_dir}: no loadable CT series with SeriesInstanceUID "
                f"{series_uid}; found {describe_contents(index)}. Fix: run "
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
    return CTSeries(index, tuple(str(u) for u in ct["series_uid"]), files_by_sop, index_s)


def _feature_config(bundle: ModelBundle) -> FeatureConfig:
    # load_bundle rebuilt it with FeatureConfig.from_dict (model.json 'features' 'config')
    if bundle.feature_config is None:
        raise BundleMismatchError(
            f"model bundle {bundle.path}: model.json 'features' holds no feature settings "
            "('config'), so features cannot be made for it. Fix: train the bundle on a feature "
            "cache written by `lungslice extract`."
        )
    return bundle.feature_config


def _series_info(resampled: ResampledVolume, n_lung_slices: int | None = None) -> SeriesInfo:
    src = resampled.source
    return SeriesInfo(
        patient_id=src.patient_id,
        study_uid=src.study_uid,
        series_uid=src.series_uid,
        n_original_slices=src.n_slices,
        n_resampled_slices=resampled.n_slices,
        slice_spacing_mm=float(resampled.spacing[0]),
        pixel_spacing_mm=(float(resampled.spacing[1]), float(resampled.spacing[2])),
        n_lung_slices=n_lung_slices,
    )


def _slice_scores(
    resampled: ResampledVolume,
    probs: np.ndarray,
    *,
    reason: tuple[str | None, ...] | None = None,
    smoothed: np.ndarray | None = None,
) -> SliceScores:
    n = resampled.n_slices
    return SliceScores(
        z_mm=np.asarray(resampled.z_positions, dtype=np.float64),
        probs=np.asarray(probs, dtype=np.float64),
        sop_instance_uids=tuple(resampled.nearest_sop_instance_uid(i) for i in range(n)),
        instance_numbers=tuple(resampled.nearest_instance_number(i) for i in range(n)),
        reason=reason,
        smoothed=smoothed,
    )


def _domain_verdict(domain: Any, descriptor: np.ndarray) -> DomainVerdict:
    """The domain guard's verdict (score and threshold rounded as result.json shows them)."""
    if domain is None:
        return DomainVerdict(
            in_domain=None,
            score=None,
            threshold=None,
            method=None,
            message="the model bundle has no domain guard; scores unchecked for this input",
        )
    rec = dict(domain.assess(descriptor))
    score = rec.get("score")
    inside = rec.get("in_domain")
    return DomainVerdict(
        in_domain=None if inside is None else bool(inside),
        score=None if score is None else round(float(score), 4),
        threshold=round(float(rec["threshold"]), 4),
        method=rec.get("method"),
        message=rec.get("message"),
        furthest=tuple(rec.get("furthest") or ()),
    )


def _proba3(est: Any, X: np.ndarray) -> np.ndarray:
    from lungslice.model.candidate_eval import _proba3 as proba3

    return proba3(est, X)


def _is_candidate_bundle(path: str | Path) -> bool:
    # A whole-slice bundle is known by its own manifest format, without importing the
    # candidate modules (the domain guard's scikit-learn: ~1-3 s of predict's start-up).
    if read_manifest(path).get("format") == WHOLE_SLICE_FORMAT:
        return False
    from lungslice.model.candidate_bundle import is_candidate_bundle

    return is_candidate_bundle(path)


class Predictor:
    """A model bundle and its backbone, loaded once and used on many series.

    Parameters
    ----------
    model : str, Path or ModelBundle
        A bundle directory written by ``lungslice train`` or ``lungslice
        candidates train`` (or a loaded whole-slice bundle).

    Attributes
    ----------
    model_id : str
        The bundle's stable id (:func:`lungslice.study.model_id`).
    """

    def __init__(self, model: str | Path | ModelBundle) -> None:
        self.candidates: CandidateBundle | None = None
        self.runner: FeatureRunner
        if not isinstance(model, ModelBundle) and _is_candidate_bundle(model):
            from lungslice.model.candidate_bundle import load_candidate_bundle

            self.candidates = load_candidate_bundle(model)
            self.model_id = model_id(self.candidates.path)
            self.feature_config = self.candidates.config.features
            # the bundle's TorchScript extractor when it has one: no timm import (~6 s)
            self.runner = bundle_runner(
                self.feature_config,
                self.candidates.path,
                self.candidates.manifest.get("frozen_backbone"),
            )
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
        self.model_id = model_id(self.bundle.path)
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
        self.runner = bundle_runner(
            self.feature_config, self.bundle.path, self.bundle.manifest.get("frozen_backbone")
        )
        width = self.runner.backbone.feature_dim
        if width != self.bundle.head.n_features:
            raise BundleMismatchError(
                f"model bundle {self.bundle.path}: its head expects {self.bundle.head.n_features} "
                f"features but backbone {self.feature_config.backbone} with layers "
                f"{','.join(self.feature_config.resolved_layers)} gives {width}. Fix: use the "
                "bundle with the backbone settings it was trained on (model.json 'features')."
            )

    # -- the model's identity ---------------------------------------------------------
    def model_info(self) -> ModelInfo:
        """Bundle path, id, kind, backbone, weights and settings of this predictor."""
        layers = tuple(self.feature_config.resolved_layers)
        weights_id = self.runner.backbone.weights_id
        if self.candidates is not None:
            b = self.candidates
            return ModelInfo(
                bundle=str(b.path),
                model_id=self.model_id,
                kind="candidates",
                backbone=self.feature_config.backbone,
                weights_id=weights_id,
                layers=layers,
                inputs=config_dict(b.config.patches),
                head=b.manifest.get("classifier", {}).get("params"),
                label_rule=b.label_rule,
                aggregate=config_dict(b.findings),
                detector=config_dict(b.config.detector),
            )
        return ModelInfo(
            bundle=str(self.bundle.path),
            model_id=self.model_id,
            kind="whole-slice",
            backbone=self.feature_config.backbone,
            weights_id=weights_id,
            layers=layers,
            inputs=config_dict(self.feature_config.inputs),
            head=self.bundle.manifest.get("head", {}).get("kind"),
            label_rule=self.bundle.label_rule.to_dict(),
            aggregate=config_dict(self.bundle.aggregate_config),
        )

    # -- inference --------------------------------------------------------------------
    def predict(
        self,
        resampled: ResampledVolume,
        config: PredictConfig = PredictConfig(),
        *,
        heatmaps: bool | None = None,
        source_files: dict[str, Path] | None = None,
        timings: dict[str, float] | None = None,
        run: dict[str, Any] | None = None,
    ) -> StudyPrediction:
        """The prediction for one resampled series.

        Parameters
        ----------
        resampled : ResampledVolume
            The series on the bundle's slice spacing.
        config : PredictConfig
            ``top_k`` and the settings recorded in the provenance.
        heatmaps : bool, optional
            Compute class activation maps for the recommendations (whole-slice
            bundles); default ``config.heatmaps and config.write_report``.
        source_files : dict, optional
            SOPInstanceUID -> file of the source images (for the DICOM writers).
        timings : dict, optional
            Seconds of the stages before inference (index, load, resample).
        run : dict, optional
            Process and time record of the run.

        Raises
        ------
        NotChestError
            When a candidate bundle finds no lung field on any slice.
        """
        timings = dict(timings or {})
        if self.candidates is not None:
            body = self._predict_candidates(resampled, config, timings)
        else:
            want = config.heatmaps and config.write_report if heatmaps is None else heatmaps
            body = self._predict_whole_slice(resampled, config, timings, want)
        return StudyPrediction(
            **body,
            model=self.model_info(),
            provenance=provenance(config),
            timings=timings,
            run=dict(run or {}),
            volume=resampled,
            source_files=dict(source_files or {}),
        )

    def predict_volume(
        self, resampled: ResampledVolume, config: PredictConfig = PredictConfig()
    ) -> tuple[np.ndarray, StudyResult, dict[str, float]]:
        """Whole-slice bundles: probabilities and aggregation of one volume, with timings."""
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

    def _predict_whole_slice(
        self,
        rs: ResampledVolume,
        config: PredictConfig,
        timings: dict[str, float],
        want_heatmaps: bool,
    ) -> dict[str, Any]:
        probs, study, more = self.predict_volume(rs, config)
        timings.update(more)
        domain = self.whole_slice_domain(rs, timings)
        z = np.asarray(rs.z_positions, dtype=np.float64)
        sm = study.smoothed
        candidate_of = np.full(rs.n_slices, -1, dtype=np.int64)
        findings = []
        for k, c in enumerate(study.candidates, start=1):
            candidate_of[c.start : c.end + 1] = k
            findings.append(
                Finding(
                    id=k,
                    slice_index=int(c.peak),
                    z_mm=float(c.peak_z),
                    z_min=float(min(c.z_start, c.z_end)),
                    z_max=float(max(c.z_start, c.z_end)),
                    p_nodule=float(c.p_nodule),
                    p_benign=float(sm[c.peak, 1]),
                    p_malignant=float(sm[c.peak, 2]),
                    max_p_malignant=float(c.max_p_malignant),
                    mean_p_malignant=float(c.mean_p_malignant),
                    max_p_benign=float(c.max_p_benign),
                    mean_p_benign=float(c.mean_p_benign),
                    sop_instance_uid=rs.nearest_sop_instance_uid(c.peak),
                    instance_number=rs.nearest_instance_number(c.peak),
                    n_slices=int(c.n_slices),
                )
            )
        recs = []
        for rank, i in enumerate(study.recommendations(config.top_k), start=1):
            cand = int(candidate_of[i])
            recs.append(
                Recommendation(
                    rank=rank,
                    slice_index=int(i),
                    z_mm=float(z[i]),
                    finding=cand if cand > 0 else None,
                    p_malignant=float(sm[i, 2]),
                    p_benign=float(sm[i, 1]),
                    sop_instance_uid=rs.nearest_sop_instance_uid(int(i)),
                    instance_number=rs.nearest_instance_number(int(i)),
                )
            )
        maps = None
        if want_heatmaps:
            t = time.perf_counter()
            maps = self.heatmaps(rs, np.array([r.slice_index for r in recs], dtype=np.int64))
            timings["heatmaps"] = time.perf_counter() - t
        return {
            "series": _series_info(rs),
            "scores": Scores(
                p_any_nodule=float(study.p_any_nodule),
                p_malignant=float(study.p_malignant),
                method=str(study.config.method),
                # whole-slice scores are not calibrated; False says the guard fired
                calibrated_for_input=False if domain.fired else None,
            ),
            "domain": domain,
            "findings": tuple(findings),
            "recommendations": tuple(recs),
            "slices": _slice_scores(rs, probs, smoothed=np.asarray(sm, dtype=np.float64)),
            "heatmaps": maps,
        }

    def whole_slice_domain(
        self, resampled: ResampledVolume, timings: dict[str, float] | None = None
    ) -> DomainVerdict:
        """Whole-slice bundles: the domain guard's verdict on one volume.

        The study statistics are measured on the full-resolution volume
        (:func:`whole_slice_descriptor`), as extraction measured the training
        series. A bundle without a guard gets the verdict candidate
        bundles without one get ("no domain guard"), and nothing is measured.
        """
        domain = self.bundle.domain
        if domain is None:
            return _domain_verdict(None, np.zeros(0))
        t = time.perf_counter()
        descriptor = whole_slice_descriptor(resampled)
        if timings is not None:
            timings["descriptor"] = time.perf_counter() - t
        return _domain_verdict(domain, descriptor)

    def predict_candidates(
        self, resampled: ResampledVolume
    ) -> tuple[StudyFindings, pd.DataFrame, DomainVerdict, dict[str, float]]:
        """Candidate bundles: findings of one volume, its candidates, domain verdict, timings.

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
        domain = _domain_verdict(self.candidates.domain, sc.descriptor)
        return findings, sc.candidates, domain, timings

    def _predict_candidates(
        self, rs: ResampledVolume, config: PredictConfig, timings: dict[str, float]
    ) -> dict[str, Any]:
        assert self.candidates is not None
        found, _, domain, more = self.predict_candidates(rs)
        timings.update(more)
        findings = []
        for f in found.findings.to_dict(orient="records"):
            k = int(f["slice_index"])
            r = float(f["radius_mm"])
            z = float(f["z_mm"])
            p_mal, p_ben = float(f["p_malignant"]), float(f["p_benign"])
            findings.append(
                Finding(
                    id=int(f["rank"]),
                    slice_index=k,
                    z_mm=z,
                    z_min=z - r,
                    z_max=z + r,
                    p_nodule=float(f["p_nodule"]),
                    p_benign=p_ben,
                    p_malignant=p_mal,
                    max_p_malignant=p_mal,
                    mean_p_malignant=p_mal,
                    max_p_benign=p_ben,
                    mean_p_benign=p_ben,
                    sop_instance_uid=rs.nearest_sop_instance_uid(k),
                    instance_number=rs.nearest_instance_number(k),
                    row=float(f["row"]),
                    column=float(f["col"]),
                    x_mm=float(f["x_mm"]),
                    y_mm=float(f["y_mm"]),
                    radius_mm=r,
                    detector_score=float(f["detector_score"]),
                )
            )
        recs = tuple(Recommendation.of_finding(f) for f in findings[: config.top_k])
        raw = found.scores
        calibrated = "p_any_nodule.uncalibrated" in raw
        reason = tuple(str(r) or None for r in found.slice_reason)
        return {
            "series": _series_info(rs, sum(1 for r in found.slice_reason if not r)),
            "scores": Scores(
                p_any_nodule=float(raw["p_any_nodule"]),
                p_malignant=float(raw["p_malignant"]),
                method=str(self.candidates.findings.aggregator),
                calibration="Platt on held-out training studies" if calibrated else None,
                p_any_nodule_uncalibrated=raw.get("p_any_nodule.uncalibrated"),
                p_malignant_uncalibrated=raw.get("p_malignant.uncalibrated"),
                # False when the guard fires: the numbers are reported, not trusted
                calibrated_for_input=domain.in_domain is not False,
            ),
            "domain": domain,
            "findings": tuple(findings),
            "recommendations": recs,
            "slices": _slice_scores(rs, found.slice_probs, reason=reason),
            "heatmaps": None,
        }

    # -- a whole study (kept for callers of the method) ---------------------------------
    def predict_study(
        self,
        study_dir: str | Path,
        out_dir: str | Path | None = None,
        config: PredictConfig = PredictConfig(),
        progress: ProgressCallback | None = None,
    ) -> list[SeriesPrediction]:
        """Predict every CT series of ``study_dir``; see :func:`predict_study`."""
        return predict_study(self, study_dir, out_dir, config, progress)


def predict_series(
    predictor: Predictor,
    found: CTSeries,
    series_uid: str,
    config: PredictConfig = PredictConfig(),
    *,
    heatmaps: bool | None = None,
    run: dict[str, Any] | None = None,
) -> StudyPrediction:
    """Load, resample and predict one CT series of a study folder.

    Parameters
    ----------
    predictor : Predictor
        The loaded model.
    found : CTSeries
        What :func:`find_ct_series` chose.
    series_uid : str
        One of ``found.series_uids``.
    config : PredictConfig
        Settings (``load``, ``top_k``, ...).
    heatmaps : bool, optional
        See :meth:`Predictor.predict`.
    run : dict, optional
        Process record of the run; ``study_uid`` and ``finished`` are added.
    """
    timings = {"index": found.index_s / max(len(found.series_uids), 1)}
    t = time.perf_counter()
    volume = load_series(found.index, series_uid=series_uid, config=found.index.config)
    timings["load"] = time.perf_counter() - t
    t = time.perf_counter()
    rs = resample(volume, slice_spacing=predictor.feature_config.slice_spacing)
    timings["resample"] = time.perf_counter() - t
    pred = predictor.predict(
        rs,
        config,
        heatmaps=heatmaps,
        source_files=found.files_of(series_uid),
        timings=timings,
        run=run,
    )
    if run is None:
        return pred
    finished = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return dataclasses.replace(
        pred, run={**run, "study_uid": volume.study_uid, "finished": finished}
    )


def predict_study(
    predictor: Predictor,
    study_dir: str | Path,
    out_dir: str | Path | None = None,
    config: PredictConfig = PredictConfig(),
    progress: ProgressCallback | None = None,
) -> list[SeriesPrediction]:
    """Predict every CT series of ``study_dir`` (or ``config.series_uid``), writing outputs.

    Each series' outputs are written by :func:`lungslice.report.write_outputs`
    into a temporary folder swapped in whole: a run that fails leaves the
    previous output untouched, and a concurrent run is refused.
    """
    from lungslice.report.writers import OutputOptions, write_outputs

    found = find_ct_series(study_dir, config.load, config.series_uid)
    options = OutputOptions.from_config(config)
    results = []
    series = list(found.series_uids)
    run = {
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    for n, uid in enumerate(series):
        report(progress, n, len(series), f"series {n + 1}/{len(series)}")
        pred = predict_series(
            predictor,
            found,
            uid,
            config,
            heatmaps=out_dir is not None and config.write_report and config.heatmaps,
            run=dict(run),
        )
        outputs: dict[str, Path] = {}
        if out_dir is not None:
            target = Path(out_dir) if len(series) == 1 else Path(out_dir) / uid
            with staged_output(target, run_id=pred.series.study_uid) as tmp:
                written = write_outputs(pred, tmp, options)
            outputs = {k: target / v.name for k, v in written.paths.items()}
            record = written.record
        else:
            record = result_record(pred)
        log.info(
            "series %s: %d slices, p(malignant) %.3f, %d findings",
            uid,
            len(pred.slices),
            pred.scores.p_malignant,
            len(pred.findings),
        )
        results.append(SeriesPrediction(prediction=pred, result=record, outputs=outputs))
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
        Where to write ``result.json``, ``report.html`` and the DICOM outputs;
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
    return [p.result for p in predict_study(predictor, study_dir, out_dir, config, progress)]


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
