"""Index a DICOM folder tree from headers only, accounting for every file.

:func:`index_tree` walks any tree (the TCIA/NBIA LIDC-IDRI layout, flat
folders, DICOMDIR trees, files without a ``.dcm`` suffix), reads headers
without pixel data and returns a :class:`DicomIndex`: one row per file (used
or skipped, with the reason) and one row per series (ok or rejected, with the
reason). A series is ``ok`` when :func:`~lungslice.dicom.geometry.plan_stack`
accepts it, i.e. when :func:`~lungslice.dicom.volume.load_series` with the
same :class:`~lungslice.dicom.geometry.LoadConfig` will load it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from lungslice.dicom.geometry import (
    DERIVED_SERIES,
    LoadConfig,
    StackError,
    derive_missing_series,
    plan_stack,
    slice_normal,
)
from lungslice.dicom.header import DamagedPixelDataError, SliceHeader, read_header
from lungslice.dicom.walk import reason_category, walk_files
from lungslice.errors import DicomReadError, LungsliceError
from lungslice.progress import ProgressCallback, report
from lungslice.provenance import provenance

__all__ = [
    "FILE_COLUMNS",
    "SERIES_COLUMNS",
    "DicomIndex",
    "index_tree",
    "read_index",
    "reason_category",
    "walk_files",
]

log = logging.getLogger(__name__)

FILE_COLUMNS = ("path", "series_uid", "sop_instance_uid", "status", "reason", "series_uid_source")
SERIES_COLUMNS = (
    "patient_id",
    "study_uid",
    "series_uid",
    "modality",
    "n_files",
    "n_slices",
    "rows",
    "columns",
    "pixel_spacing",
    "slice_thickness",
    "slice_spacing",
    "z_min",
    "z_max",
    "manufacturer",
    "kernel",
    "transfer_syntax",
    "status",
    "reason",
)
_CHUNK = 512
# Headers read at ~8000 files/s a core: below this a process pool costs more than it saves.
_PARALLEL_MIN_FILES = 4096


@dataclass(frozen=True, eq=False)
class DicomIndex:
    """Every file under a root and every series they form.

    Attributes
    ----------
    files : pandas.DataFrame
        One row per file: ``path`` (absolute), ``series_uid`` (None if none),
        ``sop_instance_uid``, ``status`` (``used`` / ``skipped``), ``reason``,
        ``series_uid_source`` (``"header"``, or
        :data:`~lungslice.dicom.geometry.DERIVED_SERIES` when the file had no
        SeriesInstanceUID and was grouped by folder and geometry; None when
        the file has no series). Also one row per folder that could not be
        listed and per folder link not followed (a loop, or a folder already
        indexed), ``status`` ``skipped``.
    series : pandas.DataFrame
        One row per SeriesInstanceUID, columns :data:`SERIES_COLUMNS`;
        ``status`` ``ok`` or ``rejected`` with the ``reason``.
    root : Path
        The folder that was indexed.
    config : LoadConfig
        The checks the series were judged by.
    """

    files: pd.DataFrame
    series: pd.DataFrame
    root: Path
    config: LoadConfig = field(default_factory=LoadConfig)

    def ct_series(self) -> pd.DataFrame:
        """The series that load: rows of :attr:`series` with status ``ok``."""
        return self.series[self.series["status"] == "ok"].reset_index(drop=True)

    def files_of(self, series_uid: str) -> list[Path]:
        """The image files of a series (also of a rejected one), sorted by path.

        Left out: extra copies of an SOPInstanceUID. Files with damaged pixel
        data stay in, so that loading the series fails on them as it does
        from the folder.

        Raises
        ------
        KeyError
            If the index has no such series.
        """
        rows = self.files[self.files["series_uid"] == series_uid]
        if rows.empty:
            raise KeyError(f"series {series_uid} is not in the index of {self.root}")
        keep = ~rows["reason"].fillna("").str.startswith("duplicate SOPInstanceUID")
        return sorted(Path(p) for p in rows.loc[keep, "path"])

    def summary(self) -> dict[str, Any]:
        """Counts for a report: series ok / rejected by reason, files by status and reason."""
        rejected = self.series[self.series["status"] != "ok"]
        skipped = self.files[self.files["status"] != "used"]
        return {
            "files": len(self.files),
            "files_used": int((self.files["status"] == "used").sum()),
            "files_skipped": dict(Counter(reason_category(r) for r in skipped["reason"])),
            "series": len(self.series),
            "series_ok": int((self.series["status"] == "ok").sum()),
            "series_rejected": dict(Counter(reason_category(r) for r in rejected["reason"])),
        }

    def write(self, out_dir: str | Path) -> Path:
        """Write ``files.parquet``, ``series.parquet`` and ``index.json`` (provenance).

        Returns
        -------
        Path
            ``out_dir``.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.files.to_parquet(out / "files.parquet", index=False)
        self.series.to_parquet(out / "series.parquet", index=False)
        record = provenance(self.config, root=str(self.root), summary=self.summary())
        (out / "index.json").write_text(json.dumps(record, indent=2, default=str))
        return out


