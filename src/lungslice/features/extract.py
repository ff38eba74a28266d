"""Whole-slice features: DICOM tree -> 1 mm slices -> network inputs -> cached features.

Two entry points:

* :func:`extract_volume` turns one resampled volume into ``(n, d)`` features
  (``predict`` uses it on a new study).
* :func:`extract_dataset` does it for every CT series under a folder and
  stores the results in the :class:`~lungslice.features.cache.FeatureCache`,
  resumably: series whose files are in place are not recomputed.

This module holds the per-series computation (:class:`WholeSliceWork`: load
and resample, then features and the atomic cache writes); where and when each
series runs is a scheduler's business (:mod:`lungslice.features.schedule`:
inline, a loader thread, a loader process; :mod:`lungslice.features.ray_engine`:
a Ray Data actor pool on one machine or a cluster). Every scheduler writes the
same cache files under the same key, so their outputs are interchangeable.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from lungslice.dicom.resample import ResampledVolume
from lungslice.dicom.volume import CTVolume
from lungslice.errors import ConfigError, FeatureError, LungsliceError
from lungslice.features.backbones import Backbone, load_backbone
from lungslice.features.cache import MANIFEST_COLUMNS, SLICE_COLUMNS, FeatureCache, atomic_write
from lungslice.features.config import FeatureConfig
from lungslice.features.inputs import input_size, make_inputs, resize_slices
from lungslice.features.runtime import FeatureRunner, resolve_device
from lungslice.features.schedule import RunTracker, Scheduler, SeriesJob, find_series
from lungslice.features.schedule import local_scheduler as _local_scheduler
from lungslice.progress import ProgressCallback
from lungslice.provenance import config_dict, provenance

__all__ = [
    "ENGINES",
    "ExtractResult",
    "SeriesJob",
    "WholeSliceWork",
    "bundle_runner",
    "extract_dataset",
    "extract_series",
    "extract_volume",
    "find_series",
    "iter_input_batches",
    "load_resampled",
    "load_resampled_with_descriptor",
    "make_runner",
    "resolve_loader",
    "resolve_scheduler",
    "slice_table",
    "whole_slice_descriptor",
]

if TYPE_CHECKING:
    from lungslice.dicom.geometry import LoadConfig

log = logging.getLogger(__name__)


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
        Seconds the model waited for inputs (0 when loading keeps up), summed
        over workers.
    engine : str
        The scheduler that ran it (``inline``, ``thread``, ``process``, ``ray``).
    setup_s : float
        Seconds before the first series was scheduled (index, backbone, cache).
    timeline : list of (float, int)
        Per series computed in this run: seconds after scheduling began when
        its row arrived, and its slice count (steady-state rates, start-up cost).
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
    engine: str = "inline"
    setup_s: float = 0.0
    timeline: list[tuple[float, int]] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the CLI."""
        rate = self.slices_computed / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"features: {self.cache_dir} (engine {self.engine})",
            f"series: {len(self.computed)} computed, {len(self.reused)} already cached, "
            f"{len(self.failed)} failed",
            f"slices computed: {self.slices_computed} in {self.seconds:.1f} s with setup "
            f"({rate:.1f} slices/s; the model waited {self.wait_s:.1f} s for inputs)",
        ]
        if self.failed:
            failed = self.manifest[self.manifest["status"] == "failed"]
            lines += [f"  failed {r.series_uid}: {r.reason}" for r in failed.itertuples()]
        return "\n".join(lines)


