"""lungslice's DICOM results for one study, checked before they are stored into it.

``predict`` writes its DICOM outputs (``key_images.dcm``, ``findings_sr.dcm``,
``summary_sc.dcm``; :mod:`lungslice.report.writers`) with the
SeriesDescription ``lungslice <kind> <model-id>`` and UIDs derived from the
study, the source series, the model id and the kind. The service relies on
both: the description tells it a study already holds this model's results,
and the derived UIDs make storing the same results twice (after a worker was
killed between two uploads) land on the same instances instead of adding a
second set. :func:`read_results` checks both before anything is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom

from lungslice.errors import LungsliceError
from lungslice.study import model_id

__all__ = ["SERIES_PREFIX", "ResultObject", "is_result_series", "model_id", "read_results"]

#: Every series lungslice stores starts its SeriesDescription with this.
SERIES_PREFIX = "lungslice "


def is_result_series(description: str | None, model: str | None = None) -> bool:
    """Whether a SeriesDescription names a lungslice result (of ``model``'s 12-char id)."""
    words = str(description or "").split()
    if len(words) < 3 or f"{words[0]} " != SERIES_PREFIX:
        return False
    tail = words[-1]
    if len(tail) != 12 or any(c not in "0123456789abcdef" for c in tail):
        return False  # e.g. the phantom's own CT series, 'lungslice phantom'
    return model is None or tail == model[:12]


@dataclass(frozen=True)
class ResultObject:
    """One DICOM result ready to store."""

    name: str
    kind: str
    modality: str
    series_uid: str
    sop_instance_uid: str
    data: bytes


def read_results(files: list[Path], root: Path, study_uid: str, model: str) -> list[ResultObject]:
    """Read ``files`` (under ``root``) and check that they are this model's results of the study.

    Parameters
    ----------
    files : list of Path
        The DICOM files predict wrote.
    root : Path
        Their output folder; a file's path relative to it names the output.
    study_uid : str
        StudyInstanceUID of the study they are stored into.
    model : str
        The model id (:func:`lungslice.study.model_id`).

    Raises
    ------
    LungsliceError
        If an output belongs to another study (it would land there), or does not
        carry this model's SeriesDescription (the service would not recognise it
        and would process the study again).
    """
    objects = []
    for path in sorted(files):
        data = path.read_bytes()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        name = path.relative_to(root).as_posix()
        if str(ds.StudyInstanceUID) != study_uid:
            raise LungsliceError(
                f"{name}: StudyInstanceUID {ds.StudyInstanceUID} is not the study's {study_uid}; "
                "storing it would put lungslice's results into another study"
            )
        described = str(ds.get("SeriesDescription", ""))
        if not is_result_series(described, model):
            raise LungsliceError(
                f"{name}: SeriesDescription {described!r}, expected 'lungslice <kind> "
                f"{model[:12]}'; without it the service cannot tell the study was processed"
            )
        objects.append(
            ResultObject(
                name=name,
                kind=" ".join(described.split()[1:-1]),
                modality=str(ds.get("Modality", "")),
                series_uid=str(ds.SeriesInstanceUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                data=data,
            )
        )
    return objects
