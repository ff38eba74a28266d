"""Nodule candidates: a 3-D multi-scale Hessian blob detector inside the lung field.

The first stage of the candidate approach (van Ginneken et al. 2015; Setio et
al. 2016): a classical detector proposes a few hundred places per scan, a
classifier looks at patches around them afterwards.

Method (:func:`detect_candidates`):

1. Crop the volume to the lung field's bounding box and average it down to a
   working grid of about ``grid_mm`` (integer factors per axis, so no
   interpolation); clip HU to ``clip_hu`` (bone and contrast do not dominate)
   and set everything outside the lung field to the lung's median HU, so the
   chest wall and mediastinum become background and a nodule attached to them
   is an isolated blob.
2. For each radius in ``radii_mm`` (sigma = radius / sqrt(3), where the
   scale-normalised Laplacian of a solid sphere peaks), smooth with a Gaussian
   on the working grid (or on a 2x / 4x coarser copy of it for large radii)
   and take local maxima in space (over the six face neighbours) of the
   scale-normalised Laplacian of Gaussian ``-sigma² ∇²G`` inside the lung field.
3. At each maximum, the Hessian's eigenvalues l1 <= l2 <= l3: a blob has all
   three negative, a vessel (tube) one near zero (it continues through the
   neighbouring slices), a fissure or the pleura (plate) two. The score is Li,
   Sone & Doi's (2003) dot enhancement, scale-normalised:
   ``sigma² * l3² / |l1|`` when ``l3 < 0``, else 0 (in HU; at most a third of
   the scale-normalised LoG response, reached by an isotropic blob; on the
   test chest a nodule of 870 HU contrast scores 130-190).
4. A nodule borders aerated lung, a juxtapleural one on about half its
   surface. The lung field's closing takes concavities of the outline into
   the field (so such nodules stay in), and with them ribs, the apex's bones
   and the diaphragm's folds, whose blobs outscore small nodules. A maximum is
   kept only when at least ``min_lung_shell`` of 26 points on a shell around
   it is aerated lung (measured on the HU before step 1's substitution).
   Figures before and after: docs/candidates.md.
5. Greedy non-maximum suppression over all scales (``min_distance_mm``, or
   ``nms_radius_fraction`` of the stronger candidate's radius) and the
   ``max_candidates`` best.

Coordinates are float voxel indices of the input array (``z``, ``row``,
``col``), whatever grid the work was done on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from lungslice.candidates.lungfield import LungFieldConfig, lung_field
from lungslice.errors import ConfigError

__all__ = ["CANDIDATE_COLUMNS", "DetectorConfig", "detect_candidates"]

log = logging.getLogger(__name__)

#: Columns of the table :func:`detect_candidates` returns, in order.
CANDIDATE_COLUMNS = (
    "candidate_id",
    "z",
    "row",
    "col",
    "radius_mm",
    "score",
    "scale_mm",
    "log_response",
    "hu_mean",
    "eig1",
    "eig2",
    "eig3",
)

_SQRT3 = math.sqrt(3.0)


@dataclass(frozen=True)
class DetectorConfig:
    """Settings of :func:`detect_candidates`.

    Attributes
    ----------
    radii_mm : tuple of float
        Blob radii searched (mm); nodules of 3-30 mm diameter. Each is one
        Gaussian scale ``sigma = radius / sqrt(3)``.
    grid_mm : float
        Target voxel size of the working grid: each axis is averaged down by
        ``max(1, round(grid_mm / spacing))`` (0.5 mm pixels -> 1.5 mm, 0.7 mm
        -> 1.4 mm; 1 mm slices stay 1 mm).
    coarse_sigma_voxels : float
        A scale is computed on the 2x (4x) coarser copy of the working grid
        once its sigma is at least this many coarse voxels (large radii are
        cheap there and lose nothing).
    clip_hu : tuple of float
        HU are clipped to this range before filtering.
    max_candidates : int
        At most this many candidates, best first.
    min_distance_mm : float
        Non-maximum suppression: a candidate closer than this to a stronger
        one is dropped...
    nms_radius_fraction : float
        ...as is one closer than this fraction of the stronger one's radius.
    min_score : float
        Candidates scoring below this (HU) are dropped.
    min_log_hu : float
        Only local maxima whose scale-normalised LoG exceeds this (HU) are
        examined.
    max_maxima_per_scale : int
        At most this many local maxima per scale (the strongest LoG responses)
        get a Hessian. The dot score is at most a third of the LoG response,
        but a faint round nodule (ground glass, 400-600 HU above the lung) has
        a lower LoG response than thousands of vessel points with a lower dot
        score: at 8000 such nodules were cut on the phantom cohort, at 30000
        none (docs/candidates.md).
    min_lung_shell : float
        A candidate is kept only when at least this fraction of 26 points on a
        shell around it (at ``max(1.5 * radius, radius + 2 mm)``, in the 26
        grid directions) is aerated lung (inside the lung field and below
        ``shell_air_hu`` before the background substitution). A nodule borders
        lung, also a juxtapleural one (about half its shell); a blob inside the
        chest wall, a rib or the diaphragm that the lung field's closing took
        in does not. 0 keeps all.
    shell_air_hu : float
        HU below which a shell point counts as aerated lung.
    lung : LungFieldConfig
        Used when :func:`detect_candidates` computes the lung field itself.
    """

    radii_mm: tuple[float, ...] = (1.5, 2.2, 3.2, 4.6, 6.6, 9.5, 13.5)
    grid_mm: float = 1.4
    coarse_sigma_voxels: float = 0.8
    clip_hu: tuple[float, float] = (-1000.0, 150.0)
    max_candidates: int = 400
    min_distance_mm: float = 4.0
    nms_radius_fraction: float = 0.6
    min_score: float = 5.0
    min_log_hu: float = 15.0
    max_maxima_per_scale: int = 30000
    min_lung_shell: float = 0.3
    shell_air_hu: float = -500.0
    lung: LungFieldConfig = field(default_factory=LungFieldConfig)

    def __post_init__(self) -> None:
        if not self.radii_mm or not all(math.isfinite(r) and r > 0 for r in self.radii_mm):
            raise ConfigError(
                f"DetectorConfig.radii_mm must be positive radii (mm), got {self.radii_mm}"
            )
        if not (math.isfinite(self.grid_mm) and self.grid_mm > 0):
            raise ConfigError(f"DetectorConfig.grid_mm must be > 0 mm, got {self.grid_mm}")
        if self.max_candidates < 1:
            raise ConfigError(
                f"DetectorConfig.max_candidates must be >= 1, got {self.max_candidates}"
            )
        lo, hi = self.clip_hu
        if not lo < hi:
            raise ConfigError(f"DetectorConfig.clip_hu must be (low, high), got {self.clip_hu}")
        if not 0.0 <= self.min_lung_shell <= 1.0:
            raise ConfigError(
                f"DetectorConfig.min_lung_shell must be in [0, 1], got {self.min_lung_shell}"
            )
        for name in ("min_distance_mm", "nms_radius_fraction", "coarse_sigma_voxels"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"DetectorConfig.{name} must be >= 0, got {value}")


def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=np.float64) for c in CANDIDATE_COLUMNS})
    return frame.astype({"candidate_id": np.int64})


def _block_mean(v: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    """Mean over ``f``-sized blocks (trailing partial blocks dropped), float32."""
    if f == (1, 1, 1):
        return np.array(v, dtype=np.float32, order="C")
    n = [s // k for s, k in zip(v.shape, f, strict=True)]
    out = np.zeros(n, dtype=np.float32)
    for i in range(f[0]):
        for j in range(f[1]):
            for k in range(f[2]):
                out += v[i : n[0] * f[0] : f[0], j : n[1] * f[1] : f[1], k : n[2] * f[2] : f[2]]
    out *= np.float32(1.0 / (f[0] * f[1] * f[2]))
    return out


def _block_any(m: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    if f == (1, 1, 1):
        return m
    n = [s // k for s, k in zip(m.shape, f, strict=True)]
    m = m[: n[0] * f[0], : n[1] * f[1], : n[2] * f[2]]
    return np.asarray(m.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).any(axis=(1, 3, 5)))


def _laplacian(g: np.ndarray, sp: tuple[float, float, float]) -> np.ndarray:
    """Finite-difference Laplacian (HU/mm²); zero on the border voxels."""
    out = np.zeros_like(g)
    inner = out[1:-1, 1:-1, 1:-1]
    two_c = g[1:-1, 1:-1, 1:-1] * np.float32(2.0)
    tmp = np.empty_like(two_c)
    pairs = (
        (g[2:, 1:-1, 1:-1], g[:-2, 1:-1, 1:-1]),
        (g[1:-1, 2:, 1:-1], g[1:-1, :-2, 1:-1]),
        (g[1:-1, 1:-1, 2:], g[1:-1, 1:-1, :-2]),
    )
    for (a, b), h in zip(pairs, sp, strict=True):
        np.add(a, b, out=tmp)
        tmp -= two_c
        tmp *= np.float32(1.0 / h**2)
        inner += tmp
    return out


def _face_maxima(resp: np.ndarray, floor: float) -> np.ndarray:
    """Interior voxels above ``floor`` and >= their six face neighbours.

    A superset of the 26-neighbour maxima, without the filtered copy a 3x3x3
    maximum filter makes; the extra points are suppressed later.
    """
    peaks = np.zeros(resp.shape, dtype=bool)
    c = resp[1:-1, 1:-1, 1:-1]
    inner = peaks[1:-1, 1:-1, 1:-1]
    np.greater(c, floor, out=inner)
    for a, b in (
        (resp[2:, 1:-1, 1:-1], resp[:-2, 1:-1, 1:-1]),
        (resp[1:-1, 2:, 1:-1], resp[1:-1, :-2, 1:-1]),
        (resp[1:-1, 1:-1, 2:], resp[1:-1, 1:-1, :-2]),
    ):
        inner &= c >= a
        inner &= c >= b
    return peaks


def _hessian_at(g: np.ndarray, idx: np.ndarray, sp: tuple[float, float, float]) -> np.ndarray:
    """``(n, 3, 3)`` finite-difference Hessian of ``g`` at interior voxels ``idx``."""
    z, r, c = idx[:, 0], idx[:, 1], idx[:, 2]

    def at(dz: int, dr: int, dc: int) -> np.ndarray:
        return g[z + dz, r + dr, c + dc].astype(np.float64)

    g0 = at(0, 0, 0)
    h = np.empty((len(idx), 3, 3))
    h[:, 0, 0] = (at(1, 0, 0) + at(-1, 0, 0) - 2 * g0) / sp[0] ** 2
    h[:, 1, 1] = (at(0, 1, 0) + at(0, -1, 0) - 2 * g0) / sp[1] ** 2
    h[:, 2, 2] = (at(0, 0, 1) + at(0, 0, -1) - 2 * g0) / sp[2] ** 2
    h[:, 0, 1] = h[:, 1, 0] = (at(1, 1, 0) - at(1, -1, 0) - at(-1, 1, 0) + at(-1, -1, 0)) / (
        4 * sp[0] * sp[1]
    )
    h[:, 0, 2] = h[:, 2, 0] = (at(1, 0, 1) - at(1, 0, -1) - at(-1, 0, 1) + at(-1, 0, -1)) / (
        4 * sp[0] * sp[2]
    )
    h[:, 1, 2] = h[:, 2, 1] = (at(0, 1, 1) - at(0, 1, -1) - at(0, -1, 1) + at(0, -1, -1)) / (
        4 * sp[1] * sp[2]
    )
    return h


def _subvoxel(resp: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Quadratic peak interpolation of ``resp`` around ``idx`` along each axis (voxels)."""
    off = np.zeros(idx.shape, dtype=np.float64)
    z, r, c = idx[:, 0], idx[:, 1], idx[:, 2]
    f0 = resp[z, r, c].astype(np.float64)
    for axis in range(3):
        step = np.zeros(3, dtype=np.int64)
        step[axis] = 1
        fp = resp[z + step[0], r + step[1], c + step[2]].astype(np.float64)
        fm = resp[z - step[0], r - step[1], c - step[2]].astype(np.float64)
        den = fp - 2 * f0 + fm
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(den < 0, 0.5 * (fm - fp) / den, 0.0)
        off[:, axis] = np.clip(d, -0.5, 0.5)
    return off