def read_index(directory: str | Path) -> DicomIndex:
    """Read an index written by :meth:`DicomIndex.write`.

    Raises
    ------
    DicomReadError
        If ``files.parquet`` or ``series.parquet`` is missing.
    """
    directory = Path(directory)
    for name in ("files.parquet", "series.parquet"):
        if not (directory / name).is_file():
            raise DicomReadError(
                f"{directory}: no {name}; expected the output of `lungslice index ROOT --out "
                f"{directory}` - run it first"
            )
    files = pd.read_parquet(directory / "files.parquet")
    series = pd.read_parquet(directory / "series.parquet")
    root = directory
    config = LoadConfig()
    meta_path = directory / "index.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        root = Path(meta.get("root", directory))
        saved = meta.get("config") or {}
        known = {k: v for k, v in saved.items() if k in LoadConfig.__dataclass_fields__}
        config = LoadConfig(**known)
    return DicomIndex(files=files, series=series, root=root, config=config)


def _read_one(path: Path) -> SliceHeader | str | tuple[str, SliceHeader]:
    try:
        return read_header(path)
    except DamagedPixelDataError as err:
        return str(err).removeprefix(f"{path}: "), err.header
    except DicomReadError as err:
        message = str(err)
        prefix = f"{path}: "
        return message[len(prefix) :] if message.startswith(prefix) else message
    except OSError as err:
        return f"unreadable: {type(err).__name__}: {err}"


_Result = SliceHeader | str | tuple[str, SliceHeader]
_FIELDS = tuple(f.name for f in dataclasses.fields(SliceHeader))


def _read_chunk(paths: Sequence[Path]) -> list[_Result]:
    return [_read_one(p) for p in paths]


_Packed = tuple[Any, ...] | str | tuple[str, tuple[Any, ...]]


def _pack(header: SliceHeader) -> tuple[Any, ...]:
    # Plain tuples unpickle ~10x faster than dataclasses holding Paths, which
    # otherwise makes the parent the bottleneck of a parallel index.
    return (str(header.path), *(getattr(header, f) for f in _FIELDS[1:]))


def _unpack(values: tuple[Any, ...]) -> SliceHeader:
    return SliceHeader(Path(values[0]), *values[1:])


def _read_chunk_packed(paths: Sequence[Path]) -> list[_Packed]:
    packed: list[_Packed] = []
    for result in _read_chunk(paths):
        if isinstance(result, SliceHeader):
            packed.append(_pack(result))
        elif isinstance(result, tuple):
            packed.append((result[0], _pack(result[1])))
        else:
            packed.append(result)
    return packed


def _unpack_result(item: _Packed) -> _Result:
    if isinstance(item, str):
        return item
    if len(item) == 2 and isinstance(item[1], tuple):
        return (item[0], _unpack(item[1]))
    return _unpack(item)


def _chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _context() -> mp.context.BaseContext:
    # fork starts workers in milliseconds; forkserver (~1-2 s here) only when
    # other threads run (torch, prefetchers): forking them can deadlock.
    if threading.active_count() == 1 and "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["lungslice.dicom.header"])
    return context


def read_headers(
    paths: Sequence[Path], *, workers: int | None = None, progress: ProgressCallback | None = None
) -> list[_Result]:
    """Read the headers of ``paths``; a string (the skip reason) where a file fails.

    A file whose header reads but whose pixel data is damaged gives
    ``(reason, header)``.

    Uses ``workers`` processes (default: all cores) for long lists; results are
    small records, so the processes pay off, unlike returning pixel arrays.
    """
    n = len(paths)
    workers = os.cpu_count() or 1 if workers is None else max(int(workers), 1)
    results: list[_Result] = []
    report(progress, 0, n, "headers")
    if workers == 1 or n < _PARALLEL_MIN_FILES:
        for chunk in _chunks(paths, _CHUNK):
            results.extend(_read_chunk(chunk))
            report(progress, len(results), n, "headers")
        return results
    with ProcessPoolExecutor(max_workers=workers, mp_context=_context()) as pool:
        for part in pool.map(_read_chunk_packed, list(_chunks(paths, _CHUNK))):
            results.extend(_unpack_result(item) for item in part)
            report(progress, len(results), n, "headers")
    return results


