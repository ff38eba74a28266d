"""The package imports, the CLI answers, provenance records what it should."""

from __future__ import annotations

import dataclasses
import json

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
