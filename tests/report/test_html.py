"""The HTML report: self-contained, shows what it should, hides what it must."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest

from lungslice.report.figures import slice_png, window, z_profile_png
from lungslice.report.html import render_report, write_report
from tests.report.synthetic import MODEL_ID, MakePrediction


def test_report_is_self_contained_and_complete(
    make_prediction: MakePrediction, tmp_path: Path
) -> None:
    pred = make_prediction(top_k=1)
    hu = np.full((32, 32), -850.0)
    hu[10:16, 10:16] = 30.0
    heat = np.zeros((4, 4))
    heat[1, 1] = 1.0
    z = np.linspace(-20, 4, 25)
    pm = np.exp(-((z + 7) ** 2) / 8)
    out = render_report(
        pred,
        z_profile_png(z, pm, 0.2 * pm, [{"z_min": -10.0, "z_max": -4.0}], [-7.0]),
        [(slice_png(hu), slice_png(hu, heat))],
        tmp_path / "report.html",
    )
    text = out.read_text()
    assert 'src="http' not in text and "<script" not in text  # nothing fetched
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 3
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG")
    rec = pred.recommendations[0]
    assert pred.series.patient_id in text and "0.78" in text  # p(malignant nodule)
    assert f"InstanceNumber {rec.instance_number}" in text and rec.sop_instance_uid in text
    assert "finding at row 12, column 20" in text and MODEL_ID in text
    assert "Outside the training domain" not in text
    hidden = render_report(
        pred, b"", [(b"", b"")], tmp_path / "r2.html", hide_patient_id=True
    ).read_text()
    assert pred.series.patient_id not in hidden
    with pytest.raises(ValueError, match="1 recommendations but 0 thumbnails"):
        render_report(pred, b"", [], tmp_path / "r3.html")


def test_report_shows_the_domain_warning(make_prediction: MakePrediction, tmp_path: Path) -> None:
    pred = make_prediction(top_k=1, out_of_domain=True)
    text = render_report(pred, b"", [(b"", b"")], tmp_path / "r.html").read_text()
    assert "<div class='ood'><b>Outside the training domain</b>" in text
    assert "Domain score 9.500 above the threshold 4.000" in text


def test_write_report_draws_both_bundle_kinds(
    make_prediction: MakePrediction, tmp_path: Path
) -> None:
    for located in (True, False):
        pred = make_prediction(located=located, top_k=2)
        text = write_report(pred, tmp_path / f"{located}.html").read_text()
        assert text.count("data:image/png;base64,") == 1 + 2 * 2
        assert ("a 48 mm crop" in text) is located
        assert ("max_p_malignant" in text) is not located


def test_window_maps_lung_window_to_bytes() -> None:
    got = window(np.array([-2000.0, -1000.0, -300.0, 400.0, 3000.0]))
    assert got.tolist() == [0, 0, 127, 255, 255]
