"""Start-up: the CLI parses its arguments before importing the science stack.

Module names, never timings: ``python -X importtime`` lists every module a
start-up imports (one line each on stderr), and none of the heavy ones may be
among them for ``import lungslice.cli``, ``lungslice --help`` or a command's
``--help``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

#: What `--help` must not import (each costs 0.2-3 s on a 2-core machine).
HEAVY = (
    "torch",
    "timm",
    "matplotlib",
    "sklearn",
    "ray",
    "scipy",
    "pandas",
    "pyarrow",
    "pydicom",
    "numpy",
)


def _imported(*args: str) -> set[str]:
    """Top-level packages ``python -X importtime ARGS`` imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            module = line.rsplit("|", 1)[1].strip()
            names.add(module.split(".")[0])
    assert "lungslice" in names, done.stderr[-2000:]  # the listing is what we think it is
    return names


@pytest.mark.parametrize(
    "args",
    [
        ("-c", "import lungslice.cli"),
        ("-c", "import lungslice"),
        ("-m", "lungslice", "--help"),
        ("-m", "lungslice", "show", "--help"),
        ("-m", "lungslice", "predict", "--help"),
        ("-m", "lungslice", "extract", "--help"),
    ],
    ids=lambda a: " ".join(a),
)
def test_start_up_imports_no_heavy_module(args: tuple[str, ...]) -> None:
    loaded = _imported(*args)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_help_lists_the_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lungslice", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for command in ("index", "show", "extract", "predict", "train", "version"):
        assert command in done.stdout, done.stdout
    assert "Usage: lungslice" in " ".join(done.stdout.split())
