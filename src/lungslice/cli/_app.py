"""The typer application, console and progress bars shared by the CLI commands.

Only the CLI configures logging and draws progress; the library just logs and
calls back.

Start-up: ``lungslice --help`` must not import the science stack (torch, timm,
scipy, matplotlib, scikit-learn, pandas), so command modules import the
library inside their commands. ``tests/cli/test_startup.py`` checks it.

No traceback reaches a user: :class:`_Group` turns library errors, OS errors
and anything unexpected into one message and a non-zero exit (``-vv`` logs
the traceback).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from lungslice.errors import LungsliceError, render_error
from lungslice.progress import ProgressCallback

log = logging.getLogger("lungslice.cli")


class _Group(TyperGroup):
    """The command group: every error becomes a message and an exit code, never a traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as err:
            if _is_cli_control(err):
                raise  # exits, usage errors and aborts: typer shows them itself
            _report(err)
            raise typer.Exit(code=2 if isinstance(err, LungsliceError) else 1) from None


def _is_cli_control(err: BaseException) -> bool:
    return type(err).__module__.split(".")[0] in ("typer", "click")


def _report(err: Exception) -> None:
    log.debug("error", exc_info=err)
    if isinstance(err, LungsliceError):
        text = f"error: {render_error(err, 'cli')}"
    elif isinstance(err, OSError):
        where = f"{err.filename}: " if err.filename else ""
        text = f"error: {where}{err.strerror or err} ({type(err).__name__})"
    else:
        text = (
            f"internal error: {type(err).__name__}: {err} - please report it with the command "
            "line; -vv shows the traceback"
        )
    console.print(text, style="red", soft_wrap=True, markup=False, highlight=False)


app = typer.Typer(
    name="lungslice",
    help=(
        "Chest CT slice triage: index DICOM trees, label LIDC-IDRI slices, render phantoms, "
        "extract transfer-learned features, train, evaluate and recommend slices to read."
    ),
    no_args_is_help=True,
    add_completion=False,
    cls=_Group,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()


def configure_logging(verbose: int) -> None:
    """Route library logs through rich; ``-v`` for INFO, ``-vv`` for DEBUG."""
    from rich.logging import RichHandler

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
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

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
    """Show a library error without a traceback and return the exit to raise.

    The remedy is phrased for the command line (flags, not keyword arguments).
    """
    _report(error)
    return typer.Exit(code=2)
