"""Group readers' annotations into nodules exactly as pylidc clusters them.

pylidc's ``Scan.cluster_annotations()`` (0.2.3) computes, for every pair of
annotations, the minimum Euclidean distance between their contour points in
``(i, j, k)`` *index* space (``(i, j)`` = reversed XML ``(x, y)``, ``k`` = index
of the contour's z among the scan's sorted slice z values, first on ties),
joins pairs at distance ``<= tol`` (default: the scan's slice thickness, a
value in mm compared with an index-space distance, as pylidc does), takes
connected components, and while any component holds more than four
annotations multiplies ``tol`` by ``factor`` until it falls below ``min_tol``.
Clusters are finally sorted (stably) by the mean of their annotations'
centroid ``k``.

This module reproduces that bit for bit, but prunes annotation pairs by their
bounding boxes and computes the remaining minimum distances on integer
coordinates in one vectorised call, so all 1018 LIDC scans cluster in seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist

from lungslice.errors import ConfigError
from lungslice.lidc.records import CHARACTERISTICS, Annotation, LidcScan

__all__ = [
    "Clustering",
    "Nodule",
    "annotation_diameter",
    "annotation_points",
    "annotation_slice_indices",
    "cluster_and_find_nodules",
    "cluster_annotations",
    "cluster_scan",
    "contour_diameters",
    "find_nodules",
]

log = logging.getLogger(__name__)

_MAX_READERS = 4


def _contour_ks(scan: LidcScan, zs: np.ndarray) -> np.ndarray:
    # pylidc's Contour.image_k_position: argmin |slice_zvals - z|, first on ties;
    # the nearest of the two neighbours in the sorted z values, then the first
    # occurrence of that z (duplicated z values keep pylidc's argmin choice)
    if zs.size == 0:
        return np.zeros(0, dtype=np.int64)
    if scan.n_slices == 0:
        raise ConfigError(
            f"scan {scan.patient_id} (series {scan.series_uid}) has no slice z positions, "
            "so contours cannot be mapped to slices. Fix: pass the series' slice z values."
        )
    zvals = scan.slice_zvals
    right = np.clip(np.searchsorted(zvals, zs), 0, len(zvals) - 1)
    left = np.maximum(right - 1, 0)
    pick = np.where(np.abs(zvals[left] - zs) <= np.abs(zvals[right] - zs), left, right)
    return np.searchsorted(zvals, zvals[pick], side="left").astype(np.int64)


@dataclass(frozen=True, eq=False)
class _ScanIndex:
    """Per-annotation index-space data of a scan, computed once."""

    points: list[np.ndarray]  # (n, 3) (i, j, k), contours in pylidc's contours_matrix order
    slices: list[np.ndarray]  # sorted unique k with a contour


def _index_scan(scan: LidcScan) -> _ScanIndex:
    anns = scan.annotations
    counts = [len(a.contours) for a in anns]
    zs = np.array([c.z for a in anns for c in a.contours], dtype=np.float64)
    ks_all = _contour_ks(scan, zs)
    points: list[np.ndarray] = []
    slices: list[np.ndarray] = []
    start = 0
    for a, n in zip(anns, counts, strict=True):
        ks = ks_all[start : start + n]
        z = zs[start : start + n]
        start += n
        if n == 0:
            points.append(np.zeros((0, 3), dtype=np.int64))
            slices.append(np.zeros(0, dtype=np.int64))
            continue
        order = np.argsort(z, kind="stable")  # pylidc: sorted(contours, key=z), stable
        xy = [a.contours[o].xy for o in order.tolist()]
        sizes = [len(v) for v in xy]
        block = np.empty((sum(sizes), 3), dtype=np.int64)
        block[:, :2] = np.concatenate(xy)[:, ::-1]
        block[:, 2] = np.repeat(ks[order], sizes)
        points.append(block)
        slices.append(np.unique(ks))
    return _ScanIndex(points=points, slices=slices)


def annotation_points(scan: LidcScan, annotation: Annotation) -> np.ndarray:
    """All contour points of an annotation as ``(i, j, k)`` int index triples.

    Contours are stacked in order of increasing z (stable), as pylidc's
    ``Annotation.contours_matrix``; exclusion contours are included.

    Parameters
    ----------
    scan : LidcScan
        The scan the annotation belongs to (its sorted slice z values give ``k``).
    annotation : Annotation
        One reader's annotation.

    Returns
    -------
    numpy.ndarray
        ``(n, 3)`` int64 array.
    """
    one = LidcScan(**{**scan.__dict__, "annotations": (annotation,)})
    return _index_scan(one).points[0]


def annotation_slice_indices(scan: LidcScan, annotation: Annotation) -> np.ndarray:
    """Sorted unique slice indices on which the annotation has a contour."""
    zs = np.array([c.z for c in annotation.contours], dtype=np.float64)
    return np.unique(_contour_ks(scan, zs))


def contour_diameters(contours: list[np.ndarray], pixel_spacing: float) -> np.ndarray:
    """Greatest distance (mm) between two points of each contour; NaN for one point.

    Computed as pylidc does, ``pdist(xy * pixel_spacing).max()``.

    Parameters
    ----------
    contours : list of numpy.ndarray
        ``(n_i, 2)`` integer ``(x, y)`` points per contour.
    pixel_spacing : float
        mm per pixel.
    """
    result = np.full(len(contours), np.nan)
    for i, xy in enumerate(contours):
        if len(xy) >= 2:
            result[i] = pdist(np.asarray(xy, dtype=np.float64) * pixel_spacing).max()
    return result


def annotation_diameter(annotation: Annotation, pixel_spacing: float) -> float:
    """Greatest axial-plane diameter (mm) over the annotation's contours.

    As pylidc's ``Annotation.diameter``: the largest distance between two
    points of one contour, single-point contours ignored. Returns NaN when
    every contour is a single point (pylidc returns ``-inf`` there).
    """
    d = contour_diameters([c.xy for c in annotation.contours], pixel_spacing)
    return float(np.nanmax(d)) if np.isfinite(d).any() else float("nan")


def _distance_matrix(points: list[np.ndarray], reach: float) -> np.ndarray:
    """Minimum point distances between annotations, exact where ``<= reach``.

    Pairs farther apart than ``reach`` get ``inf``: their true distance exceeds
    every tolerance the clustering will try. Candidates come from bounding
    boxes, nearest neighbours from a k-d tree, and each distance is finally
    recomputed as sqrt of the exact integer squared distance -- the float
    scipy's ``cdist`` returns for these integer points, as pylidc uses.
    """
    n = len(points)
    dist = np.full((n, n), np.inf)
    np.fill_diagonal(dist, 0.0)
    if n < 2:
        return dist
    lo = np.array([p.min(axis=0) if len(p) else np.full(3, np.inf) for p in points])
    hi = np.array([p.max(axis=0) if len(p) else np.full(3, -np.inf) for p in points])
    gap = np.maximum(
        0.0, np.maximum(lo[:, None, :] - hi[None, :, :], lo[None, :, :] - hi[:, None, :])
    )
    near = np.sqrt((gap**2).sum(axis=2)) <= reach
    ii, jj = np.nonzero(np.triu(near, k=1))
    trees: dict[int, cKDTree] = {}
    bound = reach * (1 + 1e-9) + 1e-9  # the tree's float distances may round either way
    for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
        if len(points[i]) > len(points[j]):
            i, j = j, i  # query the smaller set against the larger one's tree
        a = points[i]
        # only points that can be within reach of the other annotation's box matter
        a = a[np.all((a >= lo[j] - reach) & (a <= hi[j] + reach), axis=1)]
        if len(a) == 0:
            continue
        if j not in trees:
            trees[j] = cKDTree(points[j])
        d, idx = trees[j].query(a, k=1, distance_upper_bound=bound)
        best = int(np.argmin(d))
        if not np.isfinite(d[best]):
            continue
        diff = a[best] - points[j][idx[best]]
        dist[i, j] = dist[j, i] = np.sqrt(float(np.dot(diff, diff)))
    return dist


def _components(adjacency: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components labelled as scipy's ``connected_components`` does.

    Labels follow the smallest node index of each component (a new label for
    each still-unlabelled node, in index order), which fixes the order of
    clusters with equal centroids after pylidc's stable sort.
    """
    n = adjacency.shape[0]
    labels = np.full(n, -1, dtype=np.int64)
    current = 0
    for start in range(n):
        if labels[start] >= 0:
            continue
        stack = [start]
        labels[start] = current
        while stack:
            node = stack.pop()
            for nb in np.flatnonzero(adjacency[node] & (labels < 0)).tolist():
                labels[nb] = current
                stack.append(nb)
        current += 1
    return current, labels


