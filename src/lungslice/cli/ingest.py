"""``lungslice index`` and ``lungslice show``: catalogue DICOM trees, inspect one series."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lungslice.cli import options as opt
from lungslice.cli._app import app, console, fail, out, progress_bar
from lungslice.errors import LungsliceError, phrase_for_cli


@app.command("index")
def index(
    root: Path = typer.Argument(..., help="Folder tree to walk (e.g. .../LIDC-IDRI)."),
    out_dir: Path = typer.Option(
        ..., "--out", help="Folder for files.parquet, series.parquet and index.json."
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Processes reading headers (default: all cores)."
    ),
    allow_gaps: bool = opt.ALLOW_GAPS,
    allow_irregular: bool = opt.ALLOW_IRREGULAR,
    tilt: str = opt.TILT,
    duplicates: str = opt.DUPLICATES,
    series_uid: str | None = opt.SERIES_UID,
    min_slices: int = opt.MIN_SLICES,
    allow_missing_rescale: bool = opt.ALLOW_MISSING_RESCALE,
    allow_empty: bool = typer.Option(
        False,
        "--allow-empty",
        help="Exit 0 even when the tree holds no usable CT series (for scripts).",
    ),
) -> None:
    """Index every file under ROOT from DICOM headers only (no pixel data).

    files.parquet gets one row per file (used or skipped, with the reason);
    series.parquet one row per series (ok or rejected, with the reason), judged
    by the same checks `lungslice show` and every later stage load with.
    Exits 1 when no series is usable (unless --allow-empty), or when
    --series-uid names a series that is absent or rejected.
    """
    from rich.table import Table

    from lungslice.dicom.discover import index_tree
    from lungslice.outputs import check_output_location

    try:
        check_output_location(out_dir, what="--out")
        config = opt.load_config_from(locals())
        with progress_bar("index", unit="files") as callback:
            result = index_tree(root, workers=workers, progress=callback, config=config)
        result.write(out_dir)
    except LungsliceError as err:
        raise fail(err) from None
    summary = result.summary()
    table = Table(title=f"index of {root}")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("files", str(summary["files"]))
    table.add_row("files used", str(summary["files_used"]))
    for reason, n in sorted(summary["files_skipped"].items(), key=lambda kv: -kv[1]):
        table.add_row(f"  files skipped: {reason}", str(n))
    table.add_row("series", str(summary["series"]))
    table.add_row("series ok", str(summary["series_ok"]))
    for reason, n in sorted(summary["series_rejected"].items(), key=lambda kv: -kv[1]):
        table.add_row(f"  series rejected: {reason}", str(n))
    out.print(table)
    skipped = result.files[result.files["status"] != "used"]
    for row in skipped.itertuples():
        reason = str(row.reason)
        if reason.startswith(("skipped link", "unreadable")):
            console.print(
                f"skipped: {row.path}: {reason}", markup=False, highlight=False, soft_wrap=True
            )
    for row in result.series[result.series["status"] != "ok"].itertuples():
        console.print(
            f"rejected: series {row.series_uid}: {phrase_for_cli(str(row.reason))}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"wrote {out_dir / 'files.parquet'}, {out_dir / 'series.parquet'}")
    if series_uid is not None:
        chosen = result.series[result.series["series_uid"] == series_uid]
        if chosen.empty or chosen["status"].iloc[0] != "ok":
            why = "not in the tree" if chosen.empty else f"rejected: {chosen['reason'].iloc[0]}"
            console.print(f"error: {root}: series {series_uid} is {why}", style="red", markup=False)
            raise typer.Exit(code=1)
    if summary["series_ok"] == 0 and not allow_empty:
        console.print(
            f"error: {root}: no usable CT series among {summary['files']} file(s) "
            f"({summary['series']} series, all rejected: {summary['series_rejected'] or 'none'}; "
            f"files skipped: {summary['files_skipped'] or 'none'}) - see the lines above and "
            f"{out_dir / 'files.parquet'}; pass --allow-empty to exit 0 anyway",
            style="red",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=1)


@app.command("show")
def show(
    series_dir: Path = typer.Argument(..., help="Folder holding one CT series (or pick one)."),
    series_uid: str | None = opt.SERIES_UID,
    png: Path | None = typer.Option(
        None, "--png", help="Also save a few evenly spaced slices (lung window) to this PNG."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as JSON."),
    allow_gaps: bool = opt.ALLOW_GAPS,
    allow_irregular: bool = opt.ALLOW_IRREGULAR,
    tilt: str = opt.TILT,
    duplicates: str = opt.DUPLICATES,
    min_slices: int = opt.MIN_SLICES,
    allow_missing_rescale: bool = opt.ALLOW_MISSING_RESCALE,
    hu_check: str = opt.HU_CHECK,
) -> None:
    """Load one CT series and print its geometry, HU statistics and the decisions made."""
    from rich.table import Table

    from lungslice.dicom.describe import describe_volume, save_preview_png
    from lungslice.dicom.volume import load_series
    from lungslice.outputs import check_output_location

    try:
        if png is not None:
            check_output_location(png, kind="file", what="--png")
        config = opt.load_config_from(locals())
        with progress_bar("load", unit="files") as callback:
            volume = load_series(
                series_dir, series_uid=series_uid, config=config, progress=callback
            )
        facts = describe_volume(volume)
        written = save_preview_png(volume, png) if png is not None else None
    except LungsliceError as err:
        raise fail(err) from None
    if as_json:
        out.print_json(json.dumps(facts, default=str))
    else:
        for section in ("identity", "geometry", "hu"):
            table = Table(title=section, show_header=False)
            table.add_column("key")
            table.add_column("value")
            for key, value in facts[section].items():
                shown = f"{value:.4g}" if isinstance(value, float) else str(value)
                table.add_row(key, shown)
            out.print(table)
        loading = facts["loading"]
        for decision in loading["decisions"]:
            out.print(f"decision: {decision}")
        for dropped in loading["dropped_duplicates"]:
            out.print(f"dropped: {dropped['path']}: {dropped['reason']}")
        for skipped in loading["skipped_files"]:
            out.print(f"skipped: {skipped['path']}: {skipped['reason']}")
    for warning in volume.info.get("warnings", []):
        console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False)
    if written is not None:
        console.print(f"wrote {written}")
