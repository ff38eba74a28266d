"""FeatureConfig: every setting of feature extraction, and the cache key of its numbers."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lungslice.config import DictConfig
from lungslice.errors import ConfigError
from lungslice.features.backbones import _REGISTRY, DEFAULT_BACKBONE
from lungslice.features.inputs import InputConfig
from lungslice.features.weights import resolve_weights
from lungslice.provenance import config_dict, config_hash

__all__ = ["RUNTIME_FIELDS", "FeatureConfig", "weights_id"]

#: Fields that change speed, not the numbers beyond floating-point rounding noise;
#: they are recorded with every output but left out of the cache key.
RUNTIME_FIELDS = ("batch_size", "compile", "device")


@dataclass(frozen=True)
class FeatureConfig(DictConfig):
    """How slice features are made.

    ``to_dict``/``from_dict`` round-trip it through JSON (``config.json`` of a
    feature cache holds ``to_dict()`` under ``"config"``).

    Attributes
    ----------
    backbone : str
        Registry name (default ``efficientnet_lite0``, on every machine).
    weights : str
        ``"imagenet"``, ``"random"`` or a weights file path (the key uses the
        file's SHA-256, not its path).
    layers : tuple of str or None
        Hidden layers pooled and concatenated; None = the backbone's default.
    inputs : InputConfig
        Slice -> network input settings.
    precision : {"bf16", "fp32"}
        ``fp32`` (default): full precision, the same numbers on every machine.
        ``bf16``: bfloat16 autocast with channels-last layout (features agree
        with FP32 to cosine >= 0.99, see benchmarks/extract.py); about 2x
        faster on CPUs with native bfloat16 (AVX-512 BF16 or AMX) and on GPUs,
        but 10-15x *slower* on CPUs without it (AVX2 only), where PyTorch
        emulates it (measured on this project's 2-core AVX2 machines:
        efficientnet_lite0 on 32 64-px patches, 0.13 s fp32 vs 2.2 s bf16 CPU
        time).
    batch_size : int
        Slices per forward pass.
    slice_spacing : float
        Resampled slice spacing in mm.
    storage_dtype : {"float16", "float32"}
        dtype of the cached ``.npy`` files. float16 halves the cache (pooled
        activations are far below its 65504 range; its ~5e-4 relative rounding
        is below bf16 inference error); float32 keeps every bit of an FP32 run.
    seed : int
        Seed of ``weights="random"`` initialisation (ignored otherwise).
    compile : bool
        ``torch.compile`` the backbone (~10 s up front; pays for datasets).
    device : str
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda[:i]"``.
    """

    backbone: str = DEFAULT_BACKBONE
    weights: str = "imagenet"
    layers: tuple[str, ...] | None = None
    inputs: InputConfig = field(default_factory=InputConfig)
    precision: Literal["bf16", "fp32"] = "fp32"
    batch_size: int = 32
    slice_spacing: float = 1.0
    storage_dtype: Literal["float16", "float32"] = "float16"
    seed: int = 0
    compile: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.backbone not in _REGISTRY:
            raise ConfigError(
                f"FeatureConfig.backbone: unknown backbone {self.backbone!r}; expected one of "
                f"{', '.join(_REGISTRY)}"
            )
        if self.precision not in ("bf16", "fp32"):
            raise ConfigError(
                f"FeatureConfig.precision: expected 'bf16' or 'fp32', got {self.precision!r}"
            )
        if self.storage_dtype not in ("float16", "float32"):
            raise ConfigError(
                "FeatureConfig.storage_dtype: expected 'float16' or 'float32', "
                f"got {self.storage_dtype!r}"
            )
        if self.batch_size < 1:
            raise ConfigError(f"FeatureConfig.batch_size: expected >= 1, got {self.batch_size}")
        if not self.slice_spacing > 0:
            raise ConfigError(
                f"FeatureConfig.slice_spacing: expected > 0 mm, got {self.slice_spacing}"
            )
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))

    @property
    def resolved_layers(self) -> tuple[str, ...]:
        """``layers``, or the backbone's default layers."""
        return self.layers or _REGISTRY[self.backbone]

    def key_payload(self) -> dict[str, Any]:
        """What the key hashes: every setting that changes the numbers, weights by checksum."""
        payload = config_dict(self)
        for name in RUNTIME_FIELDS:
            payload.pop(name)
        payload["layers"] = list(self.resolved_layers)
        payload["weights"] = weights_id(self.backbone, self.weights)
        if self.weights != "random":
            payload.pop("seed")
        return payload

    @property
    def key(self) -> str:
        """Short hash naming the cache folder ``WORK/features/<key>``.

        Raises
        ------
        WeightsUnavailableError
            If the weights cannot be resolved (their checksum is part of the key).
        """
        return config_hash(self.key_payload(), length=16)


def weights_id(backbone: str, weights: str) -> str:
    """SHA-256 of the weights ``backbone``/``weights`` resolve to, or ``"random"``."""
    if weights in ("random", "imagenet"):
        return _weights_id_cached(backbone, weights, None)
    path = Path(weights).expanduser()
    stat = path.stat() if path.is_file() else None
    stamp = (stat.st_mtime_ns, stat.st_size) if stat else None
    return _weights_id_cached(backbone, str(path), stamp)


@functools.lru_cache(maxsize=64)
def _weights_id_cached(backbone: str, weights: str, stamp: tuple[int, int] | None) -> str:
    # ``stamp`` invalidates the memo when a weights file is rewritten in place.
    return resolve_weights(backbone, weights).sha256
