"""The one exception hierarchy of lungslice.

Every error says what went wrong, where (file, SOPInstanceUID, tag), what was
expected and what was found, and how to fix it or opt out. Catch
:class:`LungsliceError` to handle all of them.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AnnotationError",
    "BundleMismatchError",
    "ConfigError",
    "CorruptFileError",
    "CoverageError",
    "DicomReadError",
    "FeatureError",
    "Fix",
    "HounsfieldError",
    "LungsliceError",
    "NoCTSeriesError",
    "NotChestError",
    "OutputBusyError",
    "OutputLocationError",
    "SeriesGeometryError",
    "UnsupportedTransferSyntaxError",
    "WeightsUnavailableError",
    "render_error",
]


class LungsliceError(Exception):
    """Base class of every error lungslice raises on purpose."""


class ConfigError(LungsliceError, ValueError):
    """A configuration value is invalid."""


class DicomReadError(LungsliceError):
    """A file could not be read as the DICOM object it was expected to be."""


class UnsupportedTransferSyntaxError(DicomReadError):
    """Pixel data is encoded with a transfer syntax no installed decoder handles."""


class SeriesGeometryError(LungsliceError):
    """A series cannot be stacked into a volume (gaps, duplicates, tilt, mixed geometry)."""


class NoCTSeriesError(LungsliceError):
    """A folder holds no usable CT series."""


class NotChestError(LungsliceError, ValueError):
    """A volume has no lung field on any slice: not a chest CT, or not in HU."""


class AnnotationError(LungsliceError):
    """LIDC annotations (database or XML) are missing or malformed."""


class FeatureError(LungsliceError):
    """Feature extraction or the feature cache failed."""


class WeightsUnavailableError(FeatureError):
    """Pretrained weights for a backbone cannot be found on this machine."""


class BundleMismatchError(LungsliceError):
    """A model bundle does not match the features or settings it is used with."""


# --------------------------------------------------------------------------- remedies

#: CLI spelling of settings whose flag is not ``--`` + the name in kebab case.
_FLAG_NAMES: dict[str, str] = {"min_coverage_mm": "--min-coverage"}


@dataclass(frozen=True)
class Fix:
    """A remedy expressed as settings, so each interface can phrase it its own way.

    A Python user reads ``LoadConfig(allow_gaps=True)``; a command-line user
    reads ``--allow-gaps``. Errors that carry a :class:`Fix` put
    :meth:`python` into their message; the CLI swaps it for :meth:`cli`.

    Attributes
    ----------
    settings : tuple of (str, object)
        Field names and the values that opt out (``(("allow_gaps", True),)``).
    owner : str
        The configuration class the fields belong to (e.g. ``"LoadConfig"``);
        ``""`` for plain keyword arguments of the called function.
    """

    settings: tuple[tuple[str, Any], ...]
    owner: str = "LoadConfig"

    @classmethod
    def of(cls, owner: str = "LoadConfig", **settings: Any) -> Fix:
        """``Fix.of(allow_gaps=True)``: a remedy from keyword arguments."""
        return cls(tuple(settings.items()), owner)

    def python(self) -> str:
        """The remedy for Python: ``LoadConfig(allow_gaps=True)`` or ``series_uid='1.2'``."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings)
        return f"{self.owner}({args})" if self.owner else args

    def cli(self, flags: Mapping[str, str] | None = None) -> str:
        """The remedy for the command line: ``--allow-gaps``, ``--tilt correct``.

        Parameters
        ----------
        flags : mapping, optional
            Setting name -> flag, where a command spells a flag differently.
        """
        names = {**_FLAG_NAMES, **(flags or {})}
        parts = []
        for key, value in self.settings:
            flag = names.get(key, "--" + key.replace("_", "-"))
            if value is True:
                parts.append(flag)
            elif value is False:
                parts.append("--no-" + flag.removeprefix("--"))
            else:
                parts.append(f"{flag} {value}")
        return " ".join(parts)


_LOADCONFIG_CALL = re.compile(r"(?:pass )?LoadConfig\(([^()]*)\)")


def phrase_for_cli(text: str) -> str:
    """Rewrite ``LoadConfig(allow_gaps=True)`` remedies in ``text`` as CLI flags.

    For messages recorded as text (e.g. ``series.parquet`` reasons) that no
    longer carry their :class:`Fix`.
    """

    def flags(match: re.Match[str]) -> str:
        settings = []
        for part in match.group(1).split(","):
            key, _, value = part.partition("=")
            try:
                parsed = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                return match.group(0)
            settings.append((key.strip(), parsed))
        prefix = "add " if match.group(0).startswith("pass ") else ""
        return prefix + Fix(tuple(settings)).cli()

    return _LOADCONFIG_CALL.sub(flags, text)


def render_error(error: BaseException, interface: str = "python") -> str:
    """The message of ``error`` with its remedy phrased for ``interface``.

    Parameters
    ----------
    error : BaseException
        Any exception; one with a ``fix`` attribute (:class:`Fix`) has its
        remedy rewritten.
    interface : {"python", "cli"}
        Who reads the message.
    """
    text = str(error)
    fix = getattr(error, "fix", None)
    if interface == "cli" and isinstance(fix, Fix):
        text = text.replace(f"pass {fix.python()}", f"add {fix.cli()}")
        text = text.replace(fix.python(), fix.cli())
    if interface == "cli":
        text = phrase_for_cli(text)
    return text


class HounsfieldError(LungsliceError):
    """Pixel values cannot be trusted as Hounsfield units (no rescale, implausible HU)."""

    def __init__(self, message: str, fix: Fix | None = None) -> None:
        super().__init__(message)
        self.fix = fix

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.fix))


class CoverageError(LungsliceError):
    """A series covers too little of the body along z for the task."""

    def __init__(self, message: str, fix: Fix | None = None) -> None:
        super().__init__(message)
        self.fix = fix

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.fix))


class CorruptFileError(LungsliceError):
    """A file lungslice wrote (JSON manifest, table) is truncated or not parseable."""


class OutputLocationError(LungsliceError):
    """An output path cannot be used (a file where a folder is needed, not writable)."""


class OutputBusyError(OutputLocationError):
    """Another live run holds the lock of an output folder."""
