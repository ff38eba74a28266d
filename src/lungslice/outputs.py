"""Output locations: checked before any work, written whole or not at all.

:func:`check_output_location` refuses an output path that cannot be used (an
existing regular file where a folder is needed, a folder where a file is
needed, a file among its parents, a parent that is not writable) before a
command reads a single input, so a long run does not fail at its very end.

:func:`staged_output` makes an output folder appear atomically: the run
writes into a temporary sibling folder while holding a lock file beside the
target; only when the run succeeds is the finished folder swapped in (the
previous output renamed away, the new one renamed in, the old one deleted).
A failed run leaves the previous output untouched; a second run into the
same folder is refused while the first one's process is alive, and a lock
left by a dead process is taken over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from lungslice.errors import OutputBusyError, OutputLocationError

__all__ = ["check_output_location", "lock_path", "staged_output"]

log = logging.getLogger(__name__)


def check_output_location(
    path: str | Path, *, kind: Literal["folder", "file"] = "folder", what: str = "output"
) -> Path:
    """Refuse an output location that cannot be written, before any work.

    Parameters
    ----------
    path : str or Path
        Where the output will go.
    kind : {"folder", "file"}
        Whether ``path`` is to be a folder (created if absent) or a file
        (overwritten if it exists).
    what : str
        How messages name the location (``"--out"`` from the CLI).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OutputLocationError
        Naming the path, what is there and what to do.
    """
    path = Path(path)
    if kind == "folder" and path.exists() and not path.is_dir():
        raise OutputLocationError(
            f"{what} {path}: an existing file is there, expected a folder (or a path that does "
            "not exist yet) - choose another path, or move the file away"
        )
    if kind == "file" and path.is_dir():
        raise OutputLocationError(
            f"{what} {path}: a folder is there, expected a file name (e.g. {path / 'out.png'})"
        )
    parent = path if kind == "folder" else path.parent
    probe = parent
    while not probe.exists():
        if probe.is_symlink():
            raise OutputLocationError(
                f"{what} {path}: {probe} is a broken link - point {what} elsewhere"
            )
        probe = probe.parent
    if not probe.is_dir():
        raise OutputLocationError(
            f"{what} {path}: {probe} is a file, so nothing can be created under it - choose "
            "another path"
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputLocationError(
            f"{what} {path}: the folder {probe} is not writable by this user - choose another "
            "path or fix its permissions"
        )
    return path


def lock_path(out_dir: str | Path) -> Path:
    """The lock file of an output folder: ``.<name>.lock`` beside it."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _read_lock(lock: Path) -> dict[str, Any]:
    try:
        record = json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _acquire(lock: Path, out_dir: Path, run_id: str) -> dict[str, Any]:
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "run_id": run_id,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = _read_lock(lock)
            pid, host = other.get("pid"), other.get("host")
            if not other:
                # Being written this very moment, or damaged: look again shortly.
                time.sleep(0.05)
                other = _read_lock(lock)
                pid, host = other.get("pid"), other.get("host")
            same_host = host == me["host"]
            if isinstance(pid, int) and same_host and not _alive(pid):
                log.warning(
                    "output %s: lock of run %s (pid %s) is stale - taking it over",
                    out_dir,
                    other.get("run_id"),
                    pid,
                )
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            raise OutputBusyError(
                f"output {out_dir}: another run is writing it (run {other.get('run_id')!r}, "
                f"pid {pid} on {host}, since {other.get('started')}; lock file {lock}) - wait "
                "for it to finish or choose another output folder; if that run is gone, delete "
                "the lock file"
            ) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        return me
    raise OutputBusyError(f"output {out_dir}: could not take the lock {lock} - try again")


def _release(lock: Path, me: dict[str, Any]) -> None:
    if _read_lock(lock).get("pid") == me["pid"]:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


@contextlib.contextmanager
def staged_output(out_dir: str | Path, *, run_id: str) -> Iterator[Path]:
    """Write an output folder under a temporary name and swap it in whole.

    Parameters
    ----------
    out_dir : str or Path
        The final folder. Its parent is created if needed.
    run_id : str
        Names this run in the lock file and in the temporary folder's name
        (e.g. the StudyInstanceUID).

    Yields
    ------
    Path
        An empty temporary folder beside ``out_dir`` to write into.

    Raises
    ------
    OutputLocationError
        If ``out_dir`` is an existing file or cannot be created.
    OutputBusyError
        If a live process holds the lock of ``out_dir``.

    Notes
    -----
    On success the previous ``out_dir`` (if any) is renamed away, the
    temporary folder renamed to ``out_dir`` and the old one deleted; readers
    see either the old or the new folder, never a mix. On an exception the
    temporary folder is deleted and ``out_dir`` is left as it was.
    """
    out_dir = check_output_location(out_dir)
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputLocationError(f"output {out_dir}: cannot create {parent}: {err}") from None
    lock = lock_path(out_dir)
    me = _acquire(lock, out_dir, run_id)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in run_id)[:48]
    tmp = parent / f".{out_dir.name}.tmp-{safe}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = parent / f".{out_dir.name}.old-{os.getpid()}"
        if out_dir.exists():
            os.replace(out_dir, old)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if old.exists():
                os.replace(old, out_dir)  # put the previous output back
            raise
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
    finally:
        _release(lock, me)