def load_resampled(
    job: SeriesJob,
    config: FeatureConfig,
    size: int | None = None,
    *,
    load: LoadConfig | None = None,
) -> ResampledVolume:
    """Load a series' files as HU and resample to ``config.slice_spacing``.

    ``load`` holds the loader's checks and opt-outs (default ``LoadConfig()``),
    as for :func:`~lungslice.dicom.volume.load_series`.

    With ``size``, the slices also come out ``size`` x ``size`` (what the
    network takes), resized in whichever order touches fewer slices: in-plane
    resizing and linear interpolation along z are both linear, so they
    commute, and shrinking the source slices first is 2.5x cheaper for 2.5 mm
    series. ``source`` then holds the resized source volume (same identity,
    SOPInstanceUIDs and positions; in-plane spacing scaled; pixels dropped).
    """
    from lungslice.dicom.resample import resample
    from lungslice.dicom.volume import load_series

    if load is None:
        volume = load_series(list(job.files), series_uid=job.series_uid)
    else:
        volume = load_series(list(job.files), series_uid=job.series_uid, config=load)
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


def whole_slice_descriptor(resampled: ResampledVolume) -> np.ndarray:
    """The domain guard's study statistics of a full-resolution 1 mm volume.

    :func:`lungslice.model.domain.study_descriptor` of ``resampled`` (the
    volume ``predict`` builds), as candidate bundles measure it: extraction
    stores it for each series (:func:`load_resampled_with_descriptor`, before
    shrinking the slices to the network's input size) and ``predict`` measures
    a new study with it, so both measure the same thing at full resolution,
    where the noise texture the guard relies on is intact.

    Returns
    -------
    numpy.ndarray
        ``(len(DESCRIPTOR_NAMES),)`` float64.
    """
    from lungslice.model.domain import study_descriptor

    spacing = tuple(float(x) for x in resampled.spacing)
    return np.asarray(study_descriptor(resampled.hu, spacing), dtype=np.float64)


def load_resampled_with_descriptor(
    job: SeriesJob, config: FeatureConfig, size: int, *, load: LoadConfig | None = None
) -> tuple[ResampledVolume, np.ndarray]:
    """:func:`load_resampled` at ``size``, with the full-resolution study descriptor.

    The series is resampled along z at full resolution, measured
    (:func:`whole_slice_descriptor`), then shrunk in-plane to ``size``; the
    returned volume equals ``load_resampled(job, config, size)`` up to float
    rounding (resizing is linear and commutes with the resampling along z), but
    thick-slice series lose the shrink-first shortcut.
    """
    from lungslice.dicom.resample import resample
    from lungslice.dicom.volume import load_series

    if load is None:
        volume = load_series(list(job.files), series_uid=job.series_uid)
    else:
        volume = load_series(list(job.files), series_uid=job.series_uid, config=load)
    rv = resample(volume, slice_spacing=config.slice_spacing)
    descriptor = whole_slice_descriptor(rv)
    _, rows, cols = rv.hu.shape
    spacing = (rv.spacing[0], rv.spacing[1] * rows / size, rv.spacing[2] * cols / size)
    small = dataclasses.replace(rv, hu=resize_slices(rv.hu, size).numpy(), spacing=spacing)
    no_pixels = np.empty((rv.source.n_slices, 0, 0), dtype=np.float32)
    small = dataclasses.replace(small, source=dataclasses.replace(rv.source, hu=no_pixels))
    return small, descriptor


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


