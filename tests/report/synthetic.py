"""Helpers of the report tests: a StudyPrediction on a CT series, made without a model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lungslice.dicom.resample import resample
from lungslice.dicom.volume import load_series
from lungslice.prediction import PredictConfig, find_ct_series
from lungslice.provenance import provenance
from lungslice.study import (
    DomainVerdict,
    Finding,
    ModelInfo,
    Recommendation,
    Scores,
    SeriesInfo,
    SliceScores,
    StudyPrediction,
)

MODEL_ID = "0123456789ab"

#: (slice index, row, column, radius mm, p_nodule, p_benign, p_malignant) per finding
FINDINGS = (
    (6, 12.0, 20.0, 2.1, 0.9, 0.15, 0.75),
    (15, 20.0, 9.0, 1.4, 0.6, 0.45, 0.15),
    (15, 8.0, 8.0, 1.0, 0.3, 0.2, 0.1),
    (22, 16.0, 16.0, 3.0, 0.2, 0.1, 0.1),
)

MakePrediction = Callable[..., StudyPrediction]


def synthetic_prediction(
    folder: Path,
    *,
    located: bool = True,
    out_of_domain: bool = False,
    top_k: int = 3,
    n_findings: int = len(FINDINGS),
    model_id: str = MODEL_ID,
) -> StudyPrediction:
    """A prediction on the single CT series in ``folder`` with the :data:`FINDINGS`.

    ``located`` False makes whole-slice findings (runs of slices, no in-plane
    location); ``out_of_domain`` makes the domain guard fire.
    """
    found = find_ct_series(folder)
    (uid,) = found.series_uids
    volume = load_series(found.index, series_uid=uid, config=found.index.config)
    rs = resample(volume, slice_spacing=1.0)
    z = np.asarray(rs.z_positions, dtype=np.float64)
    findings = []
    for k, (i, row, col, rad, p_nod, p_ben, p_mal) in enumerate(FINDINGS[:n_findings], 1):
        where = (
            {"row": row, "column": col, "x_mm": col * 0.7, "y_mm": row * 0.7, "radius_mm": rad}
            if located
            else {"n_slices": 3}
        )
        findings.append(
            Finding(
                id=k,
                slice_index=i,
                z_mm=float(z[i]),
                z_min=float(z[i]) - rad,
                z_max=float(z[i]) + rad,
                p_nodule=p_nod,
                p_benign=p_ben,
                p_malignant=p_mal,
                max_p_malignant=p_mal,
                mean_p_malignant=p_mal,
                max_p_benign=p_ben,
                mean_p_benign=p_ben,
                sop_instance_uid=rs.nearest_sop_instance_uid(i),
                instance_number=rs.nearest_instance_number(i),
                **where,  # type: ignore[arg-type]
            )
        )
    recs = tuple(Recommendation.of_finding(f, with_p_nodule=located) for f in findings[:top_k])
    probs = np.zeros((rs.n_slices, 3))
    probs[:, 0] = 1.0
    for f in findings:
        probs[f.slice_index] = (1.0 - f.p_nodule, f.p_benign, f.p_malignant)
    domain = DomainVerdict(
        in_domain=not out_of_domain,
        score=9.5 if out_of_domain else 1.2,
        threshold=4.0,
        method="mahalanobis",
        message="outside the training domain: scores not calibrated for this scanner or protocol"
        if out_of_domain
        else None,
    )
    src = rs.source
    return StudyPrediction(
        series=SeriesInfo(
            patient_id=src.patient_id,
            study_uid=src.study_uid,
            series_uid=src.series_uid,
            n_original_slices=src.n_slices,
            n_resampled_slices=rs.n_slices,
            slice_spacing_mm=1.0,
            pixel_spacing_mm=(float(rs.spacing[1]), float(rs.spacing[2])),
            n_lung_slices=rs.n_slices if located else None,
        ),
        scores=Scores(
            p_any_nodule=0.93,
            p_malignant=0.78,
            method="max",
            calibration="Platt on held-out training studies" if located else None,
            p_any_nodule_uncalibrated=0.9 if located else None,
            calibrated_for_input=not out_of_domain if located else None,
        ),
        domain=domain if located else None,
        findings=tuple(findings),
        recommendations=recs,
        slices=SliceScores(
            z_mm=z,
            probs=probs,
            sop_instance_uids=tuple(rs.nearest_sop_instance_uid(i) for i in range(rs.n_slices)),
            instance_numbers=tuple(rs.nearest_instance_number(i) for i in range(rs.n_slices)),
            reason=tuple(None for _ in range(rs.n_slices)) if located else None,
            smoothed=None if located else probs,
        ),
        model=ModelInfo(
            bundle="/models/test",
            model_id=model_id,
            kind="candidates" if located else "whole-slice",
            backbone="efficientnet_lite0",
            weights_id="f" * 64,
            layers=("blocks.5",),
            inputs={"size": 64},
            head={"C": 0.01} if located else "logistic",
            label_rule={"name": "any"},
            aggregate={"aggregator": "max"},
            detector={"sigma": 1.0} if located else None,
        ),
        provenance=provenance(PredictConfig(top_k=top_k)),
        timings={"index": 0.01, "load": 0.02},
        run={"pid": 1},
        volume=rs,
        source_files=found.files_of(uid),
    )
