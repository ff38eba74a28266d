"""The feature cache on disk: one folder per configuration key, one pair of files per series.

Layout of ``WORK/features/<key>/``:

``config.json``
    The :class:`~lungslice.features.config.FeatureConfig`, the key, the
    weights checksum, the backbone's layers/widths/data config, provenance.
``<series_uid>.npy``
    ``(n_slices, feature_dim)`` features of the resampled slices, in the
    config's ``storage_dtype`` (float16 by default).
``<series_uid>.slices.parquet``
    One row per resampled slice, same order as the features:
    ``series_uid, patient_id, study_uid, slice_index, z_mm, source_lower,
    source_upper, weight_lower, weight_upper, nearest_source,
    sop_instance_uid, instance_number`` (source
    indices point into the original series sorted along the slice normal;
    ``sop_instance_uid``/``instance_number`` are those of the nearest original
    image). Its Parquet schema metadata ``lungslice`` holds the key,
    backbone, weights checksum, layers and input settings.
``<series_uid>.descriptor.json``
    The series' study statistics for the out-of-domain guard
    (:func:`lungslice.model.domain.study_descriptor` of the volume the network
    saw): ``{"names": [...], "values": [...]}``; caches written before it
    existed lack it, and a bundle trained on them carries no guard.
``manifest.parquet``
    One row per series: status (``done``/``failed``/``rejected``), reason, slice counts,
    timings.

Every file is written to a temporary name in the same folder and renamed
into place (``os.replace``), so a reader or a killed writer never sees a
partial file. A series is *done* when both of its files exist; the slice
table is written last and is the commit marker. Temporary files of dead
processes are removed when a run starts.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lungslice.errors import FeatureError

__all__ = [
    "MANIFEST_COLUMNS",
    "SLICE_COLUMNS",
    "FeatureCache",
    "atomic_write",
    "load_features",
    "read_series_metadata",
]

log = logging.getLogger(__name__)

SLICE_COLUMNS = (
    "series_uid",
    "patient_id",
    "study_uid",
    "slice_index",
    "z_mm",
    "source_lower",
    "source_upper",
    "weight_lower",
    "weight_upper",
    "source_z_lower",
    "source_z_upper",
    "nearest_source",
    "sop_instance_uid",
    "instance_number",
)

MANIFEST_COLUMNS = (
    "series_uid",
    "patient_id",
    "study_uid",
    "status",
    "reason",
    "n_files",
    "n_source_slices",
    "n_slices",
    "feature_dim",
    "load_s",
    "model_s",
    "write_s",
    "finished_utc",
)

_SAFE_NAME = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*$")
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(temp_path)``, fsync, then rename into place."""
    tmp = _temp_path(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FeatureCache:
    """The folder ``WORK/features/<key>`` and the files in it.

    Parameters
    ----------
    work_dir : Path
        The work folder (``--out``).
    key : str
        The configuration key (:attr:`FeatureConfig.key`).
    """

    #: Folder of the caches inside a work folder.
    FOLDER = "features"
    #: Name of the record of a cache's configuration.
    CONFIG_FILE = "config.json"

    def __init__(self, work_dir: str | Path, key: str) -> None:
        self.work_dir = Path(work_dir)
        self.key = key
        self.dir = self.work_dir / self.FOLDER / key

    @classmethod
    def keys(cls, work_dir: str | Path) -> list[str]:
        """Keys of the caches in a work folder that have a ``config.json``, sorted."""
        root = Path(work_dir) / cls.FOLDER
        return sorted(d.name for d in root.glob("*") if (d / cls.CONFIG_FILE).is_file())

    @classmethod
    def resolve(cls, path: str | Path, key: str | None = None) -> FeatureCache:
        """The cache a path names: a work folder (one key, or ``key``) or ``WORK/features/<key>``.

        Raises
        ------
        FeatureError
            When the folder holds no feature cache, or several keys and none was chosen.
        """
        p = Path(path)
        if (p / cls.CONFIG_FILE).is_file() and p.parent.name == cls.FOLDER:
            if key is not None and key != p.name:
                raise FeatureError(
                    f"{p} is the cache of key {p.name}, but key {key} was asked for."
                )
            return cls(p.parent.parent, p.name)
        root = p / cls.FOLDER
        keys = cls.keys(p)
        if key is not None:
            if key not in keys:
                raise FeatureError(
                    f"{root} has no feature cache {key}; keys present: {', '.join(keys) or 'none'}."
                )
            return cls(p, key)
        if len(keys) != 1:
            raise FeatureError(
                f"{p}: expected a work folder with exactly one feature cache under "
                f"{cls.FOLDER}/, found {len(keys)} ({', '.join(keys) or 'none'}). Fix: pass "
                f"WORK/{cls.FOLDER}/<key> or --key."
            )
        return cls(p, keys[0])

    @property
    def config_path(self) -> Path:
        """``config.json``."""
        return self.dir / self.CONFIG_FILE

    @property
    def manifest_path(self) -> Path:
        """``manifest.parquet``."""
        return self.dir / "manifest.parquet"

    def _name(self, series_uid: str) -> str:
        if not _SAFE_NAME.match(series_uid):
            raise FeatureError(
                f"series UID {series_uid!r} cannot name a cache file: expected letters, digits, "
                "'.', '_' or '-' (DICOM UIDs are digits and dots)"
            )
        return series_uid

    def features_path(self, series_uid: str) -> Path:
        """``<series_uid>.npy``."""
        return self.dir / f"{self._name(series_uid)}.npy"

    def slices_path(self, series_uid: str) -> Path:
        """``<series_uid>.slices.parquet``."""
        return self.dir / f"{self._name(series_uid)}.slices.parquet"

    def descriptor_path(self, series_uid: str) -> Path:
        """``<series_uid>.descriptor.json`` (the domain guard's study statistics)."""
        return self.dir / f"{self._name(series_uid)}.descriptor.json"

    def read_descriptors(self, series_uids: list[str]) -> dict[str, np.ndarray]:
        """The stored study descriptors (float64 values) of those series that have one."""
        out: dict[str, np.ndarray] = {}
        for uid in series_uids:
            path = self.descriptor_path(uid)
            if path.is_file():
                record = json.loads(path.read_text())
                out[uid] = np.asarray(record["values"], dtype=np.float64)
        return out

    def prepare(self) -> list[Path]:
        """Create the folder and remove temporary files left by dead processes."""
        self.dir.mkdir(parents=True, exist_ok=True)
        removed = []
        for path in self.dir.iterdir():
            m = _TEMP.match(path.name)
            if m and not _pid_alive(int(m["pid"])):
                path.unlink(missing_ok=True)
                removed.append(path)
        if removed:
            log.info(
                "removed %d temporary file(s) of interrupted runs in %s", len(removed), self.dir
            )
        return removed

    def is_done(self, series_uid: str) -> bool:
        """True when both files of the series are in place."""
        return self.slices_path(series_uid).is_file() and self.features_path(series_uid).is_file()

    def write_series(
        self,
        series_uid: str,
        features: np.ndarray,
        slices: pd.DataFrame,
        metadata: dict[str, Any] | None = None,
        descriptor: np.ndarray | None = None,
        descriptor_names: tuple[str, ...] = (),
    ) -> None:
        """Store a series: features and descriptor first, then the slice table (the commit marker).

        ``metadata`` (backbone, weights checksum, layers, input settings) goes
        into the slice table's Parquet schema under the key ``lungslice``, so
        each series' files say what made them even when copied elsewhere.
        ``descriptor`` (the domain guard's study statistics, named by
        ``descriptor_names``) goes into ``<series_uid>.descriptor.json``.
        """
        if features.shape[0] != len(slices):
            raise FeatureError(
                f"series {series_uid}: {features.shape[0]} feature rows for {len(slices)} slices"
            )

        def save_npy(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, features)

        atomic_write(self.features_path(series_uid), save_npy)
        if descriptor is not None:
            values = [float(v) for v in np.asarray(descriptor, dtype=np.float64)]
            text = json.dumps({"names": list(descriptor_names), "values": values}, indent=1)

            def save_descriptor(tmp: Path) -> None:
                tmp.write_text(text + "\n")

            atomic_write(self.descriptor_path(series_uid), save_descriptor)

        def save_table(tmp: Path) -> None:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(slices, preserve_index=False)
            if metadata is not None:
                extra = {b"lungslice": json.dumps(metadata, sort_keys=True).encode()}
                table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
            pq.write_table(table, tmp)

        atomic_write(self.slices_path(series_uid), save_table)

    def read_config(self) -> dict[str, Any] | None:
        """The stored ``config.json`` record, or None.

        The record holds the :class:`~lungslice.features.config.FeatureConfig`
        (``FeatureConfig.from_dict(record["config"])``), its ``key`` and
        ``key_payload``, the weights checksum and the backbone's layers and widths.
        """
        if not self.config_path.is_file():
            return None
        return dict(json.loads(self.config_path.read_text()))

    def write_config(self, record: dict[str, Any]) -> None:
        """Store ``config.json``."""
        text = json.dumps(record, indent=2, sort_keys=True)

        def save(tmp: Path) -> None:
            tmp.write_text(text + "\n")

        atomic_write(self.config_path, save)

    def read_manifest(self) -> pd.DataFrame:
        """The manifest (empty with its columns when there is none yet)."""
        if not self.manifest_path.is_file():
            return pd.DataFrame({c: pd.Series(dtype=object) for c in MANIFEST_COLUMNS})
        return pd.read_parquet(self.manifest_path)

    def write_manifest(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        """Store the manifest from one dict per series (columns in MANIFEST_COLUMNS order)."""
        frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
        atomic_write(self.manifest_path, lambda tmp: frame.to_parquet(tmp, index=False))
        return frame


def read_series_metadata(path: str | Path) -> dict[str, Any]:
    """The ``lungslice`` metadata of a ``<series_uid>.slices.parquet`` ({} if none)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    raw = meta.get(b"lungslice")
    return dict(json.loads(raw)) if raw else {}


def load_features(
    work_dir: str | Path, key: str, *, dtype: np.dtype | type | None = np.float32
) -> tuple[np.ndarray, pd.DataFrame]:
    """All cached series of ``key`` stacked, with their slice tables concatenated.

    Series come in manifest order; only series with status ``done`` are
    included (the manifest records why others are missing).

    Parameters
    ----------
    work_dir : str or Path
        The work folder given to extraction.
    key : str
        The configuration key (folder name under ``WORK/features``).
    dtype : numpy dtype or None
        dtype of the returned features (default float32, what classifiers
        train on); None keeps the stored dtype (float16 unless configured).

    Returns
    -------
    features : numpy.ndarray
        ``(total_slices, feature_dim)``.
    slices : pandas.DataFrame
        One row per feature row (columns :data:`SLICE_COLUMNS`).

    Raises
    ------
    FeatureError
        If the folder or manifest is missing, or a done series lacks a file.
    """
    cache = FeatureCache(work_dir, key)
    if not cache.manifest_path.is_file():
        known = sorted(p.name for p in (cache.work_dir / cache.FOLDER).glob("*") if p.is_dir())
        raise FeatureError(
            f"no feature manifest at {cache.manifest_path}; run `lungslice extract` first "
            f"(keys present: {', '.join(known) or 'none'})"
        )
    manifest = cache.read_manifest()
    done = manifest[manifest["status"] == "done"]
    arrays: list[np.ndarray] = []
    tables: list[pd.DataFrame] = []
    for uid in done["series_uid"]:
        if not cache.is_done(uid):
            raise FeatureError(
                f"{cache.dir}: the manifest lists series {uid} as done but its files are "
                "missing; rerun `lungslice extract` to recompute it"
            )
        arr = np.load(cache.features_path(uid))
        arrays.append(arr if dtype is None else arr.astype(dtype))
        tables.append(pd.read_parquet(cache.slices_path(uid)))
    if not arrays:
        raise FeatureError(f"{cache.dir}: no series is done (see {cache.manifest_path})")
    return np.concatenate(arrays), pd.concat(tables, ignore_index=True)
