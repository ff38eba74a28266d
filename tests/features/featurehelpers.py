"""Helpers shared by the feature tests (imported by name; tests/features is on sys.path)."""

from __future__ import annotations

from pathlib import Path

import torch


def torchvision_resnet18_file(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Save the state dict of a randomly initialised torchvision ResNet-18 to ``path``."""
    from torchvision.models import resnet18

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        state = resnet18().state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state
