"""The detector on a real scanner's noise and anatomy (skipped when ../shared/realct is absent).

``chest-ct-gemed-lung-2p5mm`` (GE, LUNG kernel, 2.5 mm) shows a solid lesion
of about 15 mm in the left upper lobe, at patient position x 94, y -2,
z -110 mm (read off the images: the series carries no labels). A sharp
kernel's noise and the chest wall make hundreds of small blobs; the lesion
must still be among the detector's first candidates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lungslice.candidates.detect import detect_candidates
from lungslice.candidates.lungfield import lung_field
from lungslice.dicom.resample import resample
from lungslice.dicom.volume import load_series
from tests.helpers import REALCT, unpack_realct

LESION_MM = np.array([94.0, -2.0, -110.0])  # x, y, z (patient, LPS)


@pytest.mark.realct
@pytest.mark.slow
@pytest.mark.skipif(not REALCT.is_dir(), reason=f"{REALCT} is absent")
def test_detector_ranks_the_real_lesion_among_its_first_candidates(tmp_path: Path) -> None:
    series = unpack_realct("chest-ct-gemed-lung-2p5mm", tmp_path)
    rs = resample(load_series(series), slice_spacing=1.0)
    lung = lung_field(rs.hu, rs.spacing)
    found = detect_candidates(rs.hu, rs.spacing, lung)
    assert 0 < len(found) <= 500
    # voxel -> patient mm through the volume's geometry (axial: rows along y, columns along x)
    src = rs.source
    origin = np.asarray(src.origin, dtype=np.float64)
    row_dir = np.asarray(src.orientation[:3])  # along a row: column index grows
    col_dir = np.asarray(src.orientation[3:])  # along a column: row index grows
    z = np.interp(found["z"].to_numpy(), np.arange(rs.n_slices), np.asarray(rs.z_positions))
    xy = (
        origin[None, :2]
        + found["col"].to_numpy()[:, None] * rs.spacing[2] * row_dir[None, :2]
        + found["row"].to_numpy()[:, None] * rs.spacing[1] * col_dir[None, :2]
    )
    pos = np.c_[xy, z]
    dist = np.linalg.norm(pos - LESION_MM, axis=1)
    hits = np.flatnonzero(dist <= 10.0)
    assert hits.size, f"no candidate within 10 mm of the lesion; nearest {dist.min():.1f} mm"
    assert hits[0] < 5, f"the lesion's best candidate ranks {hits[0] + 1} of {len(found)}"
    assert found["radius_mm"].iloc[hits[0]] >= 4.0
