"""Running a backbone fast: device, precision, memory layout, compilation, allocator.

On the 2-core AVX-512-bf16 CPU these machines have, channels-last layout plus
bfloat16 autocast is the big win (~2x over eager FP32 for ResNets,
docs/performance.md). For efficientnet_lite0 on CT inputs full autocast drifts to cosine
~0.975 from FP32; keeping the first convolution in FP32 brings it to >= 0.99
(benchmarks/extract.py prints it), so that is what ``"bf16"`` means here.
``torch.compile`` costs tens of seconds up front and recompiles for every new
batch shape, so the last batch is padded to the batch size. On a CUDA device
the same code runs there.

Batch normalisation in eval mode is an affine map per channel, so it is
folded into the convolution before it (:func:`fold_batchnorm`): the same
features (relative difference ~1e-6, checked on a probe image every time),
one memory pass less per layer. On efficientnet_lite0's 64 px candidate
patches that was 14 -> 19 images/s side by side on a loaded 2-core machine
(docs/performance.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lungslice.errors import ConfigError, FeatureError
from lungslice.features.backbones import Backbone
from lungslice.features.frozen import FrozenBackbone

__all__ = ["FeatureRunner", "fold_batchnorm", "resolve_device", "tune_allocator"]

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def tune_allocator() -> bool:
    """Stop glibc returning big buffers to the OS after every batch (process-wide).

    glibc maps and unmaps every large allocation by default; a batch loop then
    page-faults its buffers in again on every batch. Raising the mmap and trim
    thresholds to 1 GB keeps them mapped (eager PyTorch 20-50 % faster, pydicom
    decoding ~1.7x; docs/performance.md). Called by the CLI and the benchmark, not
    by library functions, since it changes the whole process.

    Returns
    -------
    bool
        True when glibc accepted the settings (False on other C libraries).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, 1_000_000_000),
            (_M_TRIM_THRESHOLD, 1_000_000_000),
            (_M_TOP_PAD, 100_000_000),
        )
    )
    log.debug("glibc allocator tuned: %s", ok)
    return ok


def _stem_in_fp32(backbone: Backbone) -> None:
    """Run the first convolution outside autocast, in FP32.

    Rounding the normalised CT input to bfloat16 (8 significant bits) costs
    more agreement than every later layer together: on phantom CT slices,
    efficientnet_lite0 head features reached a minimum cosine of 0.975 to
    FP32 with full autocast and 0.996 with an FP32 stem, at ~90 % of the
    autocast speed (one side-by-side measurement on a loaded machine).
    The module's parameters (and state dict) are untouched.
    """
    model: Any = backbone.model
    name = model.pretrained_cfg.get("first_conv")
    if not isinstance(name, str):
        return
    stem: Any = model.get_submodule(name)
    if getattr(stem, "_lungslice_fp32", False):
        return
    plain = stem.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            out: torch.Tensor = plain(x.float())
        return out

    stem.forward = forward
    stem._lungslice_fp32 = True


def _folded_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[nn.Parameter, nn.Parameter]:
    """Weight and bias of ``bn(conv(x))`` as one convolution (eval-mode statistics)."""
    assert bn.running_var is not None and bn.running_mean is not None
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
        bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    dtype = conv.weight.dtype
    return nn.Parameter(weight.to(dtype), False), nn.Parameter(bias.to(dtype), False)


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What is left of ``bn`` once folded: timm's ``BatchNormAct2d`` keeps its drop and act."""
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
    rest = [m for m in rest if not isinstance(m, nn.Identity)]
    if not rest:
        return nn.Identity()
    return rest[0] if len(rest) == 1 else nn.Sequential(*rest)


def fold_batchnorm(model: nn.Module, *, rtol: float = 1e-4) -> int:
    """Fold every eval-mode batch norm into the convolution right before it, in place.

    A pair is a ``Conv2d`` and a ``BatchNorm2d`` registered one after the other
    in the same parent module (how timm's ResNets and EfficientNets define
    them). The result is checked on a probe image against the unfolded model;
    if they differ by more than ``rtol`` (a module whose forward does not run
    the two in a row), every fold is undone and an error raised.

    Parameters
    ----------
    model : torch.nn.Module
        A model in eval mode (a :class:`~lungslice.features.backbones.Backbone`).
    rtol : float
        Largest relative difference of the probe's outputs accepted.

    Returns
    -------
    int
        How many batch norms were folded.

    Raises
    ------
    FeatureError
        If the folded model's output differs (the folds are undone first).
    """
    if model.training:
        raise FeatureError("fold_batchnorm: the model is in training mode; call .eval() first")
    pairs = []
    for parent in model.modules():
        names = list(parent._modules)
        for first, second in itertools.pairwise(names):
            conv, bn = parent._modules[first], parent._modules[second]
            if (
                type(conv) is nn.Conv2d
                and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats
                and bn.running_mean is not None
                and conv.out_channels == bn.num_features
            ):
                pairs.append((parent, second, conv, bn))
    if not pairs:
        return 0
    param = next(model.parameters())
    probe = torch.rand(
        (1, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=param.dtype
    ).to(param.device)

    def exact() -> Any:
        # On a GPU, compare without TF32 convolutions (their rounding is not the fold's)
        return torch.backends.cudnn.flags(
            enabled=torch.backends.cudnn.enabled,
            benchmark=torch.backends.cudnn.benchmark,
            deterministic=torch.backends.cudnn.deterministic,
            allow_tf32=False,
        )

    with exact(), torch.inference_mode():
        before = model(probe).float()
    undo = []
    for parent, name, conv, bn in pairs:
        undo.append((parent, name, conv, bn, conv.weight, conv.bias))
        conv.weight, bias = _folded_pair(conv, bn)
        conv.bias = bias
        parent._modules[name] = _after_norm(bn)
    with exact(), torch.inference_mode():
        after = model(probe).float()
    error = float((after - before).abs().max() / before.abs().max().clamp_min(1e-12))
    if not error <= rtol:
        for parent, name, conv, bn, weight, old_bias in undo:
            conv.weight = weight
            conv.bias = old_bias
            parent._modules[name] = bn
        raise FeatureError(
            f"fold_batchnorm: folding {len(pairs)} batch norms changed the output of "
            f"{type(model).__name__} by {error:.2g} (relative; expected <= {rtol:g}); left "
            "unfolded. Fix: report it, or pass fold_norms=False to FeatureRunner"
        )
    log.debug("folded %d batch norms (probe relative difference %.2g)", len(pairs), error)
    return len(pairs)


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); Linux only."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"device {device!r}: {err}; expected 'auto', 'cpu' or 'cuda'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available here; use 'auto' or 'cpu'")
    return resolved


