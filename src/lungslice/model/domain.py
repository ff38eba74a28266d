"""Out-of-domain guard: how far a study lies from the studies a model was trained on.

A model trained on one scanner, protocol or (here) a phantom gives saturated,
meaningless probabilities on a study that looks nothing like its training
data. This module measures that distance and turns it into a verdict:

- :func:`study_descriptor` maps a CT volume to a fixed-length, model-independent
  vector of image statistics (:data:`DESCRIPTOR_NAMES`): geometry, lung-field
  and body HU quantiles, noise and its grain in-plane and along z, edge
  sharpness, how much of the scan is lung, and three properties of real CT
  noise that simple simulations lack: its anisotropy (streaks along the
  patient's long axis), its non-Gaussian texture (kurtosis) and its
  non-stationarity across the body. It is one provider of study
  vectors; learned features (e.g. the mean of a study's candidate features)
  work as well.
- :class:`DomainModel` is fitted on the training studies' vectors ``(n, d)``:
  standardise, optional PCA, then a Mahalanobis distance under a Ledoit-Wolf
  shrunk covariance (default) or the mean distance to the k nearest training
  studies. Its threshold is fixed by patient-grouped cross-validation: the
  ``quantile`` (95 %) of the *held-out* distances, times ``1 + margin``, so at
  least that share of held-out in-domain studies passes.
- :meth:`DomainModel.assess` gives the record a result carries
  (``score``, ``threshold``, ``in_domain``, ``message``).

The fitted model is stored without pickle: :meth:`DomainModel.to_arrays`
(NumPy arrays, e.g. an ``.npz``) plus :meth:`DomainModel.params` (JSON), read
back with :meth:`DomainModel.from_arrays`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from sklearn.covariance import LedoitWolf

from lungslice.errors import BundleMismatchError, ConfigError

__all__ = [
    "DESCRIPTOR_NAMES",
    "DESCRIPTOR_VERSION",
    "GUARD_FEATURES",
    "OUT_OF_DOMAIN_MESSAGE",
    "DomainModel",
    "fit_guard",
    "grouped_folds",
    "study_descriptor",
]

log = logging.getLogger(__name__)

#: What a report, a KOS title and the CLI say when the guard fires.
OUT_OF_DOMAIN_MESSAGE = (
    "outside the training domain: scores not calibrated for this scanner or protocol"
)

#: Names of the entries of :func:`study_descriptor`, in order.
DESCRIPTOR_NAMES: tuple[str, ...] = (
    "slice_spacing_mm",
    "pixel_spacing_mm",
    "fov_mm",
    "lung_slice_fraction",
    "lung_area_fraction",
    "lung_hu_p05",
    "lung_hu_p25",
    "lung_hu_p50",
    "lung_hu_p75",
    "lung_hu_p95",
    "lung_dense_fraction",
    "body_hu_p10",
    "body_hu_p50",
    "body_hu_p90",
    "body_bone_fraction",
    "body_area_cm2",
    "air_hu_p50",
    "noise_air_hu",
    "noise_soft_hu",
    "noise_lung_hu",
    "noise_corr_inplane",
    "noise_anisotropy",
    "noise_kurtosis",
    "noise_nonstationarity",
    "noise_corr_z",
    "edge_gradient_hu_per_mm",
    "noise_tail_ratio",
)

#: Bumped whenever an entry of :func:`study_descriptor` changes meaning; caches
#: that store descriptors include it in their key.
DESCRIPTOR_VERSION = 2

#: The descriptor entries the guard scores by default: how the scan was acquired
#: and reconstructed (pixel size, HU calibration, noise level and texture,
#: kernel sharpness), not the patient's anatomy or disease, which vary inside
#: any domain. ``noise_tail_ratio`` stands in for ``noise_kurtosis``: a few
#: bright pixels in soft tissue (calcium, contrast) send the kurtosis of one
#: study in twenty to 15-60, and such a study alone would set the threshold.
GUARD_FEATURES: tuple[str, ...] = (
    "pixel_spacing_mm",
    "air_hu_p50",
    "body_hu_p50",
    "noise_air_hu",
    "noise_soft_hu",
    "noise_lung_hu",
    "noise_corr_inplane",
    "noise_anisotropy",
    "noise_tail_ratio",
    "noise_nonstationarity",
    "noise_corr_z",
    "edge_gradient_hu_per_mm",
)

_BODY_HU = -500.0  # body: the largest object above this
_PAD_BELOW = -1500.0  # out-of-field padding (GE writes -3024 HU)
_MIN_LUNG_PIXELS_MM2 = 100.0  # smaller air pockets are not lung
_LUNG_SLICE_SHARE = 0.05  # a lung slice: lung field >= 5 % of the body
_NO_LUNG_HU = 0.0  # lung quantiles of a study without lung field (soft tissue)
_BLOCK_MM = 24.0  # blocks over which noise stationarity is measured
_METHODS = ("mahalanobis", "knn")
_GAUSS_TAIL = 2.0 * 2.326348 / (2.0 * 0.674490)  # (q99 - q1) / (q75 - q25) of a Gaussian


# --------------------------------------------------------------------------- descriptor


def _body(sl: np.ndarray) -> np.ndarray:
    dense = sl > _BODY_HU
    lab, n = ndi.label(dense)
    if n == 0:
        return dense
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    out: np.ndarray = ndi.binary_fill_holes(lab == int(sizes.argmax()))
    return out


def _lung(sl: np.ndarray, body: np.ndarray, min_pixels: int) -> np.ndarray:
    air = (sl < _BODY_HU) & (sl > _PAD_BELOW) & body
    lab, n = ndi.label(air)
    if n == 0:
        return air
    sizes = np.bincount(lab.ravel())
    keep = np.flatnonzero(sizes >= min_pixels)
    keep = keep[keep > 0]
    out: np.ndarray = ndi.binary_fill_holes(np.isin(lab, keep))
    return out


def _residual(sl: np.ndarray) -> np.ndarray:
    """High-pass residual: the slice minus its 5 x 5 local mean.

    White noise keeps 24/25 of its variance (corrected for in :func:`_std`).
    """
    out: np.ndarray = sl - ndi.uniform_filter(sl, 5, mode="nearest")
    return out


def _erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Erosion by a (2r+1)^2 square (a separable box filter: fast on large slices)."""
    out: np.ndarray = (
        ndi.uniform_filter(mask.astype(np.float32), 2 * r + 1, mode="constant") > 0.999
    )
    return out


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Dilation by a (2r+1)^2 square."""
    out: np.ndarray = ndi.uniform_filter(mask.astype(np.float32), 2 * r + 1, mode="constant") > 1e-3
    return out


def _upsample(mask: np.ndarray, f: int, shape: tuple[int, ...]) -> np.ndarray:
    if f == 1:
        return mask
    big = np.repeat(np.repeat(mask, f, axis=0), f, axis=1)
    return big[: shape[0], : shape[1]]


def _thin(v: np.ndarray, cap: int = 20_000) -> np.ndarray:
    return v if v.size <= cap else v[:: math.ceil(v.size / cap)]


def _std(values: list[np.ndarray]) -> float:
    v = np.concatenate(values) if values else np.zeros(0)
    return float(np.std(v) * math.sqrt(25.0 / 24.0)) if v.size >= 50 else float("nan")


def _corr(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    x = np.concatenate(a) if a else np.zeros(0)
    y = np.concatenate(b) if b else np.zeros(0)
    if x.size < 50:
        return float("nan")
    x = x - x.mean()
    y = y - y.mean()
    den = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    return float(np.dot(x, y) / den) if den > 0 else float("nan")


def _kurtosis(values: list[np.ndarray]) -> float:
    v = np.concatenate(values) if values else np.zeros(0)
    if v.size < 50:
        return float("nan")
    v = v - v.mean()
    var = float(np.mean(v * v))
    return float(np.mean(v**4) / var**2) if var > 0 else float("nan")


def _tail_ratio(v: np.ndarray) -> float:
    """``(q99 - q1) / (q75 - q25)`` of one slice's residual, 1.0 for Gaussian noise.

    Heavier tails (streaks, real CT's non-Gaussian noise) give more than 1;
    unlike the kurtosis, a handful of extreme pixels barely move it.
    """
    if v.size < 500:
        return float("nan")
    q1, q25, q75, q99 = np.percentile(v, (1, 25, 75, 99))
    iqr = float(q75 - q25)
    return float((q99 - q1) / iqr / _GAUSS_TAIL) if iqr > 0 else float("nan")


def _block_stds(res: np.ndarray, mask: np.ndarray, bs: int) -> np.ndarray:
    """Residual std of each bs x bs block that is at least half inside ``mask``."""
    h, w = (res.shape[0] // bs) * bs, (res.shape[1] // bs) * bs
    if h == 0 or w == 0:
        return np.zeros(0)
    shape = (h // bs, bs, w // bs, bs)
    m = mask[:h, :w].reshape(shape).astype(np.float64)
    r = np.where(mask, res, 0.0)[:h, :w].reshape(shape).astype(np.float64)
    n = m.sum(axis=(1, 3))
    s1 = r.sum(axis=(1, 3))
    s2 = (r * r).sum(axis=(1, 3))
    ok = n >= 0.5 * bs * bs
    if not ok.any():
        return np.zeros(0)
    var = s2[ok] / n[ok] - (s1[ok] / n[ok]) ** 2
    out: np.ndarray = np.sqrt(np.maximum(var, 0.0))
    return out


def _q(values: list[np.ndarray], qs: Sequence[float], fill: float) -> list[float]:
    v = np.concatenate(values) if values else np.zeros(0)
    if v.size == 0:
        return [fill] * len(qs)
    return [float(x) for x in np.percentile(v, qs)]


def study_descriptor(
    hu: np.ndarray,
    spacing: Sequence[float],
    lung: np.ndarray | None = None,
    *,
    max_slices: int = 10,
) -> np.ndarray:
    """Image statistics of one study that tell scanners, protocols and non-chest inputs apart.

    Up to ``max_slices`` evenly spaced slices (each with its next slice, for
    the noise correlation along z) are measured at full in-plane resolution,
    the masks on a grid of at most about 256 pixels. Every entry is finite.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(z, y, x)`` volume in HU, slices ascending. Pass the same kind of
        volume at training and prediction time (the pipeline's 1 mm
        ``ResampledVolume.hu``); out-of-field padding may be -1000 or below -1500.
    spacing : sequence of float
        ``(slice, row, column)`` spacing in mm.
    lung : numpy.ndarray, optional
        ``(z, y, x)`` boolean lung field of ``hu``; default: per slice, the
        air-filled regions (>= 100 mm^2) inside the body with holes filled.
    max_slices : int
        Slices measured.

    The noise figures use the high-pass residual (slice minus its 5 x 5 mean):
    its std in air outside the body, in soft tissue (-50..100 HU, eroded) and
    in the lung field; in soft tissue also its lag-1 correlation (mean of x
    and y; ``noise_anisotropy`` = ``|corr_x - corr_y|``), its kurtosis (3 for
    Gaussian noise), the coefficient of variation of its std over 24 mm
    blocks (``noise_nonstationarity``) and its correlation with the next
    slice (``noise_corr_z``: how thick the source slices were), and the
    median over slices of its tail ratio ``(q99 - q1) / (q75 - q25)``
    relative to a Gaussian's (``noise_tail_ratio``, 1 for Gaussian noise).

    Returns
    -------
    numpy.ndarray
        ``(len(DESCRIPTOR_NAMES),)`` float64, named by :data:`DESCRIPTOR_NAMES`.
        A study without lung field gets lung quantiles of 0 HU (soft tissue)
        and lung noise 0.

    Raises
    ------
    ConfigError
        If ``hu`` is not 3-D, ``spacing`` has not three positive entries, or
        ``lung`` does not have the shape of ``hu``.
    """
    vol = np.asarray(hu)
    if vol.ndim != 3 or vol.shape[0] < 1 or min(vol.shape[1:]) < 8:
        raise ConfigError(
            f"study_descriptor: expected a (z, y, x) volume with y, x >= 8, got shape {vol.shape}"
        )
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ConfigError(f"study_descriptor: expected 3 positive spacings (mm), got {spacing}")
    if lung is not None and np.shape(lung) != vol.shape:
        raise ConfigError(
            f"study_descriptor: lung mask shape {np.shape(lung)} != volume shape {vol.shape}"
        )
    if max_slices < 1:
        raise ConfigError(f"study_descriptor: max_slices must be >= 1, got {max_slices}")
    nz = vol.shape[0]
    picks = np.unique(np.linspace(0, max(nz - 2, 0), min(max_slices, nz)).round().astype(int))
    px_area = sp[1] * sp[2]
    lung_v: list[np.ndarray] = []
    body_v: list[np.ndarray] = []
    air_v: list[np.ndarray] = []
    r_air: list[np.ndarray] = []
    r_soft: list[np.ndarray] = []
    r_lung: list[np.ndarray] = []
    lag_a: list[np.ndarray] = []
    lag_b: list[np.ndarray] = []
    lag_c: list[np.ndarray] = []
    lag_d: list[np.ndarray] = []
    block_cv: list[float] = []
    tails: list[float] = []
    z_a: list[np.ndarray] = []
    z_b: list[np.ndarray] = []
    edges: list[np.ndarray] = []
    lung_slices = 0
    lung_px = body_px = 0
    body_areas: list[float] = []
    # masks on a grid of at most ~256 pixels (fast), noise on the full-resolution slice
    f = max(1, round(min(vol.shape[1:]) / 256))
    px = (sp[1] + sp[2]) / 2.0 * f  # mm per mask pixel

    def rad(mm: float) -> int:
        return max(1, round(mm / px))

    min_lung = max(4, round(_MIN_LUNG_PIXELS_MM2 / (px * px)))
    for k in picks:
        sl = vol[k].astype(np.float32)
        small = sl[::f, ::f]
        body_s = _body(small)
        if lung is not None:
            lung_s = np.asarray(lung[k], dtype=bool)[::f, ::f]
        else:
            lung_s = _lung(small, body_s, min_lung)
        smooth = ndi.uniform_filter(small, 3)
        soft_s = _erode((smooth > -50) & (smooth < 100) & body_s, rad(2.0))
        out_s = ~_dilate(body_s, rad(6.0)) & (small > _PAD_BELOW) & (small < -900)
        out_s = _erode(out_s, rad(2.0))
        inner_s = _erode(lung_s, rad(2.0))
        rim_s = body_s & ~_erode(body_s, 1)
        body = _upsample(body_s, f, sl.shape)
        lf = _upsample(lung_s & body_s, f, sl.shape)
        soft = _upsample(soft_s, f, sl.shape)
        nb = int(body_s.sum()) * f * f
        nl = int(lf.sum())
        body_px += nb
        lung_px += nl
        body_areas.append(nb * px_area / 100.0)
        if nl > 0 and nl >= _LUNG_SLICE_SHARE * max(nb, 1):
            lung_slices += 1
            lung_v.append(_thin(sl[lf]))
        body_v.append(_thin(sl[body & ~lf]))
        res = _residual(sl)
        outside = _upsample(out_s, f, sl.shape) & (np.abs(res) > 1e-4)  # not constant padding
        air_v.append(_thin(sl[outside]))
        r_air.append(_thin(res[outside]))
        r_soft.append(_thin(res[soft]))
        tail = _tail_ratio(res[soft])
        if math.isfinite(tail):
            tails.append(tail)
        pair = soft[:, :-1] & soft[:, 1:]  # neighbours along x (columns)
        lag_a.append(_thin(res[:, :-1][pair]))
        lag_b.append(_thin(res[:, 1:][pair]))
        pair = soft[:-1] & soft[1:]  # along y (rows)
        lag_c.append(_thin(res[:-1][pair]))
        lag_d.append(_thin(res[1:][pair]))
        stds = _block_stds(res, soft, max(4, round(_BLOCK_MM / ((sp[1] + sp[2]) / 2.0))))
        if stds.size >= 4 and stds.mean() > 0:
            block_cv.append(float(stds.std() / stds.mean()))
        r_lung.append(_thin(res[_upsample(inner_s, f, sl.shape)]))
        if k + 1 < nz:
            res2 = _residual(vol[k + 1].astype(np.float32))
            z_a.append(_thin(res[soft]))
            z_b.append(_thin(res2[soft]))
        rim = _upsample(rim_s, f, sl.shape)
        if rim.any():
            gy = np.zeros_like(sl)
            gx = np.zeros_like(sl)
            gy[1:-1] = (sl[2:] - sl[:-2]) / (2 * sp[1])
            gx[:, 1:-1] = (sl[:, 2:] - sl[:, :-2]) / (2 * sp[2])
            edges.append(np.array([np.percentile(np.hypot(gy[rim], gx[rim]), 90)]))
    n_picks = len(picks)
    lung_q = _q(lung_v, (5, 25, 50, 75, 95), _NO_LUNG_HU)
    lv = np.concatenate(lung_v) if lung_v else np.zeros(0)
    body_q = _q(body_v, (10, 50, 90), _NO_LUNG_HU)
    bv = np.concatenate(body_v) if body_v else np.zeros(0)
    noise_lung = _std(r_lung)
    values = [
        sp[0],
        (sp[1] + sp[2]) / 2.0,
        vol.shape[2] * sp[2],
        lung_slices / n_picks,
        lung_px / max(body_px, 1),
        *lung_q,
        float((lv > -500).mean()) if lv.size else 1.0,
        *body_q,
        float((bv > 300).mean()) if bv.size else 0.0,
        float(np.median(body_areas)) if body_areas else 0.0,
        _q(air_v, (50,), -1000.0)[0],
        _std(r_air),
        _std(r_soft),
        noise_lung if math.isfinite(noise_lung) else 0.0,
        (_corr(lag_a, lag_b) + _corr(lag_c, lag_d)) / 2.0,
        abs(_corr(lag_a, lag_b) - _corr(lag_c, lag_d)),
        _kurtosis(r_soft),
        float(np.median(block_cv)) if block_cv else float("nan"),
        _corr(z_a, z_b),
        float(np.median(np.concatenate(edges))) if edges else 0.0,
        float(np.median(tails)) if tails else float("nan"),
    ]
    out = np.asarray(values, dtype=np.float64)
    # noise figures need enough pixels of a kind; a volume without them gets 0
    bad = ~np.isfinite(out)
    if bad.any():
        log.debug(
            "study_descriptor: %s undefined (too few pixels), set to 0",
            [DESCRIPTOR_NAMES[i] for i in np.flatnonzero(bad)],
        )
        out[bad] = 0.0
    return out


# --------------------------------------------------------------------------- model


def grouped_folds(groups: Sequence[Any] | np.ndarray, n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold number of each row, whole groups (patients) per fold, groups shuffled by ``seed``.

    Parameters
    ----------
    groups : array-like
        ``(n,)`` group (patient) of each row.
    n_folds : int
        Requested folds; at most the number of groups are made.
    seed : int
        Seeds the shuffle of the groups.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int fold of each row, ``0 .. min(n_folds, n_groups) - 1``.
    """
    g = np.asarray([str(x) for x in groups])
    uniq = np.unique(g)
    k = min(int(n_folds), uniq.size)
    if k < 2:
        raise ConfigError(
            f"grouped_folds: need >= 2 folds and >= 2 groups (patients), got n_folds={n_folds} "
            f"and {uniq.size} group(s)"
        )
    order = np.random.default_rng(seed).permutation(uniq.size)
    fold_of = dict(zip(uniq[order], np.arange(uniq.size) % k, strict=True))
    return np.array([fold_of[x] for x in g], dtype=np.int64)


class DomainModel:
    """Distance of study vectors from the training studies, with a CV-fixed threshold.

    Parameters
    ----------
    method : {"knn", "mahalanobis"}
        ``"knn"`` (the default): mean Euclidean distance to the
        ``n_neighbors`` nearest training studies in the standardised space.
        ``"mahalanobis"``: distance to the training mean under a Ledoit-Wolf
        shrunk covariance of the standardised (optionally PCA-reduced)
        vectors.
    features : sequence of str, optional
        Names of the columns scored (e.g. :data:`GUARD_FEATURES`), picked by
        name from the ``feature_names`` given to :meth:`fit`; :meth:`score`
        then takes vectors with all those input columns. Default: every column.
    n_components : int, float or None
        PCA after standardising: an int keeps that many components, a float in
        (0, 1) the components explaining that share of variance; ``None`` (the
        default) keeps every standardised feature. Both are capped at
        ``n_train - 1``.
    n_neighbors : int
        k of the k-NN distance (capped at the training fold's size).
    quantile : float
        Share of held-out in-domain studies the threshold lets pass.
    margin : float
        The threshold is the held-out ``quantile`` times ``1 + margin``.
    n_folds : int
        Patient-grouped folds of the threshold's cross-validation.
    min_scale : float
        Floor of each feature's standard deviation, relative to
        ``max(1, |mean|)``: a feature constant in training (e.g. the slice
        spacing of resampled volumes) still has a finite scale.
    seed : int
        Seeds the fold assignment.

    Attributes
    ----------
    threshold_ : float
        Studies with ``score <= threshold_`` are in the domain.
    cv_scores_ : numpy.ndarray
        Held-out score of each training study (from the fold that left it out).
    cv_pass_rate_ : float
        Share of ``cv_scores_`` at or below ``threshold_``.
    train_scores_ : numpy.ndarray
        In-sample scores of the training studies under the final model.
    mean_, scale_, components_, location_, precision_, train_embedded_ : numpy.ndarray
        The fitted transform and distance.
    feature_names_ : tuple of str
        Names of the scored columns.
    input_names_ : tuple of str
        Names of the columns :meth:`score` takes.
    train_min_, train_max_ : numpy.ndarray
        Range of each scored column over the training studies (for the
        explanation :meth:`assess` gives).
    n_train_, n_groups_, n_folds_ : int
    """

    threshold_: float
    cv_scores_: np.ndarray
    cv_pass_rate_: float
    cv_quantile_: float
    train_scores_: np.ndarray
    mean_: np.ndarray
    scale_: np.ndarray
    components_: np.ndarray
    location_: np.ndarray
    precision_: np.ndarray
    train_embedded_: np.ndarray
    feature_names_: tuple[str, ...]
    input_names_: tuple[str, ...]
    train_min_: np.ndarray
    train_max_: np.ndarray
    n_train_: int
    n_groups_: int
    n_folds_: int

    def __init__(
        self,
        method: str = "knn",
        *,
        features: Sequence[str] | None = None,
        n_components: int | float | None = None,
        n_neighbors: int = 3,
        quantile: float = 0.95,
        margin: float = 0.1,
        n_folds: int = 5,
        min_scale: float = 0.01,
        seed: int = 0,
    ) -> None:
        if method not in _METHODS:
            raise ConfigError(f"DomainModel: method must be one of {_METHODS}, got {method!r}")
        if not 0.0 < quantile <= 1.0:
            raise ConfigError(f"DomainModel: quantile must be in (0, 1], got {quantile}")
        if not margin >= 0.0:
            raise ConfigError(f"DomainModel: margin must be >= 0, got {margin}")
        if n_neighbors < 1:
            raise ConfigError(f"DomainModel: n_neighbors must be >= 1, got {n_neighbors}")
        if n_components is not None and not (
            (isinstance(n_components, int) and n_components >= 1)
            or (isinstance(n_components, float) and 0.0 < n_components < 1.0)
        ):
            raise ConfigError(
                "DomainModel: n_components must be None, an int >= 1 or a float in (0, 1), "
                f"got {n_components!r}"
            )
        if not min_scale > 0:
            raise ConfigError(f"DomainModel: min_scale must be > 0, got {min_scale}")
        self.method = method
        self.features = None if features is None else tuple(str(f) for f in features)
        self.n_components = n_components
        self.n_neighbors = int(n_neighbors)
        self.quantile = float(quantile)
        self.margin = float(margin)
        self.n_folds = int(n_folds)
        self.min_scale = float(min_scale)
        self.seed = int(seed)

    # ----------------------------------------------------------------- core fit / score

    def _fit_core(self, X: np.ndarray) -> dict[str, np.ndarray]:
        n, d = X.shape
        mean = X.mean(axis=0)
        scale = np.maximum(X.std(axis=0), self.min_scale * np.maximum(1.0, np.abs(mean)))
        Z = (X - mean) / scale
        if self.n_components is None:
            comps = np.eye(d)
        else:
            _, s, vt = np.linalg.svd(Z - Z.mean(axis=0), full_matrices=False)
            if isinstance(self.n_components, float):
                var = s**2 / max(float(np.sum(s**2)), 1e-300)
                k = int(np.searchsorted(np.cumsum(var), self.n_components) + 1)
            else:
                k = self.n_components
            k = max(1, min(k, n - 1, vt.shape[0]))
            comps = vt[:k]
        E = Z @ comps.T
        if self.method == "mahalanobis":
            lw = LedoitWolf().fit(E)
            location = np.asarray(lw.location_, dtype=np.float64)
            precision = np.asarray(lw.precision_, dtype=np.float64)
        else:
            location = E.mean(axis=0)
            precision = np.zeros((0, 0))
        return {
            "mean": mean,
            "scale": scale,
            "components": comps,
            "location": location,
            "precision": precision,
            "train_embedded": E if self.method == "knn" else np.zeros((0, E.shape[1])),
        }

    def _score_core(self, core: Mapping[str, np.ndarray], X: np.ndarray) -> np.ndarray:
        finite = np.isfinite(X).all(axis=1)
        Xf = np.where(np.isfinite(X), X, 0.0)
        E = ((Xf - core["mean"]) / core["scale"]) @ core["components"].T
        if self.method == "mahalanobis":
            diff = E - core["location"]
            d2 = np.einsum("ij,jk,ik->i", diff, core["precision"], diff)
            out = np.sqrt(np.maximum(d2, 0.0))
        else:
            train = core["train_embedded"]
            k = min(self.n_neighbors, train.shape[0])
            dist = np.sqrt(((E[:, None, :] - train[None, :, :]) ** 2).sum(axis=2))
            out = np.sort(dist, axis=1)[:, :k].mean(axis=1)
        if not finite.all():
            log.warning(
                "DomainModel: %d stud(ies) with non-finite features scored as infinitely far",
                int((~finite).sum()),
            )
        return np.where(finite, out, np.inf)

    # ----------------------------------------------------------------- public API

    def fit(
        self,
        X: np.ndarray,
        groups: Sequence[Any] | np.ndarray | None = None,
        feature_names: Sequence[str] | None = None,
    ) -> DomainModel:
        """Fit on the training studies and fix the threshold by grouped cross-validation.

        Parameters
        ----------
        X : numpy.ndarray
            ``(n_studies, d)`` finite study vectors (e.g. :func:`study_descriptor`).
        groups : array-like, optional
            ``(n_studies,)`` patient of each study (a patient's studies stay in
            one fold); default: each study its own patient.
        feature_names : sequence of str, optional
            Names of the ``d`` columns (stored, and checked by nothing else).

        Returns
        -------
        DomainModel
            ``self``.

        Raises
        ------
        ConfigError
            If ``X`` is not 2-D, not finite, has fewer than 3 studies or 3
            patients, or ``groups`` / ``feature_names`` do not match it.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] < 1:
            raise ConfigError(f"DomainModel.fit: expected (n_studies, d) vectors, got {X.shape}")
        if not np.isfinite(X).all():
            rows, cols = np.nonzero(~np.isfinite(X))
            raise ConfigError(
                f"DomainModel.fit: {rows.size} non-finite value(s), first at study {rows[0]}, "
                f"feature {cols[0]}. Fix: drop or repair those studies before fitting."
            )
        n, d = X.shape
        g = np.arange(n).astype(str) if groups is None else np.asarray([str(x) for x in groups])
        if g.shape != (n,):
            raise ConfigError(f"DomainModel.fit: {g.size} groups for {n} studies")
        n_groups = int(np.unique(g).size)
        if n < 3 or n_groups < 3:
            raise ConfigError(
                f"DomainModel.fit: need >= 3 studies from >= 3 patients, got {n} studies "
                f"from {n_groups} patient(s)"
            )
        names = (
            tuple(f"f{i}" for i in range(d))
            if feature_names is None
            else tuple(str(x) for x in feature_names)
        )
        if len(names) != d:
            raise ConfigError(f"DomainModel.fit: {len(names)} feature names for {d} features")
        self.input_names_ = names
        if self.features is not None:
            unknown = [f for f in self.features if f not in names]
            if unknown:
                raise ConfigError(
                    f"DomainModel.fit: features {unknown} are not among the columns "
                    f"{list(names)}. Fix: pass feature_names naming every column of X."
                )
            X = X[:, [names.index(f) for f in self.features]]
            names = self.features
            d = X.shape[1]
        folds = grouped_folds(g, self.n_folds, self.seed)
        cv = np.empty(n)
        for f in np.unique(folds):
            test = folds == f
            core = self._fit_core(X[~test])
            cv[test] = self._score_core(core, X[test])
        q = float(np.quantile(cv, self.quantile, method="higher"))
        self.threshold_ = q * (1.0 + self.margin)
        self.cv_scores_ = cv
        self.cv_pass_rate_ = float(np.mean(cv <= self.threshold_))
        self.cv_quantile_ = q
        core = self._fit_core(X)
        for key, value in core.items():
            setattr(self, f"{key}_", value)
        self.train_scores_ = self._score_core(core, X)
        self.feature_names_ = names
        self.train_min_ = X.min(axis=0)
        self.train_max_ = X.max(axis=0)
        self.n_train_ = n
        self.n_groups_ = n_groups
        self.n_folds_ = int(folds.max() + 1)
        log.info(
            "DomainModel(%s): threshold %.3g from %d-fold grouped CV on %d studies "
            "(%d patients), held-out pass rate %.3f",
            self.method,
            self.threshold_,
            self.n_folds_,
            n,
            n_groups,
            self.cv_pass_rate_,
        )
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise ConfigError(
                "DomainModel: not fitted. Fix: call fit(X) or from_arrays(...) first."
            )

    def _core(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, f"{k}_") for k in _ARRAYS}

    def score(self, X: np.ndarray) -> np.ndarray:
        """Distance of each study from the training studies (larger = further).

        Parameters
        ----------
        X : numpy.ndarray
            ``(n, d_in)`` or ``(d_in,)`` study vectors with the columns
            :meth:`fit` was given (``input_names_``), or ``(n, d)`` with just
            the scored ones. A study with a non-finite entry scores ``inf``
            (outside the domain).

        Returns
        -------
        numpy.ndarray
            ``(n,)`` float distances.

        Raises
        ------
        BundleMismatchError
            If the width matches neither the input nor the scored columns.
        """
        self._check_fitted()
        return self._score_core(self._core(), self._select(X))

    def _select(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        d = self.mean_.shape[0]
        if X.ndim == 2 and X.shape[1] == d:
            return X
        names = self.input_names_
        if X.ndim == 2 and X.shape[1] == len(names) and self.features is not None:
            return X[:, [names.index(f) for f in self.feature_names_]]
        if (
            X.ndim == 2
            and X.shape[1] == len(DESCRIPTOR_NAMES)
            and all(f in DESCRIPTOR_NAMES for f in self.feature_names_)
        ):
            # a bundle fitted on an earlier study_descriptor: its entries by name
            return X[:, [DESCRIPTOR_NAMES.index(f) for f in self.feature_names_]]
        raise BundleMismatchError(
            f"DomainModel.score: the model scores {d} features "
            f"({', '.join(self.feature_names_[:4])}, ...) of {len(names)} input columns, "
            f"got vectors of shape {X.shape}. Fix: compute the study vectors with the "
            "lungslice version that trained the model bundle, or retrain the bundle."
        )

    def verdict(self, X: np.ndarray) -> np.ndarray:
        """``True`` for each study in the training domain (``score <= threshold_``)."""
        return self.score(X) <= self.threshold_

    def assess(self, x: np.ndarray) -> dict[str, Any]:
        """The record one study's result carries.

        Parameters
        ----------
        x : numpy.ndarray
            ``(d,)`` one study's vector.

        Returns
        -------
        dict
            ``{"score", "threshold", "in_domain", "method", "message",
            "furthest"}``; ``message`` is :data:`OUT_OF_DOMAIN_MESSAGE` outside
            the domain, ``None`` inside. ``score`` is None (JSON null) when
            infinite. ``furthest`` names the (up to) three scored features
            furthest outside the training range, in training standard
            deviations beyond it: ``[{"feature", "value", "train_min",
            "train_max", "sd_outside"}]`` (empty when all lie inside).
        """
        row = self._select(np.asarray(x, dtype=np.float64).reshape(1, -1))
        s = float(self._score_core(self._core(), row)[0])
        inside = bool(s <= self.threshold_)
        return {
            "score": s if math.isfinite(s) else None,
            "threshold": float(self.threshold_),
            "in_domain": inside,
            "method": self.method,
            "message": None if inside else OUT_OF_DOMAIN_MESSAGE,
            "furthest": self.furthest(row[0]),
        }

    def furthest(self, x: np.ndarray, top: int = 3) -> list[dict[str, Any]]:
        """The scored features of one study furthest outside the training range.

        Parameters
        ----------
        x : numpy.ndarray
            ``(d,)`` the scored columns of one study.
        top : int
            At most this many.

        Returns
        -------
        list of dict
            ``{"feature", "value", "train_min", "train_max", "sd_outside"}``,
            largest ``sd_outside`` (distance beyond the range in units of the
            feature's training scale) first; features inside their range are
            left out.
        """
        if not hasattr(self, "train_min_"):
            return []
        v = np.asarray(x, dtype=np.float64)
        lo, hi = self.train_min_, self.train_max_
        beyond = np.maximum(lo - v, 0.0) + np.maximum(v - hi, 0.0)
        sd = np.where(np.isfinite(v), beyond / self.scale_, np.inf)
        order = [int(i) for i in np.argsort(-sd) if sd[i] > 0][:top]
        return [
            {
                "feature": self.feature_names_[i],
                "value": float(v[i]) if math.isfinite(v[i]) else None,
                "train_min": float(lo[i]),
                "train_max": float(hi[i]),
                "sd_outside": float(sd[i]) if math.isfinite(sd[i]) else None,
            }
            for i in order
        ]

    # ----------------------------------------------------------------- storage

    def params(self) -> dict[str, Any]:
        """Hyper-parameters, threshold and scalar statistics as JSON-able values."""
        self._check_fitted()
        return {
            "method": self.method,
            "features": None if self.features is None else list(self.features),
            "input_names": list(self.input_names_),
            "n_components": self.n_components,
            "n_neighbors": self.n_neighbors,
            "quantile": self.quantile,
            "margin": self.margin,
            "n_folds": self.n_folds,
            "min_scale": self.min_scale,
            "seed": self.seed,
            "threshold": float(self.threshold_),
            "cv_quantile": float(self.cv_quantile_),
            "cv_pass_rate": float(self.cv_pass_rate_),
            "feature_names": list(self.feature_names_),
            "n_train": int(self.n_train_),
            "n_groups": int(self.n_groups_),
            "n_folds_used": int(self.n_folds_),
        }

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays (no pickle): ``numpy.savez(path, **model.to_arrays())``."""
        self._check_fitted()
        out = {k: np.asarray(v, dtype=np.float64) for k, v in self._core().items()}
        out["cv_scores"] = np.asarray(self.cv_scores_, dtype=np.float64)
        out["train_min"] = np.asarray(self.train_min_, dtype=np.float64)
        out["train_max"] = np.asarray(self.train_max_, dtype=np.float64)
        out["train_scores"] = np.asarray(self.train_scores_, dtype=np.float64)
        return out

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], params: Mapping[str, Any]
    ) -> DomainModel:
        """Rebuild a fitted model from :meth:`to_arrays` and :meth:`params`.

        Raises
        ------
        BundleMismatchError
            If an array or parameter is missing or the shapes disagree.
        """
        need = (*_ARRAYS, "cv_scores", "train_scores")
        missing = [k for k in need if k not in arrays]
        missing += [k for k in ("method", "threshold", "feature_names") if k not in params]
        if missing:
            raise BundleMismatchError(
                f"DomainModel.from_arrays: missing {', '.join(missing)}. "
                "Fix: store both model.to_arrays() and model.params()."
            )
        n_comp = params.get("n_components")
        features = params.get("features")
        model = cls(
            str(params["method"]),
            features=None if features is None else [str(f) for f in features],
            n_components=n_comp
            if n_comp is None
            else (float(n_comp) if float(n_comp) < 1 else int(n_comp)),
            n_neighbors=int(params.get("n_neighbors", 3)),
            quantile=float(params.get("quantile", 0.95)),
            margin=float(params.get("margin", 0.0)),
            n_folds=int(params.get("n_folds", 5)),
            min_scale=float(params.get("min_scale", 0.01)),
            seed=int(params.get("seed", 0)),
        )
        for k in _ARRAYS:
            setattr(model, f"{k}_", np.asarray(arrays[k], dtype=np.float64))
        d = model.mean_.shape[0]
        if model.scale_.shape != (d,) or model.components_.shape[1:] != (d,):
            raise BundleMismatchError(
                f"DomainModel.from_arrays: inconsistent shapes mean {model.mean_.shape}, "
                f"scale {model.scale_.shape}, components {model.components_.shape}"
            )
        model.threshold_ = float(params["threshold"])
        model.cv_quantile_ = float(params.get("cv_quantile", float("nan")))
        model.cv_pass_rate_ = float(params.get("cv_pass_rate", float("nan")))
        model.cv_scores_ = np.asarray(arrays["cv_scores"], dtype=np.float64)
        model.train_scores_ = np.asarray(arrays["train_scores"], dtype=np.float64)
        model.feature_names_ = tuple(str(x) for x in params["feature_names"])
        if len(model.feature_names_) != d:
            raise BundleMismatchError(
                f"DomainModel.from_arrays: {len(model.feature_names_)} feature names "
                f"for {d} features"
            )
        model.input_names_ = tuple(str(x) for x in params.get("input_names", model.feature_names_))
        if "train_min" in arrays and "train_max" in arrays:
            model.train_min_ = np.asarray(arrays["train_min"], dtype=np.float64)
            model.train_max_ = np.asarray(arrays["train_max"], dtype=np.float64)
        model.n_train_ = int(params.get("n_train", model.cv_scores_.size))
        model.n_groups_ = int(params.get("n_groups", model.n_train_))
        model.n_folds_ = int(params.get("n_folds_used", model.n_folds))
        return model

    def to_dict(self) -> dict[str, Any]:
        """A summary for a bundle's ``model.json`` or a report.

        Method, feature space, threshold and how it was fixed, held-out pass rate.
        """
        self._check_fitted()
        cv = self.cv_scores_
        space = (
            f"{self.components_.shape[0]} PCA components of"
            if self.n_components is not None
            else "all"
        )
        return {
            "method": self.method,
            "space": f"{space} {self.mean_.shape[0]} standardised features",
            "threshold": float(self.threshold_),
            "threshold_rule": (
                f"{self.quantile:.0%} quantile (numpy 'higher') of held-out scores from "
                f"{self.n_folds_}-fold patient-grouped cross-validation, times 1 + {self.margin:g}"
            ),
            "cv_pass_rate": float(self.cv_pass_rate_),
            "cv_scores": {
                "min": float(np.min(cv)),
                "median": float(np.median(cv)),
                "max": float(np.max(cv)),
            },
            "n_train": int(self.n_train_),
            "n_patients": int(self.n_groups_),
            "feature_names": list(self.feature_names_),
            "message_when_outside": OUT_OF_DOMAIN_MESSAGE,
        }


