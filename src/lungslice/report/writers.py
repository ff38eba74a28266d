"""Every output of a prediction, written into one folder.

:func:`write_all` is what a caller (``lungslice predict``, a service next to a
PACS) uses: it writes ``result.json`` and, as the options ask, ``report.html``,
``key_images.dcm`` (Key Object Selection), ``findings_sr.dcm`` (Comprehensive
SR, TID 1500) and ``summary_sc.dcm`` (Secondary Capture), and returns the
paths written. ``result.json`` is written last and records the seconds each
writer took.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lungslice.report.result_json import result_record, write_result_json
from lungslice.study import StudyPrediction

if TYPE_CHECKING:
    from lungslice.prediction import PredictConfig

__all__ = ["OUTPUT_FILES", "OutputOptions", "WrittenOutputs", "write_all", "write_outputs"]

log = logging.getLogger(__name__)

#: File name of each output kind.
OUTPUT_FILES: dict[str, str] = {
    "report": "report.html",
    "key_images": "key_images.dcm",
    "findings_sr": "findings_sr.dcm",
    "summary_sc": "summary_sc.dcm",
    "result": "result.json",
}


@dataclass(frozen=True)
class OutputOptions:
    """Which outputs to write, and what they may show.

    Attributes
    ----------
    report, key_images, findings_sr, summary_sc : bool
        Write ``report.html``, ``key_images.dcm``, ``findings_sr.dcm``,
        ``summary_sc.dcm`` (``result.json`` is always written).
    hide_patient_id : bool
        Leave PatientID out of ``report.html``.
    keep_patient_name : bool
        Copy PatientName/BirthDate/Sex into the DICOM outputs (left empty by default).
    """

    report: bool = True
    key_images: bool = True
    findings_sr: bool = True
    summary_sc: bool = True
    hide_patient_id: bool = False
    keep_patient_name: bool = False

    @classmethod
    def from_config(cls, config: PredictConfig) -> OutputOptions:
        """The output options a :class:`lungslice.prediction.PredictConfig` holds."""
        return cls(
            report=config.write_report,
            key_images=config.write_key_images,
            findings_sr=config.write_findings_sr,
            summary_sc=config.write_summary,
            hide_patient_id=config.hide_patient_id,
            keep_patient_name=config.keep_patient_name,
        )


@dataclass(frozen=True)
class WrittenOutputs:
    """What :func:`write_outputs` wrote.

    Attributes
    ----------
    paths : dict
        Output kind (keys of :data:`OUTPUT_FILES`) -> file, in writing order.
    record : dict
        The ``result.json`` record as written (with the writers' timings).
    skipped : dict
        Output kind -> why it was not written although asked for.
    """

    paths: dict[str, Path]
    record: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)


def write_outputs(
    prediction: StudyPrediction, out_dir: str | Path, options: OutputOptions = OutputOptions()
) -> WrittenOutputs:
    """Write every asked-for output of a prediction into ``out_dir``.

    An output that cannot exist for this prediction (key images without any
    recommendation) is not written; the reason is logged and returned in
    ``skipped``.
    """
    from lungslice.report.html import write_report
    from lungslice.report.kos import write_kos
    from lungslice.report.sr import write_findings_sr
    from lungslice.report.summary import write_summary_sc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    timings: dict[str, float] = {}
    uid = prediction.series.series_uid
    keep_name = options.keep_patient_name
    if options.report:
        t = time.perf_counter()
        paths["report"] = write_report(
            prediction, out / OUTPUT_FILES["report"], hide_patient_id=options.hide_patient_id
        )
        timings["report"] = time.perf_counter() - t
    if options.key_images:
        if prediction.recommendations:
            t = time.perf_counter()
            paths["key_images"] = write_kos(
                prediction,
                out / OUTPUT_FILES["key_images"],
                keep_patient_name=options.keep_patient_name,
            )
            timings["key_images"] = time.perf_counter() - t
        else:
            skipped["key_images"] = "no recommended slice to reference"
    if options.findings_sr:
        t = time.perf_counter()
        paths["findings_sr"] = write_findings_sr(
            prediction, out / OUTPUT_FILES["findings_sr"], keep_patient_name=keep_name
        )
        timings["findings_sr"] = time.perf_counter() - t
    if options.summary_sc:
        t = time.perf_counter()
        paths["summary_sc"] = write_summary_sc(
            prediction, out / OUTPUT_FILES["summary_sc"], keep_patient_name=keep_name
        )
        timings["summary_sc"] = time.perf_counter() - t
    for kind, why in skipped.items():
        log.info("series %s: %s not written: %s", uid, OUTPUT_FILES[kind], why)
    record = result_record(prediction, timings)
    paths["result"] = write_result_json(record, out / OUTPUT_FILES["result"])
    return WrittenOutputs(paths=paths, record=record, skipped=skipped)


def write_all(
    prediction: StudyPrediction, out_dir: str | Path, options: OutputOptions = OutputOptions()
) -> list[Path]:
    """Write every asked-for output of a prediction into ``out_dir``; the paths written.

    Parameters
    ----------
    prediction : StudyPrediction
        From :meth:`lungslice.prediction.Predictor.predict` or
        :func:`lungslice.prediction.predict_series` (which record the source
        files the DICOM outputs reference).
    out_dir : str or Path
        Folder to write into (created if needed).
    options : OutputOptions
        Which outputs, and what they may show.

    Returns
    -------
    list of Path
        The files written, ``result.json`` last.
    """
    return list(write_outputs(prediction, out_dir, options).paths.values())
