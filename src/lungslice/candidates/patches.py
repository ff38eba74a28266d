"""Candidate patches (tri-planar, multi-slice, multi-scale, in mm) -> pretrained features.

The literature's candidate classifiers (van Ginneken et al., ISBI 2015: frozen
ImageNet CNN features of tri-planar patches; Setio et al., TMI 2016:
multi-view 2D patches) look at a few 2D planes through each candidate. Here a
candidate's patch set is a list of *images*: for every view in
:attr:`PatchConfig.views` and every field of view in
:attr:`PatchConfig.fields_mm`, a ``size`` x ``size`` image of ``field`` mm
square centred on the candidate, sampled from the HU volume with trilinear
interpolation in mm (so anisotropic voxels give square patches) and turned
into three channels by HU windows, as the whole-slice path does
(:data:`lungslice.features.inputs.DEFAULT_WINDOWS`).

Views are axis-aligned planes through the candidate centre, optionally moved
along the plane's normal: ``"axial"`` (rows = array rows, columns = array
columns), ``"coronal"`` (rows = -z, i.e. head up when z ascends toward the
head, columns = array columns), ``"sagittal"`` (rows = -z, columns = array
rows) and e.g. ``"axial+2"`` / ``"axial-2"`` (the axial plane 2 mm above /
below the centre).

Because the planes are axis-aligned, trilinear sampling factors into a linear
interpolation between the two volume planes that bracket the image plane and
two small interpolation matrices applied to a cropped ``L x L`` window of the
plane (``image = R_u @ crop @ R_v.T``, batched). This is exactly trilinear
interpolation (voxels outside the volume read as ``pad_hu``), touches only
the voxels it needs (no float copy of the whole volume) and is far faster on
a CPU than ``torch.nn.functional.grid_sample`` on a 3D volume.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lungslice.errors import ConfigError
from lungslice.features.inputs import DEFAULT_WINDOWS
from lungslice.features.runtime import FeatureRunner

__all__ = [
    "PLANES",
    "PatchConfig",
    "candidate_features",
    "extract_patches",
    "normalise_patches",
    "parse_view",
]

log = logging.getLogger(__name__)

#: Plane name -> (normal axis, (row axis, row sign), (column axis, column sign)),
#: axes of the ``(z, row, col)`` volume.
PLANES: dict[str, tuple[int, tuple[int, int], tuple[int, int]]] = {
    "axial": (0, (1, 1), (2, 1)),
    "coronal": (1, (0, -1), (2, 1)),
    "sagittal": (2, (0, -1), (1, 1)),
}

_VIEW = re.compile(r"^(axial|coronal|sagittal)(?:([+-]\d+(?:\.\d+)?))?$")


def parse_view(view: str) -> tuple[str, float]:
    """``"axial+2"`` -> ``("axial", 2.0)``: the plane and its offset (mm) along the normal.

    Raises
    ------
    ConfigError
        For a name that is not ``axial``/``coronal``/``sagittal`` with an
        optional signed offset in mm.
    """
    m = _VIEW.match(view)
    if m is None:
        raise ConfigError(
            f"PatchConfig.views: unknown view {view!r}; expected 'axial', 'coronal' or "
            "'sagittal', optionally with a signed offset in mm along the plane's normal "
            "(e.g. 'axial+2', 'axial-2.5')"
        )
    return m.group(1), float(m.group(2) or 0.0)


@dataclass(frozen=True)
class PatchConfig:
    """How a candidate becomes network input images.

    Attributes
    ----------
    views : tuple of str
        Planes through the candidate (see :func:`parse_view`); default
        tri-planar. ``("axial-2", "axial", "axial+2")`` gives three axial
        slices 2 mm apart.
    fields_mm : tuple of float
        Field of view of each patch (mm, square); several give a multi-scale
        patch set.
    size : int
        Pixels per side fed to the network.
    windows : tuple of (float, float)
        Three HU windows, one per input channel (lo, hi).
    pad_hu : float
        HU of voxels outside the volume (air).
    """

    views: tuple[str, ...] = ("axial", "coronal", "sagittal")
    fields_mm: tuple[float, ...] = (32.0,)
    size: int = 64
    windows: tuple[tuple[float, float], ...] = DEFAULT_WINDOWS
    pad_hu: float = -1000.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "views", tuple(self.views))
        object.__setattr__(self, "fields_mm", tuple(float(f) for f in self.fields_mm))
        object.__setattr__(
            self, "windows", tuple((float(lo), float(hi)) for lo, hi in self.windows)
        )
        if not self.views:
            raise ConfigError("PatchConfig.views: expected at least one view, got none")
        for v in self.views:
            parse_view(v)
        if len(set(self.views)) != len(self.views):
            raise ConfigError(f"PatchConfig.views: {self.views} repeats a view")
        if not self.fields_mm or any(not f > 0 for f in self.fields_mm):
            raise ConfigError(
                f"PatchConfig.fields_mm: expected one or more fields > 0 mm, got {self.fields_mm}"
            )
        if self.size < 16:
            raise ConfigError(f"PatchConfig.size: expected >= 16 pixels, got {self.size}")
        if len(self.windows) != 3:
            raise ConfigError(
                f"PatchConfig.windows: expected 3 windows (one per channel), "
                f"got {len(self.windows)}"
            )
        for lo, hi in self.windows:
            if not hi > lo:
                raise ConfigError(f"PatchConfig.windows: window ({lo}, {hi}) needs hi > lo")

    @property
    def n_images(self) -> int:
        """Images per candidate: ``len(views) * len(fields_mm)``."""
        return len(self.views) * len(self.fields_mm)

    @property
    def image_names(self) -> tuple[str, ...]:
        """``"<view>@<field>mm"`` per image, in output order (view-major)."""
        return tuple(f"{v}@{f:g}mm" for v in self.views for f in self.fields_mm)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (lists for tuples); :meth:`from_dict` reads it back."""
        return {
            "views": list(self.views),
            "fields_mm": list(self.fields_mm),
            "size": self.size,
            "windows": [list(w) for w in self.windows],
            "pad_hu": self.pad_hu,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PatchConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {"views", "fields_mm", "size", "windows", "pad_hu"}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(
                f"PatchConfig.from_dict: unknown key(s) {', '.join(sorted(unknown))}; "
                f"expected some of {', '.join(sorted(known))}"
            )
        kw: dict[str, Any] = dict(data)
        if "windows" in kw:
            kw["windows"] = tuple(tuple(w) for w in kw["windows"])
        for key in ("views", "fields_mm"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)


def _check_inputs(
    hu: np.ndarray | torch.Tensor, spacing: Sequence[float], centres: np.ndarray
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    vol = torch.from_numpy(np.ascontiguousarray(hu)) if isinstance(hu, np.ndarray) else hu
    if vol.ndim != 3:
        raise ConfigError(
            f"extract_patches: expected an HU volume (n_slices, rows, cols), got shape "
            f"{tuple(vol.shape)}"
        )
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.shape != (3,) or not np.all(sp > 0):
        raise ConfigError(
            f"extract_patches: expected spacing (z, row, col) of 3 positive mm values, "
            f"got {tuple(np.asarray(spacing).tolist())}"
        )
    c = np.asarray(centres, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 3:
        raise ConfigError(
            f"extract_patches: expected centres of shape (n, 3) as voxel (z, row, col), "
            f"got shape {c.shape}"
        )
    if not np.isfinite(c).all():
        bad = int(np.flatnonzero(~np.isfinite(c).all(axis=1))[0])
        raise ConfigError(
            f"extract_patches: centre {bad} is not finite ({c[bad].tolist()}); expected "
            "voxel coordinates. Fix: drop candidates without a position."
        )
    return vol, sp, c


def _interp_matrix(coords: np.ndarray, length: int) -> tuple[np.ndarray, torch.Tensor]:
    """Linear interpolation of ``coords`` ``(n, size)`` from ``length`` grid points each.

    Returns the first grid index of each row ``(n,)`` (floor of the smallest
    coordinate) and the matrices ``(n, size, length)`` float32.
    """
    start = np.floor(coords.min(axis=1))
    local = torch.from_numpy((coords - start[:, None]).astype(np.float32))
    grid = torch.arange(length, dtype=torch.float32)
    weights = (1.0 - (local[:, :, None] - grid).abs_()).clamp_(min=0.0)
    return start.astype(np.int64), weights


def _gather_blocks(
    vol: torch.Tensor,
    starts: np.ndarray,
    lengths: tuple[int, int, int],
    order: tuple[int, int, int],
    pad_hu: float,
) -> torch.Tensor:
    """Copy one block per candidate out of the volume, outside voxels set to ``pad_hu``.

    ``starts`` ``(n, 3)`` and ``lengths`` are in the block's own axis order
    ``order`` (volume axes); the result is ``(n, *lengths)`` float32.
    """
    shape = tuple(int(vol.shape[a]) for a in order)
    n = starts.shape[0]
    out = torch.full((n, *lengths), float(pad_hu), dtype=torch.float32)
    lo = np.clip(starts, 0, shape)
    hi = np.clip(starts + np.asarray(lengths), 0, shape)
    view = vol.permute(*order)
    for i in range(n):
        a, b = lo[i], hi[i]
        if (b <= a).any():
            continue  # the block misses the volume: all padding
        d = a - starts[i]
        e = d + (b - a)
        out[i, d[0] : e[0], d[1] : e[1], d[2] : e[2]] = view[a[0] : b[0], a[1] : b[1], a[2] : b[2]]
    return out


def _plane_images(
    vol: torch.Tensor,
    sp: np.ndarray,
    centres: np.ndarray,
    plane: str,
    offset_mm: float,
    field_mm: float,
    size: int,
    pad_hu: float,
) -> torch.Tensor:
    """``(n, size, size)`` float32 HU images of one view and field for every centre."""
    normal, (ax_u, sign_u), (ax_v, sign_v) = PLANES[plane]
    steps = ((np.arange(size) + 0.5) / size - 0.5) * field_mm  # mm, pixel centres
    cu = centres[:, ax_u, None] + sign_u * steps[None, :] / sp[ax_u]
    cv = centres[:, ax_v, None] + sign_v * steps[None, :] / sp[ax_v]
    len_u = math.ceil(field_mm / sp[ax_u]) + 2
    len_v = math.ceil(field_mm / sp[ax_v]) + 2
    su, ru = _interp_matrix(cu, len_u)
    sv, rv = _interp_matrix(cv, len_v)
    cn = centres[:, normal] + offset_mm / sp[normal]
    n0 = np.floor(cn)
    t = torch.from_numpy((cn - n0).astype(np.float32))[:, None, None]
    starts = np.column_stack([n0.astype(np.int64), su, sv])
    slab = _gather_blocks(vol, starts, (2, len_u, len_v), (normal, ax_u, ax_v), pad_hu)
    crop = torch.lerp(slab[:, 0], slab[:, 1], t)  # (n, len_u, len_v)
    return torch.bmm(torch.bmm(ru, crop), rv.transpose(1, 2))


def _window(
    hu: torch.Tensor, config: PatchConfig, data_config: Mapping[str, Any] | None = None
) -> torch.Tensor:
    """``(..., H, W)`` HU -> ``(..., 3, H, W)`` windows in [0, 1], normalised if ``data_config``."""
    mean: Sequence[float] = (0.0, 0.0, 0.0)
    std: Sequence[float] = (1.0, 1.0, 1.0)
    if data_config is not None:
        mean, std = data_config["mean"], data_config["std"]
    out = torch.empty((*hu.shape[:-2], 3, *hu.shape[-2:]), dtype=torch.float32)
    for k, (lo, hi) in enumerate(config.windows):
        m, s = float(mean[k]), float(std[k])
        # (clip((hu - lo) / (hi - lo), 0, 1) - m) / s as one multiply-add and one clamp
        scale = 1.0 / ((hi - lo) * s)
        offset = (-lo / (hi - lo) - m) / s
        channel = out.select(-3, k)
        channel.copy_(hu).mul_(scale).add_(offset).clamp_(min=-m / s, max=(1.0 - m) / s)
    return out


def _hu_images(
    hu: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
    centres: np.ndarray,
    config: PatchConfig,
) -> torch.Tensor:
    vol, sp, c = _check_inputs(hu, spacing, centres)
    size = config.size
    images = []
    for view in config.views:
        plane, offset = parse_view(view)
        for field in config.fields_mm:
            if c.shape[0] == 0:
                images.append(torch.zeros((0, size, size)))
                continue
            images.append(_plane_images(vol, sp, c, plane, offset, field, size, config.pad_hu))
    return torch.stack(images, dim=1)  # (n, n_images, size, size)


def extract_patches(
    hu: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
    centres: np.ndarray,
    config: PatchConfig,
    *,
    windowed: bool = True,
) -> np.ndarray:
    """Sample every candidate's patch set from the volume.

    Parameters
    ----------
    hu : numpy.ndarray or torch.Tensor
        ``(n_slices, rows, cols)`` HU volume (any real dtype; not copied as a whole).
    spacing : sequence of float
        ``(z, row, col)`` voxel spacing in mm.
    centres : numpy.ndarray
        ``(n, 3)`` float voxel coordinates ``(z, row, col)`` of the candidates.
    config : PatchConfig
        Views, fields, size, windows.
    windowed : bool
        True: three channels, one per HU window, mapped to [0, 1] (clipped).
        False: one channel of raw HU (for inspection).

    Returns
    -------
    numpy.ndarray
        ``(n, n_images, 3, size, size)`` float32 (``(n, n_images, 1, size, size)``
        HU when ``windowed`` is False); images in :attr:`PatchConfig.image_names`
        order (for each view, each field).

    Raises
    ------
    ConfigError
        For a volume that is not 3D, bad spacing, or centres that are not ``(n, 3)`` finite.
    """
    stacked = _hu_images(hu, spacing, centres, config)
    if not windowed:
        return stacked.unsqueeze(2).numpy()
    return _window(stacked, config).numpy()


def normalise_patches(
    patches: np.ndarray | torch.Tensor, data_config: Mapping[str, Any]
) -> torch.Tensor:
    """Windowed ``(..., 3, H, W)`` patches in [0, 1] -> the backbone's normalised inputs.

    ``(x - mean) / std`` per channel with the backbone's ImageNet statistics
    (``data_config`` from timm's ``resolve_data_config``, as
    :func:`lungslice.features.inputs.make_inputs` uses).
    """
    x = torch.as_tensor(patches, dtype=torch.float32)
    mean = torch.tensor(data_config["mean"], dtype=torch.float32)[:, None, None]
    std = torch.tensor(data_config["std"], dtype=torch.float32)[:, None, None]
    return (x - mean) / std


def candidate_features(
    hu: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
    centres: np.ndarray,
    runner: FeatureRunner,
    config: PatchConfig,
    *,
    batch_size: int = 64,
) -> np.ndarray:
    """Pooled hidden-layer features of every candidate's patch set, concatenated per candidate.

    Parameters
    ----------
    hu, spacing, centres, config
        As :func:`extract_patches`.
    runner : FeatureRunner
        The backbone prepared for inference
        (:func:`lungslice.features.extract.make_runner`); its layers
        (``FeatureConfig.layers``) decide what is pooled.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    numpy.ndarray
        ``(n, n_images * runner.backbone.feature_dim)`` float32; candidate
        ``i``'s row is the features of its images in
        :attr:`PatchConfig.image_names` order, one after the other.
    """
    if batch_size < 1:
        raise ConfigError(f"candidate_features: expected batch_size >= 1, got {batch_size}")
    vol, _, c = _check_inputs(hu, spacing, centres)
    dim = int(runner.backbone.feature_dim)
    n_img = config.n_images
    data_config = runner.backbone.data_config
    # patches for a bounded number of candidates at a time (memory), inference per batch
    per_chunk = max(1, (4 * batch_size) // n_img)
    out = np.zeros((len(c), n_img * dim), dtype=np.float32)
    for start in range(0, len(c), per_chunk):
        chunk = c[start : start + per_chunk]
        x = _window(_hu_images(vol, spacing, chunk, config), config, data_config)
        x = x.reshape(-1, 3, config.size, config.size)
        feats = np.concatenate(
            [runner(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        )
        out[start : start + len(chunk)] = feats.reshape(len(chunk), n_img * dim)
    log.debug("candidate features: %d candidates x %d images -> %s", len(c), n_img, out.shape)
    return out
