"""Clustering of readers' annotations into nodules (pylidc's rule) on tiny synthetic scans."""

from __future__ import annotations

import numpy as np
import pytest

from lungslice.errors import ConfigError
from lungslice.lidc.nodules import (
    annotation_diameter,
    annotation_points,
    cluster_annotations,
    cluster_scan,
    find_nodules,
)
from lungslice.lidc.records import CHARACTERISTICS, Annotation, Contour, LidcScan


def square(x: int, y: int, half: int = 2) -> np.ndarray:
    """Edge points of an axis-aligned square centred at (x, y), as (x, y) pairs."""
    pts = [(x + dx, y - half) for dx in range(-half, half + 1)]
    pts += [(x + half, y + dy) for dy in range(-half + 1, half + 1)]
    pts += [(x + dx, y + half) for dx in range(half - 1, -half - 1, -1)]
    pts += [(x - half, y + dy) for dy in range(half - 1, -half, -1)]
    return np.array(pts, dtype=np.int64)


def ann(aid: int, xy: tuple[int, int], zs: list[float], malignancy: int = 3, **kw) -> Annotation:
    ratings = {c: 1 for c in CHARACTERISTICS} | {"malignancy": malignancy}
    contours = tuple(Contour(z=z, inclusion=True, xy=square(*xy), image_ref=f"{z}") for z in zs)
    return Annotation(
        annotation_id=aid,
        nodule_id=f"N{aid}",
        reader=kw.get("reader"),
        ratings=ratings,
        contours=contours,
    )


def scan(annotations: list[Annotation], thickness: float = 2.5, n: int = 10) -> LidcScan:
    return LidcScan(
        scan_id=7,
        patient_id="LIDC-IDRI-9999",
        study_uid="1.2.3",
        series_uid="1.2.3.4",
        slice_thickness=thickness,
        pixel_spacing=0.5,
        slice_zvals=np.arange(n, dtype=float) * -2.5,  # descending acquisition, sorted below
        annotations=tuple(annotations),
    )


def sorted_scan(annotations: list[Annotation], thickness: float = 2.5) -> LidcScan:
    s = scan(annotations, thickness)
    return LidcScan(**{**s.__dict__, "slice_zvals": np.sort(s.slice_zvals)})


def ids(clusters: list[list[Annotation]]) -> list[list[int]]:
    return [[a.annotation_id for a in c] for c in clusters]


def test_points_are_row_col_slice_in_z_order() -> None:
    a = Annotation(
        annotation_id=1,
        nodule_id="x",
        reader=None,
        ratings={c: 1 for c in CHARACTERISTICS},
        contours=(
            Contour(z=-5.0, inclusion=True, xy=np.array([[10, 20]]), image_ref="a"),
            Contour(z=-20.0, inclusion=False, xy=np.array([[11, 21]]), image_ref="b"),
        ),
    )
    s = sorted_scan([a])
    # zvals sorted: -22.5 ... 0.0; z=-20 -> k=1, z=-5 -> k=7; contours stacked by z
    assert annotation_points(s, a).tolist() == [[21, 11, 1], [20, 10, 7]]


def test_near_annotations_join_far_ones_stay_apart_ordered_by_slice() -> None:
    anns = [
        ann(1, (100, 100), [-10.0, -7.5], malignancy=4),
        ann(2, (300, 300), [-20.0]),
        ann(3, (102, 101), [-10.0]),  # overlaps annotation 1
    ]
    clusters = cluster_annotations(sorted_scan(anns))
    # cluster with mean centroid k lowest first: annotation 2 lies at z=-20 (k=1)
    assert ids(clusters) == [[2], [1, 3]]


def test_tolerance_is_slice_thickness_in_index_units() -> None:
    # squares 2 px apart edge to edge: distance 2 <= 2.5 joins, <= 1.5 does not
    anns = [ann(1, (100, 100), [-10.0]), ann(2, (106, 100), [-10.0])]
    assert ids(cluster_annotations(sorted_scan(anns, thickness=2.5))) == [[1, 2]]
    assert ids(cluster_annotations(sorted_scan(anns, thickness=1.5))) == [[1], [2]]
    assert ids(cluster_annotations(sorted_scan(anns), tol=1.0)) == [[1], [2]]


