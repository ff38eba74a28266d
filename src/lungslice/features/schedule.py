"""Schedulers: one small interface that maps per-series work over the series of an index.

The work item is a :class:`SeriesJob` (one row of the index's series table:
a series is never split across workers). What is computed per series lives
with the computation (:class:`lungslice.features.extract.WholeSliceWork`,
:class:`lungslice.features.candidates.CandidateWork`,
:class:`lungslice.batch.PredictWork`) and follows :class:`SeriesWork`:

* ``setup()`` once per worker (load the backbone),
* ``load(job)`` the CPU-bound part (decode, HU, resample) that may run ahead
  in another thread or process,
* ``compute(job, loaded)`` the model and the atomic cache write, returning
  the series' manifest row,
* ``failed_row(job, reason)`` the row of a series that failed.

A scheduler runs the work over the jobs and yields one manifest row per
series as it finishes (any order): :class:`InlineScheduler` (load between
series, all cores to the model), :class:`ThreadScheduler` (a loader thread
ahead of the model), :class:`ProcessScheduler` (a spawned loader process),
and :class:`lungslice.features.ray_engine.RayScheduler` (a Ray Data actor
pool, one machine or a cluster). The caller owns resume, the manifest and
progress; a scheduler owns only where and when each series runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lungslice.errors import ConfigError, FeatureError, LungsliceError
from lungslice.progress import ProgressCallback, report

__all__ = [
    "InlineScheduler",
    "Loaded",
    "ProcessScheduler",
    "RunTracker",
    "Scheduler",
    "SeriesJob",
    "SeriesWork",
    "ThreadScheduler",
    "find_series",
    "finish_series",
    "load_series_job",
    "local_scheduler",
    "run_series",
]

if TYPE_CHECKING:
    from lungslice.dicom.geometry import LoadConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesJob:
    """One series found by the index: its identity, files, and why it is rejected (if so)."""

    series_uid: str
    patient_id: str
    study_uid: str
    files: tuple[Path, ...]
    rejected: str | None = None

    def to_record(self) -> dict[str, Any]:
        """Plain values (for a Ray Data row)."""
        return {
            "series_uid": self.series_uid,
            "patient_id": self.patient_id,
            "study_uid": self.study_uid,
            "files": [str(f) for f in self.files],
            "rejected": self.rejected or "",
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SeriesJob:
        """The job :meth:`to_record` wrote."""
        return cls(
            series_uid=str(record["series_uid"]),
            patient_id=str(record["patient_id"]),
            study_uid=str(record["study_uid"]),
            files=tuple(Path(str(f)) for f in record["files"]),
            rejected=str(record["rejected"]) or None,
        )


def find_series(
    data_dir: str | Path, *, load: LoadConfig | None = None, series_uid: str | None = None
) -> list[SeriesJob]:
    """Index ``data_dir`` and list every series, sorted by patient and series UID.

    Series the index rejects (not CT, too few slices, ...) come with
    ``rejected`` set to the index's reason, so the manifest accounts for them.

    Parameters
    ----------
    data_dir : str or Path
        DICOM folder tree.
    load : LoadConfig, optional
        The checks a series must pass to be loadable (default ``LoadConfig()``),
        the same the loader applies later.
    series_uid : str, optional
        Only this SeriesInstanceUID.

    Raises
    ------
    FeatureError
        When the tree holds no loadable CT series at all, or ``series_uid`` is
        not in it or is rejected (with the index's reason).
    """
    from lungslice.dicom.discover import index_tree

    index = index_tree(data_dir, config=load)
    jobs = []
    for r in index.series.itertuples():
        uid = str(r.series_uid)
        ok = r.status == "ok"
        jobs.append(
            SeriesJob(
                series_uid=uid,
                patient_id=str(r.patient_id),
                study_uid=str(r.study_uid),
                files=tuple(Path(p) for p in index.files_of(uid)) if ok else (),
                rejected=None if ok else str(r.reason),
            )
        )
    if series_uid is not None:
        chosen = [j for j in jobs if j.series_uid == series_uid]
        if not chosen:
            raise FeatureError(
                f"{data_dir}: no series with SeriesInstanceUID {series_uid} among the "
                f"{len(jobs)} series of {len(index.files)} files; run `lungslice index` to list "
                "them"
            )
        if chosen[0].rejected is not None:
            raise FeatureError(
                f"{data_dir}: series {series_uid} is rejected by the index: {chosen[0].rejected}"
            )
        return chosen
    if not any(j.rejected is None for j in jobs):
        raise FeatureError(
            f"{data_dir}: no loadable CT series ({len(index.files)} files, {len(jobs)} series "
            "rejected by the index); run `lungslice index` to see why"
        )
    return sorted(jobs, key=lambda j: (j.patient_id, j.series_uid))


class SeriesWork(Protocol):
    """What is computed per series; picklable (a Ray actor or loader process gets a copy)."""

    def setup(self) -> None:
        """Prepare the worker once (load the backbone); idempotent."""

    def load(self, job: SeriesJob) -> Any:
        """The CPU-bound part: decode, HU, resample. Raises LungsliceError on bad input."""

    def compute(self, job: SeriesJob, loaded: Any, load_s: float) -> dict[str, Any]:
        """Model and atomic cache write; returns the manifest row (``status`` ``done``)."""

    def failed_row(self, job: SeriesJob, reason: str) -> dict[str, Any]:
        """The manifest row of a series that failed with ``reason``."""


@dataclass(frozen=True)
class Loaded:
    """A loaded series (or why loading failed) on its way to :func:`finish_series`."""

    job: SeriesJob
    value: Any
    error: str | None
    seconds: float


def _reason(err: BaseException) -> str:
    if isinstance(err, LungsliceError):
        return str(err)
    return f"internal error: {type(err).__name__}: {err}"


def _log_failure(job: SeriesJob, err: Exception) -> None:
    # a LungsliceError is the input's fault and its message says why: no traceback
    # (run with -vv / DEBUG logging to see one); anything else is a bug: show it
    expected = isinstance(err, LungsliceError)
    log.warning("series %s: %s", job.series_uid, _reason(err), exc_info=None if expected else err)
    if expected:
        log.debug("series %s failed", job.series_uid, exc_info=err)


def load_series_job(work: SeriesWork, job: SeriesJob) -> Loaded:
    """``work.load(job)``, with any exception turned into the reason it failed."""
    t0 = time.perf_counter()
    try:
        value = work.load(job)
    except Exception as err:
        _log_failure(job, err)
        return Loaded(job, None, _reason(err), time.perf_counter() - t0)
    return Loaded(job, value, None, time.perf_counter() - t0)


def finish_series(work: SeriesWork, loaded: Loaded) -> dict[str, Any]:
    """Compute a loaded series; a failure becomes a ``failed`` row with its reason."""
    job = loaded.job
    if loaded.error is not None:
        row = work.failed_row(job, loaded.error)
    else:
        try:
            row = work.compute(job, loaded.value, loaded.seconds)
        except Exception as err:
            _log_failure(job, err)
            row = work.failed_row(job, _reason(err))
    row.setdefault("host", socket.gethostname())
    row.setdefault("node_id", "")
    row.setdefault("worker_pid", os.getpid())
    return row


def run_series(work: SeriesWork, job: SeriesJob) -> dict[str, Any]:
    """Load and compute one series here; never raises for a bad series."""
    return finish_series(work, load_series_job(work, job))


class Scheduler(Protocol):
    """Runs ``work`` over ``jobs``; yields one manifest row per series as it finishes."""

    name: str

    def map(self, work: SeriesWork, jobs: Sequence[SeriesJob]) -> Iterator[dict[str, Any]]:
        """Rows in completion order; the caller stops early by closing the iterator."""
        ...


class InlineScheduler:
    """Load, then compute, series after series in this thread (all cores to each step)."""

    name = "inline"

    def map(self, work: SeriesWork, jobs: Sequence[SeriesJob]) -> Iterator[dict[str, Any]]:
        """Rows in job order."""
        work.setup()
        for job in jobs:
            yield run_series(work, job)


def _lower_priority() -> None:
    """Make the calling thread nice 19 (Linux: per thread), so it yields to the model.

    The model's OpenMP threads spin at barriers; a loader preempting one of
    them stalls the whole team. At the lowest priority the loader runs in the
    gaps instead, and still keeps up (it needs a fraction of one core).
    """
    if hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            log.debug("could not lower the loader's priority")


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)  # per thread: the model keeps its cores


@dataclass
class ThreadScheduler:
    """A background thread loads the next series while this thread computes.

    The loader runs with one intra-op thread at nice 19, so it fills the gaps
    of the model's OpenMP team rather than preempting it.
    """

    ahead: int = 1
    name: str = "thread"

    def map(self, work: SeriesWork, jobs: Sequence[SeriesJob]) -> Iterator[dict[str, Any]]:
        """Rows in job order."""
        work.setup()
        q: queue.Queue[Loaded | BaseException | None] = queue.Queue(maxsize=max(1, self.ahead))
        stop = threading.Event()

        def produce() -> None:
            _one_torch_thread()
            _lower_priority()
            try:
                for job in jobs:
                    if stop.is_set():
                        return
                    q.put(load_series_job(work, job))
                q.put(None)
            except BaseException as err:  # hand a crash to the consumer, which re-raises it
                q.put(err)

        thread = threading.Thread(target=produce, name="lungslice-loader", daemon=True)
        thread.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = q.get()
                waited = time.perf_counter() - t0
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                row = finish_series(work, item)
                row["wait_s"] = waited  # the model idled only this long for the loader
                yield row
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)


def _load_in_process(work: SeriesWork, job: SeriesJob) -> Loaded:
    """Loader-process side of :class:`ProcessScheduler` (module level, so it pickles)."""
    _one_torch_thread()
    _lower_priority()
    return load_series_job(work, job)


@dataclass
class ProcessScheduler:
    """One spawned process loads the next two series while this one computes.

    Only what ``work.load`` returns travels back (for the whole-slice path the
    slices already resized to the network's input size), so pickling is cheap.
    """

    ahead: int = 2
    name: str = "process"

    def map(self, work: SeriesWork, jobs: Sequence[SeriesJob]) -> Iterator[dict[str, Any]]:
        """Rows in job order."""
        import multiprocessing
        from collections import deque
        from concurrent.futures import Future, ProcessPoolExecutor

        work.setup()
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            pending: deque[Future[Loaded]] = deque()
            todo = iter(jobs)
            for job in todo:
                pending.append(pool.submit(_load_in_process, work, job))
                if len(pending) >= max(1, self.ahead):
                    break
            while pending:
                t0 = time.perf_counter()
                loaded = pending.popleft().result()
                waited = time.perf_counter() - t0
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(_load_in_process, work, nxt))
                row = finish_series(work, loaded)
                row["wait_s"] = waited
                yield row
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def local_scheduler(loader: str) -> Scheduler:
    """The scheduler of a resolved local loader name (``inline``, ``thread``, ``process``)."""
    if loader == "inline":
        return InlineScheduler()
    if loader == "thread":
        return ThreadScheduler()
    if loader == "process":
        return ProcessScheduler()
    raise ConfigError(f"loader: expected 'inline', 'thread' or 'process', got {loader!r}")


@dataclass
class RunTracker:
    """Progress of a run over series: done / total, slices/s, ETA, failures so far.

    Parameters
    ----------
    total : int
        Every series of the run (done earlier, rejected and pending included).
    progress : ProgressCallback, optional
        Called as ``progress(series_done, series_total, label)`` on every update.
    """

    total: int
    progress: ProgressCallback | None = None
    done: int = 0
    to_compute: int = 0
    computed: int = 0
    failed: int = 0
    slices: int = 0
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def start(self, already: int, pending: int) -> None:
        """``already`` series need no work (done or rejected); ``pending`` will run."""
        self.done, self.to_compute = already, pending
        self.started = time.perf_counter()
        report(self.progress, self.done, self.total, f"{already} cached or rejected")

    def update(self, row: dict[str, Any], slices: int = 0) -> None:
        """Count one finished series (its manifest row)."""
        self.done += 1
        self.computed += 1
        if row.get("status") == "failed":
            self.failed += 1
        self.slices += int(slices or 0)
        report(self.progress, self.done, self.total, self.label())

    @property
    def seconds(self) -> float:
        """Seconds since :meth:`start`."""
        return time.perf_counter() - self.started

    def label(self) -> str:
        """``"12.3 slices/s, ETA 4m05s, 1 failed"``."""
        secs = max(self.seconds, 1e-9)
        left = self.to_compute - self.computed
        eta = secs / self.computed * left if self.computed else float("nan")
        eta_text = "?" if eta != eta else f"{int(eta // 60)}m{int(eta % 60):02d}s"
        return f"{self.slices / secs:.1f} slices/s, ETA {eta_text}, {self.failed} failed"
