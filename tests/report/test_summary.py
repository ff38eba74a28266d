"""The summary Secondary Capture: readable, in the source study, honest about the domain."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lungslice.report.summary import render_summary, write_summary_sc
from tests.report.synthetic import MODEL_ID, MakePrediction

_RED = np.array([255, 90, 70])


def test_summary_sc_is_readable_and_filed_with_its_study(
    make_prediction: MakePrediction, tmp_path: Path
) -> None:
    pred = make_prediction()
    out = write_summary_sc(pred, tmp_path / "summary_sc.dcm")
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert ds.pixel_array.shape == (512, 960, 3) and ds.PhotometricInterpretation == "RGB"
    np.testing.assert_array_equal(ds.pixel_array, render_summary(pred))
    key = pred.recommendations[0].sop_instance_uid
    src = pydicom.dcmread(pred.source_files[key], stop_before_pixels=True)
    assert ds.StudyInstanceUID == src.StudyInstanceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.SeriesDescription == f"lungslice summary {MODEL_ID}"
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == key
    assert "research use only" in ds.ImageComments
    assert ds.BurnedInAnnotation == "NO"
    assert b"Doe^Jane" not in out.read_bytes() and b"19450203" not in out.read_bytes()


def test_summary_shows_the_domain_warning_only_when_the_guard_fired(
    make_prediction: MakePrediction,
) -> None:
    def red_pixels(image: np.ndarray) -> int:
        return int(np.all(image == _RED, axis=-1).sum())

    assert red_pixels(render_summary(make_prediction())) == 0
    assert red_pixels(render_summary(make_prediction(out_of_domain=True))) > 50


def test_summary_circles_the_key_finding(make_prediction: MakePrediction) -> None:
    pred = make_prediction(top_k=1)
    image = render_summary(pred)
    f = pred.findings[0]
    assert f.row is not None and f.column is not None
    scale = 512 / 32
    amber = np.all(image[:, :512] == (255, 200, 0), axis=-1)
    rows, cols = np.nonzero(amber[: 512 - 30])  # above the caption line
    assert rows.size > 0
    # the circle's centre (mean of its outline) lies on the finding
    assert rows.mean() == pytest.approx((f.row + 0.5) * scale, abs=12)
    assert cols.mean() == pytest.approx((f.column + 0.5) * scale, abs=25)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) absent")
def test_dciodvfy_finds_no_error(make_prediction: MakePrediction, tmp_path: Path) -> None:
    out = write_summary_sc(make_prediction(), tmp_path / "sc.dcm")
    run = subprocess.run(
        ["dciodvfy", str(out)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "Error" not in run.stdout + run.stderr, run.stdout + run.stderr