def _scan_scale(
    vol: np.ndarray,
    mask: np.ndarray,
    sp: tuple[float, float, float],
    sigma_mm: float,
    config: DetectorConfig,
) -> dict[str, np.ndarray] | None:
    """Local LoG maxima at one scale with their Hessian eigenvalues and dot score."""
    if min(vol.shape) < 3:
        return None
    sig_vox = [sigma_mm / s for s in sp]
    g = ndi.gaussian_filter(vol, sigma=sig_vox, mode="nearest", truncate=3.0)
    resp = _laplacian(g, sp)
    resp *= np.float32(-(sigma_mm**2))
    peaks = _face_maxima(resp, config.min_log_hu)
    peaks &= mask
    idx = np.argwhere(peaks)
    if len(idx) == 0:
        return None
    if len(idx) > config.max_maxima_per_scale:
        # the dot score never exceeds a third of the LoG response: the strongest
        # LoG maxima hold every candidate that can make the final list
        val = resp[idx[:, 0], idx[:, 1], idx[:, 2]]
        idx = idx[np.argpartition(-val, config.max_maxima_per_scale)[: config.max_maxima_per_scale]]
    eig = np.linalg.eigvalsh(_hessian_at(g, idx, sp))  # ascending: l1 <= l2 <= l3
    l1, l3 = eig[:, 0], eig[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        dot = np.where(l3 < 0, sigma_mm**2 * l3**2 / np.abs(l1), 0.0)
    return {
        "pos": idx.astype(np.float64) + _subvoxel(resp, idx),
        "score": dot,
        "log": resp[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64),
        "hu": g[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64),
        "eig": eig * sigma_mm**2,
    }


_DIRECTIONS = np.array(
    [
        (a, b, c)
        for a in (-1, 0, 1)
        for b in (-1, 0, 1)
        for c in (-1, 0, 1)
        if (a, b, c) != (0, 0, 0)
    ],
    dtype=np.float64,
)
_DIRECTIONS /= np.linalg.norm(_DIRECTIONS, axis=1, keepdims=True)


def _lung_shell(
    raw: np.ndarray,
    mask: np.ndarray,
    work: np.ndarray,
    radius_mm: np.ndarray,
    sp: tuple[float, float, float],
    air_hu: float,
) -> np.ndarray:
    """Fraction of 26 shell points around each working-grid position that are aerated lung.

    Aerated lung: below ``air_hu`` and inside the lung field (air outside the body is not).
    """
    dist = np.maximum(1.5 * radius_mm, radius_mm + 2.0)
    steps = _DIRECTIONS / np.asarray(sp, dtype=np.float64)  # voxels per mm along each direction
    pts = np.rint(work[:, None, :] + dist[:, None, None] * steps[None, :, :]).astype(np.int64)
    shape = np.asarray(raw.shape)
    inside = np.all((pts >= 0) & (pts < shape), axis=2)
    pts = np.clip(pts, 0, shape - 1)
    at = (pts[..., 0], pts[..., 1], pts[..., 2])
    air = (raw[at] < air_hu) & mask[at]
    return np.asarray((air & inside).mean(axis=1))


def _nms(
    pos_mm: np.ndarray, radius: np.ndarray, order: np.ndarray, config: DetectorConfig
) -> list[int]:
    tree = cKDTree(pos_mm)
    suppressed = np.zeros(len(pos_mm), dtype=bool)
    kept: list[int] = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        kept.append(i)
        if len(kept) >= config.max_candidates:
            break
        reach = max(config.min_distance_mm, config.nms_radius_fraction * float(radius[i]))
        suppressed[tree.query_ball_point(pos_mm[i], reach)] = True
    return kept


def detect_candidates(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    lung: np.ndarray | None = None,
    config: DetectorConfig = DetectorConfig(),
) -> pd.DataFrame:
    """Nodule candidates of a chest CT volume, best first.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(slices, rows, columns)`` volume in HU (e.g. ``ResampledVolume.hu``).
    spacing : tuple of float
        ``(slice, row, column)`` voxel size in mm.
    lung : numpy.ndarray, optional
        Bool lung field of ``hu``'s shape (from :func:`lung_field`); computed
        with ``config.lung`` when omitted. Candidate centres lie inside it.
    config : DetectorConfig
        Scales, working grid, suppression and limits (see the module docs).

    Returns
    -------
    pandas.DataFrame
        One row per candidate sorted by ``score`` descending, columns
        :data:`CANDIDATE_COLUMNS`: ``candidate_id`` (0..n-1 in that order),
        ``z``, ``row``, ``col`` (float voxel coordinates in ``hu``),
        ``radius_mm`` (estimated blob radius), ``score`` (dot enhancement, HU;
        higher is more nodule-like), ``scale_mm`` (Gaussian sigma),
        ``log_response`` (scale-normalised LoG, HU), ``hu_mean`` (smoothed HU
        at the centre), ``eig1..3`` (scale-normalised Hessian eigenvalues,
        ascending). Empty (same columns) when nothing is found.

    Raises
    ------
    ConfigError
        If ``hu`` is not 3-D, ``spacing`` is not three positive values, or
        ``lung`` does not have ``hu``'s shape.
    NotChestError
        If ``lung`` is omitted and the volume has no lung field.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ConfigError(
            f"detect_candidates: expected a (slices, rows, columns) volume, got shape {hu.shape}"
        )
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ConfigError(
            f"detect_candidates: spacing must be three positive mm values, got {spacing}"
        )
    if lung is None:
        lung = lung_field(hu, spacing, config.lung)
    lung = np.asarray(lung, dtype=bool)
    if lung.shape != hu.shape:
        raise ConfigError(
            f"detect_candidates: lung mask shape {lung.shape} differs from the volume's "
            f"{hu.shape}. Fix: pass lung_field(hu, spacing) of the same volume."
        )
    if not lung.any():
        return _empty()
    f = tuple(max(1, round(config.grid_mm / float(s))) for s in spacing)
    fac: tuple[int, int, int] = (f[0], f[1], f[2])
    lo, hi = [], []
    for axis in range(3):
        nz = np.flatnonzero(lung.any(axis=tuple(j for j in range(3) if j != axis)))
        start = max(0, int(nz[0]) - 2 * fac[axis])
        stop = min(hu.shape[axis], int(nz[-1]) + 1 + 2 * fac[axis])
        # whole blocks only
        stop = start + max(fac[axis], (stop - start) // fac[axis] * fac[axis])
        if stop > hu.shape[axis]:
            start = max(0, hu.shape[axis] - (stop - start))
            stop = hu.shape[axis]
        lo.append(start)
        hi.append(stop)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    vol = _block_mean(hu[box], fac)
    mask = _block_any(lung[box], fac)
    sp = (spacing[0] * fac[0], spacing[1] * fac[1], spacing[2] * fac[2])
    np.clip(vol, config.clip_hu[0], config.clip_hu[1], out=vol)
    parenchyma = vol[mask & (vol < -500)]
    background = float(np.median(parenchyma[::7])) if parenchyma.size else config.clip_hu[0]
    raw = vol.copy() if config.min_lung_shell > 0 else vol
    vol[~mask] = background

    levels: dict[int, tuple[np.ndarray, np.ndarray]] = {1: (vol, mask)}
    found: list[dict[str, np.ndarray]] = []
    for radius in config.radii_mm:
        sigma = radius / _SQRT3
        d = 1
        while (
            sigma / (max(sp) * 2 * d) >= config.coarse_sigma_voxels
            and min(vol.shape) // (2 * d) >= 8
        ):
            d *= 2
        if sigma / max(sp) < 0.5 and d == 1 and sigma / min(sp) < 0.5:
            log.debug("radius %.1f mm is below the working grid (%s mm): skipped", radius, sp)
            continue
        if d not in levels:
            dd = (d, d, d)
            levels[d] = (_block_mean(vol, dd), _block_any(mask, dd))
        v_d, m_d = levels[d]
        sp_d = (sp[0] * d, sp[1] * d, sp[2] * d)
        res = _scan_scale(v_d, m_d, sp_d, sigma, config)
        if res is None:
            continue
        # level voxel -> working voxel -> input voxel
        work = (res["pos"] + 0.5) * d - 0.5
        res["pos"] = (work + 0.5) * np.array(fac, dtype=np.float64) - 0.5 + np.array(lo)
        res["sigma"] = np.full(len(work), sigma)
        found.append(res)
    if not found:
        return _empty()
    score = np.concatenate([r["score"] for r in found])
    ok = score >= config.min_score
    if not ok.any():
        return _empty()
    pos = np.concatenate([r["pos"] for r in found])[ok]
    sigma_all = np.concatenate([r["sigma"] for r in found])[ok]
    log_r = np.concatenate([r["log"] for r in found])[ok]
    hu_mean = np.concatenate([r["hu"] for r in found])[ok]
    eig = np.concatenate([r["eig"] for r in found])[ok]
    score = score[ok]
    radius_mm = sigma_all * _SQRT3
    if config.min_lung_shell > 0:
        # before suppression: a blob in the wall neither takes a slot nor suppresses a nodule
        work = (pos - np.asarray(lo, dtype=np.float64) + 0.5) / np.asarray(
            fac, dtype=np.float64
        ) - 0.5
        shell = _lung_shell(raw, mask, work, radius_mm, sp, config.shell_air_hu)
        keep = shell >= config.min_lung_shell
        pos, sigma_all, log_r, hu_mean = pos[keep], sigma_all[keep], log_r[keep], hu_mean[keep]
        eig, score, radius_mm = eig[keep], score[keep], radius_mm[keep]
        if not len(score):
            return _empty()
    order = np.lexsort((-log_r, -score))
    kept = np.asarray(_nms(pos * np.asarray(spacing), radius_mm, order, config), dtype=np.int64)
    out = pd.DataFrame(
        {
            "candidate_id": np.arange(len(kept), dtype=np.int64),
            "z": pos[kept, 0],
            "row": pos[kept, 1],
            "col": pos[kept, 2],
            "radius_mm": radius_mm[kept],
            "score": score[kept],
            "scale_mm": sigma_all[kept],
            "log_response": log_r[kept],
            "hu_mean": hu_mean[kept],
            "eig1": eig[kept, 0],
            "eig2": eig[kept, 1],
            "eig3": eig[kept, 2],
        },
        columns=list(CANDIDATE_COLUMNS),
    )
    log.debug("%d candidates (%d local maxima before suppression)", len(out), len(pos))
    return out
