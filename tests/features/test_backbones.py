"""Backbone registry, weights resolution and the ImageNet verification."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lungslice.cli import app
from lungslice.errors import ConfigError, WeightsUnavailableError
from lungslice.features.backbones import Backbone, backbone_info, list_backbones, load_backbone
from lungslice.features.verify import verify_backbone
from lungslice.features.weights import efficientnet_lite0_weights_path
from lungslice.provenance import file_sha256
from tests.helpers import torchvision_resnet18_file


def test_registry_lists_backbones_with_layers_and_weights() -> None:
    infos = {b.name: b for b in list_backbones()}
    assert list(infos) == [
        "efficientnet_lite0",
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
    ]
    lite = infos["efficientnet_lite0"]
    assert lite.weights == "package"
    assert lite.default_layers == ("head",)
    assert lite.width_of(["head"]) == 1280
    r50 = infos["resnet50"]
    assert r50.layers[-2:] == ("layer3", "layer4")
    assert r50.width_of(["layer3", "layer4"]) == 1024 + 2048


def test_default_backbone_loads_package_weights(lite0: Backbone) -> None:
    assert lite0.name == "efficientnet_lite0"
    assert lite0.layers == ("head",)
    assert lite0.feature_dim == 1280
    assert lite0.weights_id == file_sha256(efficientnet_lite0_weights_path())
    assert lite0.weights_source.kind == "package"
    assert lite0.data_config["input_size"] == (3, 224, 224)
    x = torch.zeros(2, 3, 64, 64)
    with torch.inference_mode():
        assert lite0(x).shape == (2, 1280)
        assert lite0.feature_maps(x).shape == (2, 1280, 2, 2)


def test_verify_passes_for_pretrained_and_fails_for_random(lite0: Backbone) -> None:
    good = verify_backbone(lite0)
    assert good.passed
    assert good.checks[0].top5[0][0] in range(281, 286)
    assert good.checks[1].top5[0][:2] == (967, "espresso")
    bad = verify_backbone(load_backbone(weights="random", seed=0))
    assert not bad.passed
    assert bad.weights_id == "random"


def test_cli_verify_exit_codes() -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["backbones", "--verify", "efficientnet_lite0"])
    assert ok.exit_code == 0, ok.output
    assert "espresso" in ok.output and "PASS" in ok.output
    bad = runner.invoke(app, ["backbones", "--verify", "efficientnet_lite0", "--weights", "random"])
    assert bad.exit_code == 1, bad.output
    assert "FAIL" in bad.output


def test_cli_lists_backbones() -> None:
    result = CliRunner().invoke(app, ["backbones"])
    assert result.exit_code == 0, result.output
    assert "efficientnet_lite0" in result.output and "resnet152" in result.output


def test_random_init_is_seeded_and_leaves_global_rng_alone() -> None:
    before = torch.random.get_rng_state()
    a = load_backbone("resnet18", "random", seed=1)
    b = load_backbone("resnet18", "random", seed=1)
    c = load_backbone("resnet18", "random", seed=2)
    assert torch.equal(torch.random.get_rng_state(), before)
    wa, wb, wc = (m.model.conv1.weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


def test_resnet18_loads_torchvision_file(tmp_path: Path) -> None:
    path = tmp_path / "my-resnet18.pth"
    state = torchvision_resnet18_file(path)
    bb = load_backbone("resnet18", str(path), layers=["layer4", "layer3"])
    assert bb.layers == ("layer3", "layer4")
    assert bb.feature_dim == 256 + 512
    assert bb.weights_id == file_sha256(path)
    assert torch.equal(
        bb.model.state_dict()["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"]
    )
    with torch.inference_mode():
        assert bb(torch.zeros(1, 3, 64, 64)).shape == (1, 768)


def test_cli_verify_resnet18_from_a_weights_file(tmp_path: Path) -> None:
    # Loading path only: random torchvision weights load, then fail the photo check.
    path = tmp_path / "resnet18-random.pth"
    torchvision_resnet18_file(path)
    result = CliRunner().invoke(app, ["backbones", "--verify", "resnet18", "--weights", str(path)])
    assert result.exit_code == 1, result.output
    assert f"resnet18  weights sha256 {file_sha256(path)}" in result.output
    assert "FAIL" in result.output


def test_resnet18_loads_safetensors_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = load_backbone("resnet18", "random", seed=3)
    path = tmp_path / "model.safetensors"
    save_file(source.model.state_dict(), str(path))
    bb = load_backbone("resnet18", str(path))
    assert torch.equal(bb.model.fc.weight, source.model.fc.weight)


def test_weights_for_another_architecture_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torchvision_resnet18_file(path)
    with pytest.raises(WeightsUnavailableError, match=r"the file is for another architecture"):
        load_backbone("resnet50", str(path))


def test_missing_weights_file() -> None:
    with pytest.raises(
        WeightsUnavailableError, match=r"weights file /nonexistent.pth does not exist"
    ):
        load_backbone("resnet18", "/nonexistent.pth")


def test_imagenet_resnet_without_cache_names_remedies(empty_caches: Path) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone("resnet50", "imagenet")
    msg = str(info.value)
    assert msg.startswith("resnet50: no ImageNet weights on this machine")
    assert (
        "(1) pass --weights FILE" in msg
        and "(3) rerun with --download where the network is reachable" in msg
    )
    assert "--backbone efficientnet_lite0" in msg and "--weights random" in msg
    assert backbone_info("resnet50").weights == "unavailable"


def test_torch_hub_cache_is_found(empty_caches: Path) -> None:
    from torchvision.models import ResNet18_Weights

    name = ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    torchvision_resnet18_file(empty_caches / name)
    info = backbone_info("resnet18")
    assert info.weights == "torch-hub-cache"
    bb = load_backbone("resnet18", "imagenet")
    assert bb.weights_source.kind == "torch-hub-cache"
    assert bb.weights_id == file_sha256(empty_caches / name)


def test_unknown_backbone_and_layer() -> None:
    with pytest.raises(ConfigError, match=r"unknown backbone 'vgg16'; expected one of"):
        load_backbone("vgg16")
    with pytest.raises(
        ConfigError, match=r"backbone resnet18: unknown layer\(s\) layer5; expected"
    ):
        load_backbone("resnet18", "random", layers=["layer5"])