def _cannot_open(reason: str) -> bool:
    # The OS refused the file (permissions, I/O): its header, and series, are unknown.
    return reason.startswith("unreadable: ") and any(
        name in reason
        for name in ("PermissionError", "OSError", "IsADirectoryError", "FileNotFoundError")
    )


def _derive_series(results: list[_Result]) -> tuple[list[_Result], set[int]]:
    """Results with a derived SeriesInstanceUID where a header has none, and their positions."""
    positions = [i for i, r in enumerate(results) if isinstance(r, SliceHeader)]
    headers = [cast(SliceHeader, results[i]) for i in positions]
    if all(h.series_uid is not None for h in headers):
        return results, set()
    new, _ = derive_missing_series(headers)
    out = list(results)
    changed: set[int] = set()
    for i, old, h in zip(positions, headers, new, strict=True):
        if h is not old:
            changed.add(i)
        out[i] = h
    return out, changed


def _series_row(
    uid: str,
    headers: list[SliceHeader],
    n_files: int,
    config: LoadConfig,
    damaged: Sequence[SliceHeader] = (),
    unreadable: Sequence[tuple[str, str]] = (),
) -> tuple[dict[str, Any], dict[Path, str]]:
    """The series row and the skip reason of each of its files that is not used."""
    first = headers[0]
    row: dict[str, Any] = {
        "patient_id": first.patient_id,
        "study_uid": first.study_uid,
        "series_uid": uid,
        "modality": first.modality,
        "n_files": n_files,
        "n_slices": len(headers),
        "rows": first.rows,
        "columns": first.columns,
        "pixel_spacing": list(first.pixel_spacing) if first.pixel_spacing else None,
        "slice_thickness": first.slice_thickness,
        "slice_spacing": None,
        "z_min": None,
        "z_max": None,
        "manufacturer": first.manufacturer,
        "kernel": first.kernel,
        "transfer_syntax": first.transfer_syntax,
        "status": "ok",
        "reason": None,
    }
    file_reasons: dict[Path, str] = {}
    try:
        # Rough geometry even for series that will be rejected.
        if first.orientation is not None and all(h.position is not None for h in headers):
            normal = slice_normal(first.orientation)
            z = np.sort(np.array([h.position for h in headers], dtype=float) @ normal)
            row["z_min"], row["z_max"] = float(z[0]), float(z[-1])
            steps = np.diff(np.unique(np.round(z, 2)))
            row["slice_spacing"] = float(np.median(steps)) if steps.size else None
    except ValueError:
        pass
    if first.modality != "CT":
        row["status"], row["reason"] = "rejected", f"modality {first.modality}"
        return row, {h.path: f"modality {first.modality}" for h in headers}
    if all(h.is_localizer for h in headers):
        row["status"], row["reason"] = "rejected", "localizer"
        return row, {h.path: "localizer" for h in headers}
    if unreadable:
        # A file that cannot be opened may be one of the slices: loading refuses too.
        path, why = unreadable[0]
        row["status"] = "rejected"
        row["reason"] = (
            f"unreadable file: {len(unreadable)} file(s) in the series folder cannot be read, "
            f"first {path}: {why.removeprefix('unreadable: ')}"
        )
        return row, {h.path: "series rejected: unreadable file" for h in headers}
    if damaged:
        # load_series refuses a series with a damaged slice; say so here too.
        row["status"] = "rejected"
        row["reason"] = f"unreadable file: {len(damaged)} file(s), first {damaged[0].path}"
        return row, {h.path: "series rejected: unreadable file" for h in headers}
    try:
        plan = plan_stack(headers, config, label=f"series {uid}")
    except StackError as err:
        detail = str(err).split(": ", 1)[-1]
        row["status"], row["reason"] = "rejected", f"{err.reason}: {detail}"
        return row, {h.path: f"series rejected: {err.reason}" for h in headers}
    except LungsliceError as err:
        row["status"], row["reason"] = "rejected", str(err)
        return row, {h.path: "series rejected" for h in headers}
    row["n_slices"] = len(plan.headers)
    row["slice_spacing"] = plan.spacing[0]
    row["z_min"], row["z_max"] = float(plan.z[0]), float(plan.z[-1])
    for d in plan.dropped:
        file_reasons[Path(d["path"])] = d["reason"]
    return row, file_reasons


