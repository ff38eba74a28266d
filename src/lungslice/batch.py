"""Batch prediction: every CT series of a collection, resumable, locally or on Ray.

:func:`predict_batch` indexes ``ROOT`` once and predicts each CT series with
:class:`lungslice.prediction.Predictor` (whole-slice or candidate bundles).
Outputs: one folder per study, ``OUT/<patient_id>/<study_uid>/`` with
``result.json``, ``report.html`` and ``key_images.dcm`` (a study with several
CT series gets one subfolder per series), and a summary table
``OUT/summary.parquet`` + ``OUT/summary.csv``: one row per series with its
status (``done``, ``failed``, ``rejected``), reason, scores and top finding.

Same rules as extraction: the work item is a series of the index, run by a
scheduler (:mod:`lungslice.features.schedule`, or a Ray actor pool that loads
the model once per actor); a series' folder is written under a temporary
name and renamed into place, so it is either complete or absent; a rerun
skips series whose folder is in place; a series that fails is recorded with
its reason and the run goes on.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lungslice.features.cache import atomic_write
from lungslice.features.schedule import RunTracker, SeriesJob, find_series
from lungslice.prediction import PredictConfig
from lungslice.progress import ProgressCallback

__all__ = ["SUMMARY_COLUMNS", "BatchResult", "PredictWork", "predict_batch"]

log = logging.getLogger(__name__)

#: Columns of ``summary.parquet`` / ``summary.csv`` (plus ``host``/``node_id`` of the worker).
SUMMARY_COLUMNS = (
    "patient_id",
    "study_uid",
    "series_uid",
    "status",
    "reason",
    "p_malignant",
    "p_any_nodule",
    "n_candidates",
    "top_slice_index",
    "top_z_mm",
    "top_instance_number",
    "top_p_malignant",
    "n_slices",
    "seconds",
    "out_dir",
)


@dataclass
class BatchResult:
    """What :func:`predict_batch` did.

    Attributes
    ----------
    out_dir : Path
    summary : pandas.DataFrame
        One row per series found (:data:`SUMMARY_COLUMNS`).
    computed, reused, failed : list of str
        Series predicted in this run, found done from an earlier run, failed.
    seconds : float
        Wall time including set-up.
    engine : str
    """

    out_dir: Path
    summary: pd.DataFrame
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    engine: str = "inline"

    def summary_text(self) -> str:
        """A few lines for the CLI."""
        counts = Counter(self.summary["status"]) if len(self.summary) else Counter()
        lines = [
            f"{len(self.summary)} series ({', '.join(f'{v} {k}' for k, v in counts.items())}); "
            f"{len(self.computed)} predicted, {len(self.reused)} already done; "
            f"{self.seconds:.1f} s (engine {self.engine}) -> {self.out_dir / 'summary.csv'}"
        ]
        bad = self.summary[self.summary["status"] != "done"]
        lines += [f"  {r.status} {r.series_uid}: {r.reason}" for r in bad.itertuples()]
        return "\n".join(lines)


def _target(out_dir: Path, job: SeriesJob, multi: bool) -> Path:
    study = out_dir / job.patient_id / job.study_uid
    return study / job.series_uid if multi else study


def _row(job: SeriesJob, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in SUMMARY_COLUMNS}
    row.update(
        patient_id=job.patient_id,
        study_uid=job.study_uid,
        series_uid=job.series_uid,
        status="done",
        reason="",
        finished_utc=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    row.update(values)
    return row


def _result_row(job: SeriesJob, result: dict[str, Any], target: Path) -> dict[str, Any]:
    top = result["recommendations"][0] if result.get("recommendations") else {}
    return _row(
        job,
        p_malignant=result["scores"]["p_malignant"],
        p_any_nodule=result["scores"]["p_any_nodule"],
        n_candidates=len(result.get("candidates", [])),
        top_slice_index=top.get("slice_index"),
        top_z_mm=top.get("z_mm"),
        top_instance_number=top.get("instance_number"),
        top_p_malignant=top.get("p_malignant"),
        n_slices=result["study"].get("n_resampled_slices"),
        out_dir=str(target),
    )


class PredictWork:
    """Prediction of one series (:class:`~lungslice.features.schedule.SeriesWork`).

    Parameters
    ----------
    model : str or Path
        Model bundle folder (whole-slice or candidate bundle).
    out_dir : str or Path
        Batch output folder.
    config : PredictConfig
        Outputs and privacy settings (``series_uid`` is set per series).
    multi_series : set of str
        Study UIDs with more than one CT series (one subfolder per series).
    """

    def __init__(
        self,
        model: str | Path,
        out_dir: str | Path,
        config: PredictConfig,
        multi_series: set[str],
    ) -> None:
        self.model = Path(model)
        self.out_dir = Path(out_dir)
        self.config = config
        self.multi_series = set(multi_series)
        self.predictor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["predictor"] = None  # each worker loads the model once
        return state

    def target(self, job: SeriesJob) -> Path:
        """The series' output folder."""
        return _target(self.out_dir, job, job.study_uid in self.multi_series)

    def setup(self) -> None:
        """Load the model bundle and its backbone (once)."""
        from lungslice.prediction import Predictor

        if self.predictor is None:
            self.predictor = Predictor(self.model)

    def load(self, job: SeriesJob) -> Path:
        """The series' folder (the predictor reads and resamples it itself)."""
        return Path(os.path.commonpath([str(f.parent) for f in job.files]))

    def compute(self, job: SeriesJob, loaded: Path, load_s: float) -> dict[str, Any]:
        """Predict into a temporary folder, then rename it into place; the summary row."""
        import dataclasses

        self.setup()
        t0 = time.perf_counter()
        target = self.target(job)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        config = dataclasses.replace(self.config, series_uid=job.series_uid)
        try:
            preds = self.predictor.predict_study(loaded, tmp, config)
            if target.exists():  # another run finished it meanwhile: same inputs, same model
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        row = _result_row(job, preds[0].result, target)
        row["seconds"] = time.perf_counter() - t0 + load_s
        return row

    def failed_row(self, job: SeriesJob, reason: str) -> dict[str, Any]:
        """A ``failed`` summary row."""
        return _row(job, status="failed", reason=reason, out_dir=str(self.target(job)))


