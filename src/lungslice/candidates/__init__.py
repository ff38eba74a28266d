"""Nodule candidates: a classical lung field mask and a 3-D blob detector.

``lung_field(hu, spacing)`` masks the lungs (juxtapleural nodules included);
``detect_candidates(hu, spacing, lung)`` proposes nodule candidates (centre,
radius, score) with a multi-scale Hessian blob filter. Both need only NumPy,
SciPy and pandas (no torch on import).
"""

from __future__ import annotations

from lungslice.candidates.detect import CANDIDATE_COLUMNS, DetectorConfig, detect_candidates
from lungslice.candidates.lungfield import LungFieldConfig, lung_field, lung_slices

__all__ = [
    "CANDIDATE_COLUMNS",
    "DetectorConfig",
    "LungFieldConfig",
    "detect_candidates",
    "lung_field",
    "lung_slices",
]
