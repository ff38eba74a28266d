"""Slice labels from nodules: rules, tables, files, and the mapping to loaded/resampled slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungslice.errors import AnnotationError, ConfigError
from lungslice.lidc.labels import (
    CLASSES,
    LABEL_CODES,
    LabelRule,
    apply_rule,
    label_scans,
    label_stats,
    labels_for_positions,
    labels_for_resampled,
    labels_for_volume,
    read_labels,
    resampled_labels,
    rule_from_provenance,
    write_labels,
)
from lungslice.lidc.records import CHARACTERISTICS, Annotation, Contour, LidcScan, ReaderMark


def square(x: int, y: int, half: int = 2) -> np.ndarray:
    xs = np.arange(x - half, x + half + 1)
    top = np.c_[xs, np.full_like(xs, y - half)]
    bottom = np.c_[xs[::-1], np.full_like(xs, y + half)]
    return np.vstack([top, bottom]).astype(np.int64)


_next_id = iter(range(1, 10_000))


def ann(xy: tuple[int, int], zs: list[float], malignancy: int) -> Annotation:
    aid = next(_next_id)
    return Annotation(
        annotation_id=aid,
        nodule_id=f"N{aid}",
        reader=None,
        ratings={c: 2 for c in CHARACTERISTICS} | {"malignancy": malignancy},
        contours=tuple(Contour(z=z, inclusion=True, xy=square(*xy), image_ref="") for z in zs),
    )


def make_scan(patient: str, series: str, annotations: list[Annotation], **kw) -> LidcScan:
    return LidcScan(
        scan_id=kw.get("scan_id", 1),
        patient_id=patient,
        study_uid=f"{series}.0",
        series_uid=series,
        slice_thickness=2.0,
        pixel_spacing=0.7,
        slice_zvals=np.arange(8, dtype=float) * 2.0,  # 0, 2, ..., 14
        annotations=tuple(annotations),
        marks=kw.get("marks", ()),
    )


@pytest.fixture
def scans() -> list[LidcScan]:
    # scan A: malignant nodule (mean 3.5, 2 readers) on z 2-4, benign (mean 2, 2 readers)
    # on z 4-6 -> slice 2 is shared; ambiguous nodule (mean exactly 3, 3 readers) on z 10
    a = make_scan(
        "LIDC-IDRI-0001",
        "1.1",
        [
            ann((100, 100), [2.0, 4.0], 4),
            ann((101, 100), [2.0], 3),
            ann((300, 300), [4.0, 6.0], 2),
            ann((301, 300), [6.0], 2),
            ann((100, 400), [10.0], 3),
            ann((101, 400), [10.0], 2),
            ann((102, 400), [10.0], 4),
        ],
        marks=(
            ReaderMark("small_nodule", "s1", "r1", 12.0, np.array([[5, 5]]), "uid"),
            ReaderMark("non_nodule", "nn1", "r2", 12.1, np.array([[9, 9]]), "uid"),
        ),
    )
    b = make_scan("LIDC-IDRI-0002", "2.1", [], scan_id=2)  # no nodules
    c = make_scan("LIDC-IDRI-0003", "3.1", [ann((50, 50), [8.0], 1)], scan_id=3)  # benign only
    return [a, b, c]


def test_labels_constants() -> None:
    assert CLASSES == ("non-nodule", "benign", "malignant")
    assert LABEL_CODES == {"excluded": -1, "non-nodule": 0, "benign": 1, "malignant": 2}


def test_default_rule_labels_every_slice(scans: list[LidcScan]) -> None:
    slices, nodules = label_scans(scans)
    assert len(slices) == 24
    a = slices[slices.series_uid == "1.1"]
    assert a.label.tolist() == [
        "non-nodule",
        "malignant",  # z 2: malignant nodule
        "malignant",  # z 4: malignant + benign -> the more severe
        "benign",
        "non-nodule",
        "malignant",  # z 10: mean exactly 3 -> malignant by default (>= 3)
        "non-nodule",
        "non-nodule",
    ]
    assert a.slice_index.tolist() == list(range(8))
    assert a.n_nodules.tolist() == [0, 1, 2, 1, 0, 1, 0, 0]
    assert a.nodule_ids.iloc[2] == ["LIDC-IDRI-0001/n1", "LIDC-IDRI-0001/n2"]
    assert a.n_small_nodule_marks.tolist()[6] == 1 and a.n_non_nodule_marks.tolist()[6] == 1
    assert set(slices[slices.series_uid == "2.1"].label) == {"non-nodule"}
    assert nodules.nodule_id.tolist() == [
        "LIDC-IDRI-0001/n1",
        "LIDC-IDRI-0001/n2",
        "LIDC-IDRI-0001/n3",
        "LIDC-IDRI-0003/n1",
    ]
    assert nodules.label.tolist() == ["malignant", "benign", "malignant", "benign"]
    assert nodules.malignancy_ratings.iloc[0] == [4, 3]
    assert nodules.mean_malignancy.tolist() == [3.5, 2.0, 3.0, 1.0]


def test_median_rule_changes_scores(scans: list[LidcScan]) -> None:
    _, nodules = label_scans(scans, rule=LabelRule(rule="median", threshold=3.5))
    assert nodules.score.tolist() == [3.5, 2.0, 3.0, 1.0]
    assert nodules.label.tolist() == ["malignant", "benign", "benign", "benign"]


def test_exclude_ambiguous_keeps_the_row(scans: list[LidcScan]) -> None:
    slices, nodules = label_scans(scans, rule=LabelRule(exclude_ambiguous=True))
    a = slices[slices.series_uid == "1.1"]
    assert len(a) == 8
    assert a.label.iloc[5] == "excluded" and a.label_code.iloc[5] == -1
    assert a.label.iloc[1] == "malignant"
    assert nodules.label.tolist()[2] == "excluded"


def test_min_readers_ignores_but_records(scans: list[LidcScan]) -> None:
    slices, nodules = label_scans(scans, rule=LabelRule(min_readers=3))
    a = slices[slices.series_uid == "1.1"]
    assert a.label.tolist()[:6] == ["non-nodule"] * 5 + ["malignant"]
    assert a.ignored_nodule_ids.iloc[2] == ["LIDC-IDRI-0001/n1", "LIDC-IDRI-0001/n2"]
    assert a.n_nodules.iloc[2] == 0
    assert nodules.counted.tolist() == [False, False, True, False]


def test_rule_validation() -> None:
    with pytest.raises(ConfigError, match=r"rule must be 'mean' or 'median', got 'max'"):
        LabelRule(rule="max")
    with pytest.raises(ConfigError, match=r"min_readers must be 1-4 \(LIDC has four readers\)"):
        LabelRule(min_readers=5)
    with pytest.raises(ConfigError, match="threshold must lie in the rating range 1-5, got 6"):
        LabelRule(threshold=6)
    assert LabelRule(exclude_ambiguous=True, min_readers=3).name == "mean>=3 excl-3 readers>=3"


def test_duplicate_series_is_an_error(scans: list[LidcScan]) -> None:
    with pytest.raises(AnnotationError, match=r"series 1\.1 appears twice"):
        label_scans([scans[0], scans[0]])


def test_multi_scan_patient_ids_are_numbered_by_series() -> None:
    s1 = make_scan("LIDC-IDRI-0005", "9.2", [ann((9, 9), [0.0], 5)], scan_id=11)
    s2 = make_scan("LIDC-IDRI-0005", "9.1", [ann((9, 9), [0.0], 5)], scan_id=12)
    _, nodules = label_scans([s1, s2])
    assert nodules.nodule_id.tolist() == ["LIDC-IDRI-0005/s2/n1", "LIDC-IDRI-0005/s1/n1"]


def test_stats_side_by_side(scans: list[LidcScan]) -> None:
    slices, nodules = label_scans(scans)
    stats = label_stats(slices, nodules)
    col = stats["mean>=3"]
    assert col[("slice", "malignant")] == 3
    assert col[("slice", "benign")] == 2
    assert col[("slice", "non-nodule")] == 19
    assert col[("nodule", "malignant")] == 2
    assert col[("scan", "malignant-containing")] == 1
    assert col[("scan", "benign-only")] == 1
    assert col[("scan", "no-nodule")] == 1
    excl = stats["mean>=3 excl-3"]
    assert excl[("slice", "excluded")] == 1 and excl[("nodule", "excluded")] == 1
    luna = stats["mean>=3 readers>=3"]
    assert luna[("nodule", "ignored")] == 3
    assert luna[("scan", "no-nodule")] == 2
    # every slice and every scan is counted under every rule
    for rule in stats.columns:
        assert stats.loc["slice", rule].sum() == 24
        assert stats.loc["scan", rule].sum() == 3


def test_write_read_roundtrip(scans: list[LidcScan], tmp_path: Path) -> None:
    rule = LabelRule(rule="median")
    slices, nodules = label_scans(scans, rule=rule)
    out = write_labels(tmp_path / "labels", slices, nodules, rule=rule, source="test")
    back = read_labels(out)
    pd.testing.assert_frame_equal(back.slices, slices)
    pd.testing.assert_frame_equal(back.nodules, nodules)
    assert back.provenance["config"]["rule"] == "median"
    assert back.provenance["rows"]["slices.parquet"] == 24
    assert rule_from_provenance(back.provenance) == rule
    record = json.loads((out / "labels.json").read_text())
    assert len(record["sha256"]["nodules.parquet"]) == 64
    # any rule re-applies to the written tables
    relabelled, _ = apply_rule(back.slices, back.nodules, LabelRule())
    assert relabelled.label.tolist() == label_scans(scans)[0].label.tolist()


def test_read_labels_names_missing_files(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match=r"is not a labels directory: slices\.parquet, "):
        read_labels(tmp_path)


def test_labels_for_positions_matches_by_z(scans: list[LidcScan]) -> None:
    slices, _ = label_scans(scans)
    one = slices[slices.series_uid == "1.1"]
    # a loaded volume in the other direction, with a duplicated position
    z = np.array([14.0, 10.004, 10.0, 4.0, 2.0, 0.0])
    assert labels_for_positions(one, z).tolist() == [0, 2, 2, 2, 2, 0]
    with pytest.raises(
        AnnotationError,
        match=r"series 1\.1: 1 of 2 slice positions have no labelled slice within 0\.01 mm; "
        r"first: slice 1 at z=5\.000 mm, nearest labelled z=4\.000 mm",
    ):
        labels_for_positions(one, np.array([2.0, 5.0]))
    with pytest.raises(AnnotationError, match="expects the slice labels of one series, got 3"):
        labels_for_positions(slices, z)


def test_resampled_labels_nearest_and_ties_to_more_severe() -> None:
    codes = np.array([0, 1, 2, -1, 0])
    idx = np.array([[0, 1], [0, 1], [1, 2], [2, 3], [3, 4], [1, 1], [3, 4]])
    w = np.array([[0.7, 0.3], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [1, 0], [0.2, 0.8]])
    assert resampled_labels(codes, idx, w).tolist() == [0, 1, 2, 2, -1, 1, 0]
    with pytest.raises(ConfigError, match=r"source_index must lie in \[0, 5\)"):
        resampled_labels(codes, idx + 3, w)
    with pytest.raises(ConfigError, match=r"shape \(m, 2\), got \(7,\) and \(7, 2\)"):
        resampled_labels(codes, idx[:, 0], w)


def test_labels_for_loaded_and_resampled_volumes(scans: list[LidcScan]) -> None:
    from lungslice.dicom.resample import resample
    from lungslice.dicom.volume import CTVolume

    slices, _ = label_scans(scans)
    z = np.arange(8, dtype=float) * 2.0  # the labelled series: labels 0 2 2 1 0 2 0 0
    volume = CTVolume(
        hu=np.zeros((8, 4, 4), dtype=np.float32),
        spacing=(2.0, 0.7, 0.7),
        z_positions=z,
        sop_instance_uids=tuple(f"1.1.{i}" for i in range(8)),
        instance_numbers=tuple(range(1, 9)),
        series_uid="1.1",
        study_uid="1.1.0",
        patient_id="LIDC-IDRI-0001",
    )
    assert labels_for_volume(slices, volume).tolist() == [0, 2, 2, 1, 0, 2, 0, 0]
    resampled = resample(volume, slice_spacing=1.0)
    got = labels_for_resampled(slices, resampled)
    # at odd mm a new slice lies half-way: the more severe of its two neighbours
    assert resampled.z_positions.tolist() == list(np.arange(15, dtype=float))
    assert got.tolist() == [0, 2, 2, 2, 2, 2, 1, 1, 0, 2, 2, 2, 0, 0, 0]
    other = CTVolume(**{**volume.__dict__, "series_uid": "7.7"})
    with pytest.raises(AnnotationError, match=r"no slice labels for series 7\.7 \(patient LIDC"):
        labels_for_volume(slices, other)
