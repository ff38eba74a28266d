"""FeatureConfig.key: changes with everything that changes the numbers, nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lungslice.errors import ConfigError
from lungslice.features.config import RUNTIME_FIELDS, FeatureConfig
from lungslice.features.inputs import InputConfig
from tests.helpers import torchvision_resnet18_file


def test_key_is_stable_and_resolves_default_layers() -> None:
    assert FeatureConfig().key == FeatureConfig().key
    assert FeatureConfig().key == FeatureConfig(layers=("head",)).key
    assert len(FeatureConfig().key) == 16


def test_key_changes_with_every_setting_that_changes_numbers() -> None:
    base = FeatureConfig(weights="random")
    changed = {
        "backbone": "resnet18",
        "weights": "imagenet",
        "seed": 1,
        "layers": ("blocks.6",),
        "inputs": InputConfig(mode="2.5d"),
        "precision": "bf16",  # the default is fp32
        "slice_spacing": 2.0,
        "storage_dtype": "float32",
    }
    keys = {base.key}
    for name, value in changed.items():
        key = base.replace(**{name: value}).key
        assert key not in keys, name
        keys.add(key)
    for inputs in (
        InputConfig(size=128),
        InputConfig(windows=((-1000, 400), (-160, 240), (-1000, 1000))),
        InputConfig(mode="2.5d", window_25d=(-1200, 600)),
    ):
        assert base.replace(inputs=inputs).key != base.key
    # The seed only matters for random weights.
    pretrained = base.replace(weights="imagenet")
    assert pretrained.replace(seed=5).key == pretrained.key


def test_runtime_settings_do_not_change_the_key() -> None:
    base = FeatureConfig()
    assert set(RUNTIME_FIELDS) == {"batch_size", "compile", "device"}
    assert base.replace(batch_size=7, compile=True, device="cpu").key == base.key


def test_weights_file_keyed_by_checksum_not_path(tmp_path: Path) -> None:
    a = tmp_path / "a.pth"
    torchvision_resnet18_file(a, seed=0)
    b = tmp_path / "b.pth"
    shutil.copy(a, b)
    c = tmp_path / "c.pth"
    torchvision_resnet18_file(c, seed=1)
    key = FeatureConfig(backbone="resnet18", weights=str(a)).key
    assert FeatureConfig(backbone="resnet18", weights=str(b)).key == key
    assert FeatureConfig(backbone="resnet18", weights=str(c)).key != key


def test_bad_feature_configs() -> None:
    with pytest.raises(
        ConfigError, match=r"FeatureConfig.precision: expected 'bf16' or 'fp32', got 'fp8'"
    ):
        FeatureConfig(precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"FeatureConfig.backbone: unknown backbone 'vit'"):
        FeatureConfig(backbone="vit")
    with pytest.raises(ConfigError, match=r"FeatureConfig.batch_size: expected >= 1, got 0"):
        FeatureConfig(batch_size=0)


def test_configs_round_trip_through_json() -> None:
    config = FeatureConfig(
        backbone="resnet18",
        weights="random",
        layers=("layer3", "layer4"),
        inputs=InputConfig(mode="2.5d", window_25d=(-1200.0, 300.0), size=128),
        precision="fp32",
        storage_dtype="float32",
        seed=3,
    )
    stored = json.loads(json.dumps(config.to_dict()))
    assert stored["inputs"]["windows"][0] == [-1000.0, 400.0]  # tuples became lists
    again = FeatureConfig.from_dict(stored)
    assert again == config and again.key == config.key
    assert isinstance(again.inputs.windows[0], tuple)
    assert InputConfig.from_dict(stored["inputs"]) == config.inputs
    assert FeatureConfig.from_dict({}) == FeatureConfig()
    with pytest.raises(ConfigError, match=r"FeatureConfig.from_dict: unknown setting\(s\) 'depth'"):
        FeatureConfig.from_dict({"depth": 3})
    with pytest.raises(ConfigError, match=r"InputConfig.mode: expected 'windows' or '2.5d'"):
        FeatureConfig.from_dict({"inputs": {"mode": "3d"}})
    with pytest.raises(ConfigError, match=r"expected a mapping of settings, got list"):
        InputConfig.from_dict([1, 2])  # type: ignore[arg-type]
