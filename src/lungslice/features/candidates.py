"""Candidate features: lung field -> 3D blob candidates -> tri-planar patches -> hidden layers.

The literature's way to make frozen ImageNet features see nodules (van Ginneken
et al. 2015; Setio et al. 2016): a classical detector proposes candidate
positions inside the lung field, and pretrained hidden-layer features of small
patches around each candidate (axial, coronal and sagittal views, in mm) feed a
small classifier. A vessel continues through the neighbouring slices and shows
as a line in the coronal and sagittal views; a nodule ends.

Per series, :func:`candidates_for_volume` runs the three stages on a resampled
volume; :func:`extract_candidates` does it for every CT series under a folder
and stores the results resumably in ``WORK/candidates/<key>/`` (see
:class:`CandidateCache`), next to (never mixed with) the whole-slice cache in
``WORK/features/<key>/``: the key covers the detector, the patches and the
backbone, and a different folder root keeps the two kinds apart.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungslice.candidates.detect import DetectorConfig, detect_candidates
from lungslice.candidates.lungfield import LungFieldConfig, lung_field
from lungslice.candidates.measures import (
    MEASUREMENT_FEATURES,
    candidate_measurements,
    measurement_features,
)
from lungslice.candidates.patches import PatchConfig, candidate_features
from lungslice.dicom.resample import ResampledVolume
from lungslice.errors import FeatureError
from lungslice.features.cache import atomic_write
from lungslice.features.config import FeatureConfig
from lungslice.model.domain import study_descriptor
from lungslice.progress import ProgressCallback
from lungslice.provenance import config_dict, config_hash, provenance

__all__ = [
    "CANDIDATE_COLUMNS",
    "CandidateCache",
    "CandidateConfig",
    "CandidateExtractResult",
    "CandidateWork",
    "SeriesCandidates",
    "candidates_for_volume",
    "extract_candidates",
    "load_candidates",
]

log = logging.getLogger(__name__)

#: Columns of ``<series_uid>.candidates.parquet`` (one row per candidate, feature row order);
#: with ``CandidateConfig.measurements`` the columns of
#: :data:`lungslice.candidates.measures.MEASUREMENT_COLUMNS` follow.
CANDIDATE_COLUMNS = (
    "series_uid",
    "patient_id",
    "study_uid",
    "candidate_id",
    "z",
    "row",
    "col",
    "slice_index",
    "z_mm",
    "x_mm",
    "y_mm",
    "radius_mm",
    "score",
    "scale_mm",
    "log_response",
    "hu_mean",
    "eig1",
    "eig2",
    "eig3",
    "row_spacing_mm",
    "col_spacing_mm",
    "sop_instance_uid",
    "instance_number",
)

#: A slice whose lung field is smaller than this (mm^2) counts as having none.
MIN_LUNG_AREA_MM2 = 100.0


@dataclass(frozen=True)
class CandidateConfig:
    """How candidates and their features are made (recorded with every output).

    Attributes
    ----------
    features : FeatureConfig
        Backbone, weights, hidden layers, precision and slice spacing (its
        ``inputs`` settings belong to the whole-slice path and are not used here).
    lung : LungFieldConfig
        The classical lung-field mask.
    detector : DetectorConfig
        The 3D multi-scale blob detector.
    patches : PatchConfig
        Views, fields of view (mm), size and windows of the patches.
    measurements : bool
        Append the detector's and HU measurements of each candidate
        (:data:`~lungslice.candidates.measures.MEASUREMENT_FEATURES`, 13 values)
        after the CNN features, and their columns to the candidate table. A
        configuration read from a record without this setting (made before it
        existed) has False.
    """

    features: FeatureConfig = field(default_factory=FeatureConfig)
    lung: LungFieldConfig = field(default_factory=LungFieldConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    measurements: bool = True

    @property
    def n_measurements(self) -> int:
        """How many trailing feature columns are measurements (0 when off)."""
        return len(MEASUREMENT_FEATURES) if self.measurements else 0

    def key_payload(self) -> dict[str, Any]:
        """Everything that changes the cached numbers (weights by checksum)."""
        feats = self.features.key_payload()
        feats.pop("inputs", None)
        payload: dict[str, Any] = {
            "kind": "candidates",
            "features": feats,
            "lung": config_dict(self.lung),
            "detector": config_dict(self.detector),
            "patches": config_dict(self.patches),
        }
        if self.measurements:  # caches made before the setting keep their key
            payload["measurements"] = list(MEASUREMENT_FEATURES)
        return payload

    @property
    def key(self) -> str:
        """Short hash naming the cache folder ``WORK/candidates/<key>``."""
        return config_hash(self.key_payload(), length=16)

    def replace(self, **changes: Any) -> CandidateConfig:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values of every setting."""
        return config_dict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> CandidateConfig:
        """The config :meth:`to_dict` wrote."""
        from lungslice.features.inputs import InputConfig

        feats = dict(record.get("features", {}))
        if "inputs" in feats:
            inputs = dict(feats["inputs"])
            inputs["windows"] = tuple(tuple(w) for w in inputs.get("windows", ()))
            if "window_25d" in inputs:
                inputs["window_25d"] = tuple(inputs["window_25d"])
            feats["inputs"] = InputConfig(**inputs)
        if feats.get("layers") is not None:
            feats["layers"] = tuple(feats["layers"])
        return cls(
            features=FeatureConfig(**feats),
            lung=_from_fields(LungFieldConfig, record.get("lung", {})),
            detector=_from_fields(DetectorConfig, record.get("detector", {})),
            patches=_from_fields(PatchConfig, record.get("patches", {})),
            measurements=bool(record.get("measurements", False)),
        )


