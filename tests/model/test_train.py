"""train_bundle: aggregator choice rules and the no-CV path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungslice.errors import ConfigError
from lungslice.lidc.labels import LabelRule
from lungslice.model.bundle import load_bundle
from lungslice.model.evaluate import EvaluateConfig
from lungslice.model.heads import HeadConfig
from lungslice.model.train import train_bundle
from tests.helpers import training_set


def test_named_aggregator_without_cv(tmp_path, synthetic) -> None:
    ts = training_set(synthetic, LabelRule())
    result = train_bundle(
        ts,
        tmp_path / "m",
        head_config=HeadConfig(C_grid=(0.1,)),
        aggregator="max",
        config=EvaluateConfig(n_splits=0),
    )
    assert result.cv_metrics == {}
    assert load_bundle(tmp_path / "m").aggregate_config.method == "max"
    manifest = json.loads((tmp_path / "m" / "model.json").read_text())
    assert manifest["training"]["slices_per_class"]["malignant"] == int((ts.y == 2).sum())
    assert manifest["training"]["label_rule_name"] == "mean>=3"


def test_auto_aggregator_needs_cv(tmp_path, synthetic) -> None:
    ts = training_set(synthetic, LabelRule())
    with pytest.raises(
        ConfigError, match=r"aggregator 'auto' is chosen/fitted by cross-validation"
    ):
        train_bundle(ts, tmp_path / "m", aggregator="auto", config=EvaluateConfig(n_splits=0))
    with pytest.raises(ConfigError, match=r"aggregator: expected auto, max, noisy_or, learned"):
        train_bundle(ts, tmp_path / "m", aggregator="mean")


def test_learned_aggregator_is_fitted_and_stored(tmp_path, synthetic) -> None:
    ts = training_set(synthetic, LabelRule())
    result = train_bundle(
        ts,
        tmp_path / "m",
        head_config=HeadConfig(C_grid=(0.1,)),
        aggregator="learned",
        config=EvaluateConfig(n_splits=3, n_boot=5),
    )
    bundle = load_bundle(tmp_path / "m")
    agg, learned = bundle.aggregate_config, bundle.learned_aggregator
    assert agg.method == "learned" and learned is not None
    assert learned.coef_malignant_.shape == (2 * agg.top_k,)
    assert result.learned_aggregator is not None
    np.testing.assert_array_equal(learned.coef_any_, result.learned_aggregator.coef_any_)
    assert bundle.head_config == HeadConfig(C_grid=(0.1,))
    assert result.cv_metrics["aggregator"] == "learned"
    assert result.cv_metrics["aggregator_rule"] == "given"