def test_clusters_over_four_shrink_the_tolerance() -> None:
    # a chain of 6 squares 2 px apart plus one 1 px apart pair: > 4 at tol 2.5,
    # shrinking by 0.9 until tol < 2 separates all but the 1-px pair
    xs = [100, 106, 112, 118, 124, 129]
    anns = [ann(i + 1, (x, 100), [-10.0]) for i, x in enumerate(xs)]
    result = cluster_scan(sorted_scan(anns))
    assert result.converged
    assert result.n_shrinks == 3  # 2.5*0.9**3 = 1.82 < 2
    assert result.tol == pytest.approx(2.5 * 0.9**3)
    assert sorted(map(sorted, result.clusters)) == [[0], [1], [2], [3], [4, 5]]


def test_unsplittable_cluster_is_kept_and_reported() -> None:
    anns = [ann(i + 1, (100, 100), [-10.0]) for i in range(5)]  # identical: distance 0
    result = cluster_scan(sorted_scan(anns))
    assert not result.converged
    assert result.clusters == ((0, 1, 2, 3, 4),)


def test_single_and_no_annotation() -> None:
    assert cluster_annotations(sorted_scan([])) == []
    a = ann(1, (100, 100), [-10.0])
    assert ids(cluster_annotations(sorted_scan([a]))) == [[1]]


def test_bad_metric_and_factor_are_config_errors() -> None:
    s = sorted_scan([ann(1, (1, 1), [0.0]), ann(2, (9, 9), [0.0])])
    with pytest.raises(ConfigError, match=r"metric 'max' is not supported; expected 'min'"):
        cluster_annotations(s, metric="max")
    with pytest.raises(ConfigError, match=r"factor must be in \(0, 1\), got 1.5"):
        cluster_annotations(s, factor=1.5)


def test_find_nodules_summarises_each_cluster() -> None:
    anns = [
        ann(1, (100, 100), [-10.0, -7.5], malignancy=4, reader="r1"),
        ann(2, (101, 100), [-10.0, -12.5], malignancy=2, reader="r2"),
        ann(3, (102, 101), [-10.0], malignancy=5, reader="r2"),
        ann(4, (300, 300), [-20.0], malignancy=1, reader="r1"),
    ]
    s = sorted_scan(anns)
    nodules = find_nodules(s)
    assert [n.nodule_id for n in nodules] == ["LIDC-IDRI-9999/n1", "LIDC-IDRI-9999/n2"]
    first, second = nodules
    assert [a.annotation_id for a in first.annotations] == [4]
    assert second.n_annotations == 3
    assert second.n_readers == 2  # r2 annotated twice
    assert second.mean_malignancy == pytest.approx(11 / 3)
    assert second.median_malignancy == 4.0
    assert (second.z_min, second.z_max) == (-12.5, -7.5)
    assert second.slice_indices == (4, 5, 6)  # z -12.5, -10, -7.5 in sorted zvals
    # square with half-width 2 px: diagonal 4*sqrt(2) px * 0.5 mm
    assert second.diameter_mm == pytest.approx(2 * np.sqrt(2))
    assert find_nodules(s, id_prefix="P/s7")[0].nodule_id == "P/s7/n1"


def test_diameter_ignores_single_point_contours() -> None:
    a = Annotation(
        annotation_id=1,
        nodule_id="x",
        reader=None,
        ratings={c: 1 for c in CHARACTERISTICS},
        contours=(Contour(z=0.0, inclusion=True, xy=np.array([[1, 1]]), image_ref="a"),),
    )
    assert np.isnan(annotation_diameter(a, 0.7))
    b = Annotation(
        **{**a.__dict__, "contours": (*a.contours, Contour(0.0, True, square(5, 5), "b"))}
    )
    assert annotation_diameter(b, 1.0) == pytest.approx(4 * np.sqrt(2))


def test_slice_mapping_is_pylidcs_argmin_even_with_duplicated_z() -> None:
    rng = np.random.default_rng(3)
    zvals = np.sort(np.r_[np.arange(20) * 1.25, [5.0, 5.0, 12.5]])  # duplicated z values
    s = LidcScan(**{**sorted_scan([]).__dict__, "slice_zvals": zvals})
    zs = np.r_[rng.uniform(-3, 28, 500), zvals, zvals + 0.625, [5.0, 5.6, 5.625]]
    a = Annotation(
        annotation_id=1,
        nodule_id="x",
        reader=None,
        ratings={c: 1 for c in CHARACTERISTICS},
        contours=tuple(Contour(float(z), True, np.array([[1, 1]]), "") for z in zs),
    )
    expected = np.abs(zvals[None, :] - zs[:, None]).argmin(axis=1)  # pylidc's image_k_position
    got = annotation_points(LidcScan(**{**s.__dict__, "annotations": (a,)}), a)[:, 2]
    np.testing.assert_array_equal(got, expected[np.argsort(zs, kind="stable")])
