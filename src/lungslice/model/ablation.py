"""Ablation: transfer vs no transfer x layer choice x input mode x study aggregator.

Each feature cache (one ``lungslice extract`` run: a backbone's weights and an
input mode) may hold several layers; layer choices are column slices of it, so
one extraction with ``--layers blocks.4,blocks.6,head`` serves every subset.
Every variant is evaluated with the same patient folds, the same head settings
and the same seed, under the labels' own rule; each figure carries its 95 %
patient-bootstrap CI.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungslice.errors import ConfigError, FeatureError
from lungslice.features.cache import FeatureCache, load_features
from lungslice.lidc.labels import read_labels, rule_from_provenance
from lungslice.model.aggregate import AGGREGATION_METHODS, AggregateConfig
from lungslice.model.cv import patient_folds
from lungslice.model.dataset import join_labels
from lungslice.model.evaluate import (
    EvaluateConfig,
    cross_validate,
    eval_tables,
    folds_for_patients,
)
from lungslice.model.heads import HeadConfig
from lungslice.model.metrics import bootstrap, format_figure, json_safe
from lungslice.progress import ProgressCallback, report
from lungslice.provenance import config_dict, provenance

__all__ = ["ABLATION_FIGURES", "AblationRow", "ablation", "layer_columns"]

log = logging.getLogger(__name__)

#: Figures reported per variant (each with its CI).
ABLATION_FIGURES: tuple[str, ...] = (
    "slice.roc_auc.macro",
    "slice.roc_auc.malignant",
    "nodule.recall@5.malignant",
    "nodule.recall@5.benign",
    "nodule.skippable_at_95_recall",
)


@dataclass(frozen=True)
class AblationRow:
    """One variant: feature cache x layers; figures per aggregator."""

    key: str
    backbone: str
    weights: str
    inputs: str
    layers: tuple[str, ...]
    figures: dict[str, dict[str, float]]


def layer_columns(record: dict[str, Any], layers: Sequence[str]) -> np.ndarray:
    """Column indices of ``layers`` in features cached with ``record`` (its config.json).

    Raises
    ------
    FeatureError
        When a layer was not extracted into that cache.
    """
    bb = record.get("backbone") or {}
    names, widths = list(bb.get("layers", [])), list(bb.get("layer_widths", []))
    if not names or len(names) != len(widths):
        raise FeatureError(
            f"feature cache {record.get('key', '?')}: config.json lacks backbone layers and "
            "widths; expected a cache written by `lungslice extract`."
        )
    missing = [name for name in layers if name not in names]
    if missing:
        raise FeatureError(
            f"feature cache {record.get('key', '?')} holds layers {names}, not {missing}. "
            f"Fix: extract with --layers {','.join(dict.fromkeys([*names, *missing]))}."
        )
    starts = np.concatenate([[0], np.cumsum(widths)])
    picked = [np.arange(starts[names.index(n)], starts[names.index(n) + 1]) for n in layers]
    return np.concatenate(picked)


def _table(rows: list[AblationRow]) -> pd.DataFrame:
    records = []
    for row in rows:
        for method in AGGREGATION_METHODS:
            rec: dict[str, Any] = {
                "weights": row.weights,
                "inputs": row.inputs,
                "layers": "+".join(row.layers),
                "aggregator": method,
            }
            for name in ABLATION_FIGURES:
                rec[name] = format_figure(row.figures.get(name))
            for target in ("malignant", "any_nodule"):
                rec[f"study.roc_auc.{target}"] = format_figure(
                    row.figures.get(f"study.roc_auc.{target}.{method}")
                )
            records.append(rec)
    return pd.DataFrame(records)


def ablation(
    work_dir: str | Path,
    keys: Sequence[str],
    labels_dir: str | Path,
    out_dir: str | Path,
    *,
    layer_choices: Sequence[Sequence[str]] | None = None,
    head_config: HeadConfig | None = None,
    aggregate_config: AggregateConfig | None = None,
    config: EvaluateConfig = EvaluateConfig(),
    seed: int = 0,
    allow_unlabelled: bool = False,
    progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """Evaluate every feature cache x layer choice; write ``ablation.md`` and ``ablation.json``.

    Parameters
    ----------
    work_dir : path
        Work folder holding ``features/<key>`` for every key.
    keys : sequence of str
        Feature caches to compare (e.g. ImageNet vs random weights, windows vs 2.5D).
    labels_dir : path
        Output of ``lungslice labels``.
    out_dir : path
        Where the table goes.
    layer_choices : sequence of sequence of str, optional
        Layer subsets; default: each cache's full layer list.
    head_config, aggregate_config, config, seed, allow_unlabelled, progress
        As for :func:`lungslice.model.evaluate.evaluate_sets`.

    Returns
    -------
    pandas.DataFrame
        One row per variant and aggregator, figures as ``value [low, high]``.
    """
    if not keys:
        raise ConfigError("ablation: expected at least one feature cache key, got none.")
    head_config = head_config or HeadConfig()
    aggregate_config = aggregate_config or AggregateConfig()
    labels = read_labels(labels_dir)
    rule = rule_from_provenance(labels.provenance)
    work = Path(work_dir)
    patient_fold: dict[str, int] | None = None
    rows: list[AblationRow] = []
    records = []
    for key in keys:
        cache = FeatureCache(work, key)
        record = cache.read_config()
        if record is None:
            raise FeatureError(
                f"{cache.config_path} does not exist; expected a feature cache written by "
                "`lungslice extract` (keys present: "
                f"{', '.join(FeatureCache.keys(work)) or 'none'})."
            )
        X_all, slices = load_features(work, key)
        choices = layer_choices or [tuple(record["backbone"]["layers"])]
        cfg = record.get("config", {})
        for layers in choices:
            cols = layer_columns(record, layers)
            ts = join_labels(
                X_all[:, cols],
                slices,
                labels.slices,
                labels.nodules,
                rule,
                allow_unlabelled=allow_unlabelled,
                feature_config=record,
            )
            if patient_fold is None:  # the first variant fixes the folds for all
                folds = patient_folds(ts.groups, ts.strata, config.n_splits, seed)
                patient_fold = {p: f.index for f in folds for p in f.test_patients}
            else:
                folds = folds_for_patients(ts.groups, patient_fold)
            cv = cross_validate(ts, head_config, folds, seed=seed)
            tables, _ = eval_tables(
                ts, cv.probs, cv.fold_of_row, aggregate_config, config=config, seed=seed
            )
            figures = bootstrap(tables, n_boot=config.n_boot, seed=seed)
            row = AblationRow(
                key=key,
                backbone=str(record["backbone"]["name"]),
                weights=str(cfg.get("weights", "?")),
                inputs=str((cfg.get("inputs") or {}).get("mode", "?")),
                layers=tuple(layers),
                figures=figures,
            )
            rows.append(row)
            records.append({**{k: v for k, v in row.__dict__.items()}, "summary": ts.summary()})
            report(progress, len(rows), len(keys) * len(choices), f"{key} {'+'.join(layers)}")
            log.info("ablation %s %s: done", key, layers)
    table = _table(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(
        json.dumps(
            json_safe(
                {
                    "provenance": provenance(config, seed=seed, rule=config_dict(rule)),
                    "head": config_dict(head_config),
                    "aggregate": config_dict(aggregate_config),
                    "folds": {str(k): v for k, v in (patient_fold or {}).items()},
                    "variants": records,
                }
            ),
            indent=2,
            allow_nan=False,
        )
        + "\n"
    )
    header = "| " + " | ".join(table.columns) + " |"
    lines = [
        f"Label rule {rule.name}; {config.n_splits}-fold patient CV (same folds for every "
        f"variant), {config.n_boot} patient-bootstrap replicates, seed {seed}; "
        f"head {head_config.kind}.",
        "",
        header,
        "|---" * len(table.columns) + "|",
        *("| " + " | ".join(str(v) for v in r) + " |" for r in table.itertuples(index=False)),
        "",
    ]
    (out / "ablation.md").write_text("\n".join(lines))
    return table
