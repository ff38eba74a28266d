"""Feature extraction: DICOM tree -> 1 mm slices -> network inputs -> cached features.

Two entry points:

* :func:`extract_volume` turns one resampled volume into ``(n, d)`` features
  (``predict`` uses it on a new study).
* :func:`extract_dataset` does it for every CT series under a folder and
  stores the results in the :class:`~lungslice.features.cache.FeatureCache`,
  resumably: series whose files are in place are not recomputed.

The unit of work is one series (:func:`extract_series`): it shares nothing
with other series but the cache folder, so a cluster can map it over series.
On one machine, :func:`extract_dataset` overlaps loading (decode, HU,
resampling) and input preparation of the next batches with inference on a
background thread: NumPy, pydicom's pixel handling and PyTorch release the
GIL in their heavy parts, and a thread hands arrays over without the
pickling that made worker processes slower on 2 cores (PERF_NOTES.md).
``loader="process"`` moves decoding and resampling into a spawned worker
process instead (only the resized slices travel back). The loader runs with
one intra-op thread at nice 19, so it fills the gaps of the model's OpenMP
team rather than preempting it; ``ExtractResult.wait_s`` says how long the
model waited for inputs.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lungslice.dicom.resample import ResampledVolume
from lungslice.dicom.volume import CTVolume
from lungslice.errors import ConfigError, FeatureError, LungsliceError
from lungslice.features.backbones import Backbone, load_backbone
from lungslice.features.cache import SLICE_COLUMNS, FeatureCache
from lungslice.features.config import FeatureConfig
from lungslice.features.inputs import input_size, make_inputs, resize_slices
from lungslice.features.runtime import FeatureRunner, resolve_device
from lungslice.progress import ProgressCallback, report
from lungslice.provenance import config_dict, provenance

__all__ = [
    "ExtractResult",
    "SeriesJob",
    "extract_dataset",
    "extract_series",
    "extract_volume",
    "find_series",
    "iter_input_batches",
    "load_resampled",
    "make_runner",
    "resolve_loader",
    "slice_table",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesJob:
    """One series found by the index: its identity, files, and why it is rejected (if so)."""

    series_uid: str
    patient_id: str
    study_uid: str
    files: tuple[Path, ...]
    rejected: str | None = None


@dataclass
class ExtractResult:
    """What :func:`extract_dataset` did.

    Attributes
    ----------
    key : str
        The configuration key.
    cache_dir : Path
        ``WORK/features/<key>``.
    manifest : pandas.DataFrame
        One row per series (all series found, done earlier or now).
    computed, reused, failed : list of str
        Series UIDs computed in this run, found done from an earlier run, failed.
    seconds : float
        Wall time of this run.
    slices_computed : int
        Slices computed in this run.
    wait_s : float
        Seconds the model thread waited for inputs (0 when loading keeps up).
    """

    key: str
    cache_dir: Path
    manifest: pd.DataFrame
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    slices_computed: int = 0
    wait_s: float = 0.0

    def summary(self) -> str:
        """A few lines for the CLI."""
        rate = self.slices_computed / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"features: {self.cache_dir}",
            f"series: {len(self.computed)} computed, {len(self.reused)} already cached, "
            f"{len(self.failed)} failed",
            f"slices computed: {self.slices_computed} in {self.seconds:.1f} s with setup "
            f"({rate:.1f} slices/s; the model waited {self.wait_s:.1f} s for inputs)",
        ]
        if self.failed:
            failed = self.manifest[self.manifest["status"] == "failed"]
            lines += [f"  failed {r.series_uid}: {r.reason}" for r in failed.itertuples()]
        return "\n".join(lines)


def find_series(data_dir: str | Path) -> list[SeriesJob]:
    """Index ``data_dir`` and list every series, sorted by patient and series UID.

    Series the index rejects (not CT, too few slices, ...) come with
    ``rejected`` set to the index's reason, so the manifest accounts for them.

    Raises
    ------
    FeatureError
        When the tree holds no loadable CT series at all.
    """
    from lungslice.dicom.discover import index_tree

    index = index_tree(data_dir)
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
    if not any(j.rejected is None for j in jobs):
        raise FeatureError(
            f"{data_dir}: no loadable CT series ({len(index.files)} files, {len(jobs)} series "
            "rejected by the index); run `lungslice index` to see why"
        )
    return sorted(jobs, key=lambda j: (j.patient_id, j.series_uid))


def load_resampled(
    job: SeriesJob, config: FeatureConfig, size: int | None = None
) -> ResampledVolume:
    """Load a series' files as HU and resample to ``config.slice_spacing``.

    With ``size``, the slices also come out ``size`` x ``size`` (what the
    network takes), resized in whichever order touches fewer slices: in-plane
    resizing and linear interpolation along z are both linear, so they
    commute, and shrinking the source slices first is 2.5x cheaper for 2.5 mm
    series. ``source`` then holds the resized source volume (same identity,
    SOPInstanceUIDs and positions; in-plane spacing scaled; pixels dropped).
    """
    from lungslice.dicom.resample import resample
    from lungslice.dicom.volume import load_series

    volume = load_series(list(job.files), series_uid=job.series_uid)
    if size is None:
        return resample(volume, slice_spacing=config.slice_spacing)
    rv = _resample_at_size(volume, config, size)
    # Only the identity, positions and slice count of the source are needed
    # downstream: an (n, 0, 0) array frees its pixels (and keeps pickling cheap).
    no_pixels = np.empty((rv.source.n_slices, 0, 0), dtype=np.float32)
    return dataclasses.replace(rv, source=dataclasses.replace(rv.source, hu=no_pixels))


def _resample_at_size(volume: CTVolume, config: FeatureConfig, size: int) -> ResampledVolume:
    from lungslice.dicom.resample import resample

    n_out = int(np.floor((volume.z_positions[-1] - volume.z_positions[0]) / config.slice_spacing))
    if volume.n_slices <= n_out + 1:
        _, rows, cols = volume.shape
        small = resize_slices(volume.hu, size).numpy()
        spacing = (
            volume.spacing[0],
            volume.spacing[1] * rows / size,
            volume.spacing[2] * cols / size,
        )
        return resample(
            dataclasses.replace(volume, hu=small, spacing=spacing), config.slice_spacing
        )
    rv = resample(volume, slice_spacing=config.slice_spacing)
    _, rows, cols = rv.hu.shape
    spacing = (rv.spacing[0], rv.spacing[1] * rows / size, rv.spacing[2] * cols / size)
    return dataclasses.replace(rv, hu=resize_slices(rv.hu, size).numpy(), spacing=spacing)


def slice_table(resampled: ResampledVolume) -> pd.DataFrame:
    """One row per resampled slice with provenance to the original images."""
    src = resampled.source
    n = resampled.n_slices
    nearest = np.asarray(resampled.nearest_source, dtype=np.int64)
    instance = pd.array([src.instance_numbers[i] for i in nearest], dtype="Int64")
    table = pd.DataFrame(
        {
            "series_uid": [src.series_uid] * n,
            "patient_id": [src.patient_id] * n,
            "study_uid": [src.study_uid] * n,
            "slice_index": np.arange(n, dtype=np.int64),
            "z_mm": np.asarray(resampled.z_positions, dtype=np.float64),
            "source_lower": np.asarray(resampled.source_index[:, 0], dtype=np.int64),
            "source_upper": np.asarray(resampled.source_index[:, 1], dtype=np.int64),
            "weight_lower": np.asarray(resampled.source_weight[:, 0], dtype=np.float64),
            "weight_upper": np.asarray(resampled.source_weight[:, 1], dtype=np.float64),
            # Source positions let labels be matched by z, not by index: a series may be
            # a z-crop of the labelled scan, or lose duplicated positions on loading.
            "source_z_lower": np.asarray(src.z_positions, dtype=np.float64)[
                np.asarray(resampled.source_index[:, 0], dtype=np.int64)
            ],
            "source_z_upper": np.asarray(src.z_positions, dtype=np.float64)[
                np.asarray(resampled.source_index[:, 1], dtype=np.int64)
            ],
            "nearest_source": nearest,
            "sop_instance_uid": [src.sop_instance_uids[i] for i in nearest],
            "instance_number": instance,
        }
    )
    return table[list(SLICE_COLUMNS)]


def make_runner(config: FeatureConfig, backbone: Backbone | None = None) -> FeatureRunner:
    """Load the configured backbone (unless given) and prepare it for inference."""
    if backbone is None:
        backbone = load_backbone(
            config.backbone, config.weights, config.resolved_layers, seed=config.seed
        )
    elif backbone.name != config.backbone or backbone.layers != config.resolved_layers:
        raise FeatureError(
            f"backbone {backbone.name} with layers {','.join(backbone.layers)} does not match "
            f"the config ({config.backbone}, layers {','.join(config.resolved_layers)})"
        )
    return FeatureRunner(
        backbone,
        precision=config.precision,
        device=config.device,
        compile=config.compile,
        batch_size=config.batch_size,
    )


def iter_input_batches(
    hu: np.ndarray | torch.Tensor, config: FeatureConfig, data_config: dict[str, Any]
) -> Iterator[torch.Tensor]:
    """Network inputs of ``hu`` in batches of ``config.batch_size`` slices.

    In 2.5D mode each batch is made with one slice of context on either side,
    so batch borders see the same neighbours as a whole-volume call.
    """
    n = int(hu.shape[0])
    step = config.batch_size
    halo = 1 if config.inputs.mode == "2.5d" else 0
    for start in range(0, n, step):
        stop = min(start + step, n)
        lo, hi = max(start - halo, 0), min(stop + halo, n)
        x = make_inputs(hu[lo:hi], config.inputs, data_config)
        yield x[start - lo : start - lo + (stop - start)]


def extract_volume(
    resampled: ResampledVolume | np.ndarray,
    backbone: Backbone | FeatureRunner,
    config: FeatureConfig,
) -> np.ndarray:
    """Features of every slice of a volume.

    Parameters
    ----------
    resampled : ResampledVolume or numpy.ndarray
        The volume (or ``(n, rows, columns)`` HU).
    backbone : Backbone or FeatureRunner
        A backbone (prepared here with the config's precision/device) or an
        already prepared runner (reuse one across volumes: compiling is slow).
    config : FeatureConfig
        Input, precision and batch settings.

    Returns
    -------
    numpy.ndarray
        ``(n_slices, feature_dim)`` float32 (not yet cast to ``storage_dtype``).
    """
    runner = backbone if isinstance(backbone, FeatureRunner) else make_runner(config, backbone)
    hu = resampled.hu if isinstance(resampled, ResampledVolume) else resampled
    data_config = runner.backbone.data_config
    parts = [runner(x) for x in iter_input_batches(hu, config, data_config)]
    if not parts:
        return np.zeros((0, runner.backbone.feature_dim), dtype=np.float32)
    return np.concatenate(parts)


def _config_record(config: FeatureConfig, runner: FeatureRunner) -> dict[str, Any]:
    bb = runner.backbone
    return provenance(
        config,
        key=config.key,
        weights_id=bb.weights_id,
        weights_source={"kind": bb.weights_source.kind, "path": bb.weights_source.path},
        backbone={
            "name": bb.name,
            "layers": list(bb.layers),
            "layer_widths": list(bb.layer_widths),
            "feature_dim": bb.feature_dim,
            "data_config": dict(bb.data_config),
        },
        input_size=input_size(config.inputs, bb.data_config),
        key_payload=config.key_payload(),
        runtime=runner.layout,
        storage=(
            f"{config.storage_dtype} .npy per series, (n_slices, feature_dim), rows in the "
            "order of <series_uid>.slices.parquet"
        ),
    )


def _series_metadata(config: FeatureConfig, runner: FeatureRunner) -> dict[str, Any]:
    bb = runner.backbone
    return {
        "key": config.key,
        "backbone": bb.name,
        "weights_id": bb.weights_id,
        "layers": list(bb.layers),
        "feature_dim": bb.feature_dim,
        "inputs": config_dict(config.inputs),
        "input_size": input_size(config.inputs, bb.data_config),
        "precision": config.precision,
        "slice_spacing": config.slice_spacing,
        "storage_dtype": config.storage_dtype,
    }


def _row(job: SeriesJob, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "series_uid": job.series_uid,
        "patient_id": job.patient_id,
        "study_uid": job.study_uid,
        "status": "done",
        "reason": "",
        "n_files": len(job.files),
        "n_source_slices": None,
        "n_slices": None,
        "feature_dim": None,
        "load_s": None,
        "model_s": None,
        "write_s": None,
        "finished_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    row.update(values)
    return row


def extract_series(
    job: SeriesJob, cache: FeatureCache, runner: FeatureRunner, config: FeatureConfig
) -> dict[str, Any]:
    """Extract one series into the cache and return its manifest row (no threads).

    The self-contained unit of work: load, resample, features, atomic writes.
    A :class:`LungsliceError` while loading becomes a ``failed`` row.
    """
    if cache.is_done(job.series_uid):
        return _cached_row(job, cache)
    t0 = time.perf_counter()
    try:
        size = input_size(config.inputs, runner.backbone.data_config)
        resampled = load_resampled(job, config, size)
    except LungsliceError as err:
        return _row(job, status="failed", reason=str(err))
    t1 = time.perf_counter()
    features = extract_volume(resampled, runner, config)
    t2 = time.perf_counter()
    cache.write_series(
        job.series_uid,
        features.astype(config.storage_dtype),
        slice_table(resampled),
        _series_metadata(config, runner),
    )
    return _row(
        job,
        n_source_slices=resampled.source.n_slices,
        n_slices=resampled.n_slices,
        feature_dim=int(features.shape[1]),
        load_s=t1 - t0,
        model_s=t2 - t1,
        write_s=time.perf_counter() - t2,
    )


def _cached_row(
    job: SeriesJob, cache: FeatureCache, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    if previous is not None and previous.get("status") == "done":
        return previous
    # Done files without a manifest row: the run was killed between the two writes.
    shape = np.load(cache.features_path(job.series_uid), mmap_mode="r").shape
    return _row(job, n_slices=int(shape[0]), feature_dim=int(shape[1]))


_END = object()


@dataclass
class _Loaded:
    job: SeriesJob
    resampled: ResampledVolume | None
    error: LungsliceError | None
    load_s: float


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


def _load_in_worker(job: SeriesJob, config: FeatureConfig, size: int) -> ResampledVolume:
    """Worker-process side of the ``"process"`` loader (module level, so it pickles)."""
    torch.set_num_threads(1)
    _lower_priority()
    return load_resampled(job, config, size)


def _loaded_volumes(
    jobs: Sequence[SeriesJob], config: FeatureConfig, size: int, loader: str
) -> Iterator[tuple[SeriesJob, ResampledVolume | None, LungsliceError | None, float]]:
    """Yield ``(job, volume, error, seconds)`` per series, loading ahead in a process if asked.

    ``"process"``: one spawned worker process loads the next series while
    this one is consumed; only the resized (input-size) slices travel back,
    so pickling stays cheap. ``"thread"``: load right here.
    """
    if loader == "thread":
        for job in jobs:
            t0 = time.perf_counter()
            try:
                yield job, load_resampled(job, config, size), None, time.perf_counter() - t0
            except LungsliceError as err:
                yield job, None, err, time.perf_counter() - t0
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import Future, ProcessPoolExecutor

    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        ahead: deque[tuple[SeriesJob, float, Future[ResampledVolume]]] = deque()
        todo = iter(jobs)
        for job in todo:
            ahead.append(
                (job, time.perf_counter(), pool.submit(_load_in_worker, job, config, size))
            )
            if len(ahead) == 2:
                break
        while ahead:
            job, t0, future = ahead.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                ahead.append(
                    (nxt, time.perf_counter(), pool.submit(_load_in_worker, nxt, config, size))
                )
            try:
                volume = future.result()
                yield job, volume, None, time.perf_counter() - t0
            except LungsliceError as err:
                yield job, None, err, time.perf_counter() - t0
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _items(
    jobs: Sequence[SeriesJob], config: FeatureConfig, data_config: dict[str, Any], loader: str
) -> Iterator[Any]:
    """For each series, its loaded volume and then its input batches; then ``_END``."""
    size = input_size(config.inputs, data_config)
    for job, resampled, error, seconds in _loaded_volumes(jobs, config, size, loader):
        yield _Loaded(job, resampled, error, seconds)
        if resampled is not None:
            yield from iter_input_batches(resampled.hu, config, data_config)
    yield _END


class _Inline:
    """The producer's items made on demand in the consumer's thread (``loader="inline"``)."""

    def __init__(self, items: Iterator[Any]) -> None:
        self._items = items

    def get(self) -> Any:
        return next(self._items)


def _producer(
    jobs: Sequence[SeriesJob],
    config: FeatureConfig,
    data_config: dict[str, Any],
    out_q: queue.Queue[Any],
    stop: threading.Event,
    loader: str,
) -> None:
    """Loader thread: for each series, its loaded volume and then its input batches."""
    # One intra-op thread here (the setting is per thread): the model keeps its cores.
    torch.set_num_threads(1)
    _lower_priority()
    try:
        for item in _items(jobs, config, data_config, loader):
            if stop.is_set():
                return
            out_q.put(item)
    except BaseException as err:  # hand any crash to the consumer, which re-raises it
        out_q.put(err)


def resolve_loader(loader: str, device: str) -> str:
    """``"auto"``: ``"inline"`` on the CPU, ``"thread"`` when the model runs on a GPU.

    On the CPU the model already keeps every core busy, so a loader running
    beside it only takes cycles from it (benchmarks/extract.py: inline 0.85-0.91
    of model-only speed vs 0.71-0.84 with a loader thread, 2-core CPU); on a GPU
    the cores are free while it computes, and overlapping pays.
    """
    if loader not in ("auto", "inline", "thread", "process"):
        raise ConfigError(
            f"loader: expected 'auto', 'inline', 'thread' or 'process', got {loader!r}"
        )
    if loader != "auto":
        return loader
    return "thread" if resolve_device(device).type == "cuda" else "inline"


def extract_dataset(
    data_dir: str | Path,
    work_dir: str | Path,
    config: FeatureConfig | None = None,
    progress: ProgressCallback | None = None,
    *,
    keep_going: bool = False,
    backbone: Backbone | FeatureRunner | None = None,
    prefetch_batches: int = 4,
    loader: str = "auto",
) -> ExtractResult:
    """Extract features of every CT series under ``data_dir`` into ``work_dir``.

    Index -> load -> resample -> inputs (background thread) -> features (this
    thread) -> ``WORK/features/<key>/``. Series already done are not
    recomputed; temporary files of killed runs are removed.

    Parameters
    ----------
    data_dir : str or Path
        DICOM folder tree.
    work_dir : str or Path
        Work folder.
    config : FeatureConfig, optional
        Default ``FeatureConfig()``.
    progress : ProgressCallback, optional
        Called as ``progress(series_done, series_total, label)``; the label
        carries slices/s.
    keep_going : bool
        Record a series that fails to load (status ``failed`` with the reason)
        and go on; by default the first failure raises after the manifest is
        written.
    backbone : Backbone or FeatureRunner, optional
        Reuse an already loaded (or compiled) backbone.
    prefetch_batches : int
        Input batches prepared ahead of the model.
    loader : {"auto", "inline", "thread", "process"}
        Where DICOM decoding, HU conversion and resampling run: ``"inline"``
        between batches in this thread (with all cores), a background
        ``"thread"``, or a spawned worker ``"process"`` (which loads the series
        after next while the thread prepares inputs); the last two overlap
        inference. ``"auto"`` (default): see :func:`resolve_loader`.

    Returns
    -------
    ExtractResult

    Raises
    ------
    FeatureError
        When a series fails and ``keep_going`` is false, or the cache folder
        holds a different configuration.
    """
    config = config or FeatureConfig()
    loader = resolve_loader(loader, config.device)
    t_start = time.perf_counter()
    if isinstance(backbone, FeatureRunner):
        runner = backbone
    else:
        runner = make_runner(config, backbone)
    key = config.key
    cache = FeatureCache(work_dir, key)
    cache.prepare()
    record = _config_record(config, runner)
    stored = cache.read_config()
    if stored is not None and stored.get("key_payload") != record["key_payload"]:
        raise FeatureError(
            f"{cache.config_path} holds another configuration ({stored.get('key_payload')}) "
            f"than {record['key_payload']}; remove the folder or use another --out"
        )
    if stored is None:
        cache.write_config(record)

    jobs = find_series(data_dir)
    previous: dict[str, dict[str, Any]] = {
        str(r["series_uid"]): {str(k): v for k, v in r.items()}
        for r in cache.read_manifest().to_dict("records")
    }
    rows: dict[str, dict[str, Any]] = {}
    result = ExtractResult(key=key, cache_dir=cache.dir, manifest=pd.DataFrame())
    pending: list[SeriesJob] = []
    for job in jobs:
        if job.rejected is not None:
            rows[job.series_uid] = _row(job, status="rejected", reason=job.rejected)
        elif cache.is_done(job.series_uid):
            rows[job.series_uid] = _cached_row(job, cache, previous.get(job.series_uid))
            result.reused.append(job.series_uid)
        else:
            pending.append(job)

    def write_manifest() -> pd.DataFrame:
        ordered = [rows[j.series_uid] for j in jobs if j.series_uid in rows]
        return cache.write_manifest(ordered)

    write_manifest()
    total = len(jobs)
    report(progress, len(rows), total, f"{len(result.reused)} cached")
    data_config = runner.backbone.data_config
    if loader == "inline":
        source = _Inline(_items(pending, config, data_config, "thread"))
        _consume(
            source, runner, config, cache, rows, result, write_manifest, keep_going, progress, total
        )
    else:
        q: queue.Queue[Any] = queue.Queue(maxsize=max(1, prefetch_batches))
        stop = threading.Event()
        thread = threading.Thread(
            target=_producer,
            args=(pending, config, data_config, q, stop, loader),
            name="lungslice-extract-loader",
            daemon=True,
        )
        thread.start()
        try:
            _consume(
                q, runner, config, cache, rows, result, write_manifest, keep_going, progress, total
            )
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)
    result.manifest = write_manifest()
    result.seconds = time.perf_counter() - t_start
    return result


def _consume(
    q: queue.Queue[Any] | _Inline,
    runner: FeatureRunner,
    config: FeatureConfig,
    cache: FeatureCache,
    rows: dict[str, dict[str, Any]],
    result: ExtractResult,
    write_manifest: Any,
    keep_going: bool,
    progress: ProgressCallback | None,
    total: int,
) -> None:
    t_run = time.perf_counter()
    metadata = _series_metadata(config, runner)
    current: _Loaded | None = None
    parts: list[np.ndarray] = []
    model_s = 0.0

    def finish() -> None:
        nonlocal current, parts, model_s
        assert current is not None and current.resampled is not None
        job, rv = current.job, current.resampled
        features = np.concatenate(parts) if parts else np.zeros((0, runner.backbone.feature_dim))
        t0 = time.perf_counter()
        cache.write_series(
            job.series_uid, features.astype(config.storage_dtype), slice_table(rv), metadata
        )
        rows[job.series_uid] = _row(
            job,
            n_source_slices=rv.source.n_slices,
            n_slices=rv.n_slices,
            feature_dim=runner.backbone.feature_dim,
            load_s=current.load_s,
            model_s=model_s,
            write_s=time.perf_counter() - t0,
        )
        write_manifest()
        result.computed.append(job.series_uid)
        result.slices_computed += rv.n_slices
        rate = result.slices_computed / max(time.perf_counter() - t_run, 1e-9)
        report(progress, len(rows), total, f"{rate:.1f} slices/s")
        current, parts, model_s = None, [], 0.0

    while True:
        t_wait = time.perf_counter()
        item = q.get()
        result.wait_s += time.perf_counter() - t_wait
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, torch.Tensor):
            t0 = time.perf_counter()
            parts.append(runner(item))
            model_s += time.perf_counter() - t0
            assert current is not None and current.resampled is not None
            if sum(len(p) for p in parts) == current.resampled.n_slices:
                finish()
            continue
        if item is _END:
            return
        assert isinstance(item, _Loaded)
        if item.error is not None:
            rows[item.job.series_uid] = _row(item.job, status="failed", reason=str(item.error))
            result.failed.append(item.job.series_uid)
            write_manifest()
            report(progress, len(rows), total, f"failed {item.job.series_uid}")
            if not keep_going:
                raise FeatureError(
                    f"series {item.job.series_uid} (patient {item.job.patient_id}) failed: "
                    f"{item.error} (use --keep-going to record failures and go on)"
                ) from item.error
            continue
        current = item
        assert item.resampled is not None
        if item.resampled.n_slices == 0:
            finish()
