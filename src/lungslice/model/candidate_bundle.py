"""The candidate model bundle: what ``lungslice train`` writes for the candidate path.

A folder a user can open:

``model.json``
    ``"kind": "candidates"``, the candidate settings (lung field, detector,
    patches, backbone with its weights checksum), the classifier's
    hyperparameters and how they were chosen, the findings settings, the label
    rule, the cross-validated figures, the checksum of every file, provenance.
``classifier.npz``
    The fitted classifier's arrays (scaler, coefficients), no pickle.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lungslice.errors import BundleMismatchError
from lungslice.features.candidates import CandidateConfig
from lungslice.model.findings import FindingsConfig
from lungslice.provenance import config_dict, file_sha256, provenance

__all__ = [
    "BUNDLE_KIND",
    "CandidateBundle",
    "is_candidate_bundle",
    "load_candidate_bundle",
    "save_candidate_bundle",
]

log = logging.getLogger(__name__)

BUNDLE_KIND = "candidates"
_CLASSIFIER_FILE = "classifier.npz"
_DOMAIN_FILE = "domain.npz"


@dataclass(frozen=True, eq=False)
class CandidateBundle:
    """A loaded candidate bundle.

    Attributes
    ----------
    path : Path
    config : CandidateConfig
        How candidates and their features are made.
    classifier : CandidateClassifier
        The fitted candidate classifier.
    findings : FindingsConfig
        Slices, findings and study aggregation.
    manifest : dict
        ``model.json``.
    calibration : dict
        Fitted calibrators by name (``candidates``, ``p_any_nodule``,
        ``p_malignant``); empty when the bundle was trained without CV.
    domain : DomainModel or None
        The out-of-domain guard fitted on the training studies (None when the
        bundle has none: too few training studies, see ``model.json``).
    """

    path: Path
    config: CandidateConfig
    classifier: Any
    findings: FindingsConfig
    manifest: dict[str, Any]
    domain: Any = None
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def label_rule(self) -> dict[str, Any]:
        """The label rule the classifier was trained under."""
        return dict(self.manifest.get("label_rule", {}))


def _read_manifest(path: Path) -> dict[str, Any]:
    from lungslice.model.bundle import read_manifest

    return read_manifest(path)


def is_candidate_bundle(path: str | Path) -> bool:
    """True when ``path/model.json`` says ``"kind": "candidates"``."""
    return _read_manifest(Path(path)).get("kind") == BUNDLE_KIND


def save_candidate_bundle(
    out_dir: str | Path,
    *,
    config: CandidateConfig,
    classifier: Any,
    findings: FindingsConfig,
    label_rule: Any,
    weights_id: str,
    training: dict[str, Any],
    domain: Any = None,
    calibration: dict[str, Any] | None = None,
) -> Path:
    """Write a candidate bundle folder.

    Parameters
    ----------
    out_dir : str or Path
    config : CandidateConfig
    classifier : CandidateClassifier
        Fitted.
    findings : FindingsConfig
    label_rule : LabelRule
    weights_id : str
        SHA-256 of the backbone weights the features were made with.
    training : dict
        What to record about training: patients, counts, chosen hyperparameters,
        cross-validated figures.
    domain : DomainModel, optional
        The fitted out-of-domain guard.
    calibration : dict, optional
        Fitted calibrators (``Calibrator.to_dict``): ``candidates`` (temperature and class bias,
        on candidate probabilities), ``p_any_nodule`` and ``p_malignant``
        (Platt, on study scores).

    Returns
    -------
    Path
        ``model.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = classifier.to_arrays()
    np.savez(out / _CLASSIFIER_FILE, **arrays)
    files = {_CLASSIFIER_FILE: file_sha256(out / _CLASSIFIER_FILE)}
    if domain is not None:
        np.savez(out / _DOMAIN_FILE, **domain.to_arrays())
        files[_DOMAIN_FILE] = file_sha256(out / _DOMAIN_FILE)
    from lungslice.model.bundle import freeze_features

    # predict loads this with torch alone (no timm/torchvision imports: seconds per run)
    frozen = freeze_features(out, config.features, weights_id=weights_id)
    if frozen is not None:
        files[frozen["file"]] = frozen["sha256"]
    manifest = provenance(
        None,
        kind=BUNDLE_KIND,
        candidates=config.to_dict(),
        key=config.key,
        key_payload=config.key_payload(),
        weights_id=weights_id,
        classifier={"params": classifier.params(), "type": type(classifier).__name__},
        findings=config_dict(findings),
        label_rule=config_dict(label_rule),
        training=training,
        domain={"params": domain.params(), "summary": domain.to_dict()} if domain else None,
        calibration=calibration or {},
        frozen_backbone=frozen,
        files=files,
    )
    path = out / "model.json"
    path.write_text(json.dumps(manifest, indent=1, default=str, allow_nan=False) + "\n")
    return path


