"""Facts about a loaded volume for a person to check: geometry, HU statistics, previews.

Used by ``lungslice show``; everything here is read-only on the volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lungslice.dicom.volume import CTVolume
from lungslice.errors import ConfigError

__all__ = ["describe_volume", "save_preview_png"]

#: HU ranges used for the sanity statistics (inclusive lower, exclusive upper).
LUNG_RANGE = (-950.0, -600.0)
SOFT_TISSUE_RANGE = (0.0, 100.0)


def _median_in(hu: np.ndarray, lo: float, hi: float) -> float | None:
    values = hu[(hu >= lo) & (hu < hi)]
    return float(np.median(values)) if values.size else None


def describe_volume(
    volume: CTVolume, *, max_voxels: int = 4_000_000, seed: int = 0
) -> dict[str, Any]:
    """Geometry, identity, HU statistics and loading decisions of a volume.

    Parameters
    ----------
    volume : CTVolume
        The volume.
    max_voxels : int
        HU statistics use a random sample of this many voxels (drawn with
        replacement: a permutation of a 100-slice 512 x 512 volume alone
        takes about a second) when the volume has more.
    seed : int
        Seed of that sample.

    Returns
    -------
    dict
        JSON-serialisable: ``identity``, ``geometry``, ``hu`` and ``loading``.
    """
    hu = volume.hu.reshape(-1)
    if hu.size > max_voxels:
        hu = hu[np.random.default_rng(seed).integers(0, hu.size, size=max_voxels)]
    p01, p50, p99 = (float(v) for v in np.percentile(hu, [1, 50, 99]))
    z = volume.z_positions
    steps = np.diff(z)
    info = volume.info
    return {
        "identity": {
            "patient_id": volume.patient_id,
            "study_uid": volume.study_uid,
            "series_uid": volume.series_uid,
            "modality": info.get("modality"),
            "manufacturer": info.get("manufacturer"),
            "kernel": info.get("kernel"),
            "series_description": info.get("series_description"),
            "transfer_syntax": info.get("transfer_syntax"),
        },
        "geometry": {
            "shape": list(volume.shape),
            "spacing_mm": list(volume.spacing),
            "slice_thickness_mm": info.get("slice_thickness"),
            "z_first_mm": float(z[0]),
            "z_last_mm": float(z[-1]),
            "step_min_mm": float(steps.min()) if steps.size else None,
            "step_max_mm": float(steps.max()) if steps.size else None,
            "origin": list(volume.origin),
            "orientation": list(volume.orientation),
        },
        "hu": {
            "min": float(hu.min()),
            "max": float(hu.max()),
            "p01": p01,
            "p50": p50,
            "p99": p99,
            "fraction_lung_range": float(np.mean((hu >= LUNG_RANGE[0]) & (hu < LUNG_RANGE[1]))),
            "median_lung_range": _median_in(hu, *LUNG_RANGE),
            "median_soft_tissue_range": _median_in(hu, *SOFT_TISSUE_RANGE),
            "rescale_slope": info.get("rescale_slope"),
            "rescale_intercept": info.get("rescale_intercept"),
            "air_filled_pixels": info.get("n_air_filled_pixels"),
        },
        "loading": {
            "decisions": list(info.get("decisions", [])),
            "dropped_duplicates": list(info.get("dropped_duplicates", [])),
            "skipped_files": list(info.get("skipped_files", [])),
        },
    }


def save_preview_png(
    volume: CTVolume,
    path: str | Path,
    *,
    n_slices: int = 4,
    window: tuple[float, float] = (-600.0, 1500.0),
) -> Path:
    """Save ``n_slices`` evenly spaced slices side by side as a PNG (lung window).

    Parameters
    ----------
    volume : CTVolume
        The volume.
    path : str or Path
        PNG file to write.
    n_slices : int
        How many slices to show.
    window : (center, width)
        Display window in HU.

    Returns
    -------
    Path
        The written file.
    """
    if n_slices < 1:
        raise ConfigError(f"save_preview_png: n_slices must be >= 1, got {n_slices}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = np.unique(np.linspace(0, volume.n_slices - 1, n_slices + 2)[1:-1].round().astype(int))
    if picks.size == 0:
        picks = np.array([0])
    center, width = window
    fig, axes = plt.subplots(1, picks.size, figsize=(3 * picks.size, 3.3), squeeze=False)
    aspect = volume.spacing[1] / volume.spacing[2]
    for ax, k in zip(axes[0], picks, strict=True):
        ax.imshow(
            volume.hu[k],
            cmap="gray",
            vmin=center - width / 2,
            vmax=center + width / 2,
            aspect=aspect,
        )
        number = volume.instance_numbers[k]
        ax.set_title(f"z={volume.z_positions[k]:.1f} mm (#{number})", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{volume.patient_id} {volume.series_uid}", fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path
