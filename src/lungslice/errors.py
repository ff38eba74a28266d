"""The one exception hierarchy of lungslice.

Every error says what went wrong, where (file, SOPInstanceUID, tag), what was
expected and what was found, and how to fix it or opt out. Catch
:class:`LungsliceError` to handle all of them.
"""

from __future__ import annotations

__all__ = [
    "AnnotationError",
    "BundleMismatchError",
    "ConfigError",
    "DicomReadError",
    "FeatureError",
    "LungsliceError",
    "NoCTSeriesError",
    "NotChestError",
    "SeriesGeometryError",
    "UnsupportedTransferSyntaxError",
    "WeightsUnavailableError",
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
