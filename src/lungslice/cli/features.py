"""CLI: ``lungslice backbones`` (registry, weights, --verify) and ``lungslice extract``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from lungslice.cli import options as opt
from lungslice.cli._app import app, console, fail, out, progress_bar
from lungslice.errors import LungsliceError, phrase_for_cli


@app.command("backbones")
def backbones(
    verify: str | None = typer.Option(
        None,
        "--verify",
        metavar="NAME",
        help=(
            "Classify scikit-image's photos (chelsea: tabby cat, ImageNet 281-285; coffee: "
            "espresso, 967) with backbone NAME, print the top-5 and exit 1 on a wrong answer."
        ),
    ),
    weights: str = typer.Option(
        "imagenet", "--weights", help="With --verify: 'imagenet', 'random' or a weights FILE."
    ),
    allow_download: bool = typer.Option(
        False, "--download", help="Allow downloading ImageNet weights when no cache has them."
    ),
) -> None:
    """List the backbones (layers, feature widths, weights available here) or verify one."""
    from lungslice.features.backbones import list_backbones, load_backbone
    from lungslice.features.verify import verify_backbone

    try:
        if verify is None:
            table = Table(title="backbones (timm)")
            for column in ("name", "layers (width)", "default", "size", "ImageNet weights"):
                table.add_column(column)
            for info in list_backbones():
                layers = ", ".join(
                    f"{n} ({w})" for n, w in zip(info.layers, info.widths, strict=True)
                )
                where = info.weights if info.weights_path is None else f"{info.weights}: "
                table.add_row(
                    info.name,
                    layers,
                    ",".join(info.default_layers),
                    str(info.input_size),
                    where + (info.weights_path or ""),
                )
            out.print(table)
            return
        bb = load_backbone(verify, weights, allow_download=allow_download)
        result = verify_backbone(bb)
    except LungsliceError as err:
        raise fail(err) from err
    out.print(f"{result.backbone}  weights sha256 {result.weights_id}", soft_wrap=True)
    for check in result.checks:
        verdict = "PASS" if check.passed else "FAIL"
        out.print(f"{check.image}: {verdict} (expected ImageNet class {list(check.expected)})")
        for rank, (index, name, prob) in enumerate(check.top5, start=1):
            out.print(f"  {rank}. {index:4d} {name}  {prob:.3f}")
    if not result.passed:
        console.print("[bold red]verification failed:[/] these are not the ImageNet weights")
        raise typer.Exit(code=1)


@app.command("extract")
def extract(
    data_dir: Path = typer.Argument(..., help="Folder tree of DICOM files (e.g. LIDC-IDRI/)."),
    out_dir: Path = typer.Option(
        ..., "--out", help="Work folder; features go to OUT/features/<key>/."
    ),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", help="Backbone name."),
    weights: str = typer.Option("imagenet", "--weights", help="'imagenet', 'random' or FILE."),
    layers: str | None = typer.Option(
        None, "--layers", help="Comma-separated hidden layers (default: the backbone's)."
    ),
    inputs: str = typer.Option("windows", "--inputs", help="'windows' (3 HU windows) or '2.5d'."),
    size: int | None = typer.Option(None, "--size", help="Input size (default: the backbone's)."),
    precision: str = typer.Option(
        "fp32",
        "--precision",
        help="'fp32' or 'bf16' (autocast: faster only on CPUs with AVX-512 BF16/AMX and GPUs).",
    ),
    batch_size: int = typer.Option(32, "--batch-size", help="Slices per forward pass."),
    slice_spacing: float = typer.Option(1.0, "--slice-spacing", help="Resampled spacing (mm)."),
    storage: str = typer.Option("float16", "--storage", help="'float16' or 'float32' .npy files."),
    seed: int = typer.Option(0, "--seed", help="Seed of --weights random."),
    compile_model: bool = typer.Option(
        False, "--compile/--no-compile", help="torch.compile the backbone (~10 s up front)."
    ),
    device: str = typer.Option("auto", "--device", help="'auto', 'cpu' or 'cuda'."),
    keep_going: bool = typer.Option(
        False, "--keep-going", help="Record a failing series in the manifest and go on."
    ),
    allow_download: bool = typer.Option(
        False, "--download", help="Allow downloading ImageNet weights when no cache has them."
    ),
    loader: str = typer.Option(
        "auto",
        "--loader",
        help="Where decoding/resampling run: 'inline' (between batches, all cores), 'thread' or "
        "'process' (overlapped with the model); 'auto' = inline on CPU, thread on GPU.",
    ),
    engine: str = opt.ENGINE,
    address: str | None = opt.ADDRESS,
    actors: int | None = opt.ACTORS,
    gpus_per_actor: float = opt.GPUS_PER_ACTOR,
    allow_gaps: bool = opt.ALLOW_GAPS,
    allow_irregular: bool = opt.ALLOW_IRREGULAR,
    tilt: str = opt.TILT,
    duplicates: str = opt.DUPLICATES,
    series_uid: str | None = opt.SERIES_UID,
    min_slices: int = opt.MIN_SLICES,
    allow_missing_rescale: bool = opt.ALLOW_MISSING_RESCALE,
    hu_check: str = opt.HU_CHECK,
) -> None:
    """Extract per-slice features of every CT series under DATA_DIR (resumable).

    The loader options are those of `index`, `show` and `predict`: a series
    they accept there is extracted here (--series-uid: only that series).
    """
    from lungslice.features.config import FeatureConfig
    from lungslice.features.extract import extract_dataset
    from lungslice.features.inputs import InputConfig
    from lungslice.features.ray_engine import ray_options
    from lungslice.features.runtime import tune_allocator
    from lungslice.features.weights import resolve_weights

    try:
        load = opt.load_config_from(locals())
        config = FeatureConfig(
            backbone=backbone,
            weights=weights,
            layers=tuple(layers.split(",")) if layers else None,
            inputs=InputConfig(mode=inputs, size=size),  # type: ignore[arg-type]
            precision=precision,  # type: ignore[arg-type]
            batch_size=batch_size,
            slice_spacing=slice_spacing,
            storage_dtype=storage,  # type: ignore[arg-type]
            seed=seed,
            compile=compile_model,
            device=device,
        )
        if allow_download:
            resolve_weights(backbone, weights, allow_download=True)  # fills the torch hub cache
        ray = ray_options(engine, address, actors, gpus_per_actor)
        tune_allocator()
        with progress_bar("extract", unit="series") as progress:
            result = extract_dataset(
                data_dir,
                out_dir,
                config,
                progress=progress,
                keep_going=keep_going,
                loader=loader,
                engine=engine,
                ray=ray,
                load=load,
                series_uid=series_uid,
            )
    except LungsliceError as err:
        raise fail(err) from err
    # failed series' reasons were written for Python (LoadConfig(...)); show them as flags
    out.print(phrase_for_cli(result.summary()), soft_wrap=True, markup=False, highlight=False)