_ARRAYS = ("mean", "scale", "components", "location", "precision", "train_embedded")


def fit_guard(
    descriptors: Sequence[np.ndarray] | np.ndarray,
    groups: Sequence[Any] | np.ndarray,
    *,
    min_studies: int,
    seed: int = 0,
) -> tuple[DomainModel | None, str]:
    """The default out-of-domain guard of a bundle, fitted on its training studies.

    k-NN (k = 3) on the acquisition statistics :data:`GUARD_FEATURES` of
    :func:`study_descriptor` vectors, its threshold from patient-grouped
    cross-validation (the rule of :class:`DomainModel`); what candidate and
    whole-slice bundles store.

    Parameters
    ----------
    descriptors : sequence of numpy.ndarray
        One :func:`study_descriptor` vector per training study.
    groups : sequence
        The patient of each study (a patient's studies stay in one fold).
    min_studies : int
        Fewer studies give no guard (its threshold needs held-out folds).
    seed : int
        Fold assignment.

    Returns
    -------
    model : DomainModel or None
        None with fewer than ``min_studies`` studies.
    note : str
        What was fitted, or why not (for the bundle's training record).

    Raises
    ------
    BundleMismatchError
        When the vectors are not of this version's descriptor length (written
        by an older lungslice).
    """
    n = len(descriptors)
    if n < min_studies:
        return None, (
            f"no domain guard: {n} training studies, at least {min_studies} needed to fix "
            "its threshold on held-out folds"
        )
    X = np.stack([np.asarray(d, dtype=np.float64) for d in descriptors])
    if X.shape[1] != len(DESCRIPTOR_NAMES):
        raise BundleMismatchError(
            f"the training studies' descriptors have {X.shape[1]} entries, this lungslice "
            f"computes {len(DESCRIPTOR_NAMES)}: they were written by an older version. Fix: "
            "extract the features again into a new work folder."
        )
    model = DomainModel("knn", features=GUARD_FEATURES, seed=seed).fit(
        X, groups=np.asarray([str(g) for g in groups]), feature_names=DESCRIPTOR_NAMES
    )
    return model, (
        f"{model.method} on {len(GUARD_FEATURES)} acquisition statistics of {n} studies; "
        f"threshold {model.threshold_:.3g} passes {model.cv_pass_rate_:.0%} of held-out "
        "training studies"
    )
