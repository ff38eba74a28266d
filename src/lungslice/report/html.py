"""The self-contained HTML report of one prediction (all images inline), from its StudyPrediction.

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

from lungslice.study import Finding, Recommendation, StudyPrediction

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


def _caption(r: Recommendation) -> str:
    cap = (
        f"<b>#{r.rank}</b> z = {r.z_mm:.1f} mm · original image "
        f"InstanceNumber {_fmt(r.instance_number)} · p(malignant) "
        f"{r.p_malignant:.2f}, p(benign) {r.p_benign:.2f}"
        + (f" · candidate {r.finding}" if r.finding is not None else "")
    )
    if r.located:
        assert r.row is not None and r.column is not None and r.radius_mm is not None
        cap += (
            f"<br>finding at row {r.row:.0f}, column {r.column:.0f} "
            f"(x {r.x_mm or 0.0:.1f} mm, y {r.y_mm or 0.0:.1f} mm), radius "
            f"{r.radius_mm:.1f} mm, p(nodule) {r.p_nodule or 0.0:.2f}"
        )
    return cap + (
        f"<br><span class='muted'>SOPInstanceUID {html.escape(r.sop_instance_uid)}</span>"
    )


def _finding_row(f: Finding, located: bool) -> dict[str, Any]:
    if located:
        return {
            "id": f.id,
            "z_mm": f.z_mm,
            "row": f.row,
            "column": f.column,
            "radius_mm": f.radius_mm,
            "p_nodule": f.p_nodule,
            "p_malignant": f.p_malignant,
            "p_benign": f.p_benign,
        }
    return {
        "id": f.id,
        "z_min": f.z_min,
        "z_max": f.z_max,
        "peak_z": f.z_mm,
        "max_p_malignant": f.max_p_malignant,
        "mean_p_malignant": f.mean_p_malignant,
        "max_p_benign": f.max_p_benign,
    }


def render_report(
    prediction: StudyPrediction,
    z_plot: bytes,
    thumbnails: Sequence[tuple[bytes, bytes]],
    out_path: str | Path,
    *,
    hide_patient_id: bool = False,
    timings: Mapping[str, float] | None = None,
) -> Path:
    """Write ``report.html`` for one prediction.

    Parameters
    ----------
    prediction : StudyPrediction
        What to report.
    z_plot : bytes
        PNG of the probabilities along z.
    thumbnails : sequence of (bytes, bytes)
        For each recommendation in order: two PNGs (the slice plain and with
        the heat map, or the slice and a crop around the finding).
    out_path : str or Path
        Output file.
    hide_patient_id : bool
        Leave PatientID out of the report.
    timings : mapping, optional
        Seconds per stage to show (default: the prediction's).
    """
    study = prediction.series
    scores = prediction.scores
    recs = prediction.recommendations
    model = prediction.model
    if len(thumbnails) != len(recs):
        raise ValueError(f"{len(recs)} recommendations but {len(thumbnails)} thumbnails")
    located = model.kind == "candidates"
    who = "" if hide_patient_id else f"Patient {html.escape(study.patient_id)} · "
    parts: list[str] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>lungslice report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>lungslice — slices to read first</h1>",
        f"<div class='muted'>{who}Study {html.escape(study.study_uid)}<br>"
        f"Series {html.escape(study.series_uid)} · {study.n_original_slices} original "
        f"slices, {study.n_resampled_slices} slices at "
        f"{study.slice_spacing_mm:g} mm</div>",
        "<div class='warn'>Research software. Not a medical device; not for diagnosis. "
        + (
            "Scores are candidate-classifier outputs aggregated per study.</div>"
            if located
            else "Scores are slice-classifier outputs aggregated per study.</div>"
        ),
    ]
    domain = prediction.domain
    if domain is not None and domain.fired:
        parts.append(
            "<div class='ood'><b>Outside the training domain</b>: "
            f"{html.escape(str(domain.message or ''))}. Domain score "
            f"{_fmt(domain.score)} above the threshold {_fmt(domain.threshold)} "
            "fixed on the training patients; the probabilities below are reported but "
            "uncalibrated for this input."
            + (
                f" Furthest from the training scans: {html.escape(domain.explanation())}."
                if domain.furthest
                else ""
            )
            + "</div>"
        )
    parts.append("<div class='scores'>")
    for p, name in (
        (scores.p_malignant, "p(malignant nodule)"),
        (scores.p_any_nodule, "p(any nodule)"),
    ):
        parts.append(f"<div class='score'>{name}<b class='{_level(p)}'>{p:.2f}</b></div>")
    parts.append(
        f"<div class='score'>candidates<b>{len(prediction.findings)}</b></div>"
        f"<div class='score'>aggregation<b style='font-size:16px'>"
        f"{html.escape(scores.method)}</b></div></div>"
    )
    parts.append("<h2>Probability along the scan</h2>")
    parts.append(_img(z_plot, "p(malignant) and p(benign) along z"))
    parts.append(
        "<div class='muted'>Shaded bands: candidates. Dotted lines: recommended slices "
        "(numbered by rank).</div>"
    )
    parts.append("<h2>Recommended slices</h2><div class='recs'>")
    for rec, (plain, heat) in zip(recs, thumbnails, strict=True):
        parts.append(
            f"<div class='rec'>{_img(plain, 'slice ' + str(rec.rank))}"
            f"{_img(heat, 'slice ' + str(rec.rank) + ' with evidence map')}"
            f"<div class='cap'>{_caption(rec)}</div></div>"
        )
    parts.append(
        "</div><div class='muted'>Left: lung window (-1000..400 HU)"
        + (
            ", the finding circled. Right: a 48 mm crop around it.</div>"
            if located
            else ". Right: the same slice with the class activation map for p(malignant).</div>"
        )
    )
    parts.append("<h2>Candidates</h2>")
    if prediction.findings:
        shown = prediction.findings[:20] if located else prediction.findings
        rows = [_finding_row(f, located) for f in shown]
        cols = list(rows[0])
        parts.append(
            "<table><tr>"
            + "".join(f"<th>{c}</th>" for c in cols)
            + "</tr>"
            + "".join(
                "<tr>" + "".join(f"<td>{_fmt(row[k])}</td>" for k in cols) + "</tr>" for row in rows
            )
            + "</table>"
        )
        if len(shown) < len(prediction.findings):
            parts.append(
                f"<div class='muted'>The 20 most probable of {len(prediction.findings)} "
                "findings; result.json lists all.</div>"
            )
    else:
        parts.append("<p>No slice run exceeded the candidate threshold.</p>")
    parts.append("<h2>How this was made</h2><table>")
    info = [
        ("model", f"{model.model_id} ({model.kind}) {model.bundle}"),
        ("backbone", model.backbone),
        ("weights", model.weights_id),
        ("layers", list(model.layers)),
        ("inputs", dict(model.inputs)),
        ("head", model.head),
        ("label rule", dict(model.label_rule)),
        ("lungslice", prediction.provenance.get("versions", {}).get("lungslice")),
        ("created", prediction.provenance.get("created")),
    ]
    for k, v in info:
        parts.append(f"<tr><th class='l'>{k}</th><td class='l'>{_fmt(v)}</td></tr>")
    timing = dict(prediction.timings if timings is None else timings)
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

    rs = prediction.require_volume("its report has no images to show")
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
    out_path: str | Path,
    *,
    hide_patient_id: bool = False,
    timings: Mapping[str, float] | None = None,
) -> Path:
    """Write ``report.html`` for a prediction: its figures, then the page.

    Parameters
    ----------
    prediction : StudyPrediction
        What to report.
    out_path : str or Path
        Output file.
    hide_patient_id : bool
        Leave PatientID out of the report.
    timings : mapping, optional
        Seconds per stage to show (default: the prediction's).
    """
    thumbs, plot = figures(prediction)
    return render_report(
        prediction, plot, thumbs, out_path, hide_patient_id=hide_patient_id, timings=timings
    )
