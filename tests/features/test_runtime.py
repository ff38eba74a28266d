"""The runner folds batch norms into convolutions: same features, checked, undone when wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lungslice.errors import FeatureError
from lungslice.features.backbones import load_backbone
from lungslice.features.runtime import FeatureRunner, fold_batchnorm


def _inputs(n: int = 4, size: int = 64) -> torch.Tensor:
    return torch.randn((n, 3, size, size), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("name", "weights"), [("efficientnet_lite0", "imagenet"), ("resnet18", "random")]
)
def test_folded_runner_gives_the_same_features(name: str, weights: str) -> None:
    x = _inputs()
    plain = FeatureRunner(load_backbone(name, weights), precision="fp32", fold_norms=False)
    folded = FeatureRunner(load_backbone(name, weights), precision="fp32")
    n_norms = sum(isinstance(m, nn.BatchNorm2d) for m in plain.backbone.modules())
    assert plain.folded == 0 and folded.folded == n_norms > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.backbone.modules())
    a, b = plain(x), folded(x)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * float(np.abs(a).max()))
    # folding again finds nothing to fold; the features stay
    assert fold_batchnorm(folded.backbone) == 0
    np.testing.assert_allclose(folded(x), b, rtol=0, atol=0)


def test_loaded_weights_are_the_files() -> None:
    # built without initialisation (meta device) and filled from the file: no tensor left empty
    bb = load_backbone()
    tensors = {**dict(bb.model.named_parameters()), **dict(bb.model.named_buffers())}
    assert tensors and not any(t.is_meta for t in tensors.values())
    assert all(t.dtype in (torch.float32, torch.int64) for t in tensors.values())


class _NormFirst(nn.Module):
    """Registers a conv then a batch norm, but runs the norm first: folding is wrong here."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1.0, 1.0)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(self.bn(x)).mean(dim=(2, 3))
        return out


def test_a_fold_that_changes_the_output_is_undone() -> None:
    model = _NormFirst().eval()
    x = _inputs(2, 16)
    with torch.inference_mode():
        before = model(x)
    with pytest.raises(
        FeatureError, match=r"folding 1 batch norms changed the output of _NormFirst"
    ):
        fold_batchnorm(model)
    assert isinstance(model.bn, nn.BatchNorm2d)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_training_mode_is_refused() -> None:
    with pytest.raises(FeatureError, match="training mode"):
        fold_batchnorm(_NormFirst().train())
