"""Key Object Selection documents: valid, re-readable, referencing only real input images."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from lungslice.dicom.kos import read_key_images, write_key_images
from lungslice.errors import DicomReadError, LungsliceError
from lungslice.testing import write_ct_series


def test_kos_references_exist_in_input_and_carry_notes(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", n_slices=6, PatientName="Doe^Jane")
    chosen = [paths[4], paths[1]]
    out = write_key_images(tmp_path / "key_images.dcm", chosen, ["p(mal) 0.91", "p(mal) 0.40"])

    uids, notes = read_key_images(out)
    inputs = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
    assert set(uids) <= inputs
    assert uids == [str(pydicom.dcmread(p).SOPInstanceUID) for p in chosen]
    assert notes[0].endswith("p(mal) 0.91") and notes[1].endswith("p(mal) 0.40")

    ds = pydicom.dcmread(out)
    ref = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert ds.Modality == "KO"
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.59"
    assert ds.StudyInstanceUID == ref.StudyInstanceUID
    assert ds.PatientID == ref.PatientID
    assert ds.ConceptNameCodeSequence[0].CodeValue == "113000"  # "Of Interest"
    # Every referenced image is listed in the evidence sequence, as the standard requires.
    evidence = {
        str(inst.ReferencedSOPInstanceUID)
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for inst in series.ReferencedSOPSequence
    }
    assert evidence == set(uids)
    assert b"Doe^Jane" not in out.read_bytes()


def test_kos_keeps_patient_name_only_when_asked(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", n_slices=2, PatientName="Doe^Jane")
    out = write_key_images(tmp_path / "k.dcm", paths[:1], ["x"], keep_patient_name=True)
    assert str(pydicom.dcmread(out).PatientName) == "Doe^Jane"


def test_kos_is_deterministic(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", n_slices=3)
    a = pydicom.dcmread(write_key_images(tmp_path / "a.dcm", paths[:2], ["1", "2"]))
    b = pydicom.dcmread(write_key_images(tmp_path / "b.dcm", paths[:2], ["1", "2"]))
    assert a.SOPInstanceUID == b.SOPInstanceUID


def test_kos_rejects_bad_input(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", n_slices=2)
    with pytest.raises(LungsliceError, match="needs at least one recommended slice"):
        write_key_images(tmp_path / "k.dcm", [], [])
    with pytest.raises(LungsliceError, match="got 2 images but 1 notes"):
        write_key_images(tmp_path / "k.dcm", paths, ["x"])
    other = write_ct_series(tmp_path / "other", n_slices=1, seed=7, patient_id="TEST-0002")
    with pytest.raises(LungsliceError, match="span 2 studies"):
        write_key_images(tmp_path / "k.dcm", [paths[0], other[0]], ["a", "b"])
    with pytest.raises(DicomReadError, match="is not a Key Object Selection document"):
        read_key_images(paths[0])
