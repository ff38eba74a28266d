"""What made an output: resolved configuration, library versions, checksums.

Every artifact lungslice writes records this, so a file can be traced back to
the settings and software that produced it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["config_dict", "config_hash", "file_sha256", "library_versions", "provenance"]

_LIBRARIES = (
    "lungslice",
    "numpy",
    "scipy",
    "pandas",
    "pyarrow",
    "pydicom",
    "torch",
    "timm",
    "scikit-learn",
    "highdicom",
)


def library_versions(names: tuple[str, ...] = _LIBRARIES) -> dict[str, str | None]:
    """Return the installed version of each named distribution (None if absent)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def config_dict(config: Any) -> dict[str, Any]:
    """Turn a (frozen) dataclass config into plain JSON-serialisable values."""
    result = _jsonable(config)
    if not isinstance(result, dict):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    return result


def config_hash(config: Any, length: int = 12) -> str:
    """A short stable hash of a config: changes whenever any value changes."""
    payload = json.dumps(config_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, hex encoded."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def provenance(config: Any | None = None, **extra: Any) -> dict[str, Any]:
    """The record stored with every output: config, versions, platform, time."""
    record: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if config is not None:
        record["config"] = config_dict(config)
        record["config_type"] = type(config).__name__
    record.update({k: _jsonable(v) for k, v in extra.items()})
    return record