def index_tree(
    root: str | Path,
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    config: LoadConfig | None = None,
) -> DicomIndex:
    """Index every file under ``root`` from headers only.

    Parameters
    ----------
    root : str or Path
        Folder to walk (or a single file).
    workers : int, optional
        Processes reading headers (default: all cores; 1 for none).
    progress : ProgressCallback, optional
        Called as ``progress(files_done, files_total, label)``.
    config : LoadConfig, optional
        The checks a series must pass to be ``ok`` (default ``LoadConfig()``).

    Returns
    -------
    DicomIndex
        ``files`` has exactly one row per file found.

    Raises
    ------
    DicomReadError
        If ``root`` does not exist.
    """
    config = config or LoadConfig()
    root = Path(root)
    unreadable: list[tuple[Path, str]] = []
    paths = walk_files(root, unreadable)
    results = read_headers(paths, workers=workers, progress=progress)
    results, derived_at = _derive_series(results)

    file_rows: list[dict[str, Any]] = []
    by_series: dict[str, list[SliceHeader]] = defaultdict(list)
    n_files: Counter[str] = Counter()
    seen_sop: dict[str, Path] = {}
    damaged: dict[str, list[SliceHeader]] = defaultdict(list)
    derived: set[str] = set()
    cannot_open: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for i, (path, result) in enumerate(zip(paths, results, strict=True)):
        row: dict[str, Any] = {
            "path": str(path),
            "series_uid": None,
            "sop_instance_uid": None,
            "status": "skipped",
            "reason": None,
            "series_uid_source": None,
        }
        file_rows.append(row)
        if isinstance(result, str):
            row["reason"] = result
            if _cannot_open(result):
                cannot_open[str(path.parent)].append((str(path), result))
            continue
        header = result[1] if isinstance(result, tuple) else result
        row["series_uid"] = header.series_uid
        row["sop_instance_uid"] = header.sop_instance_uid
        if header.series_uid is not None:
            row["series_uid_source"] = DERIVED_SERIES if i in derived_at else "header"
        if isinstance(result, tuple):
            row["reason"] = result[0]
            if header.series_uid is not None:
                damaged[header.series_uid].append(header)
                n_files[header.series_uid] += 1
            continue
        if result.is_dicomdir:
            row["reason"] = "DICOMDIR"
        elif result.series_uid is None:
            row["reason"] = "no SeriesInstanceUID"
        elif result.sop_instance_uid is None:
            row["reason"] = "no SOPInstanceUID"
            n_files[result.series_uid] += 1
        elif result.sop_instance_uid in seen_sop:
            row["reason"] = f"duplicate SOPInstanceUID: same as {seen_sop[result.sop_instance_uid]}"
            n_files[result.series_uid] += 1
        else:
            seen_sop[result.sop_instance_uid] = path
            n_files[result.series_uid] += 1
            by_series[result.series_uid].append(result)
            row["status"] = "used"
        if row["series_uid_source"] == DERIVED_SERIES:
            derived.add(str(result.series_uid))

    for folder, why in unreadable:
        # A folder that cannot be listed (or a link not followed) gets a row: its
        # files are unknown or counted elsewhere, not dropped.
        file_rows.append(
            {
                "path": str(folder),
                "series_uid": None,
                "sop_instance_uid": None,
                "status": "skipped",
                "reason": why,
                "series_uid_source": None,
            }
        )
    for uid in sorted(derived):
        n = n_files[uid]
        log.warning(
            "%d file(s) without SeriesInstanceUID grouped by folder and geometry as series %s "
            "(files.parquet series_uid_source)",
            n,
            uid,
        )
    series_rows: list[dict[str, Any]] = []
    file_reasons: dict[Path, str] = {}
    uids = set(by_series) | set(damaged)
    first_of = {u: (by_series.get(u) or damaged[u])[0] for u in uids}
    for uid in sorted(uids, key=lambda u: (first_of[u].patient_id or "", u)):
        members = by_series.get(uid) or damaged[uid]
        folders = {str(h.path.parent) for h in members}
        blocked = [item for f in sorted(folders) for item in cannot_open.get(f, [])]
        srow, reasons = _series_row(
            uid, members, n_files[uid], config, damaged.get(uid, []), blocked
        )
        series_rows.append(srow)
        file_reasons.update(reasons)
    for row in file_rows:
        reason = file_reasons.get(Path(row["path"]))
        if row["status"] == "used" and reason is not None:
            row["status"], row["reason"] = "skipped", reason

    files = pd.DataFrame(file_rows, columns=list(FILE_COLUMNS)).astype({"path": str, "status": str})
    series = pd.DataFrame(series_rows, columns=list(SERIES_COLUMNS))
    index = DicomIndex(files=files, series=series, root=root.resolve(), config=config)
    log.info("indexed %s: %s", root, index.summary())
    return index
