"""Axial HU slices -> 3-channel network inputs, normalised with the backbone's own statistics.

Two modes:

``"windows"``
    Each channel is the same slice under a different HU window (default: lung
    -1000..400, mediastinal -160..240, wide -1400..1000).
``"2.5d"``
    The channels are slices z-1, z, z+1 of the (1 mm) volume under one window;
    the first and last slice repeat themselves as their missing neighbour.

Each slice is resized to ``size`` x ``size`` (default: the backbone's input
size; the whole field of view, no crop, so peripheral nodules stay in) with
antialiased bilinear interpolation, *then* windowed: resizing the HU slice
once is three times cheaper than resizing three windowed channels. A window
maps ``lo..hi`` to 0..1 (clipped), then the channel is normalised with the
backbone's ``mean``/``std`` from timm's ``resolve_data_config``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from lungslice.config import DictConfig
from lungslice.dicom.resample import ResampledVolume
from lungslice.errors import ConfigError

__all__ = ["DEFAULT_WINDOWS", "InputConfig", "input_size", "make_inputs", "resize_slices"]

#: Lung, mediastinal and wide windows (HU lo, hi).
DEFAULT_WINDOWS: tuple[tuple[float, float], ...] = (
    (-1000.0, 400.0),
    (-160.0, 240.0),
    (-1400.0, 1000.0),
)


@dataclass(frozen=True)
class InputConfig(DictConfig):
    """How a slice becomes a network input.

    ``to_dict``/``from_dict`` round-trip it through JSON.

    Attributes
    ----------
    mode : {"windows", "2.5d"}
        Three HU windows of one slice, or three neighbouring slices in one window.
    windows : tuple of (float, float)
        The three windows of ``"windows"`` mode, (lo, hi) HU each.
    window_25d : tuple of float
        The window of ``"2.5d"`` mode.
    size : int or None
        Square input size in pixels; None means the backbone's input size.
    """

    mode: Literal["windows", "2.5d"] = "windows"
    windows: tuple[tuple[float, float], ...] = DEFAULT_WINDOWS
    window_25d: tuple[float, float] = (-1000.0, 400.0)
    size: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("windows", "2.5d"):
            raise ConfigError(f"InputConfig.mode: expected 'windows' or '2.5d', got {self.mode!r}")
        if self.mode == "windows" and len(self.windows) != 3:
            raise ConfigError(
                f"InputConfig.windows: 'windows' mode needs 3 windows (one per channel), "
                f"got {len(self.windows)}"
            )
        for lo, hi in (*self.windows, self.window_25d):
            if not hi > lo:
                raise ConfigError(f"InputConfig: window ({lo}, {hi}) needs hi > lo")
        if self.size is not None and self.size < 16:
            raise ConfigError(f"InputConfig.size: expected >= 16 pixels or None, got {self.size}")


def input_size(config: InputConfig, data_config: Mapping[str, Any]) -> int:
    """The resolved square input size: ``config.size`` or the backbone's own."""
    return int(config.size or data_config["input_size"][-1])


def _as_tensor(hu: np.ndarray | torch.Tensor | ResampledVolume) -> torch.Tensor:
    if isinstance(hu, ResampledVolume):
        hu = hu.hu
    t = torch.as_tensor(hu)
    if t.ndim != 3:
        raise ConfigError(
            f"make_inputs: expected HU slices (n, rows, columns), got shape {tuple(t.shape)}"
        )
    return t.float()


def resize_slices(hu: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(n, rows, columns)`` slices to ``(n, size, size)`` float32.

    Bilinear with antialiasing (a triangle filter as wide as the shrink
    factor), the cheapest resize that does not alias lung texture when a
    512-pixel slice shrinks to 224; a slice already at ``size`` is returned
    as is. Linear, so it commutes with linear interpolation along z.
    """
    t = _as_tensor(hu)
    if tuple(t.shape[1:]) == (size, size):
        return t
    out = F.interpolate(
        t.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return out.squeeze(1)


def make_inputs(
    hu: np.ndarray | torch.Tensor | ResampledVolume,
    config: InputConfig,
    data_config: Mapping[str, Any],
) -> torch.Tensor:
    """Turn HU slices into normalised 3-channel network inputs.

    Parameters
    ----------
    hu : numpy.ndarray, torch.Tensor or ResampledVolume
        ``(n, rows, columns)`` HU. In ``"2.5d"`` mode the slices must be
        consecutive (neighbours come from this array).
    config : InputConfig
        Mode, windows and size.
    data_config : mapping
        The backbone's ``data_config`` (``input_size``, ``mean``, ``std``).

    Returns
    -------
    torch.Tensor
        ``(n, 3, size, size)`` float32 in channels-last memory layout, on the
        device of ``hu``.
    """
    t = resize_slices(_as_tensor(hu), input_size(config, data_config))
    mean = torch.tensor(data_config["mean"], dtype=torch.float32, device=t.device)
    std = torch.tensor(data_config["std"], dtype=torch.float32, device=t.device)
    if config.mode == "windows":
        lo = torch.tensor([w[0] for w in config.windows], dtype=torch.float32, device=t.device)
        hi = torch.tensor([w[1] for w in config.windows], dtype=torch.float32, device=t.device)
        src = t.unsqueeze(-1)
    else:
        lo = torch.full((3,), float(config.window_25d[0]), device=t.device)
        hi = torch.full((3,), float(config.window_25d[1]), device=t.device)
        n = t.shape[0]
        idx = torch.arange(n, device=t.device)
        prev, nxt = (idx - 1).clamp(min=0), (idx + 1).clamp(max=max(n - 1, 0))
        src = torch.stack([t[prev], t, t[nxt]], dim=-1)
    # (clip((hu - lo) / (hi - lo), 0, 1) - mean) / std as one multiply-add and one clamp,
    # written channels-last (n, H, W, 3): the layout the runner feeds the network.
    scale = 1.0 / ((hi - lo) * std)
    offset = (-lo / (hi - lo) - mean) / std
    out = torch.addcmul(offset, src, scale)
    out.clamp_(min=-mean / std, max=(1.0 - mean) / std)
    return out.permute(0, 3, 1, 2)
