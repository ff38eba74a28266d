"""Synthetic features and labels: class-dependent Gaussians along z with nodule runs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest


@dataclass
class Synthetic:
    X: np.ndarray
    y: np.ndarray
    slices: pd.DataFrame
    nodules: pd.DataFrame


def make_synthetic(
    n_patients: int = 12, n_slices: int = 40, d: int = 16, seed: int = 0
) -> Synthetic:
    """Patients with one series each; some carry a benign or malignant nodule run."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.5, size=(3, d))
    xs, ys, rows, nods = [], [], [], []
    for p in range(n_patients):
        pid = f"LIDC-IDRI-{p:04d}"
        series = f"1.2.3.{p}"
        y = np.zeros(n_slices, dtype=np.int64)
        kind = p % 3  # 0 none, 1 benign, 2 malignant
        if kind:
            start = int(rng.integers(5, n_slices - 12))
            length = int(rng.integers(4, 8))
            y[start : start + length] = kind
            nods.append(
                {
                    "nodule_id": f"{pid}-n1",
                    "patient_id": pid,
                    "series_uid": series,
                    "z_min": float(start),
                    "z_max": float(start + length - 1),
                    "label": kind,
                }
            )
        xs.append(centres[y] + rng.normal(0.0, 1.0, size=(n_slices, d)))
        ys.append(y)
        rows.append(
            pd.DataFrame(
                {
                    "series_uid": series,
                    "patient_id": pid,
                    "study_uid": f"9.{p}",
                    "slice_index": np.arange(n_slices),
                    "z_mm": np.arange(n_slices, dtype=np.float64),
                    "sop_instance_uid": [f"{series}.{i}" for i in range(n_slices)],
                    "instance_number": np.arange(n_slices) + 1,
                }
            )
        )
    return Synthetic(
        X=np.concatenate(xs).astype(np.float32),
        y=np.concatenate(ys),
        slices=pd.concat(rows, ignore_index=True),
        nodules=pd.DataFrame(nods),
    )


@pytest.fixture(scope="session")
def synthetic() -> Synthetic:
    return make_synthetic()
