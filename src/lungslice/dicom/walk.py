"""Finding files in a tree and naming why one was skipped (light: no pandas).

Shared by the index and the loader; worker processes import only this.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lungslice.errors import DicomReadError

__all__ = ["reason_category", "walk_files"]

log = logging.getLogger(__name__)


def reason_category(reason: str | None) -> str:
    """The short category of a reason: the text before its first ``": "``."""
    if not reason:
        return ""
    return reason.split(": ", 1)[0]


def walk_files(root: str | Path, unreadable: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Every file under ``root`` (or ``root`` itself) as absolute paths, sorted.

    Symbolic links to folders are followed (TCIA downloads are often
    assembled from links), each real folder once: a link to a folder already
    walked, or to one of its own ancestors (a loop), is not entered again and
    is reported. Links to files are listed.

    Parameters
    ----------
    root : str or Path
        Folder (or file).
    unreadable : list, optional
        Receives ``(path, reason)`` for every folder that cannot be listed
        (``"unreadable folder: ..."``, its files cannot be counted) and every
        folder link not followed (``"skipped link: ..."``); without it an
        unreadable folder is an error and skipped links are logged.

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
    problems: list[tuple[Path, str]] = []

    def note(err: OSError) -> None:
        problems.append((Path(err.filename or root), f"unreadable folder: {err.strerror or err}"))

    found: list[Path] = []
    start = root.absolute()
    # Real folders of the tree first: a link to one of them adds nothing.
    walked: dict[str, Path] = {os.path.realpath(start): start}
    for folder, dirs, _ in os.walk(start, followlinks=False):
        for name in dirs:
            path = Path(folder, name)
            if not path.is_symlink():
                walked[os.path.realpath(path)] = path
    for folder, dirs, names in os.walk(start, onerror=note, followlinks=True):
        dirs.sort()
        keep = []
        for name in dirs:
            path = Path(folder, name)
            real = os.path.realpath(path)
            if not path.is_symlink():
                if walked.setdefault(real, path) == path:
                    keep.append(name)
                continue
            here = os.path.realpath(folder)
            if here == real or here.startswith(real.rstrip(os.sep) + os.sep):
                problems.append((path, f"skipped link: {path} -> {real} is a loop (its ancestor)"))
            elif real in walked:
                problems.append(
                    (path, f"skipped link: {path} -> {real} already indexed as {walked[real]}")
                )
            else:
                walked[real] = path
                keep.append(name)
        dirs[:] = keep
        found.extend(Path(folder, name) for name in sorted(names))
    if unreadable is not None:
        unreadable.extend(problems)
        return found
    for where, reason in problems:
        if reason.startswith("unreadable folder"):
            raise DicomReadError(
                f"{where}: {reason}; its files cannot be accounted for - fix the permissions"
            )
        log.warning("%s", reason)
    return found
