"""CTVolume: a CT series as a Hounsfield-unit array with its geometry and identity.

(The loader, ``load_series``, lives here too once implemented.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CTVolume"]


@dataclass(frozen=True, eq=False)
class CTVolume:
    """A CT series stacked along its slice normal, in Hounsfield units.

    Attributes
    ----------
    hu : numpy.ndarray
        ``(n_slices, rows, columns)`` float32 HU, slices in ascending position
        along the slice normal; padding / out-of-field pixels set to air (-1000).
    spacing : tuple of float
        ``(slice, row, column)`` spacing in mm; slice spacing is the median of
        the measured position differences.
    z_positions : numpy.ndarray
        ``(n_slices,)`` float64 position of each slice along the slice normal (mm);
        for an axial series this is ImagePositionPatient z.
    sop_instance_uids : tuple of str
        SOPInstanceUID of each slice (same order as ``hu``).
    instance_numbers : tuple of int or None
        InstanceNumber of each slice (None where absent).
    series_uid, study_uid, patient_id : str
        Identity of the series.
    origin : tuple of float
        ImagePositionPatient (x, y, z) of the first slice.
    orientation : tuple of float
        ImageOrientationPatient (6 direction cosines).
    info : dict
        Other header facts (modality, manufacturer, kernel, slice thickness,
        transfer syntax, rescale) and records of what loading decided (e.g. which
        duplicate slices were dropped and why).
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]
    z_positions: np.ndarray
    sop_instance_uids: tuple[str, ...]
    instance_numbers: tuple[int | None, ...]
    series_uid: str
    study_uid: str
    patient_id: str
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        """Number of slices."""
        return int(self.hu.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, columns)``."""
        s = self.hu.shape
        return (int(s[0]), int(s[1]), int(s[2]))
