"""Figures that compare a phantom with real chest CT, computed the same way on both.

For a volume in HU: the lung field (air-filled regions inside the body, holes
such as vessels filled in), its HU histogram and percentiles, the fraction of
lung-field voxels above -500 HU (vessels and other dense structures), and the
noise (std of the residual after a 5 x 5 local mean) in air around the body and
in uniform soft tissue, and a lung-texture statistic (the gray-level
co-occurrence contrast of the lung field in the lung window).
``benchmarks/phantom.py`` and ``benchmarks/realism.py`` print them side by side
for phantom and real series; ``frechet_distance`` compares feature sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from scipy import ndimage as ndi

from lungslice.errors import ConfigError, DicomReadError

__all__ = [
    "HIST_EDGES",
    "LUNG_WINDOW",
    "Figures",
    "body_mask",
    "figures",
    "frechet_distance",
    "glcm_contrast",
    "lung_field",
    "read_folder_hu",
]

#: Lung-field histogram bin edges (HU).
HIST_EDGES = np.array([-1100, -950, -900, -850, -800, -700, -500, -200, 3100], dtype=np.float64)
_PAD_BELOW = -1500.0  # GE writes -3024 HU outside the field of view
#: The lung window (HU lo, hi) = W 1500 / L -600, for the texture statistic.
LUNG_WINDOW = (-1350.0, 150.0)


@dataclass
class Figures:
    """Calibration figures of one volume (see module docs)."""

    n_slices: int
    lung_slices: int
    lung_percentiles: dict[str, float] = field(default_factory=dict)
    lung_histogram: list[float] = field(default_factory=list)
    lung_above_minus500: float = float("nan")
    noise_air: float = float("nan")
    noise_soft_tissue: float = float("nan")
    glcm_contrast: float = float("nan")


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient's body on one slice: the largest object above -500 HU, holes filled."""
    dense = hu > -500.0
    lab, n = ndi.label(dense)
    if n == 0:
        return dense
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return ndi.binary_fill_holes(lab == int(sizes.argmax()))


def lung_field(hu: np.ndarray, body: np.ndarray | None = None, min_pixels: int = 400) -> np.ndarray:
    """Air-filled regions inside the body (lungs, large airways) with their holes filled.

    Parameters
    ----------
    hu : numpy.ndarray
        One slice (HU).
    body : numpy.ndarray, optional
        Its body mask (computed if not given).
    min_pixels : int
        Smaller air pockets (bowel gas, small airways) are left out.
    """
    body = body_mask(hu) if body is None else body
    air = (hu < -500.0) & (hu > _PAD_BELOW) & body
    lab, n = ndi.label(air)
    if n == 0:
        return air
    sizes = np.bincount(lab.ravel())
    keep = np.flatnonzero(sizes >= min_pixels)
    keep = keep[keep > 0]
    return ndi.binary_fill_holes(np.isin(lab, keep))


def _residual_std(hu: np.ndarray, mask: np.ndarray) -> float:
    if mask.sum() < 50:
        return float("nan")
    local = ndi.uniform_filter(hu.astype(np.float64), 5, mode="nearest")
    return float(np.std((hu - local)[mask]) * np.sqrt(25.0 / 24.0))


