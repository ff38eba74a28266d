"""``result.json``: the machine-readable record of one prediction.

:func:`result_record` turns a :class:`lungslice.study.StudyPrediction` into the
record ``docs/result-schema.md`` describes (schema ``lungslice.result/1``);
:func:`write_result_json` writes it. Probabilities are rounded to 5 digits,
positions to 3 (row/column 1, x/y/radius 2), as the schema has always shown them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lungslice.study import Finding, Recommendation, StudyPrediction

__all__ = ["RESULT_SCHEMA", "result_record", "write_result_json"]

#: Identifier of the ``result.json`` layout (``docs/result-schema.md``).
RESULT_SCHEMA = "lungslice.result/1"


def _r(x: float, digits: int) -> float:
    return round(float(x), digits)


def _study(p: StudyPrediction) -> dict[str, Any]:
    s = p.series
    rec: dict[str, Any] = {
        "patient_id": s.patient_id,
        "study_uid": s.study_uid,
        "series_uid": s.series_uid,
        "n_original_slices": s.n_original_slices,
        "n_resampled_slices": s.n_resampled_slices,
        "slice_spacing_mm": s.slice_spacing_mm,
        "pixel_spacing_mm": list(s.pixel_spacing_mm),
    }
    if s.n_lung_slices is not None:
        rec["n_lung_slices"] = s.n_lung_slices
    return rec


def _slices(p: StudyPrediction) -> list[dict[str, Any]]:
    sl = p.slices
    out = []
    for i in range(len(sl)):
        rec: dict[str, Any] = {
            "index": i,
            "z_mm": _r(sl.z_mm[i], 3),
            "p_non_nodule": _r(sl.probs[i, 0], 5),
            "p_benign": _r(sl.probs[i, 1], 5),
            "p_malignant": _r(sl.probs[i, 2], 5),
        }
        if sl.reason is not None:
            rec["reason"] = sl.reason[i]
        rec["sop_instance_uid"] = sl.sop_instance_uids[i]
        rec["instance_number"] = sl.instance_numbers[i]
        out.append(rec)
    return out


def _run_of_slices(f: Finding) -> dict[str, Any]:
    return {
        "id": f.id,
        "z_min": _r(f.z_min, 3),
        "z_max": _r(f.z_max, 3),
        "n_slices": f.n_slices,
        "peak_index": f.slice_index,
        "peak_z": _r(f.z_mm, 3),
        "p_nodule": _r(f.p_nodule, 5),
        "mean_p_malignant": _r(f.mean_p_malignant, 5),
        "max_p_malignant": _r(f.max_p_malignant, 5),
        "mean_p_benign": _r(f.mean_p_benign, 5),
        "max_p_benign": _r(f.max_p_benign, 5),
        "peak_sop_instance_uid": f.sop_instance_uid,
    }


def _located(f: Finding) -> dict[str, Any]:
    assert f.row is not None and f.column is not None and f.radius_mm is not None
    return {
        "id": f.id,
        "slice_index": f.slice_index,
        "z_mm": _r(f.z_mm, 3),
        "z_min": _r(f.z_min, 3),
        "z_max": _r(f.z_max, 3),
        "peak_index": f.slice_index,
        "peak_z": _r(f.z_mm, 3),
        "row": _r(f.row, 1),
        "column": _r(f.column, 1),
        "x_mm": _r(f.x_mm or 0.0, 2),
        "y_mm": _r(f.y_mm or 0.0, 2),
        "radius_mm": _r(f.radius_mm, 2),
        "p_nodule": _r(f.p_nodule, 5),
        "p_malignant": _r(f.p_malignant, 5),
        "p_benign": _r(f.p_benign, 5),
        "max_p_malignant": _r(f.max_p_malignant, 5),
        "mean_p_malignant": _r(f.mean_p_malignant, 5),
        "max_p_benign": _r(f.max_p_benign, 5),
        "detector_score": _r(f.detector_score or 0.0, 5),
        "peak_sop_instance_uid": f.sop_instance_uid,
        "instance_number": f.instance_number,
    }


def _recommendation(r: Recommendation) -> dict[str, Any]:
    if not r.located:
        return {
            "rank": r.rank,
            "slice_index": r.slice_index,
            "z_mm": _r(r.z_mm, 3),
            "candidate": r.finding,
            "p_malignant": _r(r.p_malignant, 5),
            "p_benign": _r(r.p_benign, 5),
            "sop_instance_uid": r.sop_instance_uid,
            "instance_number": r.instance_number,
        }
    assert r.row is not None and r.column is not None and r.radius_mm is not None
    return {
        "rank": r.rank,
        "slice_index": r.slice_index,
        "z_mm": _r(r.z_mm, 3),
        "candidate": r.finding,
        "row": _r(r.row, 1),
        "column": _r(r.column, 1),
        "x_mm": _r(r.x_mm or 0.0, 2),
        "y_mm": _r(r.y_mm or 0.0, 2),
        "radius_mm": _r(r.radius_mm, 2),
        "p_nodule": _r(r.p_nodule or 0.0, 5),
        "p_malignant": _r(r.p_malignant, 5),
        "p_benign": _r(r.p_benign, 5),
        "sop_instance_uid": r.sop_instance_uid,
        "instance_number": r.instance_number,
    }


def _model(p: StudyPrediction) -> dict[str, Any]:
    m = p.model
    rec: dict[str, Any] = {"bundle": m.bundle, "id": m.model_id}
    if m.kind == "candidates":
        rec["kind"] = "candidates"
    rec.update(
        {
            "backbone": m.backbone,
            "weights_id": m.weights_id,
            "layers": list(m.layers),
            "inputs": dict(m.inputs),
            "head": m.head,
            "label_rule": dict(m.label_rule),
            "aggregate": dict(m.aggregate),
        }
    )
    if m.detector is not None:
        rec["detector"] = dict(m.detector)
    return rec


def result_record(
    prediction: StudyPrediction, extra_timings: Mapping[str, float] | None = None
) -> dict[str, Any]:
    """The ``result.json`` record of a prediction.

    Parameters
    ----------
    prediction : StudyPrediction
        What the predictor found.
    extra_timings : mapping, optional
        Seconds the writers took (``report``, ``key_images``, ...), appended to
        ``timings_s``.
    """
    p = prediction
    located = p.model.kind == "candidates"
    scores: dict[str, Any] = {
        "p_any_nodule": _r(p.scores.p_any_nodule, 5),
        "p_malignant": _r(p.scores.p_malignant, 5),
        "method": p.scores.method,
    }
    if located:
        scores["calibration"] = p.scores.calibration
        scores["p_any_nodule_uncalibrated"] = p.scores.p_any_nodule_uncalibrated
        scores["calibrated_for_input"] = p.scores.calibrated_for_input
    record: dict[str, Any] = {"schema": RESULT_SCHEMA, "study": _study(p), "scores": scores}
    if p.domain is not None:
        d = p.domain
        record["domain"] = {
            "in_domain": d.in_domain,
            "score": d.score,
            "threshold": d.threshold,
            "method": d.method,
            "message": d.message,
            "furthest": [dict(f) for f in d.furthest],
        }
    timings = {**p.timings, **(extra_timings or {})}
    record.update(
        {
            "candidates": [_located(f) if located else _run_of_slices(f) for f in p.findings],
            "recommendations": [_recommendation(r) for r in p.recommendations],
            "slices": _slices(p),
            "model": _model(p),
            "timings_s": {k: round(float(v), 4) for k, v in timings.items()},
            "provenance": dict(p.provenance),
        }
    )
    if p.run:
        record["run"] = dict(p.run)
    return record


def write_result_json(record: Mapping[str, Any], path: str | Path) -> Path:
    """Write a record as indented JSON (NaN refused)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
    return out
