"""CLI: ``lungslice predict-batch`` — every CT series of a collection, resumable, local or Ray."""

from __future__ import annotations

from pathlib import Path

import typer

from lungslice.cli import options as opt
from lungslice.cli._app import app, fail, out, progress_bar
from lungslice.errors import LungsliceError


@app.command("predict-batch")
def predict_batch(
    root: Path = typer.Argument(..., help="DICOM tree of the collection (e.g. LIDC-IDRI/)."),
    model: Path = typer.Option(..., "--model", help="Model bundle folder."),
    out_dir: Path = typer.Option(
        ..., "--out", help="One folder per study plus summary.parquet and summary.csv."
    ),
    top_k: int = typer.Option(5, "--top-k", help="Slices recommended per series."),
    no_report: bool = typer.Option(False, "--no-report", help="Skip report.html."),
    no_key_images: bool = typer.Option(False, "--no-key-images", help="Skip key_images.dcm."),
    engine: str = opt.ENGINE,
    address: str | None = opt.ADDRESS,
    actors: int | None = opt.ACTORS,
    gpus_per_actor: float = opt.GPUS_PER_ACTOR,
) -> None:
    """Predict every CT series under ROOT; a rerun skips what is done, failures are recorded."""
    from lungslice.batch import predict_batch as run
    from lungslice.features.ray_engine import ray_options
    from lungslice.prediction import PredictConfig

    try:
        ray = ray_options(engine, address, actors, gpus_per_actor)
        config = PredictConfig(
            top_k=top_k, write_report=not no_report, write_key_images=not no_key_images
        )
        with progress_bar("predict", unit="series") as bar:
            result = run(root, model, out_dir, config, bar, engine=engine, ray=ray)
    except LungsliceError as err:
        raise fail(err) from err
    out.print(result.summary_text(), soft_wrap=True)
