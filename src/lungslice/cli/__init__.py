"""Command-line interface: a thin layer over the library (no logic of its own)."""

from __future__ import annotations

from lungslice.cli import commands as _commands  # noqa: F401  (registers the commands)
from lungslice.cli._app import app

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``lungslice`` console script."""
    app()
