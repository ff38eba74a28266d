"""Load many series with all cores, without pickling pixel arrays.

Returning arrays from worker processes by pickling is slower than decoding in
one process (PERF_NOTES: ~370 vs ~1000 slices/s on 2 cores). Here each worker
loads a whole series and hands its HU array back through a ``.npy`` file in
shared memory (``/dev/shm``); the parent maps that file (no copy) and unlinks
it at once, so nothing is left behind even if the parent dies later. Only
small metadata travels by pickle.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, cast

import numpy as np

from lungslice.dicom.volume import CTVolume, LoadConfig, _is_index, load_series
from lungslice.errors import LungsliceError
from lungslice.progress import ProgressCallback, report

if TYPE_CHECKING:  # pandas stays out of the worker processes
    from lungslice.dicom.discover import DicomIndex

__all__ = ["iter_series", "iter_sources"]

Source: TypeAlias = "str | Path | Sequence[str | Path] | DicomIndex"


def _shared_dir() -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    return Path(tempfile.gettempdir())


def _load_to_file(
    source: Source, series_uid: str | None, config: LoadConfig, folder: str
) -> CTVolume | LungsliceError:
    path = Path(folder) / f"lungslice-{uuid.uuid4().hex}.npy"

    def allocate(shape: tuple[int, int, int]) -> np.ndarray:
        # HU are decoded straight into the shared file: no copy to hand over.
        return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)

    try:
        volume = load_series(source, series_uid=series_uid, config=config, allocate=allocate)
    except LungsliceError as err:
        path.unlink(missing_ok=True)
        return err
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if isinstance(volume.hu, np.memmap):
        volume.hu.flush()
    # The array travels as a file name; everything else pickles cheaply.
    return replace(volume, hu=np.array(str(path)))


def _job_source(source: Source, uid: str | None) -> Source:
    # Send a worker its series' file list, not the whole index table.
    if _is_index(source) and uid is not None:
        try:
            return cast("DicomIndex", source).files_of(uid)
        except KeyError:
            return source  # load_series names the missing series
    return source


def _open(result: CTVolume | LungsliceError) -> CTVolume | LungsliceError:
    if isinstance(result, LungsliceError):
        return result
    path = Path(str(result.hu))
    try:
        hu = np.load(path, mmap_mode="r+", allow_pickle=False)
    finally:
        path.unlink(missing_ok=True)  # the mapping outlives the name
    return replace(result, hu=hu)


def iter_series(
    source: Source,
    series_uids: Sequence[str | None],
    *,
    config: LoadConfig = LoadConfig(),
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> Iterator[tuple[str | None, CTVolume | LungsliceError]]:
    """Load several series of one source, in input order, with ``workers`` processes.

    Parameters
    ----------
    source : folder, sequence of files, or DicomIndex
        Where the series are (as for :func:`~lungslice.dicom.volume.load_series`).
    series_uids : sequence of str or None
        The series to load (None: the only CT series of ``source``).
    config : LoadConfig
        Checks and opt-outs, as for ``load_series``.
    workers : int, optional
        Processes (default: all cores). With 1, series load in this process.
    progress : ProgressCallback, optional
        Called as ``progress(series_done, series_total, series_uid)``.

    Yields
    ------
    (series_uid, CTVolume or LungsliceError)
        A series that fails yields its error instead of stopping the others.
        Volumes from workers hold a memory-mapped ``hu`` (a numpy.memmap).
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
            try:
                result: CTVolume | LungsliceError = load_series(
                    source, series_uid=uid, config=config
                )
            except LungsliceError as err:
                result = err
            report(progress, done, total, uid or "")
            yield result
        return
    folder = str(_shared_dir())
    # forkserver: no fork of a parent that may run threads (torch, prefetchers).
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["lungslice.dicom.batch"])
    pool = ProcessPoolExecutor(max_workers=min(workers, total), mp_context=context)
    futures: list[Future[CTVolume | LungsliceError]] = []
    try:
        futures = [pool.submit(_load_to_file, source, uid, config, folder) for source, uid in jobs]
        for done, ((_, uid), future) in enumerate(zip(jobs, futures, strict=True), start=1):
            result = _open(future.result())
            report(progress, done, total, uid or "")
            yield result
    finally:
        for future in futures:
            future.cancel()
        pool.shutdown(wait=True)
        # Remove the files of results never taken (the consumer stopped early).
        for future in futures:
            if not future.cancelled() and future.exception() is None:
                leftover = future.result()
                if isinstance(leftover, CTVolume) and leftover.hu.ndim == 0:
                    Path(str(leftover.hu)).unlink(missing_ok=True)
