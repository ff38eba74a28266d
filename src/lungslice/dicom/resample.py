"""Resampling along z to regular slices, with provenance back to the source slices.

:func:`resample` interpolates linearly between the two source slices around
each new position (by index and weight, no 3-D interpolation: ~20x faster
than ``scipy.ndimage.zoom``) and records which source images and weights made
every new slice, so later stages can point back to a real DICOM image.
Per-slice labels follow the nearest source slice
(:meth:`ResampledVolume.take_nearest`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lungslice.dicom.volume import CTVolume
from lungslice.errors import ConfigError

__all__ = ["ResampledVolume", "resample", "resample_plan"]


@dataclass(frozen=True, eq=False)
class ResampledVolume:
    """A volume on regular slices, each traceable to the source DICOM images.

    Attributes
    ----------
    hu : numpy.ndarray
        ``(n, rows, columns)`` float32 HU on the new slices.
    spacing : tuple of float
        ``(slice, row, column)`` spacing in mm of the resampled grid.
    z_positions : numpy.ndarray
        ``(n,)`` position of each new slice along the slice normal (mm).
    source_index : numpy.ndarray
        ``(n, 2)`` int: the two source slices (indices into ``source``) each new
        slice interpolates between (equal when it falls on a source slice).
    source_weight : numpy.ndarray
        ``(n, 2)`` float: their weights (sum to 1).
    nearest_source : numpy.ndarray
        ``(n,)`` int: index of the nearest source slice.
    source : CTVolume
        The volume it was made from (identity, SOPInstanceUIDs, InstanceNumbers).
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    z_positions: np.ndarray
    source_index: np.ndarray
    source_weight: np.ndarray
    nearest_source: np.ndarray
    source: CTVolume

    @property
    def n_slices(self) -> int:
        """Number of resampled slices."""
        return int(self.hu.shape[0])

    def nearest_sop_instance_uid(self, i: int) -> str:
        """SOPInstanceUID of the original image nearest to resampled slice ``i``."""
        return self.source.sop_instance_uids[int(self.nearest_source[i])]

    def nearest_instance_number(self, i: int) -> int | None:
        """InstanceNumber of the original image nearest to resampled slice ``i``."""
        return self.source.instance_numbers[int(self.nearest_source[i])]

    def take_nearest(self, per_source_slice: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Values given per source slice (e.g. labels), taken at each nearest source slice.

        Raises
        ------
        ConfigError
            If there is not one value per source slice.
        """
        values = np.asarray(per_source_slice)
        if values.shape[:1] != (self.source.n_slices,):
            raise ConfigError(
                f"take_nearest: expected {self.source.n_slices} values (one per source slice), "
                f"got {values.shape[0] if values.ndim else 0}"
            )
        return values[self.nearest_source]


def resample_plan(
    z: np.ndarray, slice_spacing: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """New positions and their provenance for regular slices over ``z``.

    Parameters
    ----------
    z : numpy.ndarray
        Ascending source slice positions (mm).
    slice_spacing : float
        Spacing of the new slices (mm); they start at ``z[0]`` and stop at or
        before ``z[-1]``.

    Returns
    -------
    positions, source_index, source_weight, nearest_source : numpy.ndarray
        As in :class:`ResampledVolume`.
    """
    z = np.asarray(z, dtype=np.float64)
    if slice_spacing <= 0 or not math.isfinite(slice_spacing):
        raise ConfigError(f"resample: slice_spacing must be > 0 mm, got {slice_spacing}")
    if z.size == 1:
        one = np.zeros((1, 2), dtype=np.int64)
        return z.copy(), one, np.array([[1.0, 0.0]]), np.zeros(1, dtype=np.int64)
    extent = float(z[-1] - z[0])
    # 1e-6 absorbs rounding so a new slice on the last source slice is kept.
    n = math.floor(extent / slice_spacing + 1e-6) + 1
    positions = z[0] + slice_spacing * np.arange(n, dtype=np.float64)
    lo = np.clip(np.searchsorted(z, positions, side="right") - 1, 0, z.size - 2)
    hi = lo + 1
    w_hi = (positions - z[lo]) / (z[hi] - z[lo])
    w_hi = np.clip(w_hi, 0.0, 1.0)
    # A new slice on a source slice names only that one (weight 1).
    on_lo = w_hi < 1e-6
    on_hi = w_hi > 1 - 1e-6
    lo = np.where(on_hi, hi, lo)
    hi = np.where(on_lo, lo, hi)
    w_hi = np.where(on_lo | on_hi, 0.0, w_hi)
    index = np.stack([lo, hi], axis=1).astype(np.int64)
    weight = np.stack([1.0 - w_hi, w_hi], axis=1)
    nearest = np.where(w_hi > 0.5, hi, lo).astype(np.int64)
    return positions, index, weight, nearest


def _in_plane(
    hu: np.ndarray, spacing: tuple[float, float], target: float | tuple[float, float]
) -> tuple[np.ndarray, tuple[float, float]]:
    import torch
    import torch.nn.functional as F

    tr, tc = (target, target) if isinstance(target, int | float) else target
    if tr <= 0 or tc <= 0:
        raise ConfigError(f"resample: in_plane spacing must be > 0 mm, got {target}")
    rows, cols = hu.shape[1:]
    new_rows = max(round(rows * spacing[0] / tr), 1)
    new_cols = max(round(cols * spacing[1] / tc), 1)
    if (new_rows, new_cols) == (rows, cols):
        return hu, spacing
    shrink = new_rows < rows or new_cols < cols
    with torch.inference_mode():
        t = torch.from_numpy(hu).unsqueeze(1)
        out = F.interpolate(
            t, size=(new_rows, new_cols), mode="bilinear", align_corners=False, antialias=shrink
        )
    # Pixel edges stay where they were: the field of view is unchanged.
    new_spacing = (rows * spacing[0] / new_rows, cols * spacing[1] / new_cols)
    return out.squeeze(1).numpy(), new_spacing


def resample(
    volume: CTVolume,
    slice_spacing: float = 1.0,
    in_plane: float | tuple[float, float] | None = None,
) -> ResampledVolume:
    """Resample a volume to regular slices, linear along z.

    Parameters
    ----------
    volume : CTVolume
        Source volume (slices ascending along the normal).
    slice_spacing : float
        New slice spacing in mm (default 1 mm). New slices start at the first
        source slice; the last lies at or before the last source slice.
    in_plane : float or (float, float), optional
        New ``(row, column)`` pixel spacing in mm (bilinear, antialiased when
        shrinking, field of view kept); default keeps the source pixels.

    Returns
    -------
    ResampledVolume
        With ``source_index``, ``source_weight`` and ``nearest_source`` for
        every new slice.

    Raises
    ------
    ConfigError
        If a spacing is not positive.

    Notes
    -----
    Across a gap accepted with ``LoadConfig(allow_gaps=True)`` the new slices
    are interpolated from the slices on either side; ``source_index`` shows it.
    With ``in_plane`` the outer pixel edges stay put, so the first pixel's
    centre moves by half the spacing change from ``source.origin``.
    """
    positions, index, weight, nearest = resample_plan(volume.z_positions, slice_spacing)
    src = volume.hu
    out = np.empty((positions.size, *src.shape[1:]), dtype=np.float32)
    for k in range(positions.size):
        lo, hi = index[k]
        w = np.float32(weight[k, 1])
        if w == 0:
            out[k] = src[lo]
        else:
            # lerp in three in-place passes: no temporary slice.
            np.subtract(src[hi], src[lo], out=out[k])
            out[k] *= w
            out[k] += src[lo]
    spacing_rc = (volume.spacing[1], volume.spacing[2])
    if in_plane is not None:
        out, spacing_rc = _in_plane(out, spacing_rc, in_plane)
    return ResampledVolume(
        hu=out,
        spacing=(float(slice_spacing), float(spacing_rc[0]), float(spacing_rc[1])),
        z_positions=positions,
        source_index=index,
        source_weight=weight,
        nearest_source=nearest,
        source=volume,
    )