def _write_summary(out_dir: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    cols = [*SUMMARY_COLUMNS, *(c for c in frame.columns if c not in SUMMARY_COLUMNS)]
    frame = frame.reindex(columns=cols)
    atomic_write(out_dir / "summary.parquet", lambda tmp: frame.to_parquet(tmp, index=False))
    atomic_write(out_dir / "summary.csv", lambda tmp: frame.to_csv(tmp, index=False))
    return frame


def predict_batch(
    root: str | Path,
    model: str | Path,
    out_dir: str | Path,
    config: PredictConfig = PredictConfig(),
    progress: ProgressCallback | None = None,
    *,
    engine: Any = "local",
    ray: Any = None,
) -> BatchResult:
    """Predict every CT series under ``root`` into ``out_dir`` (resumable).

    Parameters
    ----------
    root : str or Path
        DICOM tree of the collection (any layout; e.g. ``LIDC-IDRI/``).
    model : str or Path
        Model bundle folder (``lungslice train`` or ``lungslice candidates train``).
    out_dir : str or Path
        Receives one folder per study and ``summary.parquet`` / ``summary.csv``.
    config : PredictConfig
        Output and privacy settings, applied to every series.
    progress : ProgressCallback, optional
        Called as ``progress(series_done, series_total, label)``.
    engine : {"local", "ray"} or Scheduler
        ``"ray"``: a Ray Data actor pool, each actor loading the model once.
    ray : RayOptions, optional

    Returns
    -------
    BatchResult
    """
    from lungslice.features.extract import resolve_scheduler

    t_start = time.perf_counter()
    scheduler = resolve_scheduler(engine, "inline", "cpu", ray)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = find_series(root)
    ct_per_study = Counter(j.study_uid for j in jobs if j.rejected is None)
    multi = {s for s, n in ct_per_study.items() if n > 1}
    work = PredictWork(model, out, config, multi)
    previous: dict[str, dict[str, Any]] = {}
    if (out / "summary.parquet").is_file():
        for r in pd.read_parquet(out / "summary.parquet").to_dict("records"):
            previous[str(r["series_uid"])] = {str(k): v for k, v in r.items()}
    rows: dict[str, dict[str, Any]] = {}
    result = BatchResult(out_dir=out, summary=pd.DataFrame(), engine=scheduler.name)
    pending: list[SeriesJob] = []
    for job in jobs:
        done = work.target(job) / "result.json"
        if job.rejected is not None:
            rows[job.series_uid] = _row(job, status="rejected", reason=job.rejected)
        elif done.is_file():
            prev = previous.get(job.series_uid)
            if prev is None or prev.get("status") != "done":
                prev = _result_row(job, json.loads(done.read_text()), done.parent)
            rows[job.series_uid] = prev
            result.reused.append(job.series_uid)
        else:
            pending.append(job)

    def write() -> pd.DataFrame:
        return _write_summary(out, [rows[j.series_uid] for j in jobs if j.series_uid in rows])

    write()
    tracker = RunTracker(len(jobs), progress)
    tracker.start(len(rows), len(pending))
    rows_in = scheduler.map(work, pending)
    try:
        for row in rows_in:
            uid = str(row["series_uid"])
            rows[uid] = row
            write()
            tracker.update(row, int(row.get("n_slices") or 0))
            (result.failed if row["status"] == "failed" else result.computed).append(uid)
    finally:
        close = getattr(rows_in, "close", None)
        if close is not None:
            close()
        result.summary = write()
    result.seconds = time.perf_counter() - t_start
    return result
