"""Outputs of a prediction, each a writer built from a :class:`lungslice.study.StudyPrediction`.

``result.json`` (:mod:`.result_json`), ``report.html`` (:mod:`.html`), the Key
Object Selection (:mod:`.kos`), the findings SR (:mod:`.sr`) and the summary
Secondary Capture (:mod:`.summary`); :func:`write_all` writes them all.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OutputOptions", "write_all", "write_outputs"]


def __getattr__(name: str) -> Any:
    # lazily: importing lungslice.report.cam must not load highdicom and matplotlib
    if name in __all__:
        from lungslice.report import writers

        return getattr(writers, name)
    raise AttributeError(f"module 'lungslice.report' has no attribute {name!r}")
