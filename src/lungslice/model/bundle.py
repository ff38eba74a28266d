"""The model bundle: a directory a user can read, holding everything ``predict`` needs.

Layout::

    MODEL/
      model.json   manifest: head kind + hyperparameters, feature settings
                   (backbone, weights checksum, layers, inputs), label rule,
                   aggregation settings, training-set summary, CV metrics,
                   library versions, and the SHA-256 of each weight file
      head.npz     standardisation (mean, scale) and, for logistic heads, coef/intercept
      head.pt      MLP heads only: the torch state_dict (tensors only)

Nothing is pickled: weights load with ``numpy.load(allow_pickle=False)`` and
``torch.load(weights_only=True)``.
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

from lungslice.errors import BundleMismatchError, CorruptFileError
from lungslice.model.aggregate import AggregateConfig
from lungslice.model.heads import CLASSES, Head, LogisticHead, MLPHead
from lungslice.model.metrics import json_safe
from lungslice.provenance import config_dict, file_sha256, provenance

__all__ = [
    "FEATURE_IDENTITY_IGNORED",
    "ModelBundle",
    "compare_feature_configs",
    "feature_identity",
    "load_bundle",
    "save_bundle",
]

log = logging.getLogger(__name__)

FORMAT = "lungslice-model"
FORMAT_VERSION = 1

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
    """A loaded model bundle.

    Attributes
    ----------
    path : pathlib.Path
        The bundle directory.
    head : Head
        The slice classifier.
    feature_config : dict
        Settings of the features it was trained on.
    label_rule : dict
        The label rule of its training labels.
    aggregate_config : AggregateConfig
        Study aggregation settings.
    manifest : dict
        The whole ``model.json``.
    """

    path: Path
    head: Head
    feature_config: dict[str, Any]
    label_rule: dict[str, Any]
    aggregate_config: AggregateConfig
    manifest: dict[str, Any]

    def check_features(self, feature_config: Any) -> None:
        """Refuse features made with other backbone/layer/input settings.

        Raises
        ------
        BundleMismatchError
            Naming each differing setting with the bundle's and the features' value.
        """
        diffs = compare_feature_configs(self.feature_config, _as_dict(feature_config))
        if diffs:
            raise BundleMismatchError(
                f"model bundle {self.path} does not match the features it is given: "
                + "; ".join(diffs)
                + ". Fix: extract features with the bundle's settings (see its model.json "
                "'features'), or train a bundle on these features."
            )


def save_bundle(
    directory: str | Path,
    head: Head,
    feature_config: Any,
    label_rule: Any,
    aggregate_config: AggregateConfig,
    training_summary: dict[str, Any],
    cv_metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a model bundle.

    Parameters
    ----------
    directory : path
        Created if missing; existing bundle files in it are overwritten.
    head : Head
        The fitted head.
    feature_config : dict or dataclass
        The FeatureConfig of the training features (backbone, weights checksum,
        layers, inputs).
    label_rule : dataclass or dict
        The ``LabelRule`` of the training labels.
    aggregate_config : AggregateConfig
        Study aggregation settings ``predict`` will use.
    training_summary : dict
        Patients, series, slices per class, excluded slices...
    cv_metrics : dict, optional
        Cross-validated figures (from :func:`lungslice.model.metrics.bootstrap`).

    Returns
    -------
    pathlib.Path
        Path of ``model.json``.
    """
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
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "classes": list(CLASSES),
        "head": {
            "kind": head.kind,
            "n_features": head.n_features,
            "hyperparameters": config_dict(head.hyperparameters),
        },
        "features": _as_dict(feature_config),
        "label_rule": _as_dict(label_rule),
        "aggregate": config_dict(aggregate_config),
        "training": config_dict(training_summary),
        "cv_metrics": config_dict(cv_metrics or {}),
        "files": {name: file_sha256(root / name) for name in files},
        "provenance": provenance(),
    }
    path = root / "model.json"
    path.write_text(json.dumps(json_safe(manifest), indent=2, allow_nan=False) + "\n")
    log.info("saved %s head bundle to %s", head.kind, root)
    return path


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
    agg: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in manifest["aggregate"].items()
    }
    aggregate_config = AggregateConfig(**agg)
    return ModelBundle(
        path=root,
        head=head,
        feature_config=manifest["features"],
        label_rule=manifest["label_rule"],
        aggregate_config=aggregate_config,
        manifest=manifest,
    )
