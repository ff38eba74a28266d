"""Bundle round trip (same probabilities, typed settings), readable manifest, mismatch messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungslice.errors import BundleMismatchError, ConfigError
from lungslice.features.config import FeatureConfig
from lungslice.lidc.labels import LabelRule
from lungslice.model.aggregate import AggregateConfig, aggregate, fit_learned_aggregator
from lungslice.model.bundle import load_bundle, save_bundle
from lungslice.model.heads import HeadConfig, train_head

FEATURES = {
    "backbone": "efficientnet_lite0",
    "weights_sha256": "ab12",
    "layers": ["blocks.5"],
    "inputs": {"mode": "windows", "size": 224},
    "created": "2026-11-25T00:00:00+00:00",
}

RULE = LabelRule(exclude_ambiguous=True)


def _save(path, head, features=FEATURES, agg=None, **kwargs):
    return save_bundle(
        path,
        head,
        feature_config=features,
        label_rule=RULE,
        aggregate_config=agg or AggregateConfig(),
        **kwargs,
    )


@pytest.mark.parametrize(
    "config",
    [
        HeadConfig(C_grid=(0.1,)),
        HeadConfig(kind="mlp", hidden_grid=(8,), weight_decay_grid=(1e-4,), epochs=2),
    ],
    ids=["logistic", "mlp"],
)
def test_round_trip_gives_same_probabilities(tmp_path, synthetic, config) -> None:
    pids = synthetic.slices["patient_id"].to_numpy()
    head = train_head(synthetic.X, synthetic.y, pids, config=config, seed=0)
    agg = AggregateConfig(method="max", top_k=3)
    summary = {"patients": 12, "slices_per_class": {"non-nodule": 400, "benign": 20}}
    path = _save(
        tmp_path / "m",
        head,
        agg=agg,
        head_config=config,
        training_summary=summary,
        cv_metrics={"auc": float("nan")},
    )
    manifest = json.loads(path.read_text())  # strict JSON: NaN written as null
    assert manifest["head"]["kind"] == config.kind
    assert manifest["features"]["backbone"] == "efficientnet_lite0"
    assert manifest["label_rule"] == {
        "rule": "mean",
        "threshold": 3.0,
        "exclude_ambiguous": True,
        "min_readers": 1,
    }
    assert manifest["training"]["patients"] == 12
    assert manifest["cv_metrics"] == {"auc": None}
    assert manifest["provenance"]["versions"]["numpy"]
    bundle = load_bundle(tmp_path / "m")
    np.testing.assert_array_equal(
        bundle.head.predict_proba(synthetic.X), head.predict_proba(synthetic.X)
    )
    assert bundle.aggregate_config == agg
    assert bundle.label_rule == RULE
    assert bundle.head_config == config
    assert bundle.feature_config is None  # the record holds no FeatureConfig ("config")
    assert bundle.feature_record == FEATURES
    assert bundle.learned_aggregator is None
    assert not any(p.suffix == ".pkl" for p in (tmp_path / "m").iterdir())


def test_check_features_names_both_settings(tmp_path, synthetic) -> None:
    pids = synthetic.slices["patient_id"].to_numpy()
    head = train_head(synthetic.X, synthetic.y, pids, config=HeadConfig(C_grid=(0.1,)))
    _save(tmp_path / "m", head)
    bundle = load_bundle(tmp_path / "m")
    bundle.check_features({**FEATURES, "created": "2027-01-01"})  # timestamps do not matter
    other = {**FEATURES, "backbone": "resnet50", "inputs": {"mode": "2.5d", "size": 224}}
    with pytest.raises(
        BundleMismatchError,
        match=(
            r"does not match the features it is given: "
            r"backbone: bundle trained with 'efficientnet_lite0', features made with 'resnet50'; "
            r"inputs.mode: bundle trained with 'windows', features made with '2.5d'\. Fix:"
        ),
    ):
        bundle.check_features(other)


def test_tampered_or_missing_bundle(tmp_path, synthetic) -> None:
    with pytest.raises(
        BundleMismatchError, match=r"is not a model bundle: .*model.json does not exist"
    ):
        load_bundle(tmp_path / "nothing")
    pids = synthetic.slices["patient_id"].to_numpy()
    head = train_head(synthetic.X, synthetic.y, pids, config=HeadConfig(C_grid=(0.1,)))
    _save(tmp_path / "m", head)
    (tmp_path / "m" / "head.npz").write_bytes(b"not weights")
    with pytest.raises(
        BundleMismatchError, match=r"head.npz: SHA-256 is [0-9a-f]{64}, model.json records"
    ):
        load_bundle(tmp_path / "m")


def test_check_features_uses_the_cache_key_payload(tmp_path, synthetic) -> None:
    record = {
        "config": {"backbone": "efficientnet_lite0", "batch_size": 32},
        "key": "k1",
        "weights_id": "aa",
        "created": "2026-11-25T00:00:00+00:00",
        "key_payload": {
            "backbone": "efficientnet_lite0",
            "weights": "aa",
            "layers": ["blocks.5", "blocks.6"],
            "inputs": {"mode": "windows"},
        },
    }
    pids = synthetic.slices["patient_id"].to_numpy()
    head = train_head(synthetic.X, synthetic.y, pids, config=HeadConfig(C_grid=(0.1,)))
    _save(tmp_path / "m", head, features=record)
    bundle = load_bundle(tmp_path / "m")
    assert bundle.feature_config == FeatureConfig()
    other_run = {**record, "created": "2027", "config": {**record["config"], "batch_size": 8}}
    bundle.check_features(other_run)  # runtime settings do not change the features
    random = {**record, "key_payload": {**record["key_payload"], "weights": "random"}}
    with pytest.raises(
        BundleMismatchError,
        match=r"weights: bundle trained with 'aa', features made with 'random'\. Fix:",
    ):
        bundle.check_features(random)


def test_typed_settings_round_trip_through_model_json(tmp_path, synthetic) -> None:
    pids = synthetic.slices["patient_id"].to_numpy()
    head = train_head(synthetic.X, synthetic.y, pids, config=HeadConfig(C_grid=(0.1,)))
    features = FeatureConfig(layers=("blocks.5", "blocks.6"), batch_size=8)
    agg = AggregateConfig(method="learned", top_k=2)
    runs = [
        aggregate(
            np.clip(np.roll(np.eye(3)[[0] * 20], i, axis=0) * 0.9 + 0.05, 0, 1),
            np.arange(20.0),
            agg.replace(method="max"),
        )
        for i in range(4)
    ]
    learned = fit_learned_aggregator(
        runs, np.array([1, 0, 1, 0], bool), np.array([0, 0, 1, 1], bool), agg
    )
    _save(tmp_path / "m", head, features=features, agg=agg, learned_aggregator=learned)
    bundle = load_bundle(tmp_path / "m")
    assert bundle.feature_config == features
    assert bundle.feature_record == {"config": features.to_dict()}
    assert bundle.aggregate_config == agg and bundle.label_rule == RULE
    assert bundle.learned_aggregator is not None
    np.testing.assert_array_equal(bundle.learned_aggregator.coef_any_, learned.coef_any_)
    probs = synthetic.X[:20, :3] ** 2
    probs = probs / probs.sum(axis=1, keepdims=True)
    got = bundle.aggregate(probs, np.arange(20.0))
    want = aggregate(probs, np.arange(20.0), agg, learned=learned)
    assert (got.p_any_nodule, got.p_malignant) == (want.p_any_nodule, want.p_malignant)
    with pytest.raises(ConfigError, match=r"'learned' but no fitted learned_aggregator"):
        _save(tmp_path / "n", head, agg=agg)


def test_settings_another_version_wrote_are_refused_by_name(tmp_path, synthetic) -> None:
    pids = synthetic.slices["patient_id"].to_numpy()
    head = train_head(synthetic.X, synthetic.y, pids, config=HeadConfig(C_grid=(0.1,)))
    path = _save(tmp_path / "m", head)
    manifest = json.loads(path.read_text())
    manifest["aggregate"]["smoothing"] = "gauss"
    path.write_text(json.dumps(manifest))
    with pytest.raises(
        BundleMismatchError,
        match=r"model.json: cannot rebuild the bundle's settings from model.json "
        r"\(AggregateConfig.from_dict: unknown setting\(s\) 'smoothing'; .*Fix: retrain",
    ):
        load_bundle(tmp_path / "m")
