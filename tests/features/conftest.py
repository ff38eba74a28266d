"""Shared fixtures of the feature tests: backbones are loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from lungslice.features.backbones import Backbone, load_backbone


@pytest.fixture(scope="session")
def lite0() -> Backbone:
    """The offline pretrained default backbone."""
    return load_backbone()


@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the torch hub and Hugging Face caches at empty folders."""
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "torch" / "hub" / "checkpoints"
