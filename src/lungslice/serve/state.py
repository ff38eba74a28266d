"""The service's persistent state: the change-feed cursor and one record per study.

A SQLite file (``STATE/serve.sqlite``) so that a worker killed at any moment
restarts where it stopped, and ``lungslice serve --status`` can read it while
the worker runs. The cursor and the studies it enqueued are written in one
transaction: a change is never consumed without its study being recorded.

A study's status moves ``pending`` -> ``running`` -> ``processed``, ``failed``
or ``skipped``. A worker that dies leaves ``running`` rows; the next start puts
them back to ``pending`` (counting the attempt), and a study whose processing
killed the worker ``max_attempts`` times is failed with that reason.

Records hold Orthanc identifiers and DICOM UIDs only, never patient data.
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungslice.errors import OutputLocationError

__all__ = ["STATUSES", "ServeState", "StudyRecord"]

#: Every status a study can have.
STATUSES = ("pending", "running", "processed", "failed", "skipped")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    orthanc_id TEXT PRIMARY KEY,
    study_uid TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    model_id TEXT,
    outputs TEXT,
    seconds REAL,
    queued_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    seq INTEGER,
    timings TEXT
);
"""


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class StudyRecord:
    """One study as the service knows it (a row of ``--status``).

    ``seconds`` is the wall time of its last run; ``timings`` splits it into
    stages (:meth:`lungslice.serve.worker.Service.process`). ``queued_at`` is
    when the change feed enqueued it, ``updated_at`` its last change (UTC).
    """

    orthanc_id: str
    study_uid: str | None
    status: str
    reason: str | None
    attempts: int
    model_id: str | None
    outputs: list[str]
    seconds: float | None
    queued_at: str
    updated_at: str
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dict(self.__dict__)