def _from_fields(cls: Any, values: dict[str, Any]) -> Any:
    if hasattr(cls, "from_dict"):
        return cls.from_dict(values)
    defaults = cls()
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            continue
        default = getattr(defaults, k)
        if isinstance(v, dict) and dataclasses.is_dataclass(default):
            kwargs[k] = _from_fields(type(default), v)  # a nested config
        else:
            kwargs[k] = _tuples(v)
    return cls(**kwargs)


def _tuples(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuples(x) for x in v)
    return v


@dataclass(frozen=True, eq=False)
class SeriesCandidates:
    """One series' candidates, their features and its slices.

    Attributes
    ----------
    candidates : pandas.DataFrame
        One row per candidate (:data:`CANDIDATE_COLUMNS`), sorted by detector score.
    features : numpy.ndarray
        ``(n_candidates, d)`` float32 pretrained hidden-layer features.
    slices : pandas.DataFrame
        The resampled slice table (provenance to the original images) with
        ``lung_area_mm2`` and ``lung`` (the slice has a lung field).
    timings : dict
        Seconds spent in ``lung``, ``detect``, ``features``, ``measure`` and ``descriptor``.
    descriptor : numpy.ndarray
        The study's image statistics for the domain guard
        (:func:`lungslice.model.domain.study_descriptor`).
    """

    candidates: pd.DataFrame
    features: np.ndarray
    slices: pd.DataFrame
    timings: dict[str, float]
    descriptor: np.ndarray = field(default_factory=lambda: np.zeros(0))


