"""Classical lung field mask of a chest CT volume in HU.

:func:`lung_field` finds the air-filled regions inside the body, keeps the large
ones (the lungs and main airways), fills their holes (vessels, nodules and
airway walls inside the lung become lung field), closes concavities of the lung
outline so nodules attached to the chest wall or mediastinum (juxtapleural
nodules) stay inside, and dilates the result by a few millimetres so the pleural
edge is covered. It works on a coarse grid (about 2 mm, integer subsampling of
the input) and upsamples the mask to the input grid by nearest neighbour.

Steps on the coarse grid:

1. ``air = hu < threshold_hu`` (out-of-field padding such as GE's -3024 HU is air).
2. air inside the body, slice by slice: air regions reaching the image border
   are outside, except a lung that the field of view truncates (see
   ``span_fraction``).
3. lung candidates: air inside the body, split into 3-D components; those of at
   least ``max(min_component_ml, min_component_fraction * largest)`` are kept
   (drops bowel gas and small air pockets).
4. holes up to ``max_hole_mm2`` filled slice by slice; slices whose lung is
   smaller than ``min_slice_area_mm2`` are cleared (above the apices only the
   trachea is left); then only components that pass step 3's size rule and
   share a slice with the largest stay (airways of the head, when the scan
   reaches it, are apart from the lungs once the trachea is gone).
5. a closing with a box of half-width ``closing_mm`` and a dilation of
   ``dilation_mm`` (separable max/min filters).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from lungslice.errors import ConfigError, NotChestError

__all__ = ["LungFieldConfig", "lung_field", "lung_slices"]

log = logging.getLogger(__name__)

# 2-D connectivity inside a 3-D array: components never cross slices.
_PLANE = np.zeros((3, 3, 3), dtype=bool)
_PLANE[1] = ndi.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class LungFieldConfig:
    """Settings of :func:`lung_field`.

    Attributes
    ----------
    threshold_hu : float
        Voxels below this are air (lung parenchyma is -950..-700 HU, soft tissue
        -100..+100); -400 keeps lung with dense parenchyma or ground glass as air
        while vessels and nodules are filled in afterwards.
    grid_mm : float
        Target voxel size of the working grid; each axis is subsampled by the
        integer ``max(1, round(grid_mm / spacing))``.
    min_component_ml : float
        Air components inside the body smaller than this (ml) are not lung.
    min_component_fraction : float
        ... nor those smaller than this fraction of the largest one (bowel gas);
        the two lungs are usually one component through the trachea, and when
        they are not the smaller lung is still far above this fraction.
    closing_mm : float
        Half-width (mm) of the box closing that fills concavities of the lung
        outline: a nodule attached to the chest wall up to about this radius
        ends up inside the field.
    dilation_mm : float
        Final dilation (mm) so the pleural edge and the wall side of juxtapleural
        nodules are covered.
    min_slice_area_mm2 : float
        A slice whose air-filled lung (holes filled, before closing) is smaller
        than this (mm²) is not lung: the trachea above the apices is 150-400 mm².
        The final dilation may still reach ``dilation_mm`` into such a slice.
    max_hole_mm2 : float
        In-plane holes of the lung up to this area (mm²) are filled (vessels,
        nodules up to ~50 mm); larger ones (the liver dome encircled by the
        costophrenic recesses) are not.
    span_fraction : float
        Where the reconstruction circle cuts the body, a lung touches the
        circle's rim and joins the air outside; an air region split off at the
        rim is lung when at least this fraction of it lies between body pixels
        along its row or its column (the gap between body and rim does not).
    """

    threshold_hu: float = -400.0
    grid_mm: float = 2.0
    min_component_ml: float = 20.0
    min_component_fraction: float = 0.05
    closing_mm: float = 10.0
    dilation_mm: float = 2.0
    min_slice_area_mm2: float = 500.0
    span_fraction: float = 0.75
    max_hole_mm2: float = 2500.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.span_fraction <= 1.0:
            raise ConfigError(
                f"LungFieldConfig.span_fraction must be in [0, 1], got {self.span_fraction}"
            )
        for name in ("grid_mm",):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"LungFieldConfig.{name} must be > 0, got {value}")
        for name in (
            "min_component_ml",
            "min_component_fraction",
            "closing_mm",
            "dilation_mm",
            "min_slice_area_mm2",
            "max_hole_mm2",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"LungFieldConfig.{name} must be >= 0, got {value}")


def _factors(spacing: tuple[float, float, float], grid_mm: float) -> tuple[int, int, int]:
    z, r, c = (max(1, round(grid_mm / float(s))) for s in spacing)
    return z, r, c


def _border_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """Bool per label: does the component reach the border of its slice."""
    border = np.zeros(n + 1, dtype=bool)
    for face in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        border[np.unique(face)] = True
    border[0] = False
    return border


def _fill_holes_per_slice(mask: np.ndarray, max_hole_px: float) -> np.ndarray:
    """Fill in-plane holes of ``mask`` up to ``max_hole_px`` pixels, slice by slice."""
    labels, n = ndi.label(~mask, structure=_PLANE)
    if n == 0:
        return mask.copy()
    fill = ~_border_labels(labels, n)
    fill &= np.bincount(labels.ravel(), minlength=n + 1) <= max_hole_px
    fill[0] = False
    return mask | fill[labels]


def _span(mask: np.ndarray, axis: int) -> np.ndarray:
    """Pixels between the first and last True along ``axis``."""
    fwd = np.logical_or.accumulate(mask, axis=axis)
    bwd = np.flip(np.logical_or.accumulate(np.flip(mask, axis=axis), axis=axis), axis=axis)
    return fwd & bwd


def _inside_air(air: np.ndarray, span_fraction: float) -> np.ndarray:
    """Air inside the body, slice by slice, also where the field of view cuts the body.

    Air regions that reach the image border are outside. The body is the
    largest 3-D component of non-air; inside air must also lie between the
    body's first and last pixel along its row and its column (drops air inside
    the patient table). Where the reconstruction circle (inscribed in the
    image) truncates the body, a lung touches the circle's rim and so joins the
    air outside; such a region (split off at the rim) is kept when at least
    ``span_fraction`` of it lies between body pixels along its row or its
    column (a lung cut off at the side still has chest wall in front of and
    behind it; the gap between a body and the rim has neither).
    """
    labels, n = ndi.label(air, structure=_PLANE)
    if n == 0:
        return np.zeros_like(air)
    body_labels, n_body = ndi.label(~air)
    if n_body == 0:
        return np.zeros_like(air)
    sizes = np.bincount(body_labels.ravel())
    sizes[0] = 0
    body = body_labels == int(sizes.argmax())
    del body_labels
    outside = _border_labels(labels, n)
    row_span, col_span = _span(body, 2), _span(body, 1)
    inside = air & ~outside[labels] & row_span & col_span
    del labels
    _, rows, cols = air.shape
    radius = min(rows, cols) / 2.0
    y = np.arange(rows, dtype=np.float64)[:, None] - (rows - 1) / 2.0
    x = np.arange(cols, dtype=np.float64)[None, :] - (cols - 1) / 2.0
    r = np.sqrt(y * y + x * x)
    rim = (r >= radius - 1.5) & (r <= radius + 0.5)
    near_rim = ndi.binary_dilation(rim, iterations=1)
    cut, m = ndi.label(air & ~rim[None] & ~inside, structure=_PLANE)
    if m == 0:
        return inside
    candidate = ~_border_labels(cut, m)
    touches = np.zeros(m + 1, dtype=bool)
    touches[np.unique(cut[:, near_rim])] = True
    candidate &= touches
    candidate[0] = False
    if not candidate.any():
        return inside
    flat = cut.ravel()
    count = np.bincount(flat, minlength=m + 1)
    in_span = np.bincount(flat, weights=(row_span | col_span).ravel(), minlength=m + 1)
    keep = candidate & (in_span >= span_fraction * np.maximum(count, 1))
    keep[0] = False
    return inside | keep[cut]


def _large_components(
    mask: np.ndarray, voxel_ml: float, config: LungFieldConfig, *, beside_largest: bool = False
) -> np.ndarray:
    """The 3-D components of ``mask`` of at least ``max(min_ml, fraction * largest)``.

    With ``beside_largest``, also only those sharing a slice with the largest
    (the two lungs lie side by side; airways of the head lie above them).
    """
    labels, n = ndi.label(mask)
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel()).astype(np.float64) * voxel_ml
    sizes[0] = 0.0
    keep = sizes >= max(config.min_component_ml, config.min_component_fraction * sizes.max())
    if beside_largest:
        extent = ndi.find_objects(labels)
        big = extent[int(sizes.argmax()) - 1]
        for k, box in enumerate(extent, start=1):
            if box is not None and (box[0].stop <= big[0].start or box[0].start >= big[0].stop):
                keep[k] = False
    keep[0] = False
    return np.asarray(keep[labels])


def _close_and_dilate(
    lung: np.ndarray, gs: tuple[float, float, float], config: LungFieldConfig
) -> np.ndarray:
    """Box closing then dilation, computed inside the mask's bounding box plus margin."""
    close = [round(config.closing_mm / s) for s in gs]
    dil = [round(config.dilation_mm / s) for s in gs]
    nz = [np.flatnonzero(lung.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
    box = tuple(
        slice(max(0, int(ix[0]) - c - d - 1), min(lung.shape[i], int(ix[-1]) + c + d + 2))
        for i, (ix, c, d) in enumerate(zip(nz, close, dil, strict=True))
    )
    crop = lung[box]
    if max(close) > 0:
        # padded with background so the closing never grows from the volume's edge
        pad = [(c + 1, c + 1) for c in close]
        padded = np.pad(crop, pad)
        size = [2 * c + 1 for c in close]
        grown = ndi.maximum_filter(padded, size=size, mode="constant", cval=0)
        closed = ndi.minimum_filter(grown, size=size, mode="constant", cval=1)
        inner = tuple(slice(c + 1, c + 1 + n) for c, n in zip(close, crop.shape, strict=True))
        crop = closed[inner] | crop
    if max(dil) > 0:
        crop = ndi.maximum_filter(crop, size=[2 * d + 1 for d in dil], mode="constant", cval=0)
    out = np.zeros_like(lung)
    out[box] = crop
    return out


def _upsample(
    lung: np.ndarray, shape: tuple[int, ...], factors: tuple[int, int, int]
) -> np.ndarray:
    """Nearest-neighbour upsampling of the coarse mask to the input ``shape``."""
    out = np.zeros(shape, dtype=bool)
    nz = [np.flatnonzero(lung.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
    lo = [int(ix[0]) for ix in nz]
    hi = [int(ix[-1]) + 1 for ix in nz]
    crop = lung[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    for axis, f in enumerate(factors):
        if f > 1:
            crop = np.repeat(crop, f, axis=axis)
    start = [lo[i] * factors[i] for i in range(3)]
    stop = [min(shape[i], start[i] + crop.shape[i]) for i in range(3)]
    out[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]] = crop[
        : stop[0] - start[0], : stop[1] - start[1], : stop[2] - start[2]
    ]
    return out


def _check_spacing(hu: np.ndarray, spacing: tuple[float, float, float]) -> None:
    if hu.ndim != 3:
        raise ConfigError(
            f"lung_field: expected a (slices, rows, columns) volume, got shape {hu.shape}"
        )
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ConfigError(
            f"lung_field: spacing must be three positive mm values (slice, row, column), "
            f"got {spacing}"
        )


def lung_field(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    config: LungFieldConfig = LungFieldConfig(),
) -> np.ndarray:
    """Boolean lung field mask of a chest CT volume.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(slices, rows, columns)`` volume in Hounsfield units (e.g.
        ``ResampledVolume.hu``).
    spacing : tuple of float
        ``(slice, row, column)`` voxel size in mm.
    config : LungFieldConfig
        Thresholds and morphology (see the module docs).

    Returns
    -------
    numpy.ndarray
        Bool mask of ``hu``'s shape; slices without lung (above the apices,
        below the bases) are all False.

    Raises
    ------
    NotChestError
        If no slice has a lung field (not a chest CT, or values not in HU).
    ConfigError
        If ``hu`` is not 3-D or ``spacing`` is not three positive values.
    """
    hu = np.asarray(hu)
    _check_spacing(hu, spacing)
    fz, fr, fc = _factors(spacing, config.grid_mm)
    sub = hu[::fz, ::fr, ::fc]
    gs = (spacing[0] * fz, spacing[1] * fr, spacing[2] * fc)
    voxel_ml = gs[0] * gs[1] * gs[2] / 1000.0
    air = sub < config.threshold_hu
    inside = _inside_air(air, config.span_fraction)
    lung = np.zeros_like(air)
    lung = _large_components(inside, voxel_ml, config)
    if lung.any():
        lung = _fill_holes_per_slice(lung, config.max_hole_mm2 / (gs[1] * gs[2]))
        area = lung.sum(axis=(1, 2)) * (gs[1] * gs[2])
        small = area < config.min_slice_area_mm2
        if small.any():
            # slices with only the trachea dropped: airways above them (pharynx,
            # nasal cavity, sinuses in a scan that reaches the head) come apart
            lung[small] = False
            lung = _large_components(lung, voxel_ml, config, beside_largest=True)
    if lung.any():
        lung = _close_and_dilate(lung, gs, config)
    if not lung.any():
        finite = hu[np.isfinite(hu)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (math.nan,) * 2
        raise NotChestError(
            f"no lung field on any slice of a volume of shape {hu.shape} (HU range {lo:.0f} to "
            f"{hi:.0f}): not a chest CT, or not in HU. Expected air-filled lungs "
            f"(< {config.threshold_hu:.0f} HU) inside the body of at least "
            f"{config.min_component_ml:g} ml. Fix: pass a chest CT series converted to HU "
            "(load_series applies RescaleSlope/Intercept)."
        )
    out = _upsample(lung, hu.shape, (fz, fr, fc))
    log.debug(
        "lung field: %d of %d slices, %.0f ml",
        int(out.any(axis=(1, 2)).sum()),
        hu.shape[0],
        float(lung.sum()) * voxel_ml,
    )
    return out


def lung_slices(
    mask: np.ndarray,
    spacing: tuple[float, float, float] | None = None,
    min_area_mm2: float = 0.0,
) -> np.ndarray:
    """Which slices have a lung field.

    Parameters
    ----------
    mask : numpy.ndarray
        ``(slices, rows, columns)`` bool mask from :func:`lung_field`.
    spacing : tuple of float, optional
        Voxel size (mm); needed only with ``min_area_mm2``.
    min_area_mm2 : float
        Minimum lung field area (mm²) of a slice that counts; :func:`lung_field`
        already clears slices below ``LungFieldConfig.min_slice_area_mm2``.

    Returns
    -------
    numpy.ndarray
        ``(slices,)`` bool: True where the slice has a lung field (a slice
        without one should score 0).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ConfigError(f"lung_slices: expected a 3-D mask, got shape {mask.shape}")
    if min_area_mm2 <= 0:
        return np.asarray(mask.any(axis=(1, 2)), dtype=bool)
    if spacing is None:
        raise ConfigError("lung_slices: min_area_mm2 needs the spacing (mm) of the mask")
    return np.asarray(mask.sum(axis=(1, 2)) * (spacing[1] * spacing[2]) >= min_area_mm2)
