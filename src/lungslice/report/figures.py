"""Figures for the report, rendered to PNG bytes (no display needed)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

__all__ = ["LUNG_WINDOW", "finding_png", "slice_png", "window", "z_profile_png"]

#: Lung window (HU) used for thumbnails: level -300, width 1400.
LUNG_WINDOW: tuple[float, float] = (-1000.0, 400.0)


def window(hu: np.ndarray, lo_hi: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """Map HU to 0..255 uint8 through a window ``(low, high)``."""
    lo, hi = lo_hi
    scaled = (np.asarray(hu, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def slice_png(
    hu: np.ndarray,
    heat: np.ndarray | None = None,
    *,
    size: int = 256,
    lo_hi: tuple[float, float] = LUNG_WINDOW,
    alpha: float = 0.45,
) -> bytes:
    """One axial slice in a window as PNG, optionally with a heat map blended on top.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(rows, columns)`` HU.
    heat : numpy.ndarray, optional
        Evidence map of any shape (resized to the slice), any range (min-max scaled).
    size : int
        Output width and height in pixels.
    lo_hi : tuple of float
        HU window.
    alpha : float
        Maximum opacity of the heat map (scaled by the map's value).
    """
    grey = Image.fromarray(window(hu, lo_hi)).resize((size, size), Image.Resampling.BILINEAR)
    if heat is None:
        return _png(grey)
    h = np.asarray(heat, dtype=np.float32)
    h = h - float(h.min())
    peak = float(h.max())
    h = h / peak if peak > 0 else h
    h_img = Image.fromarray((h * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    h_arr = np.asarray(h_img, dtype=np.float32) / 255.0
    colours = colormaps["inferno"](h_arr)[..., :3]
    base = np.repeat(np.asarray(grey, dtype=np.float32)[..., None] / 255.0, 3, axis=2)
    a = (alpha * h_arr)[..., None]
    blended = (1 - a) * base + a * colours
    return _png(Image.fromarray((blended * 255).round().astype(np.uint8)))


def finding_png(
    hu: np.ndarray,
    row: float,
    col: float,
    radius_px: float,
    *,
    size: int = 256,
    crop_px: int | None = None,
    lo_hi: tuple[float, float] = LUNG_WINDOW,
) -> bytes:
    """A slice (or a square crop around a finding) with the finding circled.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(rows, columns)`` HU.
    row, col : float
        The finding's centre (pixels of ``hu``).
    radius_px : float
        The finding's radius (pixels of ``hu``); the circle is drawn a little larger.
    size : int
        Output width and height in pixels.
    crop_px : int, optional
        Side of a square crop centred on the finding (the whole slice when None).
    lo_hi : tuple of float
        HU window.
    """
    from PIL import ImageDraw

    img = window(hu, lo_hi)
    r0, c0 = 0.0, 0.0
    if crop_px is not None:
        half = crop_px // 2
        pad = np.pad(img, half, mode="constant")
        r, c = round(row) + half, round(col) + half
        img = pad[r - half : r + half, c - half : c + half]
        r0, c0 = float(round(row) - half), float(round(col) - half)
    scale = size / img.shape[0]
    rgb = Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR).convert("RGB")
    draw = ImageDraw.Draw(rgb)
    cy, cx = (row - r0) * scale, (col - c0) * scale
    rad = max(radius_px * 1.6, 4.0) * scale
    draw.ellipse((cx - rad, cy - rad, cx + rad, cy + rad), outline=(255, 200, 0), width=2)
    return _png(rgb)


def z_profile_png(
    z_mm: np.ndarray,
    p_malignant: np.ndarray,
    p_benign: np.ndarray,
    candidates: Sequence[dict[str, Any]] = (),
    recommended_z: Sequence[float] = (),
    *,
    width_in: float = 9.0,
    height_in: float = 2.6,
) -> bytes:
    """p(malignant) and p(benign) along z with candidate bands and recommended slices."""
    # Figure() without pyplot: no global state, no display backend.
    fig = Figure(figsize=(width_in, height_in), dpi=110)
    ax = fig.subplots()
    for cand in candidates:
        ax.axvspan(cand["z_min"], cand["z_max"], color="#f5c542", alpha=0.3, lw=0)
    ax.plot(z_mm, p_malignant, color="#c0392b", lw=1.4, label="p(malignant)")
    ax.plot(z_mm, p_benign, color="#2e86c1", lw=1.2, label="p(benign)")
    for i, z in enumerate(recommended_z):
        ax.axvline(z, color="#555", lw=0.8, ls=":")
        ax.text(z, 1.02, str(i + 1), ha="center", va="bottom", fontsize=7, color="#333")
    ax.set_xlim(float(np.min(z_mm)), float(np.max(z_mm)))
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("z (mm, along the slice normal)")
    ax.set_ylabel("probability")
    ax.legend(loc="upper left", fontsize=8, frameon=False, ncol=2)
    ax.grid(alpha=0.25)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
