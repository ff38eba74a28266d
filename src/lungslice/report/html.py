"""The self-contained HTML report of one prediction (all images inline).

It shows the study summary, p(malignant) and p(benign) along z with the
candidate bands, the recommended slices in lung window with and without the
evidence heat map, and the candidate table. It shows PatientID unless asked to
hide it, and never PatientName or BirthDate (they are not in its input).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lungslice.errors import LungsliceError
from lungslice.study import StudyPrediction

__all__ = ["figures", "render_report", "write_report"]

#: Side of the crop around a finding in the report's second thumbnail.
CROP_MM = 48.0

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;
max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:4px}
.muted{color:#666;font-size:13px}
.warn{background:#fff6e0;border:1px solid #f0c36d;padding:8px 12px;
border-radius:4px;font-size:13px;margin:12px 0}
.ood{background:#fdecea;border:2px solid #c0392b;color:#7b241c;padding:10px 14px;
border-radius:4px;font-size:14px;margin:12px 0}
.scores{display:flex;gap:14px;margin:14px 0} .score{border:1px solid #ddd;border-radius:6px;
padding:10px 16px;min-width:150px} .score b{display:block;font-size:24px}
.hi{color:#c0392b} .mid{color:#d68910} .lo{color:#1e8449}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:4px 8px;
text-align:right} th{background:#f4f4f4} td.l,th.l{text-align:left}
.recs{display:flex;flex-wrap:wrap;gap:14px}
.rec{border:1px solid #ddd;border-radius:6px;padding:8px}
.rec img{width:220px;height:220px;display:inline-block;margin-right:4px;background:#000}
.rec .cap{font-size:12px;margin-top:4px;max-width:450px}
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _level(p: float) -> str:
    return "hi" if p >= 0.5 else "mid" if p >= 0.2 else "lo"


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return html.escape(str(x))


def render_report(
    result: dict[str, Any],
    z_plot: bytes,
    thumbnails: Sequence[tuple[bytes, bytes]],
    out_path: str | Path,
    *,
    hide_patient_id: bool = False,
) -> Path:
    """Write ``report.html`` for one prediction.

    Parameters
    ----------
    result : dict
        The prediction record (the content of ``result.json``).
    z_plot : bytes
        PNG of the probabilities along z.
    thumbnails : sequence of (bytes, bytes)
        For each recommendation in order: the slice PNG without and with the heat map.
    out_path : str or Path
        Output file.
    hide_patient_id : bool
        Leave PatientID out of the report.
    """
    study = result["study"]
    scores = result["scores"]
    recs = result["recommendations"]
    if len(thumbnails) != len(recs):
        raise ValueError(f"{len(recs)} recommendations but {len(thumbnails)} thumbnails")
    model = result.get("model", {})
    who = "" if hide_patient_id else f"Patient {html.escape(str(study.get('patient_id', '')))} · "
    parts: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>lungslice report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>lungslice — slices to read first</h1>",
        f"<div class='muted'>{who}Study {html.escape(str(study['study_uid']))}<br>"
        f"Series {html.escape(str(study['series_uid']))} · {study['n_original_slices']} original "
        f"slices, {study['n_resampled_slices']} slices at "
        f"{study['slice_spacing_mm']:g} mm</div>",
        "<div class='warn'>Research software. Not a medical device; not for diagnosis. "
        + (
            "Scores are candidate-classifier outputs aggregated per study.</div>"
            if model.get("kind") == "candidates"
            else "Scores are slice-classifier outputs aggregated per study.</div>"
        ),
    ]
    domain = result.get("domain") or {}
    if domain.get("in_domain") is False:
        parts.append(
            "<div class='ood'><b>Outside the training domain</b>: "
            f"{html.escape(str(domain.get('message', '')))}. Domain score "
            f"{_fmt(domain.get('score'))} above the threshold {_fmt(domain.get('threshold'))} "
            "fixed on the training patients; the probabilities below are reported but "
            "uncalibrated for this input.</div>"
        )
    parts.append("<div class='scores'>")
    for key, name in (("p_malignant", "p(malignant nodule)"), ("p_any_nodule", "p(any nodule)")):
        p = float(scores[key])
        parts.append(f"<div class='score'>{name}<b class='{_level(p)}'>{p:.2f}</b></div>")
    parts.append(
        f"<div class='score'>candidates<b>{len(result['candidates'])}</b></div>"
        f"<div class='score'>aggregation<b style='font-size:16px'>"
        f"{html.escape(str(scores.get('method', '')))}</b></div></div>"
    )
    parts.append("<h2>Probability along the scan</h2>")
    parts.append(_img(z_plot, "p(malignant) and p(benign) along z"))
    parts.append(
        "<div class='muted'>Shaded bands: candidates. Dotted lines: recommended slices "
        "(numbered by rank).</div>"
    )
    parts.append("<h2>Recommended slices</h2><div class='recs'>")
    for rec, (plain, heat) in zip(recs, thumbnails, strict=True):
        cap = (
            f"<b>#{rec['rank']}</b> z = {rec['z_mm']:.1f} mm · original image "
            f"InstanceNumber {_fmt(rec.get('instance_number'))} · p(malignant) "
            f"{rec['p_malignant']:.2f}, p(benign) {rec['p_benign']:.2f}"
            + (f" · candidate {rec['candidate']}" if rec.get("candidate") is not None else "")
            + (
                f"<br>finding at row {rec['row']:.0f}, column {rec['column']:.0f} "
                f"(x {rec['x_mm']:.1f} mm, y {rec['y_mm']:.1f} mm), radius "
                f"{rec['radius_mm']:.1f} mm, p(nodule) {rec['p_nodule']:.2f}"
                if "row" in rec
                else ""
            )
            + f"<br><span class='muted'>SOPInstanceUID {html.escape(str(rec['sop_instance_uid']))}"
            "</span>"
        )
        parts.append(
            f"<div class='rec'>{_img(plain, 'slice ' + str(rec['rank']))}"
            f"{_img(heat, 'slice ' + str(rec['rank']) + ' with evidence map')}"
            f"<div class='cap'>{cap}</div></div>"
        )
    located = model.get("kind") == "candidates"
    parts.append(
        "</div><div class='muted'>Left: lung window (-1000..400 HU)"
        + (
            ", the finding circled. Right: a 48 mm crop around it.</div>"
            if located
            else ". Right: the same slice with the class activation map for p(malignant).</div>"
        )
    )
    parts.append("<h2>Candidates</h2>")
    if result["candidates"]:
        cols = (
            ["id", "z_mm", "row", "column", "radius_mm", "p_nodule", "p_malignant", "p_benign"]
            if located
            else [
                "id",
                "z_min",
                "z_max",
                "peak_z",
                "max_p_malignant",
                "mean_p_malignant",
                "max_p_benign",
            ]
        )
        shown = result["candidates"][:20] if located else result["candidates"]
        parts.append(
            "<table><tr>"
            + "".join(f"<th>{c}</th>" for c in cols)
            + "</tr>"
            + "".join(
                "<tr>" + "".join(f"<td>{_fmt(c.get(k))}</td>" for k in cols) + "</tr>"
                for c in shown
            )
            + "</table>"
        )
        if len(shown) < len(result["candidates"]):
            parts.append(
                f"<div class='muted'>The 20 most probable of {len(result['candidates'])} "
                "findings; result.json lists all.</div>"
            )
    else:
        parts.append("<p>No slice run exceeded the candidate threshold.</p>")
    parts.append("<h2>How this was made</h2><table>")
    rows = [
        ("backbone", model.get("backbone")),
        ("weights", model.get("weights_id")),
        ("layers", model.get("layers")),
        ("inputs", model.get("inputs")),
        ("head", model.get("head")),
        ("label rule", model.get("label_rule")),
        ("lungslice", result.get("provenance", {}).get("versions", {}).get("lungslice")),
        ("created", result.get("provenance", {}).get("created")),
    ]
    for k, v in rows:
        parts.append(f"<tr><th class='l'>{k}</th><td class='l'>{_fmt(v)}</td></tr>")
    timing = result.get("timings_s", {})
    if timing:
        parts.append(
            "<tr><th class='l'>timings (s)</th><td class='l'>"
            + ", ".join(f"{k} {v:.2f}" for k, v in timing.items())
            + "</td></tr>"
        )
    parts.append("</table></body></html>")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def figures(prediction: StudyPrediction) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The report's thumbnails (two per recommendation) and its z-profile plot.

    Located findings (candidate bundles) are circled on the whole slice and on
    a 48 mm crop; whole-slice recommendations show the original image nearest
    to the slice, plain and with its class activation map when the prediction
    carries one.

    Raises
    ------
    LungsliceError
        If the prediction carries no volume to draw from.
    """
    from lungslice.report.figures import finding_png, slice_png, z_profile_png

    rs = prediction.volume
    if rs is None:
        raise LungsliceError(
            f"prediction of series {prediction.series.series_uid} carries no volume, so its "
            "report has no images to show. Fix: keep the volume (Predictor.predict sets it)."
        )
    recs = prediction.recommendations
    thumbs: list[tuple[bytes, bytes]] = []
    if prediction.model.kind == "candidates":
        spacing = float(rs.spacing[1])
        for r in recs:
            assert r.row is not None and r.column is not None and r.radius_mm is not None
            hu = rs.hu[r.slice_index]
            rad_px = r.radius_mm / spacing
            crop = max(16, round(CROP_MM / spacing))
            thumbs.append(
                (
                    finding_png(hu, r.row, r.column, rad_px),
                    finding_png(hu, r.row, r.column, rad_px, crop_px=crop),
                )
            )
        shown = prediction.findings[: max(len(recs), 10)]
    else:
        heat = prediction.heatmaps
        src = rs.source
        for k, r in enumerate(recs):
            image = src.hu[int(rs.nearest_source[r.slice_index])]
            h = heat[k] if heat is not None and k < len(heat) else None
            thumbs.append((slice_png(image), slice_png(image, h)))
        shown = prediction.findings
    profile = prediction.slices.profile
    plot = z_profile_png(
        np.asarray(prediction.slices.z_mm),
        profile[:, 2],
        profile[:, 1],
        [{"z_min": f.z_min, "z_max": f.z_max} for f in shown],
        [r.z_mm for r in recs],
    )
    return thumbs, plot


def write_report(
    prediction: StudyPrediction,
    record: Mapping[str, Any],
    out_path: str | Path,
    *,
    hide_patient_id: bool = False,
) -> Path:
    """Write ``report.html`` for a prediction.

    Parameters
    ----------
    prediction : StudyPrediction
        What the figures are drawn from.
    record : mapping
        Its ``result.json`` record (the tables and captions).
    out_path : str or Path
        Output file.
    hide_patient_id : bool
        Leave PatientID out of the report.
    """
    thumbs, plot = figures(prediction)
    return render_report(dict(record), plot, thumbs, out_path, hide_patient_id=hide_patient_id)
