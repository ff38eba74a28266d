"""Train the final model: cross-validate for honest figures, then fit on everything.

The study aggregator is chosen by the cross-validation (``aggregator="auto"``:
highest mean study ROC-AUC among max, noisy-OR and learned); a learned
aggregator is then fitted on the out-of-fold study results of all patients.
The head is refitted on all patients and written with its settings, the
training-set summary and the cross-validated figures into a model bundle,
with the out-of-domain guard fitted on the training series' acquisition
statistics (:func:`lungslice.model.domain.fit_guard`, the guard candidate
bundles carry) when the feature cache stored them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lungslice.errors import ConfigError
from lungslice.features.cache import FeatureCache
from lungslice.lidc.labels import LabelRule
from lungslice.model.aggregate import (
    AGGREGATION_METHODS,
    AggregateConfig,
    LearnedAggregator,
    fit_learned_aggregator,
)
from lungslice.model.bundle import save_bundle
from lungslice.model.cv import patient_folds
from lungslice.model.dataset import TrainingSet, build_training_set
from lungslice.model.evaluate import (
    EvaluateConfig,
    choose_aggregator,
    cross_validate,
    eval_tables,
)
from lungslice.model.heads import HeadConfig, train_head
from lungslice.model.metrics import bootstrap
from lungslice.progress import ProgressCallback, report

__all__ = ["AggregatorChoice", "TrainResult", "fit_series_guard", "train_bundle", "train_model"]

log = logging.getLogger(__name__)

#: ``"auto"`` (chosen by cross-validation) or one of the aggregation methods.
AggregatorChoice = Literal["auto", "max", "noisy_or", "learned"]


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
    learned_aggregator : LearnedAggregator or None
        Its fitted weights when the method is ``"learned"``.
    """

    bundle: Path
    summary: dict[str, Any]
    cv_metrics: dict[str, Any]
    aggregate_config: AggregateConfig
    learned_aggregator: LearnedAggregator | None = None


def train_bundle(
    ts: TrainingSet,
    out_dir: str | Path,
    *,
    head_config: HeadConfig | None = None,
    aggregate_config: AggregateConfig | None = None,
    aggregator: AggregatorChoice = "auto",
    config: EvaluateConfig = EvaluateConfig(),
    seed: int = 0,
    progress: ProgressCallback | None = None,
    descriptors: Mapping[str, np.ndarray] | None = None,
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
    descriptors : mapping, optional
        SeriesInstanceUID -> study descriptor of each training series
        (:meth:`lungslice.features.cache.FeatureCache.read_descriptors`); with
        one for every series and at least
        :data:`lungslice.model.candidate_bundle.MIN_DOMAIN_STUDIES` series, the
        bundle gets an out-of-domain guard. Why it has none is recorded in
        ``model.json`` "training" "domain".
    """
    if aggregator not in ("auto", *AGGREGATION_METHODS):
        raise ConfigError(
            f"aggregator: expected auto, {', '.join(AGGREGATION_METHODS)}; got {aggregator!r}."
        )
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
    learned: LearnedAggregator | None = None
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

        cv = cross_validate(ts, head_config, folds, seed=seed, progress=fold_progress)
        tables, results = eval_tables(
            ts, cv.probs, cv.fold_of_row, aggregate_config, config=config, seed=seed
        )
        figures = bootstrap(tables, n_boot=config.n_boot, seed=seed)
        method = choose_aggregator(figures) if aggregator == "auto" else aggregator
        if method == "learned":
            studies = tables.studies
            learned = fit_learned_aggregator(
                [results[u] for u in studies["series_uid"]],
                studies["has_any"].to_numpy(),
                studies["has_malignant"].to_numpy(),
                aggregate_config,
                seed=seed,
            )
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
    head = train_head(ts.X, ts.y, ts.groups, config=head_config, seed=seed)
    report(progress, n_steps, n_steps, "final fit")
    summary = ts.summary()
    summary["head_config"] = head_config.to_dict()
    domain, summary["domain"] = fit_series_guard(ts, descriptors, seed=seed)
    path = save_bundle(
        out_dir,
        head,
        feature_config=ts.feature_config,
        label_rule=ts.rule,
        aggregate_config=chosen,
        learned_aggregator=learned,
        head_config=head_config,
        training_summary=summary,
        cv_metrics=cv_metrics,
        domain=domain,
    )
    log.info("trained %s head on %d slices; bundle %s", head.kind, ts.y.size, path)
    return TrainResult(path, summary, cv_metrics, chosen, learned)


def fit_series_guard(
    ts: TrainingSet, descriptors: Mapping[str, np.ndarray] | None, *, seed: int = 0
) -> tuple[Any, str]:
    """The out-of-domain guard of a whole-slice bundle, fitted on its training series.

    One study per series of ``ts`` (grouped by patient for the threshold's
    cross-validation); the rule and the minimum number of studies are those of
    candidate bundles.

    Returns
    -------
    domain : DomainModel or None
        None when a series has no descriptor or there are too few series.
    note : str
        What was fitted, or why not.
    """
    from lungslice.model.candidate_bundle import MIN_DOMAIN_STUDIES
    from lungslice.model.domain import fit_guard

    series = ts.slices.drop_duplicates("series_uid")
    uids = series["series_uid"].astype(str).tolist()
    have = descriptors or {}
    missing = [u for u in uids if u not in have]
    if missing and len(uids) >= MIN_DOMAIN_STUDIES:
        note = (
            f"no domain guard: {len(missing)} of {len(uids)} training series have no study "
            "descriptor (features extracted before lungslice stored it, or passed in "
            "directly). Fix: extract the features again into a new work folder"
        )
        log.warning("%s", note)
        return None, note
    domain, note = fit_guard(
        [have.get(u, np.zeros(0)) for u in uids],  # too few series: none is read
        series["patient_id"].astype(str).tolist(),
        min_studies=MIN_DOMAIN_STUDIES,
        seed=seed,
    )
    log.info("%s", note)
    return domain, note


def train_model(
    features: str | Path,
    labels_dir: str | Path,
    out_dir: str | Path,
    *,
    head_config: HeadConfig | None = None,
    aggregate_config: AggregateConfig | None = None,
    rule: LabelRule | None = None,
    aggregator: AggregatorChoice = "auto",
    config: EvaluateConfig = EvaluateConfig(),
    key: str | None = None,
    allow_unlabelled: bool = False,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train a model bundle from a feature cache and a labels folder.

    Loads them with :func:`~lungslice.model.dataset.build_training_set` (``rule``
    defaults to the rule the labels were written with) and the series' study
    descriptors from the cache (for the out-of-domain guard), then :func:`train_bundle`.
    """
    ts = build_training_set(
        features, labels_dir, rule=rule, key=key, allow_unlabelled=allow_unlabelled
    )
    cache = FeatureCache.resolve(features, key)
    descriptors = cache.read_descriptors(ts.slices["series_uid"].astype(str).unique().tolist())
    return train_bundle(
        ts,
        out_dir,
        head_config=head_config,
        aggregate_config=aggregate_config,
        aggregator=aggregator,
        config=config,
        seed=seed,
        progress=progress,
        descriptors=descriptors,
    )
