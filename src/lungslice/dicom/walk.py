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


def walk_files(root: str | Path, unreadable: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Every file under ``root`` (or ``root`` itself) as absolute paths, sorted.

    Symbolic links to folders are not followed (no cycles); links to files
    are listed.

    Parameters
    ----------
    root : str or Path
        Folder (or file).
    unreadable : list, optional
        Receives ``(folder, reason)`` for every folder that cannot be listed
        (its files cannot be counted); without it such a folder is an error.

    Raises
    ------
    DicomReadError
        If ``root`` does not exist, or a folder cannot be listed and
        ``unreadable`` is None.
    """
    root = Path(root)
    if root.is_file():
        return [root.absolute()]
    if not root.is_dir():
        raise DicomReadError(f"{root}: no such file or folder")
    problems: list[tuple[Path, str]] = [] if unreadable is None else unreadable

    def note(err: OSError) -> None:
        problems.append((Path(err.filename or root), f"unreadable folder: {err.strerror or err}"))

    found: list[Path] = []
    for folder, dirs, names in os.walk(root.absolute(), onerror=note, followlinks=False):
        dirs.sort()
        found.extend(Path(folder, name) for name in sorted(names))
    if unreadable is None and problems:
        where, reason = problems[0]
        raise DicomReadError(
            f"{where}: {reason}; its files cannot be accounted for - fix the permissions"
        )
    return found
