"""lungslice: chest CT slice triage with transfer-learned slice features.

The main verbs, one per step of the data flow::

    import lungslice

    index = lungslice.index_tree("LIDC-IDRI")                  # every file accounted for
    volume = lungslice.load_series(index, series_uid=uid)      # HU, geometry, SOP UIDs
    resampled = lungslice.resample(volume)                     # 1 mm slices, provenance
    slices, nodules = lungslice.label_scans(scans)             # LIDC labels per slice
    lungslice.extract_dataset("LIDC-IDRI", "work")             # resumable feature cache
    lungslice.train_model("work", "labels", "model")           # model bundle
    lungslice.evaluate("work", "labels", "evaluation")         # patient-grouped CV
    records = lungslice.predict("study", "model")              # result.json records
    predictor = lungslice.Predictor("model")                   # load once, predict many

Everything else lives in the stage modules (``lungslice.dicom``, ``lungslice.lidc``,
``lungslice.phantom``, ``lungslice.features``, ``lungslice.model``,
``lungslice.prediction``, ``lungslice.report``). The verbs load lazily:
``import lungslice`` imports neither torch nor pandas.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "Predictor",
    "__version__",
    "evaluate",
    "extract_dataset",
    "index_tree",
    "label_scans",
    "load_series",
    "predict",
    "resample",
    "train_model",
]

#: Public name -> module that defines it.
_VERBS: dict[str, str] = {
    "index_tree": "lungslice.dicom.discover",
    "load_series": "lungslice.dicom.volume",
    "resample": "lungslice.dicom.resample",
    "label_scans": "lungslice.lidc.labels",
    "extract_dataset": "lungslice.features.extract",
    "train_model": "lungslice.model.train",
    "evaluate": "lungslice.model.evaluate",
    "Predictor": "lungslice.prediction",
    "predict": "lungslice.prediction",
}

if TYPE_CHECKING:
    from lungslice.dicom.discover import index_tree
    from lungslice.dicom.resample import resample
    from lungslice.dicom.volume import load_series
    from lungslice.features.extract import extract_dataset
    from lungslice.lidc.labels import label_scans
    from lungslice.model.evaluate import evaluate
    from lungslice.model.train import train_model
    from lungslice.prediction import Predictor, predict

    __version__: str


def _version() -> str:
    # importlib.metadata costs ~50-100 ms to import: only when asked (start-up of the CLI).
    from importlib import metadata

    try:
        return metadata.version("lungslice")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    # Lazy: importing lungslice must not import torch.
    if name == "__version__":
        globals()[name] = version = _version()
        return version
    module = _VERBS.get(name)
    if module is None:
        raise AttributeError(f"module 'lungslice' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
