"""Finding files in a tree and naming why one was skipped (light: no pandas).

Shared by the index and the loader; worker processes import only this.
"""

from __future__ import annotations

import os
from pathlib import Path

from lungslice.errors import DicomReadError

__all__ = ["reason_category", "walk_files"]


def reason_category(reason: str | None) -> str:
    """The short category of a reason: the text before its first ``": "``."""
    if not reason:
        return ""
    return reason.split(": ", 1)[0]


def walk_files(root: str | Path) -> list[Path]:
    """Every file under ``root`` (or ``root`` itself) as absolute paths, sorted.

    Symbolic links to folders are not followed (no cycles); links to files
    are listed.

    Raises
    ------
    DicomReadError
        If ``root`` does not exist.
    """
    root = Path(root)
    if root.is_file():
        return [root.absolute()]
    if not root.is_dir():
        raise DicomReadError(f"{root}: no such file or folder")
    found: list[Path] = []
    for folder, dirs, names in os.walk(root.absolute(), followlinks=False):
        dirs.sort()
        found.extend(Path(folder, name) for name in sorted(names))
    return found
