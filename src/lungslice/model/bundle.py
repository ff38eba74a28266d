"""The model bundle: a directory a user can read, holding everything ``predict`` needs.

Layout::

    MODEL/
      model.json   manifest: head kind + hyperparameters (+ the HeadConfig it was
                   trained with), feature settings (the feature cache's config.json
                   record: FeatureConfig, weights checksum, layers), label rule,
                   aggregation settings and the fitted learned aggregator (if any),
                   training-set summary, CV metrics, library versions, and the
                   SHA-256 of each weight file
      head.npz     standardisation (mean, scale) and, for logistic heads, coef/intercept
      head.pt      MLP heads only: the torch state_dict (tensors only)
      domain.npz   the out-of-domain guard's fitted arrays (when the bundle has one;
                   its parameters, threshold and statistics are model.json's "domain")
      backbone.torchscript.pt
                   the feature extractor as the runner runs it, traced (TorchScript),
                   so that predict needs torch alone, not timm; its record (backbone,
                   layers, precision, weights checksum, preprocessing) is model.json's
                   "frozen_backbone" (lungslice.features.frozen)

Nothing is pickled: weights load with ``numpy.load(allow_pickle=False)``,
``torch.load(weights_only=True)`` and ``torch.jit.load`` (a TorchScript archive
holds a graph and tensors, no Python objects). :func:`load_bundle` gives every setting back
as its typed config (``from_dict`` of what ``to_dict`` wrote).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lungslice.errors import BundleMismatchError, ConfigError, CorruptFileError
from lungslice.features.config import FeatureConfig
from lungslice.lidc.labels import CLASSES, LabelRule
from lungslice.model.aggregate import AggregateConfig, LearnedAggregator, StudyResult, aggregate
from lungslice.model.heads import Head, HeadConfig, LogisticHead, MLPHead
from lungslice.provenance import config_dict, file_sha256, provenance

__all__ = [
    "FEATURE_IDENTITY_IGNORED",
    "ModelBundle",
    "compare_feature_configs",
    "feature_identity",
    "freeze_bundle",
    "freeze_features",
    "load_bundle",
    "read_manifest",
    "save_bundle",
]

log = logging.getLogger(__name__)

FORMAT = "lungslice-model"
FORMAT_VERSION = 1
_DOMAIN_FILE = "domain.npz"

#: Feature-config keys that describe where/when features were made, not what
#: they are; they may differ between the training features and new ones.
FEATURE_IDENTITY_IGNORED: frozenset[str] = frozenset(
    {
        "created",
        "versions",
        "python",
        "platform",
        "path",
        "work_dir",
        "cache_dir",
        "n_series",
        "n_slices",
        "device",
        "batch_size",
        "num_threads",
        "compile",
        "series",
        "key",
        "provenance",
        "runtime",
        "storage",
    }
)


def _as_dict(value: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_dict(value)
    if value is None:
        return {}
    if isinstance(value, dict):
        return config_dict(value)
    raise TypeError(f"expected a dataclass or dict, got {type(value).__name__}")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            if k in FEATURE_IDENTITY_IGNORED:
                continue
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def feature_identity(record: dict[str, Any]) -> dict[str, Any]:
    """The settings that change feature values, from a feature ``config.json`` record.

    That is its ``key_payload`` (backbone, weights checksum, layers, inputs,
    precision, spacing, storage dtype) when present; otherwise the record minus
    :data:`FEATURE_IDENTITY_IGNORED` keys.
    """
    record = config_dict(record)
    payload = record.get("key_payload")
    if isinstance(payload, dict):
        return payload
    return record


def compare_feature_configs(trained: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """Describe every feature setting that differs (empty when they match).

    Compares :func:`feature_identity` of both, leaf by leaf; timestamps, paths,
    batch size and other keys in :data:`FEATURE_IDENTITY_IGNORED` are not compared.
    """
    a = _flatten(feature_identity(trained))
    b = _flatten(feature_identity(given))
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if va != vb:
            diffs.append(f"{key}: bundle trained with {va!r}, features made with {vb!r}")
    return diffs


@dataclass(frozen=True, eq=False)
class ModelBundle:
    """A loaded model bundle: the fitted head and aggregator with their typed settings.

    Attributes
    ----------
    path : pathlib.Path
        The bundle directory.
    head : Head
        The slice classifier.
    feature_config : FeatureConfig or None
        Settings of the features it was trained on; None when the training
        features came without a ``FeatureConfig`` (arrays passed in directly).
    feature_record : dict
        The features' whole ``config.json`` record (key, ``key_payload`` with the
        weights checksum, backbone layers): what :meth:`check_features` compares.
    label_rule : LabelRule
        The label rule of its training labels.
    aggregate_config : AggregateConfig
        Study aggregation settings.
    learned_aggregator : LearnedAggregator or None
        The fitted weights when ``aggregate_config.method == "learned"``.
    head_config : HeadConfig or None
        How the head was trained (None in bundles written without it).
    manifest : dict
        The whole ``model.json``.
    domain : DomainModel or None
        The out-of-domain guard fitted on the training studies' acquisition
        statistics; None when the bundle has none (too few training studies, a
        feature cache without study descriptors, or a bundle written before the
        guard existed: ``model.json`` "training" "domain" says which).
    """

    path: Path
    head: Head
    feature_config: FeatureConfig | None
    feature_record: dict[str, Any]
    label_rule: LabelRule
    aggregate_config: AggregateConfig
    learned_aggregator: LearnedAggregator | None
    head_config: HeadConfig | None
    manifest: dict[str, Any]
    domain: Any = None

    def check_features(self, feature_config: Any) -> None:
        """Refuse features made with other backbone/layer/input settings.

        Parameters
        ----------
        feature_config : dict or dataclass
            The new features' ``config.json`` record (or ``{"key_payload": ...}``).

        Raises
        ------
        BundleMismatchError
            Naming each differing setting with the bundle's and the features' value.
        """
        diffs = compare_feature_configs(self.feature_record, _as_dict(feature_config))
        if diffs:
            raise BundleMismatchError(
                f"model bundle {self.path} does not match the features it is given: "
                + "; ".join(diffs)
                + ". Fix: extract features with the bundle's settings (see its model.json "
                "'features'), or train a bundle on these features."
            )

    def aggregate(self, probs: np.ndarray, z_mm: np.ndarray) -> StudyResult:
        """Aggregate one series' slice probabilities with the bundle's aggregator."""
        return aggregate(probs, z_mm, self.aggregate_config, learned=self.learned_aggregator)


def save_bundle(
    directory: str | Path,
    head: Head,
    *,
    feature_config: dict[str, Any] | FeatureConfig,
    label_rule: LabelRule,
    aggregate_config: AggregateConfig,
    learned_aggregator: LearnedAggregator | None = None,
    head_config: HeadConfig | None = None,
    training_summary: dict[str, Any] | None = None,
    cv_metrics: dict[str, Any] | None = None,
    freeze: bool = True,
    domain: Any = None,
) -> Path:
    """Write a model bundle.

    Parameters
    ----------
    directory : path
        Created if missing; existing bundle files in it are overwritten.
    head : Head
        The fitted head.
    feature_config : dict or FeatureConfig
        The training features' ``config.json`` record (FeatureConfig under
        ``"config"``, weights checksum, layers), or a bare FeatureConfig.
    label_rule : LabelRule
        The label rule of the training labels.
    aggregate_config : AggregateConfig
        Study aggregation settings ``predict`` will use.
    learned_aggregator : LearnedAggregator, optional
        The fitted weights; required when ``aggregate_config.method == "learned"``.
    head_config : HeadConfig, optional
        How the head was trained.
    training_summary : dict, optional
        Patients, series, slices per class, excluded slices...
    cv_metrics : dict, optional
        Cross-validated figures (from :func:`lungslice.model.metrics.bootstrap`).
    freeze : bool
        Also write the feature extractor as TorchScript (:func:`freeze_features`),
        so that ``predict`` needs torch alone, not timm (about 6 s less start-up).
    domain : DomainModel, optional
        The fitted out-of-domain guard: its arrays go into ``domain.npz``
        (checksummed like the weights), its parameters, threshold and summary
        into ``model.json`` "domain".

    Returns
    -------
    pathlib.Path
        Path of ``model.json``.
    """
    if aggregate_config.method == "learned" and (
        learned_aggregator is None or not learned_aggregator.is_fitted
    ):
        raise ConfigError(
            "save_bundle: aggregate_config.method is 'learned' but no fitted "
            "learned_aggregator was given. Fix: pass "
            "learned_aggregator=fit_learned_aggregator(...)."
        )
    if isinstance(feature_config, FeatureConfig):
        feature_config = {"config": feature_config.to_dict()}
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"mean": head.mean, "scale": head.scale}
    files = ["head.npz"]
    if isinstance(head, LogisticHead):
        arrays.update(head.state())
    elif isinstance(head, MLPHead):
        torch.save(head.state_dict(), root / "head.pt")
        files.append("head.pt")
    else:
        raise TypeError(f"cannot save a head of type {type(head).__name__}")
    np.savez(root / "head.npz", **arrays)  # type: ignore[arg-type]
    if domain is not None:
        np.savez(root / _DOMAIN_FILE, **domain.to_arrays())
        files.append(_DOMAIN_FILE)
    else:
        (root / _DOMAIN_FILE).unlink(missing_ok=True)  # a guard of an earlier bundle here
    features = _as_dict(feature_config)
    frozen = None
    if freeze and isinstance(features.get("config"), dict):
        frozen = freeze_features(
            root,
            FeatureConfig.from_dict(features["config"]),
            weights_id=feature_identity(features).get("weights"),
        )
    elif freeze:
        log.info("%s: no FeatureConfig in the feature record; no frozen extractor", root)
    if frozen is not None:
        files.append(frozen["file"])
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "classes": list(CLASSES),
        "head": {
            "kind": head.kind,
            "n_features": head.n_features,
            "hyperparameters": config_dict(head.hyperparameters),
            "config": head_config.to_dict() if head_config is not None else None,
        },
        "features": features,
        "frozen_backbone": frozen,
        "label_rule": label_rule.to_dict(),
        "aggregate": aggregate_config.to_dict(),
        "learned_aggregator": (
            learned_aggregator.to_dict()
            if aggregate_config.method == "learned" and learned_aggregator is not None
            else None
        ),
        "domain": (
            {"params": domain.params(), "summary": domain.to_dict()} if domain is not None else None
        ),
        "training": config_dict(training_summary or {}),
        "cv_metrics": config_dict(cv_metrics or {}),
        "files": {name: file_sha256(root / name) for name in files},
        "provenance": provenance(),
    }
    path = root / "model.json"
    from lungslice.model.metrics import json_safe  # scikit-learn: not for predict's loading

    path.write_text(json.dumps(json_safe(manifest), indent=2, allow_nan=False) + "\n")
    log.info("saved %s head bundle to %s", head.kind, root)
    return path


def freeze_features(
    directory: str | Path, config: FeatureConfig, *, weights_id: Any = None
) -> dict[str, Any] | None:
    """Write ``config``'s feature extractor into a bundle folder as TorchScript.

    The bundle savers call it; the record it returns goes into ``model.json``
    as ``"frozen_backbone"``, and its file with its SHA-256 into ``"files"``
    (:mod:`lungslice.features.frozen`).

    Parameters
    ----------
    directory : path
        The bundle folder being written.
    config : FeatureConfig
        The features the bundle was trained on.
    weights_id : str, optional
        The weights checksum the training features record; when the weights
        this machine resolves differ, nothing is written.

    Returns
    -------
    dict or None
        The record, or None (with a log line saying why) when the backbone could
        not be frozen faithfully; ``predict`` then builds it with timm.
    """
    from lungslice.errors import LungsliceError
    from lungslice.features.extract import make_runner
    from lungslice.features.frozen import write_frozen_backbone

    try:
        runner = make_runner(dataclasses.replace(config, device="cpu", compile=False))
    except LungsliceError as err:  # settings or weights this machine cannot build
        log.warning("%s: no frozen feature extractor written (%s)", directory, err)
        return None
    have = runner.backbone.weights_id
    if isinstance(weights_id, str) and weights_id != have:
        log.warning(
            "%s: the training features used weights %s..., this machine resolves %s...; "
            "no frozen feature extractor written (predict builds it with timm)",
            directory,
            weights_id[:12],
            have[:12],
        )
        return None
    try:
        return write_frozen_backbone(directory, runner)
    except LungsliceError as err:
        log.warning("%s; predict builds the backbone with timm", err)
        return None


def freeze_bundle(directory: str | Path, config: FeatureConfig) -> dict[str, Any] | None:
    """Add a frozen feature extractor to a bundle saved without one (rewrites ``model.json``).

    For bundles saved before :func:`freeze_features` existed (whole-slice or
    candidate: both list their files' checksums under ``"files"``). The
    manifest is replaced atomically; nothing else in the folder changes.

    Returns
    -------
    dict or None
        The record written (None when the backbone could not be frozen).
    """
    from lungslice.features.cache import atomic_write

    root = Path(directory)
    manifest = read_manifest(root)
    record = freeze_features(root, config)
    if record is None:
        return None
    manifest["frozen_backbone"] = record
    manifest.setdefault("files", {})[record["file"]] = record["sha256"]
    from lungslice.model.metrics import json_safe

    text = json.dumps(json_safe(manifest), indent=2, allow_nan=False) + "\n"

    def write(tmp: Path) -> None:
        tmp.write_text(text)

    atomic_write(root / "model.json", write)
    return record


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """``model.json`` of a bundle folder (whole-slice or candidate), checked to be JSON.

    Raises
    ------
    BundleMismatchError
        If there is no ``model.json``.
    CorruptFileError
        If it is truncated or not a JSON object.
    """
    root = Path(directory)
    path = root / "model.json"
    if not path.is_file():
        raise BundleMismatchError(
            f"{root} is not a model bundle: {path} does not exist. "
            "Fix: pass the directory `lungslice train --out` wrote."
        )
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise CorruptFileError(
            f"{path}: not valid JSON ({err}); the model bundle's manifest is truncated or "
            f"damaged ({path.stat().st_size} bytes). Fix: copy the bundle directory {root} "
            "again from where it was trained, or retrain it with `lungslice train`."
        ) from None
    if not isinstance(manifest, dict):
        raise CorruptFileError(
            f"{path}: holds a JSON {type(manifest).__name__}, expected an object. Fix: copy "
            f"the bundle directory {root} again, or retrain it with `lungslice train`."
        )
    return dict(manifest)


def load_bundle(directory: str | Path) -> ModelBundle:
    """Read a bundle written by :func:`save_bundle`, verifying its weight checksums.

    Raises
    ------
    BundleMismatchError
        If ``model.json`` is missing or not a lungslice bundle, or a weight file
        is missing or differs from the checksum the manifest records.
    CorruptFileError
        If ``model.json`` is truncated or not valid JSON.
    """
    root = Path(directory)
    path = root / "model.json"
    manifest = read_manifest(root)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise BundleMismatchError(
            f"{path}: expected format {FORMAT!r} version {FORMAT_VERSION}, got "
            f"{manifest.get('format')!r} version {manifest.get('format_version')!r}. "
            "Fix: retrain the bundle with this lungslice."
        )
    for name, digest in manifest["files"].items():
        file = root / name
        if not file.is_file():
            raise BundleMismatchError(
                f"model bundle {root} lacks {name} listed in model.json. "
                "Fix: copy the whole bundle directory."
            )
        got = file_sha256(file)
        if got != digest:
            raise BundleMismatchError(
                f"{file}: SHA-256 is {got}, model.json records {digest}; the weights were "
                "changed or corrupted. Fix: copy the bundle again or retrain."
            )
    arrays = dict(np.load(root / "head.npz", allow_pickle=False))
    spec = manifest["head"]
    head: Head
    if spec["kind"] == "logistic":
        head = LogisticHead(
            spec["hyperparameters"],
            arrays["mean"],
            arrays["scale"],
            arrays["coef"],
            arrays["intercept"],
        )
    elif spec["kind"] == "mlp":
        state = torch.load(root / "head.pt", weights_only=True, map_location="cpu")
        head = MLPHead(spec["hyperparameters"], arrays["mean"], arrays["scale"], state)
    else:
        raise BundleMismatchError(
            f"{path}: head kind {spec['kind']!r} is unknown; expected 'logistic' or 'mlp'."
        )
    record = dict(manifest["features"])
    try:
        feature_config = FeatureConfig.from_dict(record["config"]) if "config" in record else None
        aggregate_config, learned = _aggregation(manifest)
        label_rule = LabelRule.from_dict(manifest["label_rule"])
        head_config = spec.get("config")
        head_config = HeadConfig.from_dict(head_config) if head_config is not None else None
    except ConfigError as err:
        raise BundleMismatchError(
            f"{path}: cannot rebuild the bundle's settings from model.json ({err}). Fix: "
            "retrain the bundle with this version of lungslice."
        ) from None
    return ModelBundle(
        path=root,
        head=head,
        feature_config=feature_config,
        feature_record=record,
        label_rule=label_rule,
        aggregate_config=aggregate_config,
        learned_aggregator=learned,
        head_config=head_config,
        manifest=manifest,
        domain=_domain(root, manifest),
    )


def _domain(root: Path, manifest: dict[str, Any]) -> Any:
    """The bundle's out-of-domain guard, or None when it has none (older bundles)."""
    record = manifest.get("domain")
    if not record:
        return None
    if _DOMAIN_FILE not in manifest.get("files", {}):
        raise BundleMismatchError(
            f"{root / 'model.json'}: 'domain' is set but {_DOMAIN_FILE} is not among the "
            "checksummed files. Fix: copy the bundle again, or retrain it."
        )
    from lungslice.model.domain import DomainModel  # scikit-learn: only for bundles with a guard

    with np.load(root / _DOMAIN_FILE, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    try:
        return DomainModel.from_arrays(arrays, record["params"])
    except (KeyError, TypeError, ValueError) as err:
        raise BundleMismatchError(
            f"{root / 'model.json'}: cannot rebuild the domain guard ({err}). Fix: retrain "
            "the bundle with this version of lungslice."
        ) from None


def _aggregation(manifest: dict[str, Any]) -> tuple[AggregateConfig, LearnedAggregator | None]:
    settings = dict(manifest["aggregate"])
    stored = manifest.get("learned_aggregator")
    # bundles written before the fitted weights moved out of AggregateConfig kept them there
    old_any, old_mal = settings.pop("learned_any", None), settings.pop("learned_malignant", None)
    config = AggregateConfig.from_dict(settings)
    if stored is None and old_any and old_mal:
        stored = {
            "top_k": config.top_k,
            "intercept_any_": old_any[0],
            "coef_any_": old_any[1:],
            "intercept_malignant_": old_mal[0],
            "coef_malignant_": old_mal[1:],
        }
    learned = LearnedAggregator.from_dict(stored) if stored is not None else None
    if config.method == "learned" and (learned is None or not learned.is_fitted):
        raise ConfigError("aggregate method 'learned' without fitted weights")
    return config, learned