def load_candidate_bundle(path: str | Path) -> CandidateBundle:
    """Read a candidate bundle, checking its files' checksums.

    Raises
    ------
    BundleMismatchError
        When a file is missing, corrupt or altered.
    """
    from lungslice.model.candidate_head import CandidateClassifier

    p = Path(path)
    manifest = _read_manifest(p)
    if manifest.get("kind") != BUNDLE_KIND:
        raise BundleMismatchError(
            f"{p}: model.json kind is {manifest.get('kind')!r}, not 'candidates'."
        )
    for name, digest in manifest.get("files", {}).items():
        f = p / name
        if not f.is_file():
            raise BundleMismatchError(f"{p}: {name} is missing. Fix: copy the whole bundle folder.")
        if file_sha256(f) != digest:
            raise BundleMismatchError(
                f"{f}: checksum differs from model.json; the file was altered or damaged. "
                "Fix: copy the bundle again, or retrain it."
            )
    try:
        config = CandidateConfig.from_dict(manifest["candidates"])
        findings = FindingsConfig(**manifest.get("findings", {}))
        with np.load(p / _CLASSIFIER_FILE) as data:
            arrays = {k: data[k] for k in data.files}
        classifier = CandidateClassifier.from_arrays(manifest["classifier"]["params"], arrays)
        domain = None
        if manifest.get("domain"):
            from lungslice.model.domain import DomainModel

            with np.load(p / _DOMAIN_FILE) as data:
                domain_arrays = {k: data[k] for k in data.files}
            domain = DomainModel.from_arrays(domain_arrays, manifest["domain"]["params"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleMismatchError(
            f"model bundle {p}: cannot rebuild it from model.json ({exc}). Fix: retrain the "
            "bundle with this version of lungslice."
        ) from exc
    from lungslice.model.calibration import Calibrator

    calibration = {k: Calibrator.from_dict(v) for k, v in manifest.get("calibration", {}).items()}
    return CandidateBundle(
        path=p,
        config=config,
        classifier=classifier,
        findings=findings,
        manifest=manifest,
        domain=domain,
        calibration=calibration,
    )


@dataclass(frozen=True, eq=False)
class CandidateTrainResult:
    """What :func:`train_candidate_bundle` did.

    Attributes
    ----------
    path : Path
        The bundle's ``model.json``.
    figures : dict
        Cross-validated figures with bootstrap CIs (development patients).
    findings : FindingsConfig
        The findings settings stored (aggregator chosen by CV).
    params : dict
        The hyperparameters of the final classifier.
    """

    path: Path
    figures: dict[str, dict[str, float]]
    findings: FindingsConfig
    params: dict[str, Any]


#: Fewer training studies than this give no domain guard (its threshold needs held-out folds).
MIN_DOMAIN_STUDIES = 8


def fit_domain(cs: Any, *, seed: int = 0) -> tuple[Any, str]:
    """The out-of-domain guard fitted on the training studies' image statistics.

    Returns
    -------
    domain : DomainModel or None
        None with fewer than :data:`MIN_DOMAIN_STUDIES` studies.
    note : str
        What was fitted, or why not.
    """
    from lungslice.model.domain import fit_guard

    studies = cs.studies
    return fit_guard(
        list(studies["descriptor"]),
        studies["patient_id"].astype(str).to_numpy(),
        min_studies=MIN_DOMAIN_STUDIES,
        seed=seed,
    )


def fit_calibration(cs: Any, probs: np.ndarray, findings: FindingsConfig) -> dict[str, Any]:
    """Calibrators fitted on out-of-fold predictions, as ``Calibrator.to_dict`` records.

    Temperature with class bias of the candidate probabilities
    (:data:`~lungslice.model.calibration.CANDIDATE_CALIBRATOR`: it undoes the
    balanced class weights); Platt scaling of the study scores the findings
    give from the calibrated candidates.
    """
    from lungslice.model.calibration import CANDIDATE_CALIBRATOR, Calibrator
    from lungslice.model.candidate_eval import findings_tables

    y = cs.y
    keep = y >= 0
    temp = Calibrator(CANDIDATE_CALIBRATOR).fit(probs[keep], y[keep])
    out: dict[str, Any] = {"candidates": temp.to_dict()}
    studies = findings_tables(cs, temp.transform(probs), findings).studies
    for col, target in (("p_any_nodule", "has_any"), ("p_malignant", "has_malignant")):
        ys = studies[target].to_numpy(dtype=np.int64)
        if len(np.unique(ys)) == 2 and len(ys) >= 4:  # Platt needs both classes, a few studies
            platt = Calibrator("platt").fit(studies[col].to_numpy(dtype=np.float64), ys)
            out[col] = platt.to_dict()
    return out


def choose_finding_aggregator(figures: dict[str, dict[str, float]]) -> Literal["max", "noisy_or"]:
    """The aggregator with the best cross-validated study AUC (any nodule, then malignant)."""

    def key(method: str) -> tuple[float, float]:
        a = figures.get(f"study.roc_auc.any_nodule.{method}", {}).get("value")
        m = figures.get(f"study.roc_auc.malignant.{method}", {}).get("value")
        return (
            float(a) if a is not None and np.isfinite(a) else -1.0,
            float(m) if m is not None and np.isfinite(m) else -1.0,
        )

    return "max" if key("max") >= key("noisy_or") else "noisy_or"


def train_candidate_bundle(
    cs: Any,
    out_dir: str | Path,
    *,
    param_grid: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    n_splits: int = 4,
    n_boot: int = 200,
    seed: int = 0,
    findings: FindingsConfig = FindingsConfig(),
    progress: Any = None,
) -> CandidateTrainResult:
    """Cross-validate, choose the aggregator, fit on every patient, write the bundle.

    Parameters
    ----------
    cs : CandidateSet
        Labelled candidates (:func:`lungslice.model.candidate_eval.build_candidate_set`).
    out_dir : str or Path
        The bundle folder.
    param_grid : dict, optional
        Classifier hyperparameter grid (GridSearchCV over patient-grouped folds).
    n_splits, n_boot, seed
        Cross-validation folds (below 2: no cross-validation, no figures, the
        aggregator of ``findings`` is kept), bootstrap replicates, seed.
    findings : FindingsConfig
        Its aggregator is replaced by the one CV prefers.
    progress : ProgressCallback, optional

    Returns
    -------
    CandidateTrainResult
    """
    import dataclasses

    from lungslice.model.candidate_eval import (
        candidate_figures,
        cross_validate_candidates,
        findings_tables,
    )
    from lungslice.model.candidate_head import fit_candidate_classifier
    from lungslice.model.metrics import bootstrap, json_safe

    figures: dict[str, dict[str, float]] = {}
    calibration: dict[str, Any] = {}
    folds: list[list[str]] = []
    fold_params: list[dict[str, Any]] = []
    if n_splits >= 2:
        cv = cross_validate_candidates(
            cs, n_splits=n_splits, seed=seed, param_grid=param_grid, progress=progress
        )
        tables = findings_tables(cs, cv.probs, findings)
        figures = bootstrap(tables, n_boot=n_boot, seed=seed, figures=candidate_figures)
        findings = dataclasses.replace(findings, aggregator=choose_finding_aggregator(figures))
        folds, fold_params = [list(f) for f in cv.folds], cv.params
        calibration = fit_calibration(cs, cv.probs, findings)
    y = cs.y
    keep = y >= 0
    est, record = fit_candidate_classifier(
        X=cs.X[keep],
        y=y[keep],
        groups=cs.groups[keep],
        param_grid=param_grid,
        seed=seed,
        n_passthrough=cs.n_measurements,
    )
    domain, domain_note = fit_domain(cs, seed=seed)
    config = CandidateConfig.from_dict(cs.config.get("config", {}))
    path = save_candidate_bundle(
        out_dir,
        config=config,
        classifier=est,
        findings=findings,
        label_rule=cs.rule,
        weights_id=str(cs.config.get("weights_id", "")),
        domain=domain,
        calibration=calibration,
        training=json_safe(
            {
                "summary": cs.summary(),
                "patients": sorted(set(cs.groups.tolist())),
                "cv_folds": folds,
                "cv_params": fold_params,
                "search": record,
                "cv_figures": figures,
                "aggregator_chosen_by": "CV study ROC-AUC (any nodule, then malignant)",
                "domain": domain_note,
            }
        ),
    )
    return CandidateTrainResult(
        path=path, figures=figures, findings=findings, params=dict(record.get("best_params", {}))
    )
