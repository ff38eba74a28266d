"""Bundle round trip (same probabilities), readable manifest, mismatch messages."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from lungslice.errors import BundleMismatchError
from lungslice.model.aggregate import AggregateConfig
from lungslice.model.bundle import load_bundle, save_bundle
from lungslice.model.heads import HeadConfig, train_head

FEATURES = {
    "backbone": "efficientnet_lite0",
    "weights_sha256": "ab12",
    "layers": ["blocks.5"],
    "inputs": {"mode": "windows", "size": 224},
    "created": "2026-11-25T00:00:00+00:00",
}


@dataclasses.dataclass(frozen=True)
class _Rule:
    aggregate: str = "mean"
    exclude_ambiguous: bool = False
    min_readers: int = 1


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
    head = train_head(synthetic.X, synthetic.y, pids, config, seed=0)
    agg = AggregateConfig(method="max", top_k=3)
    summary = {"patients": 12, "slices_per_class": {"non-nodule": 400, "benign": 20}}
    path = save_bundle(tmp_path / "m", head, FEATURES, _Rule(), agg, summary, {"auc": float("nan")})
    manifest = json.loads(path.read_text())  # strict JSON: NaN written as null
    assert manifest["head"]["kind"] == config.kind
    assert manifest["features"]["backbone"] == "efficientnet_lite0"
    assert manifest["label_rule"] == {
        "aggregate": "mean",
        "exclude_ambiguous": False,
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
    assert not any(p.suffix == ".pkl" for p in (tmp_path / "m").iterdir())


def test_check_features_names_both_settings(tmp_path, synthetic) -> None:
    pids = synthetic.slices["patient_id"].to_numpy()
    head = train_head(synthetic.X, synthetic.y, pids, HeadConfig(C_grid=(0.1,)))
    save_bundle(tmp_path / "m", head, FEATURES, _Rule(), AggregateConfig(), {}, {})
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
    head = train_head(synthetic.X, synthetic.y, pids, HeadConfig(C_grid=(0.1,)))
    save_bundle(tmp_path / "m", head, FEATURES, _Rule(), AggregateConfig(), {}, {})
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
    head = train_head(synthetic.X, synthetic.y, pids, HeadConfig(C_grid=(0.1,)))
    save_bundle(tmp_path / "m", head, record, _Rule(), AggregateConfig(), {}, {})
    bundle = load_bundle(tmp_path / "m")
    other_run = {**record, "created": "2027", "config": {**record["config"], "batch_size": 8}}
    bundle.check_features(other_run)  # runtime settings do not change the features
    random = {**record, "key_payload": {**record["key_payload"], "weights": "random"}}
    with pytest.raises(
        BundleMismatchError,
        match=r"weights: bundle trained with 'aa', features made with 'random'\. Fix:",
    ):
        bundle.check_features(random)
