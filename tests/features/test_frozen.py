"""The frozen (TorchScript) feature extractor gives the timm runner's features, torch alone."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from lungslice.errors import BundleMismatchError, ConfigError
from lungslice.features.config import FeatureConfig
from lungslice.features.extract import bundle_runner, make_runner
from lungslice.features.frozen import (
    FILE,
    FrozenBackbone,
    check_frozen_record,
    load_frozen_backbone,
    write_frozen_backbone,
)
from lungslice.features.runtime import FeatureRunner


def _batch(n: int, size: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((n, 3, size, size), generator=gen)


def _frozen_pair(tmp_path: Path, config: FeatureConfig) -> tuple[FeatureRunner, FeatureRunner]:
    runner = make_runner(config)
    record = write_frozen_backbone(tmp_path, runner)
    return runner, bundle_runner(config, tmp_path, record)


@pytest.mark.parametrize("layers", [None, ("blocks.4", "head")], ids=["head", "two-layers"])
def test_frozen_features_equal_timm_runner(tmp_path: Path, layers) -> None:
    config = FeatureConfig(layers=layers, device="cpu")
    runner, frozen = _frozen_pair(tmp_path, config)
    assert isinstance(frozen.backbone, FrozenBackbone)
    assert frozen.frozen and "torchscript" in frozen.layout
    # every attribute inference reads from the backbone
    for name in ("name", "layers", "layer_widths", "feature_dim", "weights_id"):
        assert getattr(frozen.backbone, name) == getattr(runner.backbone, name), name
    assert frozen.backbone.data_config == runner.backbone.data_config
    assert frozen.folded == runner.folded > 0
    # other sizes and batch sizes than the trace's (48 px, 2 images)
    for n, size in ((5, 64), (2, 96), (1, 224)):
        x = _batch(n, size, seed=size)
        want, got = runner(x), frozen(x)
        assert got.shape == (n, runner.backbone.feature_dim)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    x = _batch(2, 96, seed=1)
    with torch.inference_mode():
        maps_want = runner.backbone.feature_maps(x.contiguous(memory_format=torch.channels_last))
        maps_got = frozen.backbone.feature_maps(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(maps_got, maps_want, rtol=1e-5, atol=1e-6)


def test_bf16_graph_keeps_the_runners_casts(tmp_path: Path) -> None:
    # The bf16 runner autocasts all but the FP32 stem; the traced graph holds those
    # casts, so it runs without autocast and still gives the runner's numbers.
    config = FeatureConfig(precision="bf16", device="cpu")
    runner, frozen = _frozen_pair(tmp_path, config)
    assert frozen.backbone.precision == "bf16"
    x = _batch(2, 32, seed=3)
    want, got = runner(x), frozen(x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    fp32 = make_runner(FeatureConfig(device="cpu"))(x)
    assert not np.allclose(got, fp32, rtol=1e-5, atol=1e-6)  # bf16 really ran


def test_altered_file_is_refused_by_name(tmp_path: Path) -> None:
    record = write_frozen_backbone(tmp_path, make_runner(FeatureConfig(device="cpu")))
    path = tmp_path / FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleMismatchError, match=rf"{FILE}: SHA-256 is .* changed or corrupted"):
        load_frozen_backbone(tmp_path, record)
    path.unlink()
    with pytest.raises(BundleMismatchError, match=rf"lacks {FILE}.*copy the whole bundle"):
        load_frozen_backbone(tmp_path, record)


def test_record_of_other_settings_is_refused(tmp_path: Path) -> None:
    record = write_frozen_backbone(tmp_path, make_runner(FeatureConfig(device="cpu")))
    check_frozen_record(
        record, tmp_path, backbone="efficientnet_lite0", layers=("head",), precision="fp32"
    )
    with pytest.raises(BundleMismatchError, match=r"precision is 'fp32' but .* use 'bf16'"):
        bundle_runner(FeatureConfig(precision="bf16"), tmp_path, record)
    with pytest.raises(BundleMismatchError, match="format 'x' version 1"):
        bundle_runner(FeatureConfig(), tmp_path, {**record, "format": "x"})
    frozen = load_frozen_backbone(tmp_path, record)
    with pytest.raises(ConfigError, match="runs in fp32 uncompiled; got precision='bf16'"):
        FeatureRunner(frozen, precision="bf16", device="cpu")


def test_without_record_the_backbone_is_built_with_timm(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="lungslice.features.extract"):
        runner = bundle_runner(FeatureConfig(device="cpu"), tmp_path, None)
    assert not runner.frozen and not isinstance(runner.backbone, FrozenBackbone)
    assert "holds no frozen feature extractor; building efficientnet_lite0 with timm" in (
        caplog.text
    )


def test_only_an_uncompiled_cpu_timm_runner_is_frozen(tmp_path: Path) -> None:
    from lungslice.errors import FeatureError

    record = write_frozen_backbone(tmp_path, make_runner(FeatureConfig(device="cpu")))
    frozen = bundle_runner(FeatureConfig(device="cpu"), tmp_path, record)
    with pytest.raises(FeatureError, match="expected an uncompiled CPU runner of a timm"):
        write_frozen_backbone(tmp_path / "again", frozen)