def bundle_runner(
    config: FeatureConfig, directory: str | Path, record: dict[str, Any] | None
) -> FeatureRunner:
    """The runner of a model bundle's features: its frozen extractor, else a timm backbone.

    Parameters
    ----------
    config : FeatureConfig
        The bundle's feature settings.
    directory : path
        The bundle directory.
    record : dict or None
        Its ``model.json`` ``"frozen_backbone"`` record (None in bundles saved
        before it existed, or when tracing was refused).

    Returns
    -------
    FeatureRunner
        On the :class:`~lungslice.features.frozen.FrozenBackbone` loaded with
        torch alone, or (no record, ``config.compile``, or a torch that cannot
        read the file) on a backbone built with timm, as :func:`make_runner`.

    Raises
    ------
    BundleMismatchError
        If the record does not match ``config`` or the file is missing or altered.
    """
    from lungslice.features.frozen import check_frozen_record, load_frozen_backbone

    root = Path(directory)
    if record is None:
        log.info(
            "model bundle %s holds no frozen feature extractor; building %s with timm",
            root,
            config.backbone,
        )
        return make_runner(config)
    check_frozen_record(
        record,
        root / "model.json",
        backbone=config.backbone,
        layers=config.resolved_layers,
        precision=config.precision,
    )
    if config.compile:
        log.info("%s: compile=True; building %s with timm to compile it", root, config.backbone)
        return make_runner(config)
    try:
        frozen = load_frozen_backbone(root, record)
    except FeatureError as err:
        log.warning("%s; building %s with timm instead", err, config.backbone)
        return make_runner(config)
    return FeatureRunner(
        frozen,
        precision=config.precision,
        device=config.device,
        batch_size=config.batch_size,
        fold_norms=False,
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


def _series_metadata(
    config: FeatureConfig, runner: FeatureRunner, load: LoadConfig | None = None
) -> dict[str, Any]:
    bb = runner.backbone
    metadata = {
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
    if load is not None:
        metadata["load"] = config_dict(load)  # the loader's opt-outs that made this series
    return metadata


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
        "wait_s": None,
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
        resampled, descriptor = load_resampled_with_descriptor(job, config, size)
    except LungsliceError as err:
        return _row(job, status="failed", reason=str(err))
    t1 = time.perf_counter()
    features = extract_volume(resampled, runner, config)
    t2 = time.perf_counter()
    from lungslice.model.domain import DESCRIPTOR_NAMES  # loaded with the descriptor

    cache.write_series(
        job.series_uid,
        features.astype(config.storage_dtype),
        slice_table(resampled),
        _series_metadata(config, runner),
        descriptor=descriptor,
        descriptor_names=DESCRIPTOR_NAMES,
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


#: Manifest columns after the cache's own: where and how each series ran.
RUN_COLUMNS = ("wait_s", "host", "node_id", "worker_pid", "actor_restarted", "actor_setup_s")


def _write_manifest(cache: FeatureCache, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The cache's manifest columns, then :data:`RUN_COLUMNS` (the worker of each series)."""
    frame = pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS, *RUN_COLUMNS])
    atomic_write(cache.manifest_path, lambda tmp: frame.to_parquet(tmp, index=False))
    return frame


#: Engines of :func:`extract_dataset` and ``lungslice extract --engine``.
ENGINES = ("local", "ray")


def resolve_scheduler(
    engine: str | Scheduler, loader: str, device: str, ray: Any = None
) -> Scheduler:
    """The scheduler for ``engine`` (``"local"`` picks the ``loader``; ``"ray"`` a Ray pool).

    Parameters
    ----------
    engine : str or Scheduler
        ``"local"``, ``"ray"``, or a scheduler object to use as it is.
    loader : str
        Local loader (:func:`resolve_loader`); ignored by Ray.
    device : str
        The configured device (for ``loader="auto"``).
    ray : RayOptions, optional
        Cluster address, actors, GPUs per actor, retries (``engine="ray"``).
    """
    if not isinstance(engine, str):
        return engine
    if engine == "local":
        return _local_scheduler(resolve_loader(loader, device))
    if engine == "ray":
        from lungslice.features.ray_engine import RayOptions, RayScheduler

        return RayScheduler(ray if ray is not None else RayOptions())
    raise ConfigError(f"engine: expected one of {', '.join(ENGINES)}, got {engine!r}")


class WholeSliceWork:
    """The whole-slice computation of one series (:class:`~lungslice.features.schedule.SeriesWork`).

    ``load``: DICOM -> HU -> 1 mm slices at the network's input size;
    ``compute``: features and the atomic writes of
    :meth:`FeatureCache.write_series`. Pickles without its backbone: a worker
    process or Ray actor loads its own in :meth:`setup`.

    Parameters
    ----------
    config : FeatureConfig
    work_dir : str or Path
        Work folder; the cache is ``WORK/features/<config.key>/``.
    runner : FeatureRunner, optional
        An already prepared backbone (this process only).
    load : LoadConfig, optional
        The loader's checks and opt-outs (default ``LoadConfig()``); recorded
        in each series' metadata when given.
    """

    def __init__(
        self,
        config: FeatureConfig,
        work_dir: str | Path,
        runner: FeatureRunner | None = None,
        *,
        load: LoadConfig | None = None,
    ) -> None:
        self.config = config
        self.load_config = load
        self.cache = FeatureCache(work_dir, config.key)
        self.runner = runner
        self.size: int | None = None
        if runner is not None:
            self.size = input_size(config.inputs, runner.backbone.data_config)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["runner"] = None  # a backbone does not travel; each worker loads its own
        return state

    def setup(self) -> None:
        """Load the backbone (once); make sure the cache folder exists."""
        self.cache.dir.mkdir(parents=True, exist_ok=True)
        if self.runner is None:
            self.runner = make_runner(self.config)
        self.size = input_size(self.config.inputs, self.runner.backbone.data_config)

    def load(self, job: SeriesJob) -> tuple[ResampledVolume, np.ndarray]:
        """The series as HU on 1 mm slices at the input size, and its study descriptor."""
        if self.size is None:
            self.setup()
        assert self.size is not None
        return load_resampled_with_descriptor(job, self.config, self.size, load=self.load_config)

    def compute(
        self, job: SeriesJob, loaded: tuple[ResampledVolume, np.ndarray], load_s: float
    ) -> dict[str, Any]:
        """Features of every slice, written atomically with the descriptor; the manifest row."""
        if self.runner is None:
            self.setup()
        assert self.runner is not None
        volume, descriptor = loaded
        t1 = time.perf_counter()
        features = extract_volume(volume, self.runner, self.config)
        t2 = time.perf_counter()
        from lungslice.model.domain import DESCRIPTOR_NAMES  # loaded with the descriptor

        self.cache.write_series(
            job.series_uid,
            features.astype(self.config.storage_dtype),
            slice_table(volume),
            _series_metadata(self.config, self.runner, self.load_config),
            descriptor=descriptor,
            descriptor_names=DESCRIPTOR_NAMES,
        )
        return _row(
            job,
            n_source_slices=volume.source.n_slices,
            n_slices=volume.n_slices,
            feature_dim=int(features.shape[1]),
            load_s=load_s,
            model_s=t2 - t1,
            write_s=time.perf_counter() - t2,
            wait_s=load_s,
        )

    def failed_row(self, job: SeriesJob, reason: str) -> dict[str, Any]:
        """A ``failed`` manifest row."""
        return _row(job, status="failed", reason=reason)


def extract_dataset(
    data_dir: str | Path,
    work_dir: str | Path,
    config: FeatureConfig | None = None,
    progress: ProgressCallback | None = None,
    *,
    keep_going: bool = False,
    backbone: Backbone | FeatureRunner | None = None,
    loader: str = "auto",
    engine: str | Scheduler = "local",
    ray: Any = None,
    load: LoadConfig | None = None,
    series_uid: str | None = None,
) -> ExtractResult:
    """Extract features of every CT series under ``data_dir`` into ``work_dir``.

    Index -> per series (load -> resample -> inputs -> features -> atomic
    writes) -> ``WORK/features/<key>/``. Series already done are not
    recomputed; temporary files of killed runs are removed. The manifest is
    rewritten after every series, so an interrupted run resumes where it
    stopped, with any engine.

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
        carries slices/s, the ETA and the failures so far.
    keep_going : bool
        Record a series that fails (status ``failed`` with the reason) and go
        on; by default the first failure raises after the manifest is written.
    backbone : Backbone or FeatureRunner, optional
        Reuse an already loaded (or compiled) backbone (local engine).
    loader : {"auto", "inline", "thread", "process"}
        Local engine: where DICOM decoding, HU conversion and resampling run:
        ``"inline"`` between series in this thread (with all cores), a
        background ``"thread"``, or a spawned worker ``"process"``; the last two
        overlap inference. ``"auto"`` (default): see :func:`resolve_loader`.
    engine : {"local", "ray"} or Scheduler
        ``"ray"`` runs the series on a Ray Data actor pool (``pip install
        'lungslice[ray]'``; see docs/scale-out.md).
    ray : RayOptions, optional
        Address, actors, GPUs per actor and retries of the Ray engine.
    load : LoadConfig, optional
        The checks a series must pass and the loader's opt-outs (gaps,
        irregular steps, tilt correction, fewest slices, ...), used by the
        index and by every worker alike; default ``LoadConfig()``. They decide
        which series load, not the cache key: a series' metadata records them.
    series_uid : str, optional
        Only this SeriesInstanceUID (the manifest then lists only it).

    Returns
    -------
    ExtractResult

    Raises
    ------
    FeatureError
        When a series fails and ``keep_going`` is false, the cache folder
        holds a different configuration, or ``series_uid`` is absent or
        rejected.
    """
    config = config or FeatureConfig()
    scheduler = resolve_scheduler(engine, loader, config.device, ray)
    t_start = time.perf_counter()
    # The index first: a wrong --series-uid or an empty tree fails before the backbone loads.
    jobs = find_series(data_dir, load=load, series_uid=series_uid)
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

    previous: dict[str, dict[str, Any]] = {
        str(r["series_uid"]): {str(k): v for k, v in r.items()}
        for r in cache.read_manifest().to_dict("records")
    }
    rows: dict[str, dict[str, Any]] = {}
    result = ExtractResult(
        key=key, cache_dir=cache.dir, manifest=pd.DataFrame(), engine=scheduler.name
    )
    pending: list[SeriesJob] = []
    for job in jobs:
        if job.rejected is not None:
            rows[job.series_uid] = _row(job, status="rejected", reason=job.rejected)
        elif cache.is_done(job.series_uid):
            rows[job.series_uid] = _cached_row(job, cache, previous.get(job.series_uid))
            result.reused.append(job.series_uid)
        else:
            pending.append(job)

    # A run over one series keeps the other series' rows of earlier runs.
    others = [] if series_uid is None else [r for u, r in previous.items() if u != series_uid]

    def write_manifest() -> pd.DataFrame:
        ours = [rows[j.series_uid] for j in jobs if j.series_uid in rows]
        return _write_manifest(cache, others + ours)

    write_manifest()
    tracker = RunTracker(len(jobs), progress)
    tracker.start(len(rows), len(pending))
    result.setup_s = time.perf_counter() - t_start
    by_uid = {j.series_uid: j for j in pending}
    work = WholeSliceWork(config, work_dir, runner if scheduler.name != "ray" else None, load=load)
    rows_in = scheduler.map(work, pending)
    try:
        for row in rows_in:
            uid = str(row["series_uid"])
            rows[uid] = row
            write_manifest()
            tracker.update(row, int(row.get("n_slices") or 0))
            result.wait_s += float(row.get("wait_s") or 0.0)
            if row["status"] == "failed":
                result.failed.append(uid)
                if not keep_going:
                    job = by_uid[uid]
                    raise FeatureError(
                        f"series {uid} (patient {job.patient_id}) failed: {row['reason']} "
                        "(use --keep-going to record failures and go on)"
                    )
            else:
                result.computed.append(uid)
                result.slices_computed += int(row["n_slices"])
                result.timeline.append((tracker.seconds, int(row["n_slices"])))
    finally:
        close = getattr(rows_in, "close", None)
        if close is not None:
            close()
        result.manifest = write_manifest()
    result.seconds = time.perf_counter() - t_start
    return result