@dataclass(frozen=True)
class Clustering:
    """The outcome of :func:`cluster_scan`: clusters and the tolerance that made them.

    Attributes
    ----------
    clusters : tuple[tuple[int, ...], ...]
        Positions into ``scan.annotations``, one tuple per nodule, in pylidc's order.
    tol : float
        The tolerance of the final clustering (smaller than the initial one
        when clusters of more than four annotations had to be split).
    n_shrinks : int
        How many times the tolerance was multiplied by ``factor``.
    converged : bool
        False when the tolerance fell below ``min_tol`` with a cluster still
        holding more than four annotations (pylidc then keeps that clustering).
    """

    clusters: tuple[tuple[int, ...], ...]
    tol: float
    n_shrinks: int
    converged: bool


def cluster_scan(
    scan: LidcScan,
    *,
    metric: str = "min",
    tol: float | None = None,
    factor: float = 0.9,
    min_tol: float = 0.1,
) -> Clustering:
    """Cluster a scan's annotations like pylidc, returning positions and the tolerance used.

    See :func:`cluster_annotations` for the parameters.
    """
    return _cluster_indexed(scan, None, metric=metric, tol=tol, factor=factor, min_tol=min_tol)


def _cluster_indexed(
    scan: LidcScan,
    index: _ScanIndex | None,
    *,
    metric: str,
    tol: float | None,
    factor: float,
    min_tol: float,
) -> Clustering:
    if metric != "min":
        raise ConfigError(
            f"cluster_annotations: metric {metric!r} is not supported; expected 'min' "
            "(pylidc's default: minimum distance between contour points)."
        )
    if not 0 < factor < 1:
        raise ConfigError(f"cluster_annotations: factor must be in (0, 1), got {factor}")
    tol = float(scan.slice_thickness) if tol is None else float(tol)
    if tol < 0:
        raise ConfigError(f"cluster_annotations: tol must be >= 0, got {tol}")
    n = len(scan.annotations)
    if n == 0:
        return Clustering(clusters=(), tol=tol, n_shrinks=0, converged=True)
    if n == 1:
        return Clustering(clusters=((0,),), tol=tol, n_shrinks=0, converged=True)

    points = (index if index is not None else _index_scan(scan)).points
    dist = _distance_matrix(points, tol)
    n_comp, cids = _components(dist <= tol)
    counts = np.bincount(cids)
    shrinks = 0
    converged = True
    while (counts > _MAX_READERS).any():
        tol *= factor
        if tol < min_tol:
            converged = False
            log.info(
                "%s (series %s): could not split every cluster to <= %d annotations "
                "(tolerance fell below %g); some nodules are close and keep > %d annotations",
                scan.patient_id,
                scan.series_uid,
                _MAX_READERS,
                min_tol,
                _MAX_READERS,
            )
            break
        shrinks += 1
        n_comp, cids = _components(dist <= tol)
        counts = np.bincount(cids)

    clusters: list[list[int]] = [[] for _ in range(n_comp)]
    for i, cid in enumerate(cids.tolist()):
        clusters[cid].append(i)
    # pylidc: centroid = contours_matrix.mean(0); integer sums are exact, so k-sum / n
    # gives the same float whatever the summation order
    centroid_k = [float(p[:, 2].sum()) / len(p) if len(p) else float("nan") for p in points]
    order = sorted(
        range(n_comp), key=lambda c: float(np.mean([centroid_k[i] for i in clusters[c]]))
    )
    return Clustering(
        clusters=tuple(tuple(clusters[c]) for c in order),
        tol=tol,
        n_shrinks=shrinks,
        converged=converged,
    )


