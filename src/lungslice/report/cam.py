"""Where in a slice the evidence lies: class activation maps through the head.

For the backbone's last chosen layer ``A`` (``C x h x w``) and the head's score
``s_c`` of class ``c``, the map is ``ReLU(sum_k dS/df_k * A_k)``, with the
gradient taken through the head at the slice's own features (Grad-CAM). For a
linear (logistic) head on globally average-pooled features this is exactly the
class activation map of Zhou et al. (2016); for the MLP head it is Grad-CAM.
"""

from __future__ import annotations

import numpy as np
import torch

from lungslice.features.backbones import Backbone
from lungslice.features.frozen import FrozenBackbone
from lungslice.model.heads import Head, LogisticHead, MLPHead

__all__ = ["activation_maps"]


def _head_scores(head: Head, features: torch.Tensor) -> torch.Tensor:
    dev = features.device
    mean = torch.from_numpy(head.mean).to(dev)
    scale = torch.from_numpy(head.scale).to(dev)
    x = (features - mean) / scale
    if isinstance(head, LogisticHead):
        coef = torch.from_numpy(head.coef).to(dev)
        return x @ coef.T + torch.from_numpy(head.intercept).to(dev)
    if isinstance(head, MLPHead):
        out: torch.Tensor = head.module.to(dev)(x)
        return out
    raise TypeError(f"no activation maps for a head of type {type(head).__name__}")


def activation_maps(
    backbone: Backbone | FrozenBackbone,
    head: Head,
    inputs: torch.Tensor,
    class_index: int = 2,
) -> np.ndarray:
    """Evidence maps for ``class_index`` (default 2 = malignant), one per input image.

    Parameters
    ----------
    backbone : Backbone or FrozenBackbone
        The feature extractor the head was trained on (a bundle's traced one too).
    head : Head
        The fitted slice classifier.
    inputs : torch.Tensor
        ``(n, 3, H, W)`` network inputs (as made for feature extraction).
    class_index : int
        Class whose log-probability the maps explain.

    Returns
    -------
    numpy.ndarray
        ``(n, h, w)`` non-negative float32 maps at the last layer's resolution.
    """
    backbone = backbone.float().eval()
    # the inputs go where the backbone's weights are (a GPU runner's backbone)
    device = next(backbone.parameters()).device
    inputs = inputs.to(device).float()
    with torch.no_grad():
        pooled = backbone(inputs)
    maps = backbone.feature_maps(inputs).detach().requires_grad_(True)
    width = maps.shape[1]
    # The last chosen layer is the last block of the concatenated feature vector.
    features = torch.cat([pooled[:, :-width], maps.mean(dim=(2, 3))], dim=1)
    log_p = torch.log_softmax(_head_scores(head, features), dim=1)[:, class_index]
    (grad,) = torch.autograd.grad(log_p.sum(), maps)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * maps).sum(dim=1))
    return cam.detach().cpu().numpy().astype(np.float32)