def figures(hu: np.ndarray, max_slices: int = 40) -> Figures:
    """Compute the calibration figures of a volume ``(n, rows, columns)`` in HU.

    Up to ``max_slices`` evenly spaced slices are measured. Slices whose lung
    field covers less than 5 % of the body count towards the noise only.
    """
    vol = np.asarray(hu, dtype=np.float32)
    picks = np.unique(np.linspace(0, vol.shape[0] - 1, min(max_slices, vol.shape[0])).round())
    lung_vals: list[np.ndarray] = []
    air_noise: list[float] = []
    soft_noise: list[float] = []
    contrast: list[float] = []
    for k in picks.astype(int):
        sl = vol[k]
        body = body_mask(sl)
        lung = lung_field(sl, body)
        if lung.sum() > 0.05 * max(body.sum(), 1):
            lung_vals.append(sl[lung])
            contrast.append(glcm_contrast(sl, lung))
        # air around the body, away from its edge and the FOV padding
        air = ~ndi.binary_dilation(body, iterations=6) & (sl > _PAD_BELOW) & (sl < -900)
        air = ndi.binary_erosion(air, iterations=4)
        air_noise.append(_residual_std(sl, air))
        smooth = ndi.uniform_filter(sl, 7)
        soft = ndi.binary_erosion((smooth > 0) & (smooth < 100) & body, iterations=4)
        soft_noise.append(_residual_std(sl, soft))
    out = Figures(n_slices=int(vol.shape[0]), lung_slices=len(lung_vals))
    if lung_vals:
        v = np.concatenate(lung_vals)
        out.lung_percentiles = {f"p{q}": float(np.percentile(v, q)) for q in (5, 25, 50, 75, 95)}
        counts, _ = np.histogram(np.clip(v, HIST_EDGES[0], HIST_EDGES[-1] - 1), HIST_EDGES)
        out.lung_histogram = (counts / max(v.size, 1)).tolist()
        out.lung_above_minus500 = float((v > -500).mean())
    if contrast and np.isfinite(contrast).any():
        out.glcm_contrast = float(np.nanmedian(contrast))
    out.noise_air = float(np.nanmedian(air_noise)) if np.isfinite(air_noise).any() else np.nan
    out.noise_soft_tissue = (
        float(np.nanmedian(soft_noise)) if np.isfinite(soft_noise).any() else np.nan
    )
    return out


def glcm_contrast(
    hu: np.ndarray, mask: np.ndarray, levels: int = 32, window: tuple[float, float] = LUNG_WINDOW
) -> float:
    """Gray-level co-occurrence contrast of one slice's masked region in a window.

    The slice is windowed (``window``, HU) and quantised to ``levels`` gray
    levels; for every horizontally and vertically adjacent pixel pair with both
    pixels in ``mask`` (eroded by one pixel), the contrast is the mean of
    ``(i - j) ** 2`` over the pairs: the GLCM contrast ``sum P(i, j) (i - j)^2``
    of the symmetric co-occurrence matrix at distance 1, angles 0 and 90 degrees.
    NaN when fewer than 50 pairs.
    """
    lo, hi = window
    q = np.clip((np.asarray(hu, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0 - 1e-9)
    q = np.floor(q * levels)
    m = ndi.binary_erosion(np.asarray(mask, dtype=bool))
    diffs = []
    for a, b, ma, mb in (
        (q[:, :-1], q[:, 1:], m[:, :-1], m[:, 1:]),
        (q[:-1, :], q[1:, :], m[:-1, :], m[1:, :]),
    ):
        both = ma & mb
        diffs.append((a[both] - b[both]) ** 2)
    d = np.concatenate(diffs)
    return float(d.mean()) if d.size >= 50 else float("nan")


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(n, d)``.

    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` (the FID formula),
    with sample covariances; the matrix square root's tiny imaginary part from
    round-off is dropped.
    """
    from scipy import linalg

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ConfigError(
            f"frechet_distance: expected two (n >= 2, d) arrays of the same width, "
            f"got {x.shape} and {y.shape}. Fix: pass at least two feature rows per set."
        )
    mu = x.mean(axis=0) - y.mean(axis=0)
    sa, sb = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    root = linalg.sqrtm(sa @ sb)
    root = np.real(root)
    value = float(mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * np.trace(root))
    return max(value, 0.0)


def read_folder_hu(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All ``.dcm`` slices of one series folder as HU, sorted by ImagePositionPatient z.

    A plain reader for calibration (no geometry checks; use
    :func:`lungslice.dicom.volume.load_series` for real work).
    """
    files = sorted(Path(folder).glob("*.dcm"))
    if not files:
        raise DicomReadError(f"{folder}: no .dcm files. Fix: pass the folder of one series.")
    slices = []
    for f in files:
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1)) + float(
            ds.get("RescaleIntercept", 0)
        )
        slices.append((float(ds.ImagePositionPatient[2]), hu))
    slices.sort(key=lambda t: t[0])
    return np.stack([s[1] for s in slices]), np.array([s[0] for s in slices])
