"""Features joined with labels through the resampling provenance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungslice.errors import AnnotationError
from lungslice.lidc.labels import LabelRule
from lungslice.model.dataset import join_labels


def _labels(series: str, patient: str, z: np.ndarray, nodules: list[dict]) -> tuple:
    slices = pd.DataFrame(
        {
            "patient_id": patient,
            "study_uid": "9." + series,
            "series_uid": series,
            "scan_id": 1,
            "slice_index": np.arange(z.size),
            "z_mm": z,
        }
    )
    rows = []
    for i, n in enumerate(nodules):
        idx = [int(k) for k in n["slices"]]
        rows.append(
            {
                "nodule_id": f"{patient}-{i}",
                "patient_id": patient,
                "series_uid": series,
                "n_readers": n["readers"],
                "mean_malignancy": n["mal"],
                "median_malignancy": n["mal"],
                "slice_indices": idx,
                "z_min": float(z[min(idx)]),
                "z_max": float(z[max(idx)]),
            }
        )
    columns = ["nodule_id", "patient_id", "series_uid", "n_readers", "mean_malignancy"]
    columns += ["median_malignancy", "slice_indices", "z_min", "z_max"]
    return slices, pd.DataFrame(rows, columns=columns)


def _features(series: str, patient: str, z_src: np.ndarray) -> pd.DataFrame:
    z = np.arange(z_src[0], z_src[-1] + 1e-9, 1.0)
    upper = np.clip(np.searchsorted(z_src, z, side="right"), 1, z_src.size - 1)
    lower = upper - 1
    w_up = (z - z_src[lower]) / (z_src[upper] - z_src[lower])
    return pd.DataFrame(
        {
            "series_uid": series,
            "patient_id": patient,
            "study_uid": "9." + series,
            "slice_index": np.arange(z.size),
            "z_mm": z,
            "source_lower": lower,
            "source_upper": upper,
            "weight_lower": 1 - w_up,
            "weight_upper": w_up,
            "source_z_lower": z_src[lower],
            "source_z_upper": z_src[upper],
            "nearest_source": np.where(w_up > 0.5, upper, lower),
            "sop_instance_uid": [f"{series}.{i}" for i in range(z.size)],
            "instance_number": np.arange(z.size) + 1,
        }
    )


def test_labels_follow_nearest_source_and_excluded_are_recorded() -> None:
    z_src = np.arange(8) * 2.5  # 0, 2.5, ..., 17.5
    lab_a, nod_a = _labels("1.1", "P1", z_src, [{"slices": [2, 3], "mal": 4.0, "readers": 4}])
    lab_b, nod_b = _labels("1.2", "P2", z_src, [{"slices": [5], "mal": 3.0, "readers": 2}])
    lab = pd.concat([lab_a, lab_b], ignore_index=True)
    nod = pd.concat([nod_a, nod_b], ignore_index=True)
    feats = pd.concat([_features("1.1", "P1", z_src), _features("1.2", "P2", z_src)])
    X = np.arange(len(feats) * 2, dtype=np.float32).reshape(-1, 2)

    ts = join_labels(X, feats, lab, nod, LabelRule())
    a = ts.slices[ts.slices["series_uid"] == "1.1"]
    # malignant source slices at z 5.0 and 7.5 -> 1 mm slices nearest to them: z 4..8 (3.75 ties)
    assert a.loc[a["label_code"] == 2, "z_mm"].tolist() == [4.0, 5.0, 6.0, 7.0, 8.0]
    assert ts.y.size == len(feats) and (ts.y >= 0).all()
    np.testing.assert_array_equal(ts.X, X)
    assert ts.nodules["code"].tolist() == [2, 2]

    excl = join_labels(X, feats, lab, nod, LabelRule(exclude_ambiguous=True))
    assert excl.rejected["slice_index"].tolist() == [12, 13]  # nearest source z 12.5 (score 3)
    assert set(excl.rejected["reason"]) == {"excluded by label rule mean>=3 excl-3"}
    assert len(excl.slices) == len(feats) - 2

    readers = join_labels(X, feats, lab, nod, LabelRule(min_readers=3))
    assert readers.nodules["nodule_id"].tolist() == ["P1-0"]  # 2-reader nodule not counted
    assert (readers.y[readers.slices["series_uid"] == "1.2"] == 0).all()
    summary = readers.summary()
    assert summary["patients"] == 2
    assert summary["slices_per_class"]["malignant"] == 5
    assert summary["patients_per_stratum"] == {"malignant": 1, "benign-only": 0, "none": 1}


def test_unlabelled_series_fails_or_is_recorded() -> None:
    z_src = np.arange(4) * 2.0
    lab, nod = _labels("1.1", "P1", z_src, [])
    feats = pd.concat([_features("1.1", "P1", z_src), _features("1.9", "P9", z_src)])
    X = np.zeros((len(feats), 2), dtype=np.float32)
    with pytest.raises(
        AnnotationError, match=r"series 1.9 \(patient P9\) has features but no labels.*Fix:"
    ):
        join_labels(X, feats, lab, nod, LabelRule())
    ts = join_labels(X, feats, lab, nod, LabelRule(), allow_unlabelled=True)
    assert set(ts.slices["series_uid"]) == {"1.1"}
    assert set(ts.rejected["reason"]) == {"no labels"}
    assert len(ts.rejected) == len(feats) // 2


def test_z_disagreement_is_an_error() -> None:
    z_src = np.arange(4) * 2.0
    lab, nod = _labels("1.1", "P1", z_src[::-1].copy() * -1 + 10, [])
    feats = _features("1.1", "P1", z_src)
    with pytest.raises(
        AnnotationError,
        match=r"series 1.1: 2 of 4 slice positions have no labelled slice within 0.05 mm",
    ):
        join_labels(np.zeros((len(feats), 2)), feats, lab, nod, LabelRule())


def test_labels_of_a_z_cropped_series_match_by_position() -> None:
    # The phantom (--z-margin) and partial series hold only some of the labelled slices:
    # source indices then differ from label indices, positions do not.
    z_all = np.arange(12) * 2.5
    lab, nod = _labels("1.1", "P1", z_all, [{"slices": [6, 7], "mal": 4.0, "readers": 4}])
    feats = _features("1.1", "P1", z_all[4:10])
    X = np.zeros((len(feats), 2), dtype=np.float32)
    ts = join_labels(X, feats, lab, nod, LabelRule())
    malignant = ts.slices.loc[ts.slices["label_code"] == 2, "z_mm"].tolist()
    assert malignant == [14.0, 15.0, 16.0, 17.0, 18.0]
