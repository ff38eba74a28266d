"""What every DICOM object lungslice derives from a study shares.

Each object (key images, findings SR, summary) goes into the study of the
source series with a new series of its own. Its SeriesDescription is
``"lungslice <kind> <model-id>"`` (kind one of :data:`SERIES_KINDS`, model id
the bundle's 12 hex digits), so a service can tell which studies a model has
already processed. Its UIDs are derived from the study, the source series,
the model id and the kind: writing the same prediction again gives the same
UIDs, so a PACS replaces the object rather than filing a second one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lungslice.errors import DicomReadError, LungsliceError
from lungslice.study import StudyPrediction

__all__ = [
    "RESEARCH_NOTICE",
    "SERIES_KINDS",
    "SERIES_NUMBERS",
    "derived_uid",
    "series_description",
    "source_headers",
]

#: The kinds of derived series, as their SeriesDescription names them.
SERIES_KINDS: tuple[str, str, str] = ("key images", "findings SR", "summary")

#: SeriesNumber of each kind of derived series.
SERIES_NUMBERS: dict[str, int] = {"key images": 9901, "findings SR": 9902, "summary": 9903}

#: Carried by every derived object.
RESEARCH_NOTICE = "lungslice: research use only, not for diagnosis"


def series_description(kind: str, model_id: str) -> str:
    """``"lungslice <kind> <model-id>"``.

    Raises
    ------
    LungsliceError
        If ``kind`` is not one of :data:`SERIES_KINDS` or the model id is empty.
    """
    if kind not in SERIES_KINDS:
        raise LungsliceError(
            f"derived series kind {kind!r}: expected one of {', '.join(SERIES_KINDS)}"
        )
    if not model_id:
        raise LungsliceError(
            f"derived series {kind!r}: the prediction names no model id; expected the bundle's "
            "12 hex digits (lungslice.study.model_id)"
        )
    return f"lungslice {kind} {model_id}"


def derived_uid(prediction: StudyPrediction, kind: str, what: str) -> str:
    """A UID for ``what`` (``series``, ``instance``, ...) of a derived object, stable per input.

    Derived from the StudyInstanceUID, the source SeriesInstanceUID, the model
    id and the kind.
    """
    s = prediction.series
    return str(
        generate_uid(
            entropy_srcs=[
                "lungslice",
                what,
                kind,
                s.study_uid,
                s.series_uid,
                prediction.model.model_id,
            ]
        )
    )


def source_headers(prediction: StudyPrediction, uids: Iterable[str]) -> dict[str, Dataset]:
    """Headers (no pixels) of the source images with these SOPInstanceUIDs.

    Raises
    ------
    LungsliceError
        If a UID is not an image of the source series (a reference would not
        resolve).
    DicomReadError
        If a source file cannot be read, or holds another SOPInstanceUID.
    """
    out: dict[str, Dataset] = {}
    for uid in dict.fromkeys(uids):
        path = prediction.source_files.get(uid)
        if path is None:
            raise LungsliceError(
                f"SOPInstanceUID {uid} is not an image of source series "
                f"{prediction.series.series_uid} ({len(prediction.source_files)} images known); "
                "a derived object may reference only images of the series it was predicted on. "
                "Fix: predict with lungslice.prediction.predict_series (it records the files)."
            )
        out[uid] = read_header(path, uid)
    return out


def read_header(path: str | Path, uid: str | None = None) -> Dataset:
    """A source image header, checked to be the expected instance.

    Raises
    ------
    DicomReadError
        If the file cannot be read, or holds another SOPInstanceUID.
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for bad files
        raise DicomReadError(f"cannot read source image {path}: {exc}") from exc
    if uid is not None and str(ds.get("SOPInstanceUID", "")) != uid:
        raise DicomReadError(
            f"{path}: SOPInstanceUID {ds.get('SOPInstanceUID')}, expected {uid}; the file "
            "changed since the prediction. Fix: predict again on the current files."
        )
    return ds
