"""``lungslice index`` and ``lungslice show``: catalogue DICOM trees, inspect one series."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from lungslice.cli._app import app, console, fail, out, progress_bar
from lungslice.dicom.describe import describe_volume, save_preview_png
from lungslice.dicom.discover import index_tree
from lungslice.dicom.volume import LoadConfig, load_series
from lungslice.errors import LungsliceError

_ALLOW_GAPS = typer.Option(
    False, "--allow-gaps", help="Accept missing slices (steps > 1.5x the median spacing)."
)
_ALLOW_IRREGULAR = typer.Option(
    False, "--allow-irregular", help="Accept slice steps that differ from the median by > 5 %."
)
_TILT = typer.Option(
    "refuse", "--tilt", help="Gantry-tilted series: 'refuse' (default) or 'correct' (shear)."
)
_DUPLICATES = typer.Option(
    "keep_lower_instance",
    "--duplicates",
    help="Images at the same position: 'keep_lower_instance' (as pylidc) or 'error'.",
)


def _config(allow_gaps: bool, allow_irregular: bool, tilt: str, duplicates: str) -> LoadConfig:
    return LoadConfig(
        allow_gaps=allow_gaps,
        allow_irregular=allow_irregular,
        tilt=tilt,  # type: ignore[arg-type]  # validated by LoadConfig
        duplicates=duplicates,  # type: ignore[arg-type]
    )


@app.command("index")
def index(
    root: Path = typer.Argument(..., help="Folder tree to walk (e.g. .../LIDC-IDRI)."),
    out_dir: Path = typer.Option(
        ..., "--out", help="Folder for files.parquet, series.parquet and index.json."
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Processes reading headers (default: all cores)."
    ),
    allow_gaps: bool = _ALLOW_GAPS,
    allow_irregular: bool = _ALLOW_IRREGULAR,
    tilt: str = _TILT,
    duplicates: str = _DUPLICATES,
) -> None:
    """Index every file under ROOT from DICOM headers only (no pixel data).

    files.parquet gets one row per file (used or skipped, with the reason);
    series.parquet one row per series (ok or rejected, with the reason), judged
    by the same checks `lungslice show` and every later stage load with.
    """
    try:
        config = _config(allow_gaps, allow_irregular, tilt, duplicates)
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
    console.print(f"wrote {out_dir / 'files.parquet'}, {out_dir / 'series.parquet'}")


@app.command("show")
def show(
    series_dir: Path = typer.Argument(..., help="Folder holding one CT series (or pick one)."),
    series_uid: str | None = typer.Option(
        None, "--series-uid", help="SeriesInstanceUID to load when the folder holds several."
    ),
    png: Path | None = typer.Option(
        None, "--png", help="Also save a few evenly spaced slices (lung window) to this PNG."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the facts as JSON."),
    allow_gaps: bool = _ALLOW_GAPS,
    allow_irregular: bool = _ALLOW_IRREGULAR,
    tilt: str = _TILT,
    duplicates: str = _DUPLICATES,
) -> None:
    """Load one CT series and print its geometry, HU statistics and the decisions made."""
    try:
        config = _config(allow_gaps, allow_irregular, tilt, duplicates)
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
    if written is not None:
        console.print(f"wrote {written}")
