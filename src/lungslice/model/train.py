"""Train the final model: cross-validate for honest figures, then fit on everything.

The study aggregator is chosen by the cross-validation (``aggregator="auto"``:
highest mean study ROC-AUC among max, noisy-OR and learned); a learned
aggregator is then fitted on the out-of-fold study results of all patients.
The head is refitted on all patients and written with its settings, the
training-set summary and the cross-validated figures into a model bundle.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungslice.errors import ConfigError
from lungslice.features.cache import load_features
from lungslice.lidc.labels import LabelRule, read_labels, rule_from_provenance
from lungslice.model.aggregate import AggregateConfig, fit_learned_aggregator
from lungslice.model.bundle import save_bundle
from lungslice.model.cv import patient_folds
from lungslice.model.dataset import TrainingSet, join_labels, resolve_features_dir
from lungslice.model.evaluate import (
    METHODS,
    EvaluateConfig,
    choose_aggregator,
    cross_validate,
    eval_tables,
)
from lungslice.model.heads import HeadConfig, train_head
from lungslice.model.metrics import bootstrap
from lungslice.progress import ProgressCallback, report

__all__ = ["TrainResult", "train_bundle", "train_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_bundle` wrote.

    Attributes
    ----------
    bundle : pathlib.Path
        The bundle's ``model.json``.
    summary : dict
        Training-set summary.
    cv_metrics : dict
        Cross-validated figures with CIs (empty when ``n_splits=0``).
    aggregate_config : AggregateConfig
        The aggregation stored in the bundle.
    """

    bundle: Path
    summary: dict[str, Any]
    cv_metrics: dict[str, Any]
    aggregate_config: AggregateConfig


def train_bundle(
    ts: TrainingSet,
    out_dir: str | Path,
    head_config: HeadConfig | None = None,
    aggregate_config: AggregateConfig | None = None,
    aggregator: str = "auto",
    config: EvaluateConfig = EvaluateConfig(),
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Cross-validate (unless ``config.n_splits == 0``), fit on all rows, save a bundle.

    Parameters
    ----------
    ts : TrainingSet
        Labelled features.
    out_dir : path
        Bundle directory.
    head_config, aggregate_config : optional
        Defaults: logistic head, ``AggregateConfig()``.
    aggregator : {"auto", "max", "noisy_or", "learned"}
        Study aggregator to store; ``"auto"`` picks it by cross-validation.
    config : EvaluateConfig
        Folds and bootstrap replicates of the cross-validation.
    seed : int
        Folds, heads and bootstrap draws.
    progress : ProgressCallback, optional
        Called per fold and for the final fit.
    """
    if aggregator not in ("auto", *METHODS):
        raise ConfigError(f"aggregator: expected auto, {', '.join(METHODS)}; got {aggregator!r}.")
    head_config = head_config or HeadConfig()
    aggregate_config = aggregate_config or AggregateConfig()
    needs_cv = aggregator in ("auto", "learned")
    if config.n_splits == 0 and needs_cv:
        raise ConfigError(
            f"aggregator {aggregator!r} is chosen/fitted by cross-validation, but n_splits=0. "
            "Fix: keep --folds >= 2 or name the aggregator (--aggregator noisy_or)."
        )
    n_steps = (config.n_splits if config.n_splits else 0) + 1
    cv_metrics: dict[str, Any] = {}
    # without CV only a named, parameter-free aggregator is possible (checked above)
    chosen = (
        dataclasses.replace(aggregate_config, method=aggregator)
        if aggregator in ("max", "noisy_or")
        else aggregate_config
    )
    if config.n_splits:
        folds = patient_folds(ts.groups, ts.strata, config.n_splits, seed)

        def fold_progress(done: int, total: int, label: str = "") -> None:
            report(progress, done, n_steps, label)

        cv = cross_validate(ts, head_config, folds, seed, fold_progress)
        tables, results = eval_tables(ts, cv.probs, cv.fold_of_row, aggregate_config, config, seed)
        figures = bootstrap(tables, n_boot=config.n_boot, seed=seed)
        method = choose_aggregator(figures) if aggregator == "auto" else aggregator
        if method == "learned":
            studies = tables.studies
            chosen = fit_learned_aggregator(
                [results[u] for u in studies["series_uid"]],
                studies["has_any"].to_numpy(),
                studies["has_malignant"].to_numpy(),
                aggregate_config,
                seed=seed,
            )
        else:
            chosen = dataclasses.replace(aggregate_config, method=method)
        cv_metrics = {
            "n_splits": config.n_splits,
            "n_boot": config.n_boot,
            "seed": seed,
            "aggregator": method,
            "aggregator_rule": "highest mean study ROC-AUC (malignant, any nodule)"
            if aggregator == "auto"
            else "given",
            "folds": [list(f.test_patients) for f in folds],
            "fold_hyperparameters": cv.hyperparameters,
            "figures": figures,
        }
    head = train_head(ts.X, ts.y, ts.groups, head_config, seed=seed)
    report(progress, n_steps, n_steps, "final fit")
    summary = ts.summary()
    summary["head_config"] = dataclasses.asdict(head_config)
    path = save_bundle(out_dir, head, ts.feature_config, ts.rule, chosen, summary, cv_metrics)
    log.info("trained %s head on %d slices; bundle %s", head.kind, ts.y.size, path)
    return TrainResult(path, summary, cv_metrics, chosen)


def train_model(
    features: str | Path,
    labels_dir: str | Path,
    out_dir: str | Path,
    head_config: HeadConfig | None = None,
    aggregate_config: AggregateConfig | None = None,
    rule: LabelRule | None = None,
    *,
    aggregator: str = "auto",
    config: EvaluateConfig = EvaluateConfig(),
    key: str | None = None,
    allow_unlabelled: bool = False,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Load features and labels, then :func:`train_bundle`.

    ``rule`` defaults to the rule the labels were written with.
    """
    work_dir, key = resolve_features_dir(features, key)
    X, slices = load_features(work_dir, key, dtype=np.float32)
    config_path = work_dir / "features" / key / "config.json"
    feature_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    labels = read_labels(labels_dir)
    rule = rule or rule_from_provenance(labels.provenance)
    ts = join_labels(
        X,
        slices,
        labels.slices,
        labels.nodules,
        rule,
        allow_unlabelled=allow_unlabelled,
        feature_config=feature_config,
    )
    return train_bundle(
        ts, out_dir, head_config, aggregate_config, aggregator, config, seed, progress
    )
