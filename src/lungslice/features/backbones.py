"""Backbone registry: ImageNet-pretrained residual networks from timm, hidden layers pooled.

A :class:`Backbone` wraps a full timm classification model (so that
``--verify`` can use its ImageNet classifier) and turns an image batch into
the global-average-pooled activations of the chosen hidden layers,
concatenated in network order. Preprocessing (input size, mean, std) comes
from timm's ``resolve_data_config`` for that model, never from constants here.

Layer names are timm's ``feature_info`` module names (ResNet ``layer1`` ..
``layer4``; EfficientNet ``blocks.0`` .. ``blocks.6``) plus ``head`` for
EfficientNet: the 1280-channel ``conv_head`` output that the classifier
pools. Defaults: ``head`` for efficientnet_lite0 and ``layer4`` for ResNets,
the penultimate representation that transfer learning conventionally uses;
``layer3`` (or ``layer3,layer4``) is one flag away for the comparison in the
training stage.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lungslice.errors import ConfigError, WeightsUnavailableError
from lungslice.features.weights import (
    OFFLINE_BACKBONE,
    WeightsSource,
    adapt_state_dict,
    cached_weights,
    load_weights_file,
    resolve_weights,
)

__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "BackboneInfo",
    "backbone_info",
    "list_backbones",
    "load_backbone",
]

log = logging.getLogger(__name__)

#: The default backbone, on every machine (its weights ship with a package).
DEFAULT_BACKBONE = OFFLINE_BACKBONE

_HEAD = "head"


@dataclass(frozen=True)
class BackboneInfo:
    """What the registry knows about a backbone.

    Attributes
    ----------
    name : str
        Registry name (also the timm architecture name).
    layers : tuple of str
        Selectable hidden layers, input to output.
    widths : tuple of int
        Channels of each layer (the pooled feature width it contributes).
    default_layers : tuple of str
        Layers used when none are chosen.
    input_size : int
        The model's default input size (pixels, square).
    weights : str
        Where ImageNet weights are here: ``"package"``, ``"torch-hub-cache"``,
        ``"hf-cache"`` or ``"unavailable"``.
    weights_path : str or None
        The weights file, when available.
    """

    name: str
    layers: tuple[str, ...]
    widths: tuple[int, ...]
    default_layers: tuple[str, ...]
    input_size: int
    weights: str
    weights_path: str | None

    def width_of(self, layers: Sequence[str]) -> int:
        """Total pooled feature width of ``layers``."""
        return sum(self.widths[self.layers.index(name)] for name in layers)


_REGISTRY: dict[str, tuple[str, ...]] = {
    "efficientnet_lite0": (_HEAD,),
    "resnet18": ("layer4",),
    "resnet34": ("layer4",),
    "resnet50": ("layer4",),
    "resnet101": ("layer4",),
    "resnet152": ("layer4",),
}


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown backbone {name!r}; expected one of {', '.join(_REGISTRY)} "
            "(see `lungslice backbones`)"
        )


def _create(name: str, *, meta: bool = False) -> Any:
    import timm

    if meta:
        # Parameters without storage: no random initialisation for weights about to be
        # replaced (resnet50: ~0.5 s of the start-up; load_state_dict(assign=True) fills them).
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False)
    return timm.create_model(name, pretrained=False)


def _with_weights(name: str, state: dict[str, torch.Tensor], source: str) -> Any:
    """The timm model holding ``state``, built without initialising what it replaces."""
    model = _create(name, meta=True)
    adapted = adapt_state_dict(state, model, source)
    # assign=True keeps the file's tensors as they are: give them the model's dtypes
    dtypes = {k: t.dtype for k, t in model.state_dict().items()}
    model.load_state_dict({k: v.to(dtypes[k]) for k, v in adapted.items()}, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if not left:
        return model
    # Tensors the file does not hold (non-persistent buffers): build normally instead.
    log.debug("%s: %d tensors not in the weights (%s); full construction", name, len(left), left[0])
    model = _create(name)
    model.load_state_dict(adapt_state_dict(state, model, source))
    return model


def _layer_table(model: Any) -> tuple[tuple[str, ...], tuple[int, ...]]:
    info = model.feature_info
    names = [str(f["module"]) for f in info]
    widths = [int(f["num_chs"]) for f in info]
    if hasattr(model, "conv_head"):
        names.append(_HEAD)
        widths.append(int(model.num_features))
    return tuple(names), tuple(widths)


def backbone_info(name: str) -> BackboneInfo:
    """Describe backbone ``name`` without loading weights (no network)."""
    _check_name(name)
    model = _create(name)
    layers, widths = _layer_table(model)
    size = int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    weights, path = "unavailable", None
    if name == OFFLINE_BACKBONE:
        try:
            from lungslice.features.weights import efficientnet_lite0_weights_path

            weights, path = "package", str(efficientnet_lite0_weights_path())
        except WeightsUnavailableError:
            pass
    else:
        found = cached_weights(name)
        if found is not None:
            weights, path = found[0], str(found[1])
    return BackboneInfo(name, layers, widths, _REGISTRY[name], size, weights, path)


def list_backbones() -> list[BackboneInfo]:
    """Every registered backbone, with layers, widths and weights availability here."""
    return [backbone_info(name) for name in _REGISTRY]


class Backbone(nn.Module):
    """A timm model that returns pooled, concatenated hidden-layer features.

    Use :func:`load_backbone` to make one.

    Attributes
    ----------
    name : str
        Registry name.
    model : torch.nn.Module
        The full timm classification model (classifier included).
    layers : tuple of str
        Chosen layers, in network order.
    feature_dim : int
        Width of the feature vector (sum of the chosen layers' channels).
    data_config : dict
        timm's ``resolve_data_config`` for the model (input_size, mean, std,
        interpolation, crop_pct).
    weights_id : str
        SHA-256 of the weights file, or ``"random"``.
    weights_source : WeightsSource
        Where the weights came from.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        layers: tuple[str, ...],
        weights_source: WeightsSource,
    ) -> None:
        super().__init__()
        from timm.data import resolve_data_config

        self.name = name
        self.model = model.eval()
        all_layers, widths = _layer_table(model)
        self.layers = layers
        self.layer_widths = tuple(widths[all_layers.index(n)] for n in layers)
        self.feature_dim = int(sum(self.layer_widths))
        self.weights_source = weights_source
        self.weights_id = weights_source.sha256
        self.data_config: dict[str, Any] = dict(resolve_data_config({}, model=model))
        self._indices = [all_layers.index(n) for n in layers if n != _HEAD]
        self._with_head = _HEAD in layers

    def _maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        m: Any = self.model
        if self._with_head and not self._indices:
            return [m.forward_features(x)]
        if self._with_head:
            final, inter = m.forward_intermediates(x, indices=self._indices)
            return [*inter, final]
        return list(
            m.forward_intermediates(
                x, indices=self._indices, intermediates_only=True, stop_early=True
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, 3, H, W)`` normalised images -> ``(n, feature_dim)`` float32 features."""
        pooled = [f.float().mean(dim=(2, 3)) for f in self._maps(x)]
        return torch.cat(pooled, dim=1) if len(pooled) > 1 else pooled[0]

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The last chosen layer's spatial map ``(n, C, h, w)`` (for activation maps)."""
        return self._maps(x)[-1]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits ``(n, 1000)`` of the full model (used by verification)."""
        logits: torch.Tensor = self.model(x)
        return logits


def _resolve_layers(name: str, model: nn.Module, layers: Sequence[str] | None) -> tuple[str, ...]:
    available, _ = _layer_table(model)
    chosen = list(_REGISTRY[name] if not layers else layers)
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise ConfigError(
            f"backbone {name}: unknown layer(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(available)}"
        )
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"backbone {name}: layers {', '.join(chosen)} repeat a layer")
    # Network order, so the same set of layers always gives the same vector layout.
    return tuple(sorted(chosen, key=available.index))


def load_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str = "imagenet",
    layers: Sequence[str] | None = None,
    *,
    seed: int = 0,
    allow_download: bool = False,
) -> Backbone:
    """Build a backbone with its weights, in eval mode on the CPU.

    Parameters
    ----------
    name : str
        Registry name (see :func:`list_backbones`).
    weights : str
        ``"imagenet"`` (resolved as in :mod:`lungslice.features.weights`),
        ``"random"`` (the no-transfer ablation, initialised from ``seed``) or
        the path of a weights file.
    layers : sequence of str, optional
        Hidden layers to pool and concatenate; default the registry's.
    seed : int
        Seed of the random initialisation (used with ``weights="random"`` only;
        the global RNG state is left untouched).
    allow_download : bool
        Allow a download when no cache holds ImageNet weights.

    Raises
    ------
    ConfigError
        For an unknown backbone or layer.
    WeightsUnavailableError
        When the weights cannot be found or do not fit the architecture.
    """
    _check_name(name)
    source = resolve_weights(name, weights, allow_download=allow_download)
    if source.path is not None:
        state = load_weights_file(source.path)
        model = _with_weights(name, state, f"{name} weights {source.path}")
        log.info("%s: loaded weights from %s (%s)", name, source.path, source.kind)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _create(name)
    chosen = _resolve_layers(name, model, layers)
    return Backbone(name, model, chosen, source)
