"""The typer application, console and progress bars shared by the CLI commands.

Only the CLI configures logging and draws progress; the library just logs and
calls back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lungslice.errors import LungsliceError
from lungslice.progress import ProgressCallback

app = typer.Typer(
    name="lungslice",
    help=(
        "Chest CT slice triage: index DICOM trees, label LIDC-IDRI slices, render phantoms, "
        "extract transfer-learned features, train, evaluate and recommend slices to read."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


def configure_logging(verbose: int) -> None:
    """Route library logs through rich; ``-v`` for INFO, ``-vv`` for DEBUG."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
        force=True,
    )


@app.callback()
def _root(
    verbose: int = typer.Option(
        0, "--verbose", "-v", count=True, help="More log output (-v info, -vv debug)."
    ),
) -> None:
    configure_logging(verbose)


@contextmanager
def progress_bar(description: str, unit: str = "items") -> Iterator[ProgressCallback]:
    """A rich progress bar as a library progress callback."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TextColumn("[dim]{task.fields[label]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=None, label="")

        def callback(done: int, total: int, label: str = "") -> None:
            bar.update(task, completed=done, total=total, label=label)

        yield callback


def fail(error: LungsliceError) -> typer.Exit:
    """Show a library error without a traceback and return the exit to raise."""
    console.print(f"[bold red]error:[/] {error}")
    return typer.Exit(code=2)
