"""CLI: ``lungslice train`` (model bundle) and ``lungslice evaluate`` (CV report)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

import typer
from rich.table import Table

from lungslice.cli._app import app, console, fail, out, progress_bar
from lungslice.errors import LungsliceError

_FEATURES_HELP = (
    "Work folder of `lungslice extract` (with one feature cache, else pass --key) "
    "or its WORK/features/<key> folder."
)
_LABELS_HELP = "Labels folder written by `lungslice labels` (slices/nodules parquet + labels.json)."


def _head_config(head: str, grid: str | None) -> Any:
    from lungslice.errors import ConfigError
    from lungslice.model.heads import HeadConfig, HeadKind

    kind = cast(HeadKind, head)  # HeadConfig checks the value
    if grid is None:
        return HeadConfig(kind=kind)
    try:
        values = tuple(float(v) for v in grid.split(",") if v.strip())
    except ValueError:
        raise ConfigError(
            f"--grid: expected comma-separated numbers such as 0.01,0.1,1, got {grid!r}."
        ) from None
    if head == "logistic":
        return HeadConfig(kind=kind, C_grid=values)
    return HeadConfig(kind=kind, weight_decay_grid=values)


def _rule(labels_dir: Path, exclude_ambiguous: bool | None, min_readers: int | None) -> Any:
    from lungslice.lidc.labels import read_labels, rule_from_provenance

    rule = rule_from_provenance(read_labels(labels_dir).provenance)
    changes: dict[str, Any] = {}
    if exclude_ambiguous is not None:
        changes["exclude_ambiguous"] = exclude_ambiguous
    if min_readers is not None:
        changes["min_readers"] = min_readers
    return dataclasses.replace(rule, **changes) if changes else rule


def _figure_table(title: str, columns: dict[str, dict[str, Any]], names: list[str]) -> Table:
    from lungslice.model.metrics import format_figure

    table = Table(title=title)
    table.add_column("figure")
    for col in columns:
        table.add_column(col)
    for name in names:
        cells = []
        for figures in columns.values():
            cells.append(format_figure(figures.get(name)))
        table.add_row(name, *cells)
    return table


_HEADLINE = [
    "slice.roc_auc.macro",
    "slice.roc_auc.malignant",
    "slice.pr_auc.malignant",
    "nodule.recall@1.malignant",
    "nodule.recall@5.malignant",
    "nodule.recall@5.benign",
    "nodule.skippable_at_95_recall",
    "study.roc_auc.malignant",
    "study.roc_auc.any_nodule",
]


@app.command("train")
def train(
    features: Path = typer.Argument(..., help=_FEATURES_HELP),
    labels_dir: Path = typer.Argument(..., help=_LABELS_HELP),
    out_dir: Path = typer.Option(..., "--out", help="Model bundle folder (model.json + weights)."),
    head: str = typer.Option("logistic", "--head", help="Head kind: logistic or mlp."),
    grid: str | None = typer.Option(
        None,
        "--grid",
        help="Comma-separated grid chosen by inner patient CV: C for logistic (default "
        "0.01,0.1,1), weight decay for mlp (default 1e-4,1e-2).",
    ),
    aggregator: str = typer.Option(
        "auto",
        "--aggregator",
        help="Study aggregator stored in the bundle: auto (best by CV), max, noisy_or, learned.",
    ),
    folds: int = typer.Option(
        5, "--folds", help="Patient folds for the CV metrics in model.json (0: skip CV)."
    ),
    n_boot: int = typer.Option(200, "--bootstrap", help="Patient bootstrap replicates for CIs."),
    exclude_ambiguous: bool | None = typer.Option(
        None,
        "--exclude-ambiguous/--keep-ambiguous",
        help="Override the labels' rule: drop slices whose nodule scores exactly the threshold.",
    ),
    min_readers: int | None = typer.Option(
        None, "--min-readers", help="Override the labels' rule: ignore nodules with fewer readers."
    ),
    key: str | None = typer.Option(None, "--key", help="Feature cache key inside the work folder."),
    allow_unlabelled: bool = typer.Option(
        False, "--allow-unlabelled", help="Drop (and record) feature series without labels."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of folds, heads and bootstrap."),
) -> None:
    """Train a slice head on cached features and write a model bundle.

    Cross-validates by patient first (figures with 95 % CIs go into model.json and
    pick the study aggregator), then fits the head on all patients.
    """
    from lungslice.model.evaluate import EvaluateConfig
    from lungslice.model.train import AggregatorChoice, train_model

    try:
        rule = _rule(labels_dir, exclude_ambiguous, min_readers)
        head_config = _head_config(head, grid)
        with progress_bar("train", "steps") as progress:
            result = train_model(
                features,
                labels_dir,
                out_dir,
                head_config=head_config,
                rule=rule,
                aggregator=cast(AggregatorChoice, aggregator),  # train_model checks it
                config=EvaluateConfig(n_splits=folds, n_boot=n_boot),
                key=key,
                allow_unlabelled=allow_unlabelled,
                seed=seed,
                progress=progress,
            )
    except LungsliceError as err:
        raise fail(err) from err
    s = result.summary
    out.print(
        f"bundle: {result.bundle}\n"
        f"rule {s['label_rule_name']}: {s['patients']} patients, {s['series']} series, "
        f"slices per class {s['slices_per_class']}, rejected {s['rejected_slices']}\n"
        f"study aggregator: {result.aggregate_config.method}"
    )
    if result.cv_metrics:
        figures = result.cv_metrics["figures"]
        out.print(_figure_table(f"{folds}-fold patient CV", {"value [95% CI]": figures}, _HEADLINE))


@app.command("evaluate")
def evaluate(
    features: Path = typer.Argument(..., help=_FEATURES_HELP),
    labels_dir: Path = typer.Argument(..., help=_LABELS_HELP),
    out_dir: Path = typer.Option(
        ..., "--out", help="Folder for metrics.json, report.md, PNG plots, predictions.parquet."
    ),
    head: str = typer.Option("logistic", "--head", help="Head kind: logistic or mlp."),
    grid: str | None = typer.Option(None, "--grid", help="Hyperparameter grid (see train)."),
    folds: int = typer.Option(5, "--folds", help="Patient folds (StratifiedGroupKFold)."),
    n_boot: int = typer.Option(200, "--bootstrap", help="Patient bootstrap replicates for CIs."),
    key: str | None = typer.Option(None, "--key", help="Feature cache key inside the work folder."),
    allow_unlabelled: bool = typer.Option(
        False, "--allow-unlabelled", help="Drop (and record) feature series without labels."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of folds, heads and bootstrap."),
) -> None:
    """Patient-disjoint cross-validated evaluation under three label rules side by side.

    The labels' own rule, the same with ambiguous nodules (mean malignancy = 3)
    excluded, and with nodules of >= 3 readers only; slice, nodule and study
    figures with 95 % patient-bootstrap CIs.
    """
    from lungslice.model.evaluate import EvaluateConfig
    from lungslice.model.evaluate import evaluate as run_evaluate

    try:
        head_config = _head_config(head, grid)
        with progress_bar("evaluate", "folds") as progress:
            result = run_evaluate(
                features,
                labels_dir,
                out_dir,
                head_config=head_config,
                config=EvaluateConfig(n_splits=folds, n_boot=n_boot),
                key=key,
                allow_unlabelled=allow_unlabelled,
                seed=seed,
                progress=progress,
            )
    except LungsliceError as err:
        raise fail(err) from err
    columns = {name: r["figures"] for name, r in result["rules"].items()}
    out.print(_figure_table("cross-validated figures, value [95% CI]", columns, _HEADLINE))
    console.print(f"wrote {out_dir / 'metrics.json'}, {out_dir / 'report.md'} and plots")


@app.command("ablate")
def ablate(
    work_dir: Path = typer.Argument(..., help="Work folder holding features/<key> caches."),
    labels_dir: Path = typer.Argument(..., help=_LABELS_HELP),
    keys: str = typer.Option(
        ..., "--keys", help="Comma-separated feature cache keys (e.g. imagenet vs random weights)."
    ),
    out_dir: Path = typer.Option(..., "--out", help="Folder for ablation.md and ablation.json."),
    layers: str | None = typer.Option(
        None,
        "--layers",
        help="Layer subsets separated by ';', layers within one by ',' "
        "(e.g. 'head;blocks.4,blocks.6'); default: each cache's full layer list.",
    ),
    head: str = typer.Option("logistic", "--head", help="Head kind: logistic or mlp."),
    grid: str | None = typer.Option(None, "--grid", help="Hyperparameter grid (see train)."),
    folds: int = typer.Option(5, "--folds", help="Patient folds (the same for every variant)."),
    n_boot: int = typer.Option(200, "--bootstrap", help="Patient bootstrap replicates for CIs."),
    seed: int = typer.Option(0, "--seed", help="Seed of folds, heads and bootstrap."),
) -> None:
    """Compare feature caches x layer subsets x study aggregators, each figure with its CI.

    Extract once per weights/input mode with several layers (`lungslice extract
    --layers blocks.4,blocks.6,head`); layer subsets are column slices of a cache.
    """
    from lungslice.model.ablation import ablation
    from lungslice.model.evaluate import EvaluateConfig

    choices = (
        [tuple(x.strip() for x in part.split(",") if x.strip()) for part in layers.split(";")]
        if layers
        else None
    )
    try:
        head_config = _head_config(head, grid)
        with progress_bar("ablation", "variants") as progress:
            table = ablation(
                work_dir,
                [k.strip() for k in keys.split(",") if k.strip()],
                labels_dir,
                out_dir,
                layer_choices=choices,
                head_config=head_config,
                config=EvaluateConfig(n_splits=folds, n_boot=n_boot),
                seed=seed,
                progress=progress,
            )
    except LungsliceError as err:
        raise fail(err) from err
    result = Table(title="ablation (value [95% CI])")
    for column in table.columns:
        result.add_column(str(column))
    for row in table.itertuples(index=False):
        result.add_row(*(str(v) for v in row))
    out.print(result)
    console.print(f"wrote {out_dir / 'ablation.md'} and {out_dir / 'ablation.json'}")
