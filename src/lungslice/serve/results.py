"""lungslice's DICOM results for one study, made ready to store back into that study.

``predict`` writes its DICOM outputs (key images, and the SR and Secondary
Capture where the report writers make them) as ``*.dcm`` files. Before they
are stored, :func:`stamp_results` gives each of them

- the SeriesDescription ``lungslice <kind> <model-id12>``, which is how the
  service recognises a study it has already processed with this model;
- SeriesInstanceUID and SOPInstanceUID derived from (StudyInstanceUID, model
  id, output name), so storing the results of the same study twice (after a
  worker was killed between two uploads) lands on the same instances instead
  of adding a second set. References between the outputs follow the new UIDs.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lungslice.errors import ConfigError, LungsliceError

__all__ = [
    "SERIES_PREFIX",
    "ResultObject",
    "is_result_series",
    "model_id",
    "stamp_results",
]

#: Every series lungslice stores starts its SeriesDescription with this.
SERIES_PREFIX = "lungslice "

#: What a result object is called in its SeriesDescription, by Modality.
_KIND_BY_MODALITY = {"KO": "key images", "SR": "findings", "OT": "summary", "SC": "summary"}


def model_id(model: str | Path) -> str:
    """The identity of a model bundle: SHA-256 of its ``model.json``.

    Raises
    ------
    ConfigError
        If the folder holds no ``model.json``.
    """
    manifest = Path(model) / "model.json"
    try:
        return hashlib.sha256(manifest.read_bytes()).hexdigest()
    except OSError:
        raise ConfigError(
            f"--model {model}: no readable model.json; expected a bundle folder written by "
            "`lungslice train` or `lungslice candidates train`."
        ) from None


def is_result_series(description: str | None, model: str | None = None) -> bool:
    """Whether a SeriesDescription names a lungslice result (of ``model``'s 12-char id)."""
    words = str(description or "").split()
    if len(words) < 3 or f"{words[0]} " != SERIES_PREFIX:
        return False
    tail = words[-1]
    if len(tail) != 12 or any(c not in "0123456789abcdef" for c in tail):
        return False  # e.g. the phantom's own CT series, 'lungslice phantom'
    return model is None or tail == model[:12]


@dataclass(frozen=True)
class ResultObject:
    """One DICOM result ready to store."""

    name: str
    kind: str
    modality: str
    series_uid: str
    sop_instance_uid: str
    data: bytes


def _derived_uid(*parts: str) -> str:
    return str(generate_uid(entropy_srcs=list(parts)))


def _replace_uids(ds: Dataset, mapping: dict[str, str]) -> None:
    for elem in ds.iterall():
        if elem.VR != "UI" or elem.value is None:
            continue
        if isinstance(elem.value, str) and elem.value in mapping:
            elem.value = mapping[elem.value]


def stamp_results(files: list[Path], root: Path, study_uid: str, model: str) -> list[ResultObject]:
    """Read ``files`` (under ``root``) and stamp them for storing into ``study_uid``.

    Parameters
    ----------
    files : list of Path
        The DICOM files predict wrote.
    root : Path
        Their output folder; a file's path relative to it names the output.
    study_uid : str
        StudyInstanceUID of the study they belong to.
    model : str
        The model id (:func:`model_id`).

    Raises
    ------
    LungsliceError
        If an output does not belong to ``study_uid`` (it would land in another study).
    """
    datasets = []
    mapping: dict[str, str] = {}
    for path in sorted(files):
        ds = pydicom.dcmread(path)
        name = path.relative_to(root).as_posix()
        if str(ds.StudyInstanceUID) != study_uid:
            raise LungsliceError(
                f"{name}: StudyInstanceUID {ds.StudyInstanceUID} is not the study's {study_uid}; "
                "storing it would put lungslice's results into another study"
            )
        mapping[str(ds.SOPInstanceUID)] = _derived_uid(study_uid, model, name, "instance")
        mapping[str(ds.SeriesInstanceUID)] = _derived_uid(study_uid, model, name, "series")
        datasets.append((name, ds))
    objects = []
    for name, ds in datasets:
        modality = str(ds.get("Modality", ""))
        described = str(ds.get("SeriesDescription", ""))
        if is_result_series(described, model):
            kind = " ".join(described.split()[1:-1])
        else:
            kind = _KIND_BY_MODALITY.get(modality, modality.lower() or "result")
            ds.SeriesDescription = f"{SERIES_PREFIX}{kind} {model[:12]}"
        _replace_uids(ds, mapping)
        if getattr(ds, "file_meta", None) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        objects.append(
            ResultObject(
                name=name,
                kind=kind,
                modality=modality,
                series_uid=str(ds.SeriesInstanceUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                data=buffer.getvalue(),
            )
        )
    return objects
