"""The HTML report: self-contained, shows what it should, hides what it must."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import numpy as np

from lungslice.report.figures import slice_png, window, z_profile_png
from lungslice.report.html import render_report


def _result() -> dict[str, Any]:
    return {
        "study": {
            "patient_id": "LIDC-IDRI-0042",
            "study_uid": "1.2.3",
            "series_uid": "1.2.3.4",
            "n_original_slices": 10,
            "n_resampled_slices": 25,
            "slice_spacing_mm": 1.0,
        },
        "scores": {"p_malignant": 0.81, "p_any_nodule": 0.93, "method": "noisy_or"},
        "candidates": [
            {
                "id": 1,
                "z_min": -10.0,
                "z_max": -4.0,
                "peak_z": -7.0,
                "max_p_malignant": 0.8,
                "mean_p_malignant": 0.6,
                "max_p_benign": 0.1,
            }
        ],
        "recommendations": [
            {
                "rank": 1,
                "z_mm": -7.0,
                "instance_number": 4,
                "sop_instance_uid": "1.2.3.4.5",
                "p_malignant": 0.8,
                "p_benign": 0.1,
                "candidate": 1,
            }
        ],
        "model": {"backbone": "efficientnet_lite0"},
    }


def test_report_is_self_contained_and_complete(tmp_path: Path) -> None:
    hu = np.full((32, 32), -850.0)
    hu[10:16, 10:16] = 30.0
    heat = np.zeros((4, 4))
    heat[1, 1] = 1.0
    z = np.linspace(-20, 4, 25)
    pm = np.exp(-((z + 7) ** 2) / 8)
    out = render_report(
        _result(),
        z_profile_png(z, pm, 0.2 * pm, _result()["candidates"], [-7.0]),
        [(slice_png(hu), slice_png(hu, heat))],
        tmp_path / "report.html",
    )
    text = out.read_text()
    assert 'src="http' not in text and "<script" not in text  # nothing fetched
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 3
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG")
    assert "LIDC-IDRI-0042" in text and "0.81" in text and "InstanceNumber 4" in text
    hidden = render_report(
        _result(), b"", [(b"", b"")], tmp_path / "r2.html", hide_patient_id=True
    ).read_text()
    assert "LIDC-IDRI-0042" not in hidden


def test_window_maps_lung_window_to_bytes() -> None:
    got = window(np.array([-2000.0, -1000.0, -300.0, 400.0, 3000.0]))
    assert got.tolist() == [0, 0, 127, 255, 255]
