"""The loader options every command that reads DICOM shares, and the LoadConfig they make.

``index``, ``show``, ``extract`` and ``predict`` declare the same flags, so an
error's fix (rendered as flags by :func:`lungslice.errors.render_error`) can
be typed into any of them. Kept light: nothing heavy is imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from lungslice.dicom.geometry import LoadConfig

__all__ = [
    "ALLOW_GAPS",
    "ALLOW_IRREGULAR",
    "ALLOW_MISSING_RESCALE",
    "DUPLICATES",
    "HU_CHECK",
    "MIN_SLICES",
    "SERIES_UID",
    "TILT",
    "make_load_config",
]

ALLOW_GAPS: Any = typer.Option(
    False, "--allow-gaps", help="Accept missing slices (steps > 1.5x the median spacing)."
)
ALLOW_IRREGULAR: Any = typer.Option(
    False, "--allow-irregular", help="Accept slice steps that differ from the median by > 5 %."
)
TILT: Any = typer.Option(
    "refuse", "--tilt", help="Gantry-tilted series: 'refuse' (default) or 'correct' (shear)."
)
DUPLICATES: Any = typer.Option(
    "keep_lower_instance",
    "--duplicates",
    help="Images at the same position: 'keep_lower_instance' (as pylidc) or 'error'.",
)
SERIES_UID: Any = typer.Option(
    None, "--series-uid", help="SeriesInstanceUID to use when the folder holds several series."
)
MIN_SLICES: Any = typer.Option(2, "--min-slices", help="Fewest slices a series may have.")
ALLOW_MISSING_RESCALE: Any = typer.Option(
    False,
    "--allow-missing-rescale",
    help="Load CT images without RescaleSlope/RescaleIntercept, taking stored values as HU "
    "(refused by default: they are usually 1024 too high).",
)
HU_CHECK: Any = typer.Option(
    "warn",
    "--hu-check",
    help="Air near -1000 HU and lung-range voxels present? 'warn', 'refuse' or 'off'.",
)


def make_load_config(
    *,
    allow_gaps: bool = False,
    allow_irregular: bool = False,
    tilt: str = "refuse",
    duplicates: str = "keep_lower_instance",
    min_slices: int = 2,
    allow_missing_rescale: bool = False,
    hu_check: str = "warn",
    min_coverage_mm: float = 0.0,
) -> LoadConfig:
    """The :class:`~lungslice.dicom.geometry.LoadConfig` the shared flags describe.

    Raises
    ------
    ConfigError
        If a value is invalid (e.g. ``--tilt sideways``).
    """
    from lungslice.dicom.geometry import LoadConfig

    return LoadConfig(
        allow_gaps=allow_gaps,
        allow_irregular=allow_irregular,
        tilt=tilt,  # type: ignore[arg-type]  # validated by LoadConfig
        duplicates=duplicates,  # type: ignore[arg-type]
        min_slices=min_slices,
        allow_missing_rescale=allow_missing_rescale,
        hu_check=hu_check,  # type: ignore[arg-type]
        min_coverage_mm=min_coverage_mm,
    )


_LOADER_FLAGS = (
    "allow_gaps",
    "allow_irregular",
    "tilt",
    "duplicates",
    "min_slices",
    "allow_missing_rescale",
    "hu_check",
)


def load_config_from(values: dict[str, Any], **more: Any) -> LoadConfig:
    """:func:`make_load_config` from a command's parameters (``locals()``).

    Takes the shared loader flags a command declares (``allow_gaps``, ``tilt``,
    ...) by name, so each command passes them without spelling each one out.
    """
    return make_load_config(**{k: values[k] for k in _LOADER_FLAGS if k in values}, **more)


# --engine and its Ray settings, shared by `extract`, `candidates extract` and `predict-batch`
ENGINE: Any = typer.Option(
    "local", "--engine", help="'local' or 'ray' (a Ray Data actor pool; docs/scale-out.md)."
)
ADDRESS: Any = typer.Option(
    None,
    "--address",
    help="With --engine ray: the cluster's head (HOST:PORT) or 'auto'; default: a "
    "private Ray on this machine.",
)
ACTORS: Any = typer.Option(
    None, "--actors", help="With --engine ray: actors (default: one per CPU, or per GPU share)."
)
GPUS_PER_ACTOR: Any = typer.Option(
    0.0, "--gpus-per-actor", help="With --engine ray: GPUs per actor (fractions share one)."
)
