"""Patient-disjoint cross-validated evaluation: figures, CIs, plots and a report.

For each label rule (the default and the comparable-to-literature variants:
mean = 3 excluded, >= 3 readers) on the *same* patient folds:

1. train a head on the other folds' patients and predict the held-out fold
   (out-of-fold probabilities for every slice);
2. aggregate each series (candidates, reading order, study scores by every
   aggregator; the learned aggregator is itself fitted on the other folds);
3. compute slice, nodule and study figures with 95 % patient-bootstrap CIs.

Outputs in ``out_dir``: ``metrics.json``, ``report.md``, ``roc.png``,
``pr.png``, ``calibration.png``, ``recall_at_k.png`` and
``predictions.parquet`` (out-of-fold slice probabilities of the default rule).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungslice.config import DictConfig
from lungslice.errors import ConfigError
from lungslice.lidc.labels import CLASSES, LabelRule, read_labels, rule_from_provenance
from lungslice.model import plots
from lungslice.model.aggregate import (
    AGGREGATION_METHODS,
    AggregateConfig,
    AggregationMethod,
    StudyResult,
    aggregate,
    fit_learned_aggregator,
    study_scores,
)
from lungslice.model.cv import Fold, patient_folds
from lungslice.model.dataset import TrainingSet, join_labels, load_cached_features
from lungslice.model.heads import HeadConfig, train_head
from lungslice.model.metrics import (
    EvalTables,
    bootstrap,
    confusion_matrix,
    format_figure,
    json_safe,
    nodule_hits,
)
from lungslice.progress import ProgressCallback, report
from lungslice.provenance import config_dict, provenance

__all__ = [
    "CVResult",
    "EvaluateConfig",
    "choose_aggregator",
    "cross_validate",
    "eval_tables",
    "evaluate",
    "evaluate_sets",
    "folds_for_patients",
    "rule_variants",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig(DictConfig):
    """Evaluation settings (``to_dict``/``from_dict`` round-trip them through JSON).

    Attributes
    ----------
    n_splits : int
        Outer patient folds.
    n_boot : int
        Patient bootstrap replicates per label rule.
    ks : tuple of int
        Recommendation depths for nodule recall@k.
    tolerance_mm : float
        Slack on a nodule's z range when matching recommended slices.
    recall : float
        Nodule recall at which the skippable fraction of slices is reported.
    """

    n_splits: int = 5
    n_boot: int = 200
    ks: tuple[int, ...] = (1, 3, 5, 10)
    tolerance_mm: float = 0.5
    recall: float = 0.95


@dataclass(frozen=True, eq=False)
class CVResult:
    """Out-of-fold predictions of one training set.

    Attributes
    ----------
    probs : numpy.ndarray
        ``(n, 3)`` probabilities, each row predicted by the head that did not see its patient.
    fold_of_row : numpy.ndarray
        ``(n,)`` outer fold of each row.
    folds : list of Fold
        The folds (row indices into the training set).
    hyperparameters : list of dict
        Hyperparameters each fold's head chose.
    """

    probs: np.ndarray
    fold_of_row: np.ndarray
    folds: list[Fold]
    hyperparameters: list[dict[str, Any]]


def rule_variants(default: LabelRule) -> list[LabelRule]:
    """The default rule, then the same with mean = threshold excluded, then >= 3 readers."""
    variants = [
        default,
        dataclasses.replace(default, exclude_ambiguous=True),
        dataclasses.replace(default, min_readers=max(3, default.min_readers)),
    ]
    unique: list[LabelRule] = []
    for r in variants:
        if r not in unique:
            unique.append(r)
    return unique


def folds_for_patients(groups: np.ndarray, patient_fold: dict[str, int]) -> list[Fold]:
    """Folds of a training set from a fixed patient -> fold map (same folds across rules)."""
    groups = np.asarray(groups).astype(str)
    missing = sorted(set(groups) - set(patient_fold))
    if missing:
        raise ConfigError(
            f"patients {missing[:5]} have no fold; expected every patient of each label-rule "
            "variant in the default rule's folds."
        )
    fold_of_row = np.array([patient_fold[g] for g in groups], dtype=np.int64)
    n = max(patient_fold.values()) + 1
    return [
        Fold(
            index=k,
            train=np.flatnonzero(fold_of_row != k),
            test=np.flatnonzero(fold_of_row == k),
            test_patients=tuple(sorted(p for p, f in patient_fold.items() if f == k)),
        )
        for k in range(n)
    ]


def cross_validate(
    ts: TrainingSet,
    head_config: HeadConfig,
    folds: Sequence[Fold],
    *,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> CVResult:
    """Out-of-fold slice probabilities: one head per fold, trained on the other patients."""
    probs = np.full((ts.y.size, len(CLASSES)), np.nan, dtype=np.float32)
    fold_of_row = np.full(ts.y.size, -1, dtype=np.int64)
    hyper = []
    for fold in folds:
        train_pat = set(ts.groups[fold.train])
        leaked = train_pat.intersection(ts.groups[fold.test])
        if leaked:  # cannot happen with patient_folds; guards hand-made folds
            raise ConfigError(f"fold {fold.index}: patients {sorted(leaked)[:5]} in train and test")
        head = train_head(
            ts.X[fold.train],
            ts.y[fold.train],
            ts.groups[fold.train],
            config=head_config,
            seed=seed,
        )
        probs[fold.test] = head.predict_proba(ts.X[fold.test])
        fold_of_row[fold.test] = fold.index
        hyper.append({k: v for k, v in head.hyperparameters.items() if k != "inner_cv"})
        report(progress, fold.index + 1, len(folds), f"fold {fold.index + 1}/{len(folds)}")
        log.info("fold %d: %s", fold.index, hyper[-1])
    if (fold_of_row < 0).any():
        raise ConfigError(f"{int((fold_of_row < 0).sum())} rows are in no test fold")
    return CVResult(probs, fold_of_row, list(folds), hyper)


def _series_groups(slices: pd.DataFrame) -> dict[str, np.ndarray]:
    """Row positions of each series, sorted by z."""
    z = slices["z_mm"].to_numpy(dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for uid, rows in slices.groupby("series_uid", sort=False).indices.items():
        idx = np.asarray(rows, dtype=np.int64)
        out[str(uid)] = idx[np.argsort(z[idx], kind="stable")]
    return out


def eval_tables(
    ts: TrainingSet,
    probs: np.ndarray,
    fold_of_row: np.ndarray,
    aggregate_config: AggregateConfig,
    *,
    config: EvaluateConfig = EvaluateConfig(),
    seed: int = 0,
) -> tuple[EvalTables, dict[str, StudyResult]]:
    """Aggregate every series and build the slice / nodule / study tables.

    A study "has a nodule" / "has a malignant nodule" when a counted nodule
    (benign, malignant or excluded-ambiguous / malignant) lies within its
    evaluated slices. Benign and malignant nodules without evaluated slices
    (outside the series' z extent, or all their slices excluded by the rule) are
    counted in ``n_nodules_outside`` and left out of the nodule figures.
    Excluded (ambiguous) nodules count for "any nodule" but are not scored in
    recall@k.

    Study scores are computed by every aggregator (columns
    ``p_any_nodule.<method>``, ``p_malignant.<method>``); the unsuffixed columns
    hold ``aggregate_config.method``'s. The learned aggregator of each fold is
    fitted on the other folds' studies.
    """
    base = dataclasses.replace(aggregate_config, method="max")
    groups = _series_groups(ts.slices)
    score = np.zeros(ts.y.size)
    results: dict[str, StudyResult] = {}
    study_rows = []
    nodule_rows = []
    nod_by_series = {str(k): g for k, g in ts.nodules.groupby("series_uid")}
    for uid, rows in groups.items():
        res = aggregate(probs[rows], ts.slices["z_mm"].to_numpy()[rows], base)
        results[uid] = res
        score[rows] = res.slice_score
        nod = nod_by_series.get(uid)
        if nod is None:
            nod = ts.nodules.iloc[:0]
        hit, best = nodule_hits(
            res.ranking(),
            res.z_mm,
            res.slice_score,
            nod["z_min"].to_numpy(dtype=np.float64),
            nod["z_max"].to_numpy(dtype=np.float64),
            config.tolerance_mm,
        )
        # a nodule without evaluated slices (outside a z-cropped or partial series, or all
        # its slices excluded by the rule) cannot be found or missed: counted, not scored
        visible = np.isfinite(best)
        codes = nod["code"].to_numpy()[visible]
        row: dict[str, Any] = {
            "series_uid": uid,
            "patient_id": str(ts.groups[rows[0]]),
            "fold": int(fold_of_row[rows[0]]),
            "has_any": bool(codes.size),
            "has_malignant": bool((codes == 2).any()),
            "n_candidates": len(res.candidates),
            "n_nodules_outside": int((~visible & (nod["code"].to_numpy() >= 1)).sum()),
        }
        for method in ("max", "noisy_or"):
            p_any, p_mal = study_scores(
                res.smoothed, res.topk, dataclasses.replace(aggregate_config, method=method)
            )
            row[f"p_any_nodule.{method}"], row[f"p_malignant.{method}"] = p_any, p_mal
        study_rows.append(row)
        scored = visible & (nod["code"].to_numpy() >= 1)
        if scored.any():
            nodule_rows.append(
                pd.DataFrame(
                    {
                        "nodule_id": nod["nodule_id"].to_numpy()[scored],
                        "series_uid": uid,
                        "patient_id": row["patient_id"],
                        "label": nod["code"].to_numpy()[scored],
                        "hit_rank": hit[scored],
                        "best_score": best[scored],
                    }
                )
            )
    studies = pd.DataFrame(study_rows)
    # learned aggregator: fitted per outer fold on the other folds' studies
    learned_any = np.full(len(studies), np.nan)
    learned_mal = np.full(len(studies), np.nan)
    uids = studies["series_uid"].tolist()
    for k in sorted(studies["fold"].unique()):
        test = (studies["fold"] == k).to_numpy()
        train_idx = np.flatnonzero(~test)
        if train_idx.size == 0:
            continue
        fitted = fit_learned_aggregator(
            [results[uids[i]] for i in train_idx],
            studies["has_any"].to_numpy()[train_idx],
            studies["has_malignant"].to_numpy()[train_idx],
            aggregate_config,
            seed=seed,
        )
        for i in np.flatnonzero(test):
            learned_any[i], learned_mal[i] = fitted.predict(results[uids[i]].topk)
    studies["p_any_nodule.learned"] = learned_any
    studies["p_malignant.learned"] = learned_mal
    studies["p_any_nodule"] = studies[f"p_any_nodule.{aggregate_config.method}"]
    studies["p_malignant"] = studies[f"p_malignant.{aggregate_config.method}"]
    slices = pd.DataFrame(
        {
            "patient_id": ts.groups,
            "series_uid": ts.slices["series_uid"].to_numpy(),
            "slice_index": ts.slices["slice_index"].to_numpy(),
            "y": ts.y,
            "p0": probs[:, 0],
            "p1": probs[:, 1],
            "p2": probs[:, 2],
            "score": score,
        }
    )
    nodule_columns = ["nodule_id", "series_uid", "patient_id", "label", "hit_rank", "best_score"]
    nodules = (
        pd.concat(nodule_rows, ignore_index=True)
        if nodule_rows
        else pd.DataFrame({c: [] for c in nodule_columns})
    )
    return EvalTables(slices, nodules, studies), results


def choose_aggregator(figures: dict[str, dict[str, float]]) -> AggregationMethod:
    """The aggregator with the highest mean of the two study ROC-AUCs (ties: simplest)."""
    best, best_score = AGGREGATION_METHODS[0], -np.inf
    for method in AGGREGATION_METHODS:
        vals = [
            figures.get(f"study.roc_auc.{t}.{method}", {}).get("value", np.nan)
            for t in ("malignant", "any_nodule")
        ]
        finite = [v for v in vals if v is not None and np.isfinite(v)]
        s = float(np.mean(finite)) if finite else -np.inf
        if s > best_score + 1e-12:
            best, best_score = method, s
    return best


def _report_md(result: dict[str, Any], config: EvaluateConfig) -> str:
    rules = list(result["rules"])
    lines = [
        "# lungslice cross-validated evaluation",
        "",
        f"Created {result['provenance']['created']}. Patient-disjoint "
        f"{config.n_splits}-fold cross-validation (StratifiedGroupKFold on patient_id, "
        "stratified by malignant / benign-only / no nodule); the same folds for every "
        f"label rule. 95 % CIs: percentile bootstrap over patients, {config.n_boot} replicates. "
        "Operating point for the confusion matrix and sensitivity/precision: argmax.",
        "",
    ]
    feats = result.get("features") or {}
    backbone = (feats.get("backbone") or {}).get("name") or feats.get("config", {}).get("backbone")
    if backbone:
        lines += [
            f"Features: backbone `{backbone}`, weights `{feats.get('weights_id', '?')}`, "
            f"layers {(feats.get('backbone') or {}).get('layers', '?')}, cache key "
            f"`{feats.get('key', '?')}`.",
            "",
        ]
    lines += [f"Head: `{json.dumps(result['head'])}`.", ""]
    lines += ["## Data per label rule", "", "| | " + " | ".join(rules) + " |"]
    lines.append("|---" * (len(rules) + 1) + "|")
    summaries = [result["rules"][r]["summary"] for r in rules]
    for label, get in (
        ("patients", lambda s: s["patients"]),
        ("series", lambda s: s["series"]),
        ("slices", lambda s: s["slices"]),
        *(
            (f"slices {c}", lambda s, c=c: s["slices_per_class"][c])
            for c in ("non-nodule", "benign", "malignant")
        ),
        ("nodules benign", lambda s: s["nodules_per_class"]["benign"]),
        ("nodules malignant", lambda s: s["nodules_per_class"]["malignant"]),
        ("slices rejected", lambda s: sum(s["rejected_slices"].values())),
    ):
        lines.append(f"| {label} | " + " | ".join(str(get(s)) for s in summaries) + " |")
    outside = [str(result["rules"][r]["nodules_outside_series"]) for r in rules]
    lines.append(
        "| nodules outside their series' slices (not scored) | " + " | ".join(outside) + " |"
    )
    lines += ["", "## Figures (value [95 % CI])", "", "| figure | " + " | ".join(rules) + " |"]
    lines.append("|---" * (len(rules) + 1) + "|")
    names = list(result["rules"][rules[0]]["figures"])
    for name in names:
        cells = [format_figure(result["rules"][r]["figures"].get(name)) for r in rules]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Study aggregators", ""]
    for r in rules:
        lines.append(f"- {r}: best by mean study ROC-AUC: **{result['rules'][r]['aggregator']}**")
    default = rules[0]
    cm = result["rules"][default]["confusion_matrix"]
    lines += [
        "",
        f"## Confusion matrix ({default}, rows true, columns predicted)",
        "",
        "| | " + " | ".join(CLASSES) + " |",
        "|---" * (len(CLASSES) + 1) + "|",
    ]
    for name, row in zip(CLASSES, cm, strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "## Folds (test patients)", "", "| fold | patients | test patients |"]
    lines.append("|---|---|---|")
    for f in result["folds"]:
        lines.append(
            f"| {f['index']} | {len(f['test_patients'])} | {', '.join(f['test_patients'])} |"
        )
    lines += [
        "",
        "## Plots",
        "",
        "![ROC](roc.png) ![PR](pr.png) ![calibration](calibration.png) "
        "![recall@k](recall_at_k.png)",
        "",
    ]
    return "\n".join(lines)


def evaluate_sets(
    sets: Iterable[TrainingSet],
    out_dir: str | Path,
    *,
    head_config: HeadConfig | None = None,
    aggregate_config: AggregateConfig | None = None,
    config: EvaluateConfig = EvaluateConfig(),
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Cross-validate and report training sets that differ only in their label rule.

    Parameters
    ----------
    sets : iterable of TrainingSet
        The first is the default rule; its patients define the folds used for all.
        Consumed one at a time (a generator keeps one set in memory).
    out_dir : path
        Where ``metrics.json``, ``report.md``, the plots and ``predictions.parquet`` go.
    head_config, aggregate_config : optional
        Head and aggregation settings (defaults: logistic head, ``AggregateConfig()``).
    config : EvaluateConfig
        Folds, bootstrap replicates, k values.
    seed : int
        Folds, heads and bootstrap draws.
    progress : ProgressCallback, optional
        Called once per fold per rule.

    Returns
    -------
    dict
        The content of ``metrics.json``.
    """
    iterator = iter(sets)
    default = next(iterator, None)
    if default is None:
        raise ConfigError("evaluate_sets: expected at least one training set, got none.")
    head_config = head_config or HeadConfig()
    aggregate_config = aggregate_config or AggregateConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folds = patient_folds(default.groups, default.strata, config.n_splits, seed)
    patient_fold = {p: f.index for f in folds for p in f.test_patients}
    result: dict[str, Any] = {
        "provenance": provenance(config, seed=seed),
        "head": config_dict(head_config),
        "aggregate": config_dict(aggregate_config),
        "features": default.feature_config,
        "folds": [
            {
                "index": f.index,
                "test_patients": list(f.test_patients),
                "n_test_slices": int(f.test.size),
                "n_train_slices": int(f.train.size),
            }
            for f in folds
        ],
        "default_rule": default.rule.name,
        "rules": {},
    }
    curves: dict[str, dict[str, list[tuple[int, float, float, float]]]] = {}
    for i, ts in enumerate(itertools.chain([default], iterator)):
        name = ts.rule.name
        set_folds = folds if i == 0 else folds_for_patients(ts.groups, patient_fold)

        def fold_progress(done: int, total: int, label: str = "", name: str = name) -> None:
            report(progress, done, total, f"{name}: {label}")

        cv = cross_validate(ts, head_config, set_folds, seed=seed, progress=fold_progress)
        tables, _ = eval_tables(
            ts, cv.probs, cv.fold_of_row, aggregate_config, config=config, seed=seed
        )
        figures = bootstrap(tables, n_boot=config.n_boot, seed=seed)
        result["rules"][name] = {
            "rule": config_dict(ts.rule),
            "summary": ts.summary(),
            "figures": figures,
            "confusion_matrix": confusion_matrix(ts.y, cv.probs).tolist(),
            "nodules_outside_series": int(tables.studies["n_nodules_outside"].sum()),
            "aggregator": choose_aggregator(figures),
            "fold_hyperparameters": cv.hyperparameters,
        }
        curves[name] = {
            kind: [
                (
                    k,
                    figures[f"nodule.recall@{k}.{kind}"]["value"],
                    figures[f"nodule.recall@{k}.{kind}"]["ci_low"],
                    figures[f"nodule.recall@{k}.{kind}"]["ci_high"],
                )
                for k in config.ks
            ]
            for kind in ("malignant", "benign")
        }
        if i == 0:
            title = f"out-of-fold, {name}"
            plots.plot_roc(ts.y, cv.probs, out / "roc.png", title=f"ROC ({title})")
            plots.plot_pr(ts.y, cv.probs, out / "pr.png", title=f"Precision-recall ({title})")
            plots.plot_calibration(
                ts.y, cv.probs, out / "calibration.png", title=f"Calibration ({title})"
            )
            pred = tables.slices.assign(fold=cv.fold_of_row)
            pred.to_parquet(out / "predictions.parquet", index=False)
    plots.plot_recall_at_k(curves, out / "recall_at_k.png")
    clean = json_safe(result)
    (out / "metrics.json").write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")
    (out / "report.md").write_text(_report_md(result, config))
    log.info("evaluation written to %s", out)
    return dict(clean)


def evaluate(
    features: str | Path,
    labels_dir: str | Path,
    out_dir: str | Path,
    *,
    head_config: HeadConfig | None = None,
    aggregate_config: AggregateConfig | None = None,
    config: EvaluateConfig = EvaluateConfig(),
    rules: Sequence[LabelRule] | None = None,
    key: str | None = None,
    allow_unlabelled: bool = False,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Load cached features and labels, and evaluate under each label rule.

    Parameters
    ----------
    features : path
        Work folder (one feature cache, or ``key``) or ``WORK/features/<key>``.
    labels_dir : path
        Output of ``lungslice labels``.
    out_dir : path
        Output folder.
    rules : sequence of LabelRule, optional
        Default: :func:`rule_variants` of the labels' own rule.
    key, allow_unlabelled, seed, progress
        See :func:`lungslice.model.dataset.build_training_set` and :func:`evaluate_sets`.

    Returns
    -------
    dict
        The content of ``metrics.json``.
    """
    X, slices, feature_config = load_cached_features(features, key=key)
    labels = read_labels(labels_dir)
    rules = list(rules) if rules else rule_variants(rule_from_provenance(labels.provenance))
    sets = (
        join_labels(
            X,
            slices,
            labels.slices,
            labels.nodules,
            rule,
            allow_unlabelled=allow_unlabelled,
            feature_config=feature_config,
        )
        for rule in rules
    )
    return evaluate_sets(
        sets,
        out_dir,
        head_config=head_config,
        aggregate_config=aggregate_config,
        config=config,
        seed=seed,
        progress=progress,
    )
