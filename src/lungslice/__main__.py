"""``python -m lungslice``: the command line, as the ``lungslice`` script."""

from __future__ import annotations

from lungslice.cli import app

if __name__ == "__main__":
    app(prog_name="lungslice")