def candidates_for_volume(
    resampled: ResampledVolume, runner: Any, config: CandidateConfig
) -> SeriesCandidates:
    """Lung field, candidates and candidate features of one resampled volume.

    Parameters
    ----------
    resampled : ResampledVolume
        HU on regular slices (full in-plane resolution).
    runner : FeatureRunner
        The prepared backbone (:func:`lungslice.features.extract.make_runner`).
    config : CandidateConfig

    Returns
    -------
    SeriesCandidates

    Raises
    ------
    NotChestError
        When no slice has a lung field.
    """
    from lungslice.features.extract import slice_table

    hu, spacing = resampled.hu, resampled.spacing
    t0 = time.perf_counter()
    lung = lung_field(hu, spacing, config.lung)
    t1 = time.perf_counter()
    found = detect_candidates(hu, spacing, lung, config.detector)
    t2 = time.perf_counter()
    centres = found[["z", "row", "col"]].to_numpy(dtype=np.float64)
    if len(found):
        feats = candidate_features(hu, spacing, centres, runner, config.patches)
    else:
        feats = np.zeros((0, _feature_width(runner, config)), dtype=np.float32)
    t3 = time.perf_counter()
    measured = pd.DataFrame()
    if config.measurements:
        measured = candidate_measurements(hu, spacing, lung, found)
        both = pd.concat([found.reset_index(drop=True), measured], axis=1)
        feats = np.hstack([np.asarray(feats, dtype=np.float32), measurement_features(both)])
    t3m = time.perf_counter()
    descriptor = study_descriptor(hu, spacing, lung)
    t4 = time.perf_counter()

    slices = slice_table(resampled)
    area = lung.sum(axis=(1, 2)) * float(spacing[1] * spacing[2])
    slices["lung_area_mm2"] = area.astype(np.float64)
    slices["lung"] = area >= MIN_LUNG_AREA_MM2
    table = _candidate_table(found, resampled)
    if config.measurements:
        table = pd.concat([table, measured], axis=1)
    return SeriesCandidates(
        candidates=table,
        features=np.asarray(feats, dtype=np.float32),
        slices=slices,
        timings={
            "lung": t1 - t0,
            "detect": t2 - t1,
            "features": t3 - t2,
            "measure": t3m - t3,
            "descriptor": t4 - t3m,
        },
        descriptor=np.asarray(descriptor, dtype=np.float64),
    )


def _feature_width(runner: Any, config: CandidateConfig) -> int:
    from lungslice.candidates.patches import extract_patches

    probe = extract_patches(
        np.full((3, 8, 8), -1000.0, dtype=np.float32),
        (1.0, 1.0, 1.0),
        np.array([[1.0, 4.0, 4.0]]),
        config.patches,
    )
    return int(probe.shape[1]) * int(runner.backbone.feature_dim)


