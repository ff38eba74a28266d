"""Fixtures shared by every test folder."""

from __future__ import annotations

import configparser
import os
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from importlib import metadata
from typing import Any

import numpy as np
import pytest

from tests.helpers import Pipeline, build_pipeline


@contextmanager
def _pylidc_imported(mp: pytest.MonkeyPatch) -> Iterator[Any]:
    # pylidc 0.2.3 needs np.int/np.float, pkg_resources and SafeConfigParser, all gone
    # from today's stack: shim them inside the test only, then forget the module.
    pytest.importorskip("sqlalchemy")
    fake = types.ModuleType("pkg_resources")
    fake.resource_filename = lambda pkg, name: str(  # type: ignore[attr-defined]
        metadata.distribution(pkg).locate_file(f"{pkg}/{name}")
    )
    mp.setattr(np, "int", int, raising=False)
    mp.setattr(np, "float", float, raising=False)
    mp.setitem(sys.modules, "pkg_resources", fake)
    if not hasattr(configparser, "SafeConfigParser"):
        mp.setattr(configparser, "SafeConfigParser", configparser.ConfigParser, raising=False)
    import pylidc

    try:
        yield pylidc
    finally:
        for name in [m for m in sys.modules if m == "pylidc" or m.startswith("pylidc.")]:
            del sys.modules[name]


@pytest.fixture(scope="session")
def pylidc_importer() -> Callable[[pytest.MonkeyPatch], AbstractContextManager[Any]]:
    """``with pylidc_importer(monkeypatch) as pl:`` imports pylidc with the NumPy-2 shims."""
    return _pylidc_imported


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """One local Ray for the whole test session (`num_cpus=2`, no dashboard), shut down after."""
    if os.environ.get("CI"):
        import ray  # CI installs the extra (`make test`): a missing Ray is a failure there
    else:
        ray = pytest.importorskip("ray", reason="pip install 'lungslice[ray]'")
    if ray.is_initialized():
        yield ray
        return
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=100 * 2**20,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """The small trained whole-slice pipeline (phantom, labels, features, bundle), built once.

    Shared by the predict, batch and serve tests; a test that adds files copies
    ``pipeline.data`` first.
    """
    return build_pipeline(tmp_path_factory.mktemp("pipeline"))
