"""Imports every command module so that each registers its commands on ``app``.

Each topic lives in its own module (``cli/<topic>.py``); add one import line here.
"""

from __future__ import annotations

import json

from lungslice.cli import batch as _batch  # noqa: F401
from lungslice.cli import candidates as _candidates  # noqa: F401
from lungslice.cli import demo as _demo  # noqa: F401
from lungslice.cli import features as _features  # noqa: F401
from lungslice.cli import ingest as _ingest  # noqa: F401
from lungslice.cli import labels as _labels  # noqa: F401
from lungslice.cli import model as _model  # noqa: F401
from lungslice.cli import predict as _predict  # noqa: F401
from lungslice.cli import serve as _serve  # noqa: F401
from lungslice.cli import synth as _synth  # noqa: F401
from lungslice.cli._app import app, out


@app.command("version")
def version() -> None:
    """Print the versions of lungslice and the libraries it depends on, as JSON."""
    from lungslice.provenance import library_versions  # importlib.metadata: not at start-up

    out.print_json(json.dumps(library_versions()))
