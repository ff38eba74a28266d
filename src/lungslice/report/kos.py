"""``key_images.dcm``: the recommended slices as a DICOM Key Object Selection.

The document references the original images nearest to the recommended
slices, in rank order (several resampled slices can share one image; it is
listed once, with the notes of every rank on it), with one text line per
image: rank, z, scores and, for located findings, where the finding is. When
the domain guard fired, the title line says so.
"""

from __future__ import annotations

from pathlib import Path

from lungslice.dicom.kos import write_key_images
from lungslice.errors import LungsliceError
from lungslice.report.derived import RESEARCH_NOTICE, series_description, source_headers
from lungslice.study import Recommendation, StudyPrediction

__all__ = ["key_image_notes", "write_kos"]

#: First line of the Key Object Description.
TITLE = "lungslice: slices to read first"


def _note(r: Recommendation) -> str:
    note = (
        f"rank {r.rank}, z {r.z_mm:.1f} mm, "
        + (f"p(nodule) {r.p_nodule:.2f}, " if r.p_nodule is not None else "")
        + f"p(malignant) {r.p_malignant:.2f}, "
        f"p(benign) {r.p_benign:.2f}"
    )
    if r.located:
        assert r.row is not None and r.column is not None and r.radius_mm is not None
        note += (
            f", finding at row {r.row:.0f} column {r.column:.0f} "
            f"(x {r.x_mm or 0.0:.1f} mm, y {r.y_mm or 0.0:.1f} mm), "
            f"radius {r.radius_mm:.1f} mm"
        )
    return note


def key_image_notes(prediction: StudyPrediction) -> dict[str, str]:
    """SOPInstanceUID -> note, in rank order (one entry per original image)."""
    seen: dict[str, str] = {}
    for r in prediction.recommendations:
        note = _note(r)
        uid = r.sop_instance_uid
        seen[uid] = f"{seen[uid]}; {note}" if uid in seen else note
    return seen


def title(prediction: StudyPrediction) -> str:
    """The description's first line (with the domain warning when the guard fired)."""
    text = TITLE
    if prediction.out_of_domain and prediction.domain is not None:
        text += f" ({prediction.domain.message})"
    return f"{text} [{RESEARCH_NOTICE.removeprefix('lungslice: ')}]"


def write_kos(
    prediction: StudyPrediction, out_path: str | Path, *, keep_patient_name: bool = False
) -> Path:
    """Write the Key Object Selection document of a prediction.

    Raises
    ------
    LungsliceError
        If the prediction has no recommendation, or one names an image that is
        not in the source series.
    """
    notes = key_image_notes(prediction)
    if not notes:
        raise LungsliceError(
            f"series {prediction.series.series_uid}: no recommended slice, so no key-object "
            "document can be written. Fix: predict with top_k >= 1."
        )
    headers = source_headers(prediction, notes)
    return write_key_images(
        out_path,
        [headers[uid] for uid in notes],
        list(notes.values()),
        title=title(prediction),
        keep_patient_name=keep_patient_name,
        software_version=str(prediction.provenance.get("versions", {}).get("lungslice")),
        series_description=series_description("key images", prediction.model.model_id),
        model_id=prediction.model.model_id,
    )