def _candidate_table(found: pd.DataFrame, resampled: ResampledVolume) -> pd.DataFrame:
    src = resampled.source
    n = len(found)
    k = np.clip(np.rint(found["z"].to_numpy(dtype=np.float64)), 0, max(resampled.n_slices - 1, 0))
    k = k.astype(np.int64)
    z_mm = np.interp(
        found["z"].to_numpy(dtype=np.float64),
        np.arange(resampled.n_slices, dtype=np.float64),
        np.asarray(resampled.z_positions, dtype=np.float64),
    )
    # Patient x/y of an axial series: origin + column/row times spacing along the
    # orientation's row and column directions.
    o = np.asarray(src.origin, dtype=np.float64)
    iop = np.asarray(src.orientation, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    cols = found["col"].to_numpy(dtype=np.float64)
    rows = found["row"].to_numpy(dtype=np.float64)
    xyz = (
        o[None, :]
        + cols[:, None] * resampled.spacing[2] * row_dir
        + rows[:, None] * resampled.spacing[1] * col_dir
    )
    nearest = np.asarray(resampled.nearest_source, dtype=np.int64)[k] if n else k
    table = pd.DataFrame(
        {
            "series_uid": [src.series_uid] * n,
            "patient_id": [src.patient_id] * n,
            "study_uid": [src.study_uid] * n,
            "candidate_id": found["candidate_id"].to_numpy(dtype=np.int64),
            "z": found["z"].to_numpy(dtype=np.float64),
            "row": rows,
            "col": cols,
            "slice_index": k,
            "z_mm": z_mm,
            "x_mm": xyz[:, 0] if n else np.zeros(0),
            "y_mm": xyz[:, 1] if n else np.zeros(0),
            "radius_mm": found["radius_mm"].to_numpy(dtype=np.float64),
            "score": found["score"].to_numpy(dtype=np.float64),
            **{
                c: found[c].to_numpy(dtype=np.float64)
                for c in ("scale_mm", "log_response", "hu_mean", "eig1", "eig2", "eig3")
            },
            "row_spacing_mm": np.full(n, float(resampled.spacing[1])),
            "col_spacing_mm": np.full(n, float(resampled.spacing[2])),
            "sop_instance_uid": [src.sop_instance_uids[i] for i in nearest],
            "instance_number": pd.array([src.instance_numbers[i] for i in nearest], dtype="Int64"),
        }
    )
    return table[list(CANDIDATE_COLUMNS)]


class CandidateCache:
    """The folder ``WORK/candidates/<key>`` and the files in it.

    ``<series_uid>.npy`` holds ``(n_candidates, d)`` features,
    ``<series_uid>.candidates.parquet`` the candidate table (same row order),
    ``<series_uid>.descriptor.npy`` the study statistics of the domain guard,
    ``<series_uid>.slices.parquet`` the resampled slice table with the lung
    field per slice; it is written last and marks the series done.
    ``config.json`` and ``manifest.parquet`` as in the whole-slice cache.
    """

    def __init__(self, work_dir: str | Path, key: str) -> None:
        from lungslice.features.cache import FeatureCache

        self._names = FeatureCache(work_dir, key)  # reuses its UID checks and temp cleanup
        self.work_dir = Path(work_dir)
        self.key = key
        self.dir = self.work_dir / "candidates" / key
        self._names.dir = self.dir

    @property
    def config_path(self) -> Path:
        """``config.json``."""
        return self.dir / "config.json"

    @property
    def manifest_path(self) -> Path:
        """``manifest.parquet``."""
        return self.dir / "manifest.parquet"

    def features_path(self, series_uid: str) -> Path:
        """``<series_uid>.npy``."""
        return self._names.features_path(series_uid)

    def slices_path(self, series_uid: str) -> Path:
        """``<series_uid>.slices.parquet`` (the commit marker)."""
        return self._names.slices_path(series_uid)

    def candidates_path(self, series_uid: str) -> Path:
        """``<series_uid>.candidates.parquet``."""
        return self.features_path(series_uid).with_suffix(".candidates.parquet")

    def descriptor_path(self, series_uid: str) -> Path:
        """``<series_uid>.descriptor.npy`` (the domain guard's study statistics)."""
        return self.features_path(series_uid).with_suffix(".descriptor.npy")

    def prepare(self) -> None:
        """Create the folder and remove temporary files of dead processes."""
        self._names.prepare()

    def is_done(self, series_uid: str) -> bool:
        """True when the series' three files are in place."""
        return (
            self.slices_path(series_uid).is_file()
            and self.features_path(series_uid).is_file()
            and self.candidates_path(series_uid).is_file()
            and self.descriptor_path(series_uid).is_file()
        )

    def write_series(self, series_uid: str, result: SeriesCandidates, dtype: str) -> None:
        """Store one series: features, candidates, then slices (the commit marker)."""
        feats = result.features.astype(dtype)

        def save_npy(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, feats)

        atomic_write(self.features_path(series_uid), save_npy)
        atomic_write(
            self.candidates_path(series_uid),
            lambda tmp: result.candidates.to_parquet(tmp, index=False),
        )

        def save_descriptor(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, result.descriptor)

        atomic_write(self.descriptor_path(series_uid), save_descriptor)
        atomic_write(
            self.slices_path(series_uid), lambda tmp: result.slices.to_parquet(tmp, index=False)
        )

    def read_series(self, series_uid: str) -> SeriesCandidates:
        """One stored series."""
        return SeriesCandidates(
            candidates=pd.read_parquet(self.candidates_path(series_uid)),
            features=np.load(self.features_path(series_uid)).astype(np.float32),
            slices=pd.read_parquet(self.slices_path(series_uid)),
            timings={},
            descriptor=np.load(self.descriptor_path(series_uid)),
        )

    def read_config(self) -> dict[str, Any] | None:
        """The stored ``config.json``, or None."""
        if not self.config_path.is_file():
            return None
        return dict(json.loads(self.config_path.read_text()))

    def write_config(self, record: dict[str, Any]) -> None:
        """Store ``config.json``."""
        text = json.dumps(record, indent=2, sort_keys=True, default=str)

        def save(tmp: Path) -> None:
            tmp.write_text(text + "\n")

        atomic_write(self.config_path, save)

    def read_manifest(self) -> pd.DataFrame:
        """The manifest (empty when there is none yet)."""
        if not self.manifest_path.is_file():
            return pd.DataFrame(columns=["series_uid", "status", "reason"])
        return pd.read_parquet(self.manifest_path)

    def write_manifest(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        """Store the manifest, one dict per series."""
        frame = pd.DataFrame(rows)
        atomic_write(self.manifest_path, lambda tmp: frame.to_parquet(tmp, index=False))
        return frame


@dataclass(frozen=True)
class CandidateExtractResult:
    """What :func:`extract_candidates` did.

    Attributes
    ----------
    cache_dir : Path
    key : str
    manifest : pandas.DataFrame
        One row per series: status (done/failed/rejected), reason, counts, timings.
    computed, reused : list of str
        Series UIDs computed in this run / found in the cache.
    seconds : float
        Wall time including setup.
    """

    cache_dir: Path
    key: str
    manifest: pd.DataFrame
    computed: list[str]
    reused: list[str]
    seconds: float

    def summary(self) -> str:
        """One line for the CLI."""
        status = self.manifest["status"].value_counts().to_dict() if len(self.manifest) else {}
        n_cand = int(self.manifest.get("n_candidates", pd.Series(dtype=float)).fillna(0).sum())
        return (
            f"{len(self.manifest)} series ({', '.join(f'{v} {k}' for k, v in status.items())}); "
            f"{n_cand} candidates; {len(self.computed)} computed, {len(self.reused)} reused; "
            f"{self.seconds:.1f} s -> {self.cache_dir}"
        )


def _candidate_row(job: Any, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "series_uid": job.series_uid,
        "patient_id": job.patient_id,
        "study_uid": job.study_uid,
        "status": "done",
        "reason": "",
        "n_slices": None,
        "n_lung_slices": None,
        "n_candidates": None,
        "load_s": None,
        "lung_s": None,
        "detect_s": None,
        "features_s": None,
        "measure_s": None,
        "finished_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    row.update(values)
    return row


class CandidateWork:
    """The candidate computation of one series (:class:`~lungslice.features.schedule.SeriesWork`).

    ``load``: DICOM -> HU -> 1 mm slices (full in-plane resolution);
    ``compute``: :func:`candidates_for_volume` and the atomic writes of
    :meth:`CandidateCache.write_series`. Pickles without its backbone: a Ray
    actor loads its own in :meth:`setup`.

    Parameters
    ----------
    config : CandidateConfig
    work_dir : str or Path
        Work folder; the cache is ``WORK/candidates/<config.key>/``.
    runner : FeatureRunner, optional
        An already prepared backbone (this process only).
    load_config : LoadConfig, optional
        The loader's checks and opt-outs (default ``LoadConfig()``).
    """

    def __init__(
        self,
        config: CandidateConfig,
        work_dir: str | Path,
        runner: Any = None,
        load_config: Any = None,
    ) -> None:
        self.config = config
        self.cache = CandidateCache(work_dir, config.key)
        self.runner = runner
        self.load_config = load_config

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["runner"] = None  # each worker loads its own backbone
        return state

    def setup(self) -> None:
        """Load the backbone (once); make sure the cache folder exists."""
        from lungslice.features.extract import make_runner

        self.cache.dir.mkdir(parents=True, exist_ok=True)
        if self.runner is None:
            self.runner = make_runner(self.config.features)

    def load(self, job: Any) -> ResampledVolume:
        """The series as HU on regular slices."""
        from lungslice.features.extract import load_resampled

        return load_resampled(job, self.config.features, load=self.load_config)

    def compute(self, job: Any, loaded: ResampledVolume, load_s: float) -> dict[str, Any]:
        """Candidates and their features, written atomically; the manifest row."""
        self.setup()
        result = candidates_for_volume(loaded, self.runner, self.config)
        self.cache.write_series(job.series_uid, result, self.config.features.storage_dtype)
        return _candidate_row(
            job,
            n_slices=len(result.slices),
            n_lung_slices=int(result.slices["lung"].sum()),
            n_candidates=len(result.candidates),
            load_s=load_s,
            lung_s=result.timings["lung"],
            detect_s=result.timings["detect"],
            features_s=result.timings["features"],
            measure_s=result.timings["measure"],
        )

    def failed_row(self, job: Any, reason: str) -> dict[str, Any]:
        """A ``failed`` manifest row."""
        return _candidate_row(job, status="failed", reason=reason)


def extract_candidates(
    data_dir: str | Path,
    work_dir: str | Path,
    config: CandidateConfig = CandidateConfig(),
    progress: ProgressCallback | None = None,
    *,
    engine: Any = "local",
    ray: Any = None,
    load: Any = None,
) -> CandidateExtractResult:
    """Candidates and their features for every CT series under ``data_dir``, cached.

    Resumable: series whose files are in place are not recomputed, with any
    engine (the manifest is rewritten after every series). A series that
    fails to load, or has no lung field, is recorded as ``failed`` with the
    reason; series the index rejects are recorded as ``rejected``.

    Parameters
    ----------
    data_dir : str or Path
        DICOM tree.
    work_dir : str or Path
        Work folder; results go to ``WORK/candidates/<key>/``.
    config : CandidateConfig
    progress : ProgressCallback, optional
        Called as ``progress(series_done, series_total, label)``; the label
        carries slices/s, the ETA and the failures so far.
    engine : {"local", "ray"} or Scheduler
        ``"ray"``: a Ray Data actor pool (docs/scale-out.md).
    ray : RayOptions, optional
        Address, actors, GPUs per actor and retries of the Ray engine.
    load : LoadConfig, optional
        The loader's checks and opt-outs for the index and every series
        (``--allow-gaps``, ``--tilt correct``, ...); default ``LoadConfig()``.

    Returns
    -------
    CandidateExtractResult
    """
    from lungslice.features.extract import make_runner, resolve_scheduler
    from lungslice.features.runtime import tune_allocator
    from lungslice.features.schedule import RunTracker, find_series

    t_start = time.perf_counter()
    scheduler = resolve_scheduler(engine, "inline", config.features.device, ray)
    tune_allocator()
    jobs = find_series(data_dir, load=load)
    cache = CandidateCache(work_dir, config.key)
    cache.prepare()
    runner = make_runner(config.features)
    bb = runner.backbone
    cache.write_config(
        provenance(
            config,
            key=config.key,
            key_payload=config.key_payload(),
            weights_id=bb.weights_id,
            backbone={
                "name": bb.name,
                "layers": list(bb.layers),
                "feature_dim": bb.feature_dim,
                "data_config": dict(bb.data_config),
            },
            runtime=runner.layout,
            storage=(
                f"{config.features.storage_dtype} .npy per series (n_candidates, d), rows in "
                "the order of <series_uid>.candidates.parquet"
            ),
        )
    )
    previous: dict[str, dict[str, Any]] = {
        str(r["series_uid"]): {str(k): v for k, v in r.items()}
        for r in cache.read_manifest().to_dict(orient="records")
    }
    rows: dict[str, dict[str, Any]] = {}
    computed: list[str] = []
    reused: list[str] = []
    pending = []
    for job in jobs:
        if job.rejected is not None:
            rows[job.series_uid] = _candidate_row(job, status="rejected", reason=job.rejected)
        elif cache.is_done(job.series_uid):
            prev = previous.get(job.series_uid)
            if prev is None or prev.get("status") != "done":
                stored = cache.read_series(job.series_uid)
                prev = _candidate_row(
                    job,
                    n_slices=len(stored.slices),
                    n_lung_slices=int(stored.slices["lung"].sum()),
                    n_candidates=len(stored.candidates),
                )
            rows[job.series_uid] = prev
            reused.append(job.series_uid)
        else:
            pending.append(job)

    def write_manifest() -> pd.DataFrame:
        return cache.write_manifest([rows[j.series_uid] for j in jobs if j.series_uid in rows])

    write_manifest()
    tracker = RunTracker(len(jobs), progress)
    tracker.start(len(rows), len(pending))
    work = CandidateWork(config, work_dir, runner if scheduler.name != "ray" else None, load)
    rows_in = scheduler.map(work, pending)
    try:
        for row in rows_in:
            uid = str(row["series_uid"])
            rows[uid] = row
            write_manifest()
            tracker.update(row, int(row.get("n_slices") or 0))
            if row["status"] == "done":
                computed.append(uid)
    finally:
        close = getattr(rows_in, "close", None)
        if close is not None:
            close()
        manifest = write_manifest()
    return CandidateExtractResult(
        cache_dir=cache.dir,
        key=config.key,
        manifest=manifest,
        computed=computed,
        reused=reused,
        seconds=time.perf_counter() - t_start,
    )


def load_candidates(
    work_dir: str | Path, key: str
) -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Every done series of a candidate cache, stacked.

    Returns
    -------
    features : numpy.ndarray
        ``(total_candidates, d)`` float32.
    candidates : pandas.DataFrame
        The candidate tables concatenated (same row order).
    slices : pandas.DataFrame
        The slice tables concatenated.
    studies : pandas.DataFrame
        One row per series: ``series_uid``, ``patient_id``, ``descriptor`` (array).

    Raises
    ------
    FeatureError
        When the cache has no manifest or no done series.
    """
    cache = CandidateCache(work_dir, key)
    if not cache.manifest_path.is_file():
        known = sorted(p.name for p in (cache.work_dir / "candidates").glob("*") if p.is_dir())
        raise FeatureError(
            f"no candidate manifest at {cache.manifest_path}; run `lungslice extract "
            f"--candidates` first (keys present: {', '.join(known) or 'none'})"
        )
    manifest = cache.read_manifest()
    feats, cands, slices, studies = [], [], [], []
    for uid in manifest.loc[manifest["status"] == "done", "series_uid"]:
        if not cache.is_done(uid):
            raise FeatureError(
                f"{cache.dir}: the manifest lists series {uid} as done but its files are "
                "missing; rerun the extraction to recompute it"
            )
        s = cache.read_series(uid)
        feats.append(s.features)
        cands.append(s.candidates)
        slices.append(s.slices)
        pid = str(s.slices["patient_id"].iloc[0]) if len(s.slices) else ""
        studies.append({"series_uid": uid, "patient_id": pid, "descriptor": s.descriptor})
    if not slices:
        raise FeatureError(f"{cache.dir}: no series is done (see {cache.manifest_path})")
    width = max((f.shape[1] for f in feats), default=0)
    feats = [f.reshape(-1, width) if f.size == 0 else f for f in feats]
    return (
        np.concatenate(feats).astype(np.float32),
        pd.concat(cands, ignore_index=True),
        pd.concat(slices, ignore_index=True),
        pd.DataFrame(studies),
    )