class ServeState:
    """The state folder of one service (cursor + study records).

    Parameters
    ----------
    folder : str or Path
        Created if absent; holds ``serve.sqlite``.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputLocationError(
                f"--state {self.folder}: cannot create the state folder ({err.strerror}). "
                "Fix: pass a writable folder with --state."
            ) from None
        self.path = self.folder / "serve.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        columns = {str(r[1]) for r in self._db.execute("PRAGMA table_info(studies)")}
        if "timings" not in columns:  # a state folder written before stage timings
            self._db.execute("ALTER TABLE studies ADD COLUMN timings TEXT")
        self._db.commit()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.commit()
            except BaseException:
                self._db.rollback()
                raise

    # -- cursor -------------------------------------------------------------------------
    def cursor(self, url: str) -> int:
        """The last change sequence number consumed from the Orthanc at ``url`` (0: none)."""
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM meta WHERE key = ?", (f"cursor:{url}",)
            ).fetchone()
        return int(row[0]) if row else 0

    def consume(self, url: str, last: int, studies: Iterable[tuple[str, int]]) -> list[str]:
        """Enqueue ``(orthanc_id, seq)`` and move the cursor to ``last``, atomically.

        A processed study is left alone: its new ``StableStudy`` event comes
        from lungslice's own results arriving. A failed or skipped study is
        queued again (its attempts reset): instances arrived since, so it may
        now hold a usable CT series. Pending and running studies stay as they are.

        Returns
        -------
        list of str
            The identifiers newly enqueued (or queued again).
        """
        added = []
        with self._tx() as db:
            for orthanc_id, seq in studies:
                cur = db.execute(
                    "INSERT OR IGNORE INTO studies (orthanc_id, status, queued_at, updated_at, seq)"
                    " VALUES (?, 'pending', ?, ?, ?)",
                    (orthanc_id, _now(), _now(), seq),
                )
                if not cur.rowcount:
                    cur = db.execute(
                        "UPDATE studies SET status = 'pending', attempts = 0, seq = ?, "
                        "reason = 'queued again: the study changed after ' || status || "
                        "COALESCE(' (' || reason || ')', ''), updated_at = ? "
                        "WHERE orthanc_id = ? AND status IN ('failed', 'skipped')",
                        (seq, _now(), orthanc_id),
                    )
                if cur.rowcount:
                    added.append(orthanc_id)
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (f"cursor:{url}", str(int(last))),
            )
        return added

    # -- study lifecycle ----------------------------------------------------------------
    def recover(self, max_attempts: int) -> list[str]:
        """Put studies left ``running`` by a dead worker back to ``pending``.

        A study already tried ``max_attempts`` times is failed instead.

        Returns
        -------
        list of str
            The identifiers put back.
        """
        with self._tx() as db:
            rows = db.execute(
                "SELECT orthanc_id, attempts FROM studies WHERE status = 'running'"
            ).fetchall()
            back = []
            for orthanc_id, attempts in rows:
                if attempts >= max_attempts:
                    db.execute(
                        "UPDATE studies SET status = 'failed', reason = ?, updated_at = ? "
                        "WHERE orthanc_id = ?",
                        (
                            f"the worker stopped {attempts} times while processing this study",
                            _now(),
                            orthanc_id,
                        ),
                    )
                else:
                    db.execute(
                        "UPDATE studies SET status = 'pending', updated_at = ? "
                        "WHERE orthanc_id = ?",
                        (_now(), orthanc_id),
                    )
                    back.append(str(orthanc_id))
        return back

    def claim(self) -> str | None:
        """Mark the oldest pending study ``running`` (one more attempt) and return its id."""
        with self._tx() as db:
            row = db.execute(
                "SELECT orthanc_id FROM studies WHERE status = 'pending' "
                "ORDER BY seq, queued_at LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE studies SET status = 'running', attempts = attempts + 1, "
                "updated_at = ? WHERE orthanc_id = ?",
                (_now(), row[0]),
            )
        return str(row[0])

    def finish(
        self,
        orthanc_id: str,
        status: str,
        *,
        reason: str | None = None,
        study_uid: str | None = None,
        model_id: str | None = None,
        outputs: list[str] | None = None,
        seconds: float | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        """Record the outcome of a study (``processed``, ``failed``, ``skipped`` or ``pending``)."""
        if status not in STATUSES:
            raise ValueError(f"status: expected one of {STATUSES}, got {status!r}")
        with self._tx() as db:
            db.execute(
                "UPDATE studies SET status = ?, reason = ?, study_uid = COALESCE(?, study_uid), "
                "model_id = COALESCE(?, model_id), outputs = ?, seconds = ?, timings = ?, "
                "updated_at = ? WHERE orthanc_id = ?",
                (
                    status,
                    reason,
                    study_uid,
                    model_id,
                    json.dumps(outputs or []),
                    seconds,
                    json.dumps(timings) if timings else None,
                    _now(),
                    orthanc_id,
                ),
            )

    def retry_later(self, orthanc_id: str, reason: str) -> None:
        """Back to ``pending`` without counting the attempt (Orthanc was unreachable)."""
        with self._tx() as db:
            db.execute(
                "UPDATE studies SET status = 'pending', reason = ?, "
                "attempts = MAX(attempts - 1, 0), updated_at = ? WHERE orthanc_id = ?",
                (reason, _now(), orthanc_id),
            )

    # -- reading ------------------------------------------------------------------------
    def studies(self, status: str | None = None) -> list[StudyRecord]:
        """Every study record (or those with ``status``), oldest first."""
        query = (
            "SELECT orthanc_id, study_uid, status, reason, attempts, model_id, outputs, "
            "seconds, queued_at, updated_at, timings FROM studies"
        )
        args: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status = ?"
            args = (status,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq, queued_at", args).fetchall()
        return [
            StudyRecord(
                orthanc_id=str(r[0]),
                study_uid=r[1],
                status=str(r[2]),
                reason=r[3],
                attempts=int(r[4]),
                model_id=r[5],
                outputs=json.loads(r[6]) if r[6] else [],
                seconds=r[7],
                queued_at=str(r[8]),
                updated_at=str(r[9]),
                timings=json.loads(r[10]) if r[10] else {},
            )
            for r in rows
        ]

    def counts(self) -> dict[str, int]:
        """Number of studies per status (every status listed, zeros included)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT status, COUNT(*) FROM studies GROUP BY status"
            ).fetchall()
        found = {str(s): int(n) for s, n in rows}
        return {s: found.get(s, 0) for s in STATUSES}