def cluster_annotations(
    scan: LidcScan,
    *,
    metric: str = "min",
    tol: float | None = None,
    factor: float = 0.9,
    min_tol: float = 0.1,
) -> list[list[Annotation]]:
    """Group a scan's annotations into nodules, exactly as pylidc 0.2.3 does.

    Parameters
    ----------
    scan : LidcScan
        The scan with its annotations (in source order, pylidc: by id).
    metric : {"min"}
        Minimum Euclidean distance between contour points in index space, the
        pylidc default and the only metric implemented.
    tol : float, optional
        Join annotations whose distance is ``<= tol``; default: the scan's
        slice thickness.
    factor : float
        While a cluster holds more than 4 annotations, ``tol *= factor``.
    min_tol : float
        Stop shrinking (keeping the last clustering) once ``tol < min_tol``.

    Returns
    -------
    list of list of Annotation
        One list per nodule, ordered by the mean centroid slice index of its
        annotations (stable); annotations within a cluster in source order.

    Raises
    ------
    ConfigError
        For an unknown metric or out-of-range ``factor``/``tol``.
    """
    result = cluster_scan(scan, metric=metric, tol=tol, factor=factor, min_tol=min_tol)
    anns = scan.annotations
    return [[anns[i] for i in cluster] for cluster in result.clusters]


