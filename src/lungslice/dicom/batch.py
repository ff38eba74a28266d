"""Load many series in order, every failure yielded with its reason.

What pays on this machine kind (2 cores; measured with ``benchmarks/ingest.py``):

- Handing decoded volumes back from worker *processes* costs more than
  decoding: pickling runs at ~370 slices/s (docs/performance.md), and a shared-memory
  file pays ~0.9 ms a 512x512 slice in page faults (no transparent huge
  pages for shared memory here), more than loading the slice (~0.6 ms).
- Several loader *threads* gain nothing: header parsing holds the GIL and
  the NumPy steps wait for it (measured 0.6-1.0x of one thread).
- One loader thread ahead of a caller that resamples with NumPy measured
  0.49x to 1.38x of loading in the caller's thread across runs: no reliable
  gain, since every short NumPy call of the caller can wait up to the 5 ms
  GIL switch interval while the loader parses headers.

So :func:`iter_series` loads in the caller's thread by default; ``prefetch``
(a background thread) is there for callers whose work holds long GIL-free
stretches. To use both cores for many series, run whole per-series pipelines
in worker processes that return small results (as feature extraction does),
as :func:`~lungslice.dicom.discover.index_tree` does with headers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, cast

from lungslice.dicom.volume import CTVolume, LoadConfig, _is_index, load_series
from lungslice.errors import ConfigError, LungsliceError
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
    prefetch: int = 0,
    progress: ProgressCallback | None = None,
) -> Iterator[tuple[str | None, CTVolume | LungsliceError]]:
    """Load several series of one source, in order, ``prefetch`` ahead of the caller.

    Parameters
    ----------
    source : folder, sequence of files, or DicomIndex
        Where the series are (as for :func:`~lungslice.dicom.volume.load_series`).
    series_uids : sequence of str or None
        The series to load (None: the only CT series of ``source``).
    config : LoadConfig
        Checks and opt-outs, as for ``load_series``.
    prefetch : int
        Series loaded ahead in a background thread while the caller works on
        the current one (default 0: load in the caller's thread; see the
        module notes for when a thread pays). At most ``prefetch + 1``
        volumes are in memory at a time.
    progress : ProgressCallback, optional
        Called as ``progress(series_done, series_total, series_uid)``.

    Yields
    ------
    (series_uid, CTVolume or LungsliceError)
        A series that fails yields its error instead of stopping the others.
    """
    uids = list(series_uids)
    jobs = [(_job_source(source, uid), uid) for uid in uids]
    results = iter_sources(jobs, config=config, prefetch=prefetch, progress=progress)
    yield from zip(uids, results, strict=True)


def iter_sources(
    jobs: Sequence[tuple[Source, str | None]],
    *,
    config: LoadConfig = LoadConfig(),
    prefetch: int = 0,
    progress: ProgressCallback | None = None,
) -> Iterator[CTVolume | LungsliceError]:
    """Like :func:`iter_series` for ``(source, series_uid)`` pairs (e.g. one folder each).

    Yields
    ------
    CTVolume or LungsliceError
        One per job, in order.

    Raises
    ------
    ConfigError
        If ``prefetch`` is negative.
    """
    if prefetch < 0:
        raise ConfigError(f"iter_sources: prefetch must be >= 0, got {prefetch}")
    total = len(jobs)
    if prefetch == 0 or total <= 1:
        for done, (source, uid) in enumerate(jobs, start=1):
            result = _load(source, uid, config)
            report(progress, done, total, uid or "")
            yield result
        return
    # One thread: more loader threads only fight over the GIL (see module notes).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lungslice-load") as pool:
        pending: deque[Future[CTVolume | LungsliceError]] = deque()
        queued = iter(jobs)

        def submit_next() -> None:
            job = next(queued, None)
            if job is not None:
                pending.append(pool.submit(_load, job[0], job[1], config))

        try:
            for _ in range(prefetch + 1):
                submit_next()
            done = 0
            while pending:
                result = pending.popleft().result()
                submit_next()  # before yielding: the loader works while the caller does
                done += 1
                report(progress, done, total, jobs[done - 1][1] or "")
                yield result
        finally:
            for future in pending:
                future.cancel()
