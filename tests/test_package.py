"""The package imports, the CLI answers, provenance records what it should."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from importlib import metadata

import pytest
from typer.testing import CliRunner

import lungslice
from lungslice.cli import app
from lungslice.provenance import config_hash, provenance


@dataclasses.dataclass(frozen=True)
class _Cfg:
    a: int = 1
    b: tuple[float, ...] = (1.0, 2.0)


def test_cli_version_prints_versions() -> None:
    result = CliRunner().invoke(app, ["version"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["lungslice"] == "0.1.0"
    assert lungslice.__doc__


def test_config_hash_changes_with_any_value() -> None:
    assert config_hash(_Cfg()) == config_hash(_Cfg())
    assert config_hash(_Cfg()) != config_hash(_Cfg(a=2))
    assert config_hash(_Cfg()) != config_hash(_Cfg(b=(1.0, 2.5)))


def test_provenance_records_config_and_versions() -> None:
    rec = provenance(_Cfg(), note="x")
    assert rec["config"] == {"a": 1, "b": [1.0, 2.0]}
    assert rec["versions"]["numpy"]
    assert rec["note"] == "x"


def test_top_level_verbs_load_lazily() -> None:
    code = (
        "import sys, lungslice; "
        "assert 'torch' not in sys.modules and 'pandas' not in sys.modules, 'eager import'; "
        "print(lungslice.__version__, ' '.join(dir(lungslice)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    version, names = done.stdout.split(" ", 1)
    assert version == metadata.version("lungslice")
    assert names.split() == sorted(lungslice.__all__)
    for name in lungslice.__all__:
        assert getattr(lungslice, name) is not None
    assert lungslice.predict.__module__ == "lungslice.prediction"
    assert lungslice.train_model.__module__ == "lungslice.model.train"
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        _ = lungslice.nothing  # type: ignore[attr-defined]
