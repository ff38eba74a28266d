"""The DICOM outputs built on the three real GE chest CT series (skipped when absent).

Real headers carry what synthetic ones lack (private tags, vendor quirks,
other transfer syntaxes); the KOS, SR and SC made from them must still be
valid and reference only the source series.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pydicom
import pytest

from lungslice.report import OutputOptions, write_all
from tests.report.synthetic import synthetic_prediction

REALCT = Path(__file__).resolve().parents[2] / ".." / "shared" / "realct"
NAMES = ("chest-ct-gemed-lung-2p5mm", "chest-ct-ge-pe-0p8mm", "chest-ct-ge-petct-4mm")

pytestmark = [
    pytest.mark.realct,
    pytest.mark.slow,
    pytest.mark.skipif(not REALCT.is_dir(), reason=f"{REALCT} is absent"),
]


@pytest.mark.parametrize("name", NAMES)
def test_dicom_outputs_on_real_headers(tmp_path: Path, name: str) -> None:
    with tarfile.open(REALCT / f"{name}.tar.xz") as tar:
        tar.extractall(tmp_path, filter="data")
    pred = synthetic_prediction(tmp_path / name, out_of_domain=True)
    options = OutputOptions(report=False)
    paths = write_all(pred, tmp_path / "out", options)
    assert [p.name for p in paths] == [
        "key_images.dcm",
        "findings_sr.dcm",
        "summary_sc.dcm",
        "result.json",
    ]
    sources = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        for p in pred.source_files.values()
    }
    for path in paths[:-1]:
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == pred.series.study_uid
        assert ds.SeriesDescription.startswith("lungslice ")
        refs = {
            str(inst.ReferencedSOPInstanceUID)
            for study in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
            for s in study.ReferencedSeriesSequence
            for inst in s.ReferencedSOPSequence
        } | {str(r.ReferencedSOPInstanceUID) for r in ds.get("SourceImageSequence", [])}
        assert refs and refs <= sources, path
        if shutil.which("dciodvfy"):
            run = subprocess.run(
                ["dciodvfy", str(path)], capture_output=True, text=True, timeout=60, check=False
            )
            assert "Error" not in run.stdout + run.stderr, (path, run.stderr)
