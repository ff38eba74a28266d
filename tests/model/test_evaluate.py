"""Cross-validated evaluation on synthetic features: no leakage, outputs, report."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from lungslice.lidc.labels import LabelRule
from lungslice.model.aggregate import AGGREGATION_METHODS, AggregateConfig
from lungslice.model.cv import patient_folds
from lungslice.model.evaluate import (
    EvaluateConfig,
    choose_aggregator,
    cross_validate,
    evaluate_sets,
    rule_variants,
)
from lungslice.model.heads import HeadConfig
from tests.helpers import make_synthetic, training_set


def test_cross_validation_never_sees_a_test_patient(synthetic) -> None:
    ts = training_set(synthetic, LabelRule())
    folds = patient_folds(ts.groups, ts.strata, n_splits=3, seed=0)
    cv = cross_validate(ts, HeadConfig(C_grid=(0.1,)), folds)
    assert not np.isnan(cv.probs).any()
    for fold in folds:
        assert set(ts.groups[fold.test]).isdisjoint(ts.groups[fold.train])
        assert (cv.fold_of_row[fold.test] == fold.index).all()


@pytest.mark.slow
def test_evaluate_writes_metrics_plots_and_report(tmp_path) -> None:
    syn = make_synthetic(n_patients=15, n_slices=40, seed=1)
    base = LabelRule()
    sets = [
        training_set(syn, base),
        training_set(syn, dataclasses.replace(base, exclude_ambiguous=True), drop_every=7),
    ]
    cfg = EvaluateConfig(n_splits=3, n_boot=20)
    result = evaluate_sets(
        iter(sets),
        tmp_path,
        head_config=HeadConfig(C_grid=(0.1,)),
        aggregate_config=AggregateConfig(),
        config=cfg,
        seed=0,
    )
    for name in ("metrics.json", "report.md", "roc.png", "pr.png", "calibration.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "recall_at_k.png").stat().st_size > 0
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored == result
    assert list(stored["rules"]) == ["mean>=3", "mean>=3 excl-3"]
    # folds: every patient exactly once, listed in the report
    listed = [p for f in stored["folds"] for p in f["test_patients"]]
    assert sorted(listed) == sorted(set(syn.slices["patient_id"]))
    report = (tmp_path / "report.md").read_text()
    for fold in stored["folds"]:
        assert ", ".join(fold["test_patients"]) in report
    figs = stored["rules"]["mean>=3"]["figures"]
    # separable synthetic classes: the pipeline must find them
    assert figs["slice.roc_auc.macro"]["value"] > 0.95
    assert figs["nodule.recall@3.any"]["value"] > 0.8
    assert figs["study.roc_auc.any_nodule.noisy_or"]["value"] > 0.8
    for key in ("study.roc_auc.malignant.max", "study.roc_auc.malignant.learned"):
        assert key in figs
    low, high = figs["slice.roc_auc.macro"]["ci_low"], figs["slice.roc_auc.macro"]["ci_high"]
    assert low <= figs["slice.roc_auc.macro"]["value"] <= high
    assert stored["rules"]["mean>=3"]["aggregator"] in AGGREGATION_METHODS
    assert stored["rules"]["mean>=3"]["nodules_outside_series"] == 1
    assert figs["nodule.recall@10.any"]["value"] == 1.0  # the outside nodule is no miss
    pred = pd.read_parquet(tmp_path / "predictions.parquet")
    assert len(pred) == syn.y.size and {"p0", "p1", "p2", "fold"} <= set(pred.columns)


def test_rule_variants_and_aggregator_choice() -> None:
    names = [r.name for r in rule_variants(LabelRule())]
    assert names == ["mean>=3", "mean>=3 excl-3", "mean>=3 readers>=3"]
    figs = {
        "study.roc_auc.malignant.max": {"value": 0.7},
        "study.roc_auc.any_nodule.max": {"value": 0.7},
        "study.roc_auc.malignant.noisy_or": {"value": 0.8},
        "study.roc_auc.any_nodule.noisy_or": {"value": 0.9},
        "study.roc_auc.malignant.learned": {"value": 0.95},
        "study.roc_auc.any_nodule.learned": {"value": None},
    }
    assert choose_aggregator(figs) == "learned"
    figs["study.roc_auc.malignant.learned"] = {"value": 0.8}
    assert choose_aggregator(figs) == "noisy_or"