@dataclass(frozen=True, eq=False)
class Nodule:
    """A physical nodule: the cluster of readers' annotations of one lesion.

    Attributes
    ----------
    nodule_id : str
        ``"<patient_id>/n<k>"`` with ``k`` = 1-based position in cluster order
        (the prefix is configurable, see :func:`find_nodules`).
    patient_id, series_uid : str
        The scan.
    annotations : tuple[Annotation, ...]
        The readers' annotations in this cluster.
    n_readers : int
        Distinct readers where the source records them (XML), else the number
        of annotations (the pylidc database has no reader identity).
    mean_ratings : dict[str, float]
        Mean of each characteristic over the annotations.
    median_malignancy : float
        Median malignancy rating.
    z_min, z_max : float
        z range (mm) of all contours.
    slice_indices : tuple[int, ...]
        Sorted indices into the scan's ``slice_zvals`` with any reader's contour.
    diameter_mm : float
        Mean of the annotations' greatest axial diameters (NaN if none measurable).
    """

    nodule_id: str
    patient_id: str
    series_uid: str
    annotations: tuple[Annotation, ...]
    n_readers: int
    mean_ratings: dict[str, float]
    median_malignancy: float
    z_min: float
    z_max: float
    slice_indices: tuple[int, ...]
    diameter_mm: float

    @property
    def n_annotations(self) -> int:
        """Number of annotations in the cluster."""
        return len(self.annotations)

    @property
    def mean_malignancy(self) -> float:
        """Mean malignancy rating (1-5) over the annotations."""
        return self.mean_ratings["malignancy"]


def _make_nodule(
    scan: LidcScan,
    cluster: list[Annotation],
    nodule_id: str,
    diameters: np.ndarray,
    slice_sets: list[np.ndarray],
) -> Nodule:
    ratings = np.array([[a.ratings[c] for c in CHARACTERISTICS] for a in cluster], dtype=float)
    readers = [a.reader for a in cluster]
    n_readers = len(set(readers)) if all(r is not None for r in readers) else len(cluster)
    zs = np.array([c.z for a in cluster for c in a.contours], dtype=np.float64)
    slices = np.unique(np.concatenate(slice_sets))
    finite = diameters[np.isfinite(diameters)]
    return Nodule(
        nodule_id=nodule_id,
        patient_id=scan.patient_id,
        series_uid=scan.series_uid,
        annotations=tuple(cluster),
        n_readers=n_readers,
        mean_ratings={
            c: float(v) for c, v in zip(CHARACTERISTICS, ratings.mean(axis=0), strict=True)
        },
        median_malignancy=float(np.median(ratings[:, CHARACTERISTICS.index("malignancy")])),
        z_min=float(zs.min()) if zs.size else float("nan"),
        z_max=float(zs.max()) if zs.size else float("nan"),
        slice_indices=tuple(int(k) for k in slices),
        diameter_mm=float(finite.mean()) if finite.size else float("nan"),
    )


def find_nodules(
    scan: LidcScan,
    *,
    id_prefix: str | None = None,
    metric: str = "min",
    tol: float | None = None,
    factor: float = 0.9,
    min_tol: float = 0.1,
) -> list[Nodule]:
    """Cluster a scan's annotations and summarise each cluster as a :class:`Nodule`.

    Parameters
    ----------
    scan : LidcScan
        The scan.
    id_prefix : str, optional
        Prefix of the nodule ids; default: the patient id, so ids read
        ``"LIDC-IDRI-0001/n1"``. Patients with several scans need a unique
        prefix per scan (:func:`lungslice.lidc.labels.label_scans` uses
        ``"<patient_id>/s<k>"``, scans numbered by series UID).
    metric, tol, factor, min_tol
        As :func:`cluster_annotations`.

    Returns
    -------
    list of Nodule
        In cluster order (increasing mean centroid slice index).
    """
    return cluster_and_find_nodules(
        scan, id_prefix=id_prefix, metric=metric, tol=tol, factor=factor, min_tol=min_tol
    )[1]


def cluster_and_find_nodules(
    scan: LidcScan,
    *,
    id_prefix: str | None = None,
    metric: str = "min",
    tol: float | None = None,
    factor: float = 0.9,
    min_tol: float = 0.1,
) -> tuple[Clustering, list[Nodule]]:
    """:func:`cluster_scan` and :func:`find_nodules` in one pass over the contours."""
    prefix = scan.patient_id if id_prefix is None else id_prefix
    index = _index_scan(scan)
    clustering = _cluster_indexed(
        scan, index, metric=metric, tol=tol, factor=factor, min_tol=min_tol
    )
    anns = scan.annotations
    per_contour = contour_diameters(
        [c.xy for a in anns for c in a.contours], float(scan.pixel_spacing)
    )
    bounds = np.cumsum([0] + [len(a.contours) for a in anns])
    per_annotation = np.array(
        [
            np.nanmax(d) if np.isfinite(d).any() else np.nan
            for d in (per_contour[bounds[k] : bounds[k + 1]] for k in range(len(anns)))
        ]
    )
    nodules = [
        _make_nodule(
            scan,
            [anns[j] for j in c],
            f"{prefix}/n{i + 1}",
            per_annotation[list(c)],
            [index.slices[j] for j in c],
        )
        for i, c in enumerate(clustering.clusters)
    ]
    return clustering, nodules
