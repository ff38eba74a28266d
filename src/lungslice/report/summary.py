"""``summary_sc.dcm``: the result as a picture, for viewers that do not show SR.

:func:`render_summary` draws one RGB image: on the left the original image of
the first recommendation in lung window with the finding circled (located
findings) and every other recommendation on that image circled thinner; on
the right the study scores, the research-use notice, the domain warning when
the guard fired, and the recommendations with their InstanceNumbers.
:func:`write_summary_sc` stores it as a DICOM Secondary Capture (highdicom
``SCImage``) in the study of the source series. No patient identifier is
drawn (BurnedInAnnotation NO).
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from lungslice.dicom.kos import evidence_copy
from lungslice.errors import LungsliceError
from lungslice.report.derived import (
    RESEARCH_NOTICE,
    SERIES_NUMBERS,
    derived_uid,
    series_description,
    source_headers,
)
from lungslice.report.figures import window
from lungslice.study import StudyPrediction

__all__ = ["render_summary", "write_summary_sc"]

log = logging.getLogger(__name__)

_SIDE = 512
_PANEL = 448
_BG = (16, 16, 16)
_TEXT = (235, 235, 235)
_MUTED = (160, 160, 160)
_RED = (255, 90, 70)
_AMBER = (255, 200, 0)


@cache
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # matplotlib ships DejaVu Sans: the same glyphs on every machine
    from matplotlib import font_manager

    path = font_manager.findfont("DejaVu Sans:bold" if bold else "DejaVu Sans")
    return ImageFont.truetype(path, size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: object, width: int) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width:  # type: ignore[arg-type]
            line = trial
        else:
            if line:
                lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


def render_summary(prediction: StudyPrediction) -> np.ndarray:
    """The summary picture: ``(512, 960, 3)`` uint8 RGB.

    Raises
    ------
    LungsliceError
        If the prediction carries no volume to draw from.
    """
    rs = prediction.require_volume("no summary image can be drawn")
    canvas = Image.new("RGB", (_SIDE + _PANEL, _SIDE), _BG)
    draw = ImageDraw.Draw(canvas)
    recs = prediction.recommendations
    if recs:
        key = recs[0]
        source = int(rs.nearest_source[key.slice_index])
        image = rs.source.hu[source]
        rows, cols = image.shape
        scale = _SIDE / max(rows, cols)
        tile = Image.fromarray(window(image)).convert("RGB")
        tile = tile.resize((round(cols * scale), round(rows * scale)), Image.Resampling.BILINEAR)
        canvas.paste(tile, (0, 0))
        for r in recs:  # every recommendation on this image, the first one thicker
            if not r.located or int(rs.nearest_source[r.slice_index]) != source:
                continue
            assert r.row is not None and r.column is not None and r.radius_mm is not None
            cx, cy = (r.column + 0.5) * scale, (r.row + 0.5) * scale
            rad = max(r.radius_mm / float(rs.spacing[2]) * 1.6 * scale, 10.0)  # visible
            width = 3 if r is key else 1
            draw.ellipse((cx - rad, cy - rad, cx + rad, cy + rad), outline=_AMBER, width=width)
            draw.text((cx + rad + 3, cy - rad), str(r.rank), fill=_AMBER, font=_font(14, True))
        draw.text(
            (6, _SIDE - 22),
            f"InstanceNumber {key.instance_number}, z {key.z_mm:.1f} mm (rank 1)",
            fill=_AMBER,
            font=_font(13),
        )
    else:
        draw.text((20, _SIDE // 2), "no recommended slice", fill=_MUTED, font=_font(16))
    x, y, width = _SIDE + 18, 14, _PANEL - 30

    def put(
        text: str, fill: tuple[int, int, int] = _TEXT, size: int = 15, bold: bool = False
    ) -> None:
        nonlocal y
        font = _font(size, bold)
        for line in _wrap(draw, text, font, width):
            draw.text((x, y), line, fill=fill, font=font)
            y += size + 5

    s = prediction.scores
    put("lungslice summary", size=20, bold=True)
    put(RESEARCH_NOTICE.removeprefix("lungslice: "), fill=_AMBER, size=14, bold=True)
    y += 6
    put(f"p(malignant nodule)  {s.p_malignant:.2f}", size=19, bold=True)
    put(f"p(any nodule)  {s.p_any_nodule:.2f}", size=19, bold=True)
    put(f"aggregation {s.method}; " + (s.calibration or "not calibrated"), fill=_MUTED, size=13)
    if prediction.out_of_domain:
        y += 4
        put(
            "outside the training domain: scores not calibrated for this scanner or protocol",
            fill=_RED,
            size=15,
            bold=True,
        )
    y += 8
    n = len(prediction.findings)
    put(f"Slices to read first ({n} finding{'' if n == 1 else 's'} in all):", size=15, bold=True)
    for r in recs:
        where = (
            f", row {r.row:.0f} column {r.column:.0f}, radius {r.radius_mm:.1f} mm"
            if r.located and r.row is not None and r.column is not None and r.radius_mm
            else ""
        )
        put(
            f"#{r.rank}  Instance {r.instance_number}  z {r.z_mm:.1f} mm  "
            + (f"p(nodule) {r.p_nodule:.2f}, " if r.p_nodule is not None else "")
            + f"p(malignant) {r.p_malignant:.2f}{where}",
            size=13,
        )
    y = max(y, _SIDE - 48)
    put(
        f"model {prediction.model.model_id} ({prediction.model.kind}, {prediction.model.backbone})",
        fill=_MUTED,
        size=12,
    )
    put(f"series {prediction.series.series_uid}", fill=_MUTED, size=11)
    return np.asarray(canvas, dtype=np.uint8)


def write_summary_sc(
    prediction: StudyPrediction, out_path: str | Path, *, keep_patient_name: bool = False
) -> Path:
    """Write the summary picture as a Secondary Capture in the source study.

    The image references the original image it shows (Source Image Sequence).

    Raises
    ------
    LungsliceError
        If the prediction references an image outside the source series.
    """
    pixels = render_summary(prediction)
    uid = (
        prediction.recommendations[0].sop_instance_uid
        if prediction.recommendations
        else next(iter(prediction.source_files), None)
    )
    if uid is None:
        raise LungsliceError(
            f"series {prediction.series.series_uid}: the prediction names no source image, so "
            "the summary cannot be filed in its study. Fix: predict with "
            "lungslice.prediction.predict_series (it records the source files)."
        )
    header = evidence_copy(source_headers(prediction, [uid])[uid], keep_patient_name)
    # another person's name, and vendors fill it with placeholders ("xDONEx") that
    # highdicom warns about on the user's console; the summary does not need it
    header.ReferringPhysicianName = ""
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=derived_uid(prediction, "summary", "series"),
        series_number=SERIES_NUMBERS["summary"],
        sop_instance_uid=derived_uid(prediction, "summary", "instance"),
        instance_number=1,
        manufacturer="lungslice",
        patient_orientation=("L", "P"),
    )
    sc.SeriesDescription = series_description("summary", prediction.model.model_id)
    sc.ImageComments = RESEARCH_NOTICE
    sc.BurnedInAnnotation = "NO"
    # What the picture shows: lungslice reads chest CT. Not copied from the source:
    # real series carry a paired part there (a GE PET/CT says BREAST), which would
    # require a Laterality the summary cannot have; CHEST is unpaired.
    sc.BodyPartExamined = "CHEST"
    sc.DerivationDescription = "lungslice result summary rendered over the key image"
    ref = Dataset()
    ref.ReferencedSOPClassUID = header.SOPClassUID
    ref.ReferencedSOPInstanceUID = header.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sc.save_as(out, enforce_file_format=True)
    log.info("wrote summary secondary capture %dx%d to %s", pixels.shape[1], pixels.shape[0], out)
    return out
