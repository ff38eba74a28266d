"""Progress reporting without output: the library calls back, the CLI draws.

Library functions that run long accept ``progress: ProgressCallback | None``
and call it as ``progress(done, total, label)``; they never print.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["ProgressCallback", "report"]


class ProgressCallback(Protocol):
    """Called with the units done so far, the total and a short label."""

    def __call__(self, done: int, total: int, label: str = "") -> None: ...


def report(progress: ProgressCallback | None, done: int, total: int, label: str = "") -> None:
    """Call ``progress`` if one was given."""
    if progress is not None:
        progress(done, total, label)
