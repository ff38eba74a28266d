"""Resampling along z to regular slices, with provenance back to the source slices.

(``resample(volume, slice_spacing=1.0)`` lives here too once implemented.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lungslice.dicom.volume import CTVolume

__all__ = ["ResampledVolume"]


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
