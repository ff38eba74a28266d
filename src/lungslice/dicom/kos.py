"""DICOM Key Object Selection (KOS) documents that point a PACS at the slices to read.

A KOS (``key_images.dcm``) lives in the study it references; PACS viewers
show the referenced images as the study's key images. lungslice writes one per
prediction with highdicom, following TID 2010: a coded document title, a
device observer naming lungslice, a Key Object Description text that lists one
note per referenced image (TID 2010 allows a single description, so the
per-image notes are its lines, in the order of the references), and one IMAGE
reference per recommended slice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from lungslice.errors import DicomReadError, LungsliceError

__all__ = ["evidence_copy", "read_key_images", "write_key_images"]

log = logging.getLogger(__name__)

#: Attributes blanked in the evidence copied into the document unless the
#: caller asks to keep them (they would otherwise be copied from the images).
_PHI_ATTRIBUTES = ("PatientName", "PatientBirthDate", "PatientSex")


#: Type 2 attributes highdicom copies from the evidence; real images may lack them.
_TYPE2_COPIED = (
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)


def evidence_copy(ds: Dataset, keep_phi: bool = False) -> Dataset:
    """A copy of a source image header to build a derived object from.

    Type 2 patient/study attributes a real image may lack are added empty, and
    PatientName, PatientBirthDate and PatientSex are blanked unless ``keep_phi``
    (PatientID and the study identity are kept so a PACS files the derived
    object with its study).
    """
    ev = deepcopy(ds)
    for keyword in _TYPE2_COPIED:
        if keyword not in ev:
            setattr(ev, keyword, "")
    if not keep_phi:
        for keyword in _PHI_ATTRIBUTES:
            if keyword in ev:
                setattr(ev, keyword, "")
    return ev


def write_key_images(
    out_path: str | Path,
    images: Sequence[Dataset | str | Path],
    notes: Sequence[str],
    *,
    title: str = "lungslice: slices to read first",
    series_number: int = 9901,
    keep_patient_name: bool = False,
    software_version: str = "",
    series_description: str = "lungslice key images",
    model_id: str = "",
) -> Path:
    """Write a Key Object Selection document referencing ``images``.

    Parameters
    ----------
    out_path : str or Path
        Where to write the ``.dcm`` file.
    images : sequence of Dataset or path
        The referenced original images (headers suffice), in recommendation order.
        All must belong to one study.
    notes : sequence of str
        One short text per image (e.g. its scores); written as lines of the
        Key Object Description.
    title : str
        First line of the description (the coded document title is
        "Of Interest", DCM 113000, from CID 7010).
    series_number : int
        SeriesNumber of the new KO series.
    keep_patient_name : bool
        Copy PatientName, PatientBirthDate and PatientSex from the images
        (default: left empty; PatientID and the study identity are always kept
        so the PACS files the document with its study).
    software_version : str
        Recorded in the observer context's device name.
    series_description : str
        SeriesDescription of the new KO series.
    model_id : str
        Id of the model bundle that chose the images: part of what the new
        UIDs are derived from, so another model's document gets other UIDs.

    Returns
    -------
    Path
        The written file.
    """
    if len(images) == 0:
        raise LungsliceError(
            "no images to reference: a key-object document needs at least one recommended slice"
        )
    if len(notes) != len(images):
        raise LungsliceError(f"got {len(images)} images but {len(notes)} notes; expected one each")
    datasets: list[Dataset] = []
    for item in images:
        if isinstance(item, Dataset):
            datasets.append(item)
        else:
            try:
                datasets.append(pydicom.dcmread(item, stop_before_pixels=True))
            except Exception as exc:  # pydicom raises many types for bad files
                raise DicomReadError(f"cannot read referenced image {item}: {exc}") from exc
    studies = {str(ds.StudyInstanceUID) for ds in datasets}
    if len(studies) != 1:
        raise LungsliceError(
            f"referenced images span {len(studies)} studies ({', '.join(sorted(studies))}); "
            "a key-object document belongs to exactly one study"
        )
    evidence = [evidence_copy(ds, keep_patient_name) for ds in datasets]
    description = "\n".join(
        [title]
        + [
            f"{i + 1}. Instance {ds.get('InstanceNumber', '?')}: {note}"
            for i, (ds, note) in enumerate(zip(datasets, notes, strict=True))
        ]
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["lungslice", software_version]),
            name=f"lungslice {software_version}".strip(),
            manufacturer_name="lungslice",
        ),
    )
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest,
        referenced_objects=evidence,
        observer_device_context=observer,
        description=description,
    )
    # Same study, same references, same notes -> the same UIDs: re-running does not
    # file a second, different document under a new identity.
    entropy = [next(iter(studies)), *(str(ds.SOPInstanceUID) for ds in datasets), *notes]
    if model_id:
        entropy.append(model_id)
    document = hd.ko.KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=generate_uid(entropy_srcs=["series", *entropy]),
        series_number=series_number,
        sop_instance_uid=generate_uid(entropy_srcs=["instance", *entropy]),
        instance_number=1,
        manufacturer="lungslice",
    )
    document.SeriesDescription = series_description
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    document.save_as(out, enforce_file_format=True)
    log.info("wrote key-object document with %d references to %s", len(datasets), out)
    return out


def read_key_images(path: str | Path) -> tuple[list[str], list[str]]:
    """Read back a lungslice KOS: the referenced SOPInstanceUIDs and the per-image notes.

    Returns
    -------
    tuple of (list of str, list of str)
        Referenced SOPInstanceUIDs in document order, and the description lines
        after the title.
    """
    ds = pydicom.dcmread(path)
    if ds.SOPClassUID != "1.2.840.10008.5.1.4.1.1.88.59":
        raise DicomReadError(
            f"{path} is not a Key Object Selection document "
            f"(SOPClassUID {ds.SOPClassUID}, expected 1.2.840.10008.5.1.4.1.1.88.59)"
        )
    uids: list[str] = []
    lines: list[str] = []
    for item in ds.ContentSequence:
        if item.ValueType == "IMAGE":
            uids.append(str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        elif item.ValueType == "TEXT":
            lines = str(item.TextValue).split("\n")[1:]
    return uids, lines
