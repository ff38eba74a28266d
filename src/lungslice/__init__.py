"""lungslice: chest CT slice triage with transfer-learned slice features.

The top-level API is small: :func:`predict` (a study -> ``result.json`` records).
Everything else lives in the stage modules (``lungslice.dicom``, ``lungslice.lidc``,
``lungslice.phantom``, ``lungslice.features``, ``lungslice.model``,
``lungslice.prediction``, ``lungslice.report``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["predict"]

if TYPE_CHECKING:
    from lungslice.prediction import predict


def __getattr__(name: str) -> Any:
    # Lazy: importing lungslice must not import torch.
    if name == "predict":
        from lungslice.prediction import predict

        return predict
    raise AttributeError(f"module 'lungslice' has no attribute {name!r}")
