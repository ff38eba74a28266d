"""Load many series with both cores, keeping the arrays in this process.

Measured on this machine kind (2 cores, see ``benchmarks/ingest.py``):
handing a decoded volume from a worker *process* back costs more than
decoding it - pickling runs at ~370 slices/s, and a shared-memory file
(``/dev/shm``) pays ~0.9 ms a 512x512 slice in page faults, since shared
memory gets no transparent huge pages here. Threads share the array for
free, and most of the work releases the GIL (file reads, NumPy rescale and
masking), so series load in a small thread pool instead; only header parsing
(~0.13 ms a slice) takes turns.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, cast

from lungslice.dicom.volume import CTVolume, LoadConfig, _is_index, load_series
from lungslice.errors import LungsliceError
from lungslice.progress import ProgressCallback, report

if TYPE_CHECKING:
    from lungslice.dicom.discover import DicomIndex

__all__ = ["iter_series", "iter_sources"]

Source: TypeAlias = "str | Path | Sequence[str | Path] | DicomIndex"


def _job_source(source: Source, uid: str | None) -> Source:
    # A job reads its series' own file list, not the whole index table.
    if _is_index(source) and uid is not None:
        try:
            return cast("DicomIndex", source).files_of(uid)
        except KeyError:
            return source  # load_series names the missing series
    return source


def _load(source: Source, uid: str | None, config: LoadConfig) -> CTVolume | LungsliceError:
    try:
        return load_series(source, series_uid=uid, config=config)
    except LungsliceError as err:
        return err


def iter_series(
    source: Source,
    series_uids: Sequence[str | None],
    *,
    config: LoadConfig = LoadConfig(),
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> Iterator[tuple[str | None, CTVolume | LungsliceError]]:
    """Load several series of one source, in input order, ``workers`` at a time.

    Parameters
    ----------
    source : folder, sequence of files, or DicomIndex
        Where the series are (as for :func:`~lungslice.dicom.volume.load_series`).
    series_uids : sequence of str or None
        The series to load (None: the only CT series of ``source``).
    config : LoadConfig
        Checks and opt-outs, as for ``load_series``.
    workers : int, optional
        Series loading at once, in threads (default: the number of cores).
        At most ``workers + 1`` volumes are in memory at a time.
    progress : ProgressCallback, optional
        Called as ``progress(series_done, series_total, series_uid)``.

    Yields
    ------
    (series_uid, CTVolume or LungsliceError)
        A series that fails yields its error instead of stopping the others.
    """
    uids = list(series_uids)
    jobs = [(_job_source(source, uid), uid) for uid in uids]
    results = iter_sources(jobs, config=config, workers=workers, progress=progress)
    yield from zip(uids, results, strict=True)


def iter_sources(
    jobs: Sequence[tuple[Source, str | None]],
    *,
    config: LoadConfig = LoadConfig(),
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> Iterator[CTVolume | LungsliceError]:
    """Like :func:`iter_series` for ``(source, series_uid)`` pairs (e.g. one folder each).

    Yields
    ------
    CTVolume or LungsliceError
        One per job, in order.
    """
    total = len(jobs)
    workers = os.cpu_count() or 1 if workers is None else max(int(workers), 1)
    if workers == 1 or total <= 1:
        for done, (source, uid) in enumerate(jobs, start=1):
            result = _load(source, uid, config)
            report(progress, done, total, uid or "")
            yield result
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lungslice-load") as pool:
        pending: deque[Future[CTVolume | LungsliceError]] = deque()
        queued = iter(jobs)

        def submit_next() -> None:
            job = next(queued, None)
            if job is not None:
                pending.append(pool.submit(_load, job[0], job[1], config))

        try:
            for _ in range(workers):
                submit_next()
            done = 0
            while pending:
                result = pending.popleft().result()
                submit_next()  # before yielding: the pool works while the caller does
                done += 1
                report(progress, done, total, jobs[done - 1][1] or "")
                yield result
        finally:
            for future in pending:
                future.cancel()