class FeatureRunner:
    """A backbone prepared for inference: device, layout, precision, optional compile.

    Calling it with a ``(n, 3, H, W)`` float32 batch returns ``(n, d)`` float32
    features as a NumPy array. The backbone is moved and converted to
    channels-last in place.

    Parameters
    ----------
    backbone : Backbone or FrozenBackbone
        The backbone: a timm model, or a bundle's traced one
        (:mod:`lungslice.features.frozen`: already folded, its precision in the
        graph, so it runs without autocast and cannot be compiled).
    precision : {"bf16", "fp32"}
        bfloat16 autocast or full FP32 (a frozen backbone's must match).
    device : str
        See :func:`resolve_device`.
    compile : bool
        ``torch.compile`` the backbone; batches smaller than ``batch_size``
        are padded so that one shape compiles once.
    batch_size : int
        The batch size batches are padded to when compiled.
    fold_norms : bool
        Fold batch norms into their convolutions (:func:`fold_batchnorm`;
        same features, faster); ``torch.compile`` folds them itself.
    """

    def __init__(
        self,
        backbone: Backbone | FrozenBackbone,
        *,
        precision: str = "bf16",
        device: str = "auto",
        compile: bool = False,
        batch_size: int = 32,
        fold_norms: bool = True,
    ) -> None:
        if precision not in ("bf16", "fp32"):
            raise ConfigError(f"precision: expected 'bf16' or 'fp32', got {precision!r}")
        frozen = isinstance(backbone, FrozenBackbone)
        if frozen and (compile or precision != backbone.precision):
            raise ConfigError(
                f"FeatureRunner: the frozen {backbone.name} of {backbone.path} runs in "
                f"{backbone.precision} uncompiled; got precision={precision!r}, "
                f"compile={compile}. Fix: build the backbone with load_backbone instead"
            )
        self.backbone = backbone
        self.device = resolve_device(device)
        self.precision = precision
        self.compiled = compile
        self.batch_size = batch_size
        self.frozen = frozen
        backbone.eval()
        self.folded = backbone.folded if isinstance(backbone, FrozenBackbone) else 0
        if fold_norms and not compile and isinstance(backbone, Backbone):
            # Folded where the backbone is (the CPU, from load_backbone), in exact FP32: a GPU
            # would compare with TF32 convolutions (differences ~1e-3 that are not the fold's).
            try:
                self.folded = fold_batchnorm(backbone)
            except FeatureError as err:
                log.warning("%s; running with the batch norms as they are", err)
        backbone.to(self.device).to(memory_format=torch.channels_last)
        if precision == "bf16" and isinstance(backbone, Backbone):
            _stem_in_fp32(backbone)
            if self.device.type == "cpu" and not cpu_has_native_bf16():
                log.warning(
                    "precision 'bf16' on a CPU without native bfloat16 (no AVX-512 BF16/AMX): "
                    "PyTorch emulates it, 10-15x slower than 'fp32'. Use precision='fp32'."
                )
        self._fn: Any = backbone
        if compile:
            self._fn = torch.compile(backbone, dynamic=False, options={"freezing": True})

    @property
    def layout(self) -> str:
        """A short description, e.g. ``"cpu channels_last bf16-autocast compiled"``."""
        parts = [self.device.type, "channels_last"]
        parts.append("bf16-autocast" if self.precision == "bf16" else "fp32")
        if self.frozen:
            parts.append("torchscript")
        if self.compiled:
            parts.append("compiled")
        return " ".join(parts)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        n = int(x.shape[0])
        if self.compiled and n < self.batch_size:
            pad = x.new_zeros((self.batch_size - n, *x.shape[1:]))
            pad = pad.contiguous(memory_format=torch.channels_last)
            x = torch.cat([x, pad])
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast(
                self.device.type,
                dtype=torch.bfloat16,
                # a frozen graph holds its casts (and keeps its stem in FP32) itself
                enabled=self.precision == "bf16" and not self.frozen,
            ),
        ):
            features = self._fn(x)
        return features[:n].float().cpu().numpy()
