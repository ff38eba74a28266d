"""A small trained pipeline shared by the predict tests: phantom -> labels -> features -> bundle."""

from __future__ import annotations

import pytest

from lungslice.features.config import FeatureConfig
from lungslice.features.extract import extract_dataset
from lungslice.features.inputs import InputConfig
from lungslice.lidc.db import read_database
from lungslice.lidc.labels import LabelRule, label_scans, write_labels
from lungslice.model.dataset import build_training_set
from lungslice.model.evaluate import EvaluateConfig
from lungslice.model.train import train_bundle
from lungslice.phantom import PhantomConfig, synthesize
from tests.helpers import Pipeline

#: One malignant nodule (four readers), the mixed case, and a scan with no nodule.
PATIENTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0078", "LIDC-IDRI-0937")


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    root = tmp_path_factory.mktemp("predict_pipeline")
    scans = read_database(patient_ids=PATIENTS)
    synthesize(
        root / "data", PATIENTS, PhantomConfig(seed=1, matrix=256, z_margin_mm=8.0), scans=scans
    )
    rule = LabelRule()
    slices, nodules = label_scans(scans, rule=rule)
    write_labels(root / "labels", slices, nodules, rule=rule, source="pylidc")
    # Small inputs keep the test quick; the pipeline is the same at 224 px.
    config = FeatureConfig(inputs=InputConfig(size=96), batch_size=16)
    extract_dataset(root / "data", root / "work", config)
    ts = build_training_set(root / "work", root / "labels")
    train_bundle(ts, root / "model", aggregator="noisy_or", config=EvaluateConfig(n_splits=0))
    return Pipeline(root, root / "data", root / "model", nodules, config)
