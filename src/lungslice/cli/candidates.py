"""CLI: ``lungslice candidates extract | evaluate | train`` — the candidate path.

Lung field -> 3D blob candidates -> pretrained hidden-layer features of
tri-planar patches -> a candidate classifier. Heavy imports stay inside the
commands so that ``lungslice --help`` starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from lungslice.cli import options as opt
from lungslice.cli._app import app, console, fail, out, progress_bar
from lungslice.errors import LungsliceError

# shared by `candidates evaluate` and `candidates train`
_WORK: Any = typer.Argument(..., help="Work folder of `candidates extract`.")
_LABELS: Any = typer.Argument(..., help="Output of `lungslice labels`.")
_FOLDS: Any = typer.Option(4, "--folds", help="Patient-grouped folds (below 2: none).")
_BOOT: Any = typer.Option(200, "--bootstrap", help="Patient bootstrap replicates for CIs.")
_SEED: Any = typer.Option(0, "--seed", help="Seed of folds, classifier and bootstrap.")
_KIND: Any = typer.Option(
    "hgb",
    "--kind",
    help=(
        "Classifier: 'hgb' (boosted trees on PCA of the CNN features + the detector's "
        "measurements), 'logistic' (over the --c grid), or 'auto' (GridSearchCV picks)."
    ),
)

candidates_app = typer.Typer(
    help=(
        "The candidate path: detect nodule candidates in the lung field, extract pretrained "
        "features of tri-planar patches around them, evaluate and train the candidate "
        "classifier (FROC/CPM, slice AUC, recall@k with the chance line)."
    ),
    no_args_is_help=True,
)
app.add_typer(candidates_app, name="candidates")


def _c_grid(text: str, kind: str = "logistic") -> list[dict[str, list[Any]]]:
    from lungslice.model.candidate_head import GRID_KINDS, classifier_grid

    try:
        values = [float(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"expected comma-separated numbers such as 0.01,0.1,1, got {text!r}", param_hint="--c"
        ) from None
    if not values or any(v <= 0 for v in values):
        raise typer.BadParameter(f"expected positive numbers, got {text!r}", param_hint="--c")
    if kind not in GRID_KINDS:
        raise typer.BadParameter(
            f"expected one of {', '.join(GRID_KINDS)}, got {kind!r}", param_hint="--kind"
        )
    return classifier_grid(kind, values, 128)


@candidates_app.command("extract")
def extract(
    data_dir: Path = typer.Argument(..., help="DICOM tree (e.g. the LIDC-IDRI folder)."),
    work_dir: Path = typer.Option(
        ..., "--out", help="Work folder; the cache goes to WORK/candidates/<key>/."
    ),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", help="Feature backbone."),
    weights: str = typer.Option(
        "imagenet", "--weights", help="'imagenet', 'random' (no-transfer ablation) or a FILE."
    ),
    layers: str | None = typer.Option(
        None, "--layers", help="Hidden layers, comma-separated (default: the backbone's)."
    ),
    max_candidates: int | None = typer.Option(
        None, "--max-candidates", help="Candidates kept per series (default: the detector's)."
    ),
    engine: str = opt.ENGINE,
    address: str | None = opt.ADDRESS,
    actors: int | None = opt.ACTORS,
    gpus_per_actor: float = opt.GPUS_PER_ACTOR,
    allow_gaps: bool = opt.ALLOW_GAPS,
    allow_irregular: bool = opt.ALLOW_IRREGULAR,
    tilt: str = opt.TILT,
    duplicates: str = opt.DUPLICATES,
    min_slices: int = opt.MIN_SLICES,
    allow_missing_rescale: bool = opt.ALLOW_MISSING_RESCALE,
    hu_check: str = opt.HU_CHECK,
) -> None:
    """Detect candidates in every CT series under DATA and cache their features (resumable).

    The loader options are those of index, show, extract and predict: what they
    accept there is extracted here.
    """
    from lungslice.candidates.detect import DetectorConfig
    from lungslice.features.candidates import CandidateConfig, extract_candidates
    from lungslice.features.config import FeatureConfig
    from lungslice.features.ray_engine import ray_options

    try:
        load = opt.load_config_from(locals())
        ray = ray_options(engine, address, actors, gpus_per_actor)
        feats = FeatureConfig(
            backbone=backbone,
            weights=weights,
            layers=tuple(layers.split(",")) if layers else None,
        )
        detector = (
            DetectorConfig(max_candidates=max_candidates)
            if max_candidates is not None
            else DetectorConfig()
        )
        config = CandidateConfig(features=feats, detector=detector)
        with progress_bar("candidates", "series") as bar:
            result = extract_candidates(
                data_dir, work_dir, config, bar, engine=engine, ray=ray, load=load
            )
    except LungsliceError as err:
        raise fail(err) from err
    out.print(result.summary())
    failed = result.manifest[result.manifest["status"] == "failed"]
    for row in failed.itertuples():
        console.print(f"[yellow]failed[/] {row.series_uid}: {row.reason}")


@candidates_app.command("evaluate")
def evaluate(
    work_dir: Path = _WORK,
    labels_dir: Path = _LABELS,
    out_dir: Path = typer.Option(
        ..., "--out", help="Folder for metrics.json, report.md, froc.png."
    ),
    c: str = typer.Option(
        "0.01", "--c", help="Classifier regularisation C, comma-separated; several = GridSearchCV."
    ),
    kind: str = _KIND,
    folds: int = _FOLDS,
    n_boot: int = _BOOT,
    seed: int = _SEED,
) -> None:
    """Cross-validate the candidate classifier by patient: FROC/CPM, slice AUC, recall@k."""
    from lungslice.model.candidate_eval import build_candidate_set, evaluate_candidates

    grid = _c_grid(c, kind)
    try:
        cs = build_candidate_set(work_dir, labels_dir)
        with progress_bar("cross-validation", "folds") as bar:
            record = evaluate_candidates(
                cs, out_dir, n_splits=folds, n_boot=n_boot, seed=seed, param_grid=grid, progress=bar
            )
    except LungsliceError as err:
        raise fail(err) from err
    _print_figures(record["figures"])
    out.print(f"-> {out_dir / 'report.md'}")


def _print_figures(figures: dict[str, dict[str, Any]]) -> None:
    from lungslice.model.candidate_eval import HEADLINE_FIGURES
    from lungslice.model.metrics import format_figure

    names = list(figures)
    out.print(f"  {'':<44}" + "".join(f"{n:<26}" for n in names))
    for key, label in HEADLINE_FIGURES:
        cells = "".join(f"{format_figure(figures[n].get(key)):<26}" for n in names)
        out.print(f"  {label:<44}{cells}")


@candidates_app.command("train")
def train(
    work_dir: Path = _WORK,
    labels_dir: Path = _LABELS,
    out_dir: Path = typer.Option(..., "--out", help="Model bundle folder."),
    c: str = typer.Option(
        "0.01,0.1", "--c", help="Classifier C grid, comma-separated (GridSearchCV by patient)."
    ),
    kind: str = _KIND,
    folds: int = _FOLDS,
    n_boot: int = _BOOT,
    seed: int = _SEED,
) -> None:
    """Train a candidate model bundle (for `lungslice predict`) with cross-validated figures."""
    from lungslice.model.candidate_bundle import train_candidate_bundle
    from lungslice.model.candidate_eval import build_candidate_set

    grid = _c_grid(c, kind)
    try:
        cs = build_candidate_set(work_dir, labels_dir)
        with progress_bar("training", "folds") as bar:
            result = train_candidate_bundle(
                cs, out_dir, param_grid=grid, n_splits=folds, n_boot=n_boot, seed=seed, progress=bar
            )
    except LungsliceError as err:
        raise fail(err) from err
    _print_figures({"cross-validated": result.figures})
    out.print(
        f"aggregator {result.findings.aggregator}, classifier {result.params} -> {result.path}"
    )
