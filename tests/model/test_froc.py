"""FROC / CPM (LUNA16 definitions), patient bootstrap, recall@k chance line."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lungslice.errors import ConfigError
from lungslice.model.froc import (
    CPM_FP_RATES,
    cpm,
    cpm_from_curve,
    froc_bootstrap,
    froc_curve,
    plot_froc,
    recall_at_k_chance,
)
from lungslice.model.metrics import format_figure


def _cands(rows: list[tuple[str, float, str | None, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["series_uid", "score", "nodule_id", "label_code"])


@pytest.fixture
def case() -> tuple[pd.DataFrame, pd.DataFrame]:
    # scan A: n1 (malignant) hit twice, n2 (benign) hit once, two FPs
    # scan B: n3 (benign) never hit, excluded nodule nx hit (ignored), two FPs
    candidates = _cands(
        [
            ("A", 0.90, "n1", 2),
            ("A", 0.80, "n1", 2),  # duplicate hit: neither TP nor FP
            ("A", 0.70, None, 0),
            ("A", 0.60, "n2", 1),
            ("A", 0.50, None, 0),
            ("B", 0.95, None, 0),
            ("B", 0.85, "nx", -1),  # on an excluded nodule: ignored
            ("B", 0.40, None, 0),
        ]
    )
    nodules = pd.DataFrame(
        {
            "nodule_id": ["n1", "n2", "n3", "nx"],
            "series_uid": ["A", "A", "B", "B"],
            "code": [2, 1, 1, -1],
        }
    )
    return candidates, nodules


def test_froc_points_by_hand(case: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    candidates, nodules = case
    curve = froc_curve(candidates, nodules, n_scans=2)
    # kept: .95 FP, .9 TP(n1), .7 FP, .6 TP(n2), .5 FP, .4 FP; 3 counted nodules, 2 scans
    assert curve["threshold"].tolist() == [np.inf, 0.95, 0.90, 0.70, 0.60, 0.50, 0.40]
    assert curve["n_tp"].tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert curve["n_fp"].tolist() == [0, 1, 1, 2, 2, 3, 4]
    np.testing.assert_allclose(curve["fps_per_scan"], [0, 0.5, 0.5, 1, 1, 1.5, 2])
    np.testing.assert_allclose(curve["sensitivity"], [0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])


def test_cpm_by_hand(case: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    candidates, nodules = case
    result = cpm(candidates, nodules, n_scans=2)
    expected = [0.0, 0.0, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3]
    np.testing.assert_allclose([result[f"sens@{r:g}"] for r in CPM_FP_RATES], expected)
    assert result["cpm"] == pytest.approx(3 / 7)


def test_duplicates_count_once_and_excluded_is_ignored(
    case: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    candidates, nodules = case
    base = froc_curve(candidates, nodules, 2)
    # more duplicate hits below the best one, and more hits on the excluded nodule
    extra = _cands([("A", 0.99, "nx2", -1), ("A", 0.10, "n1", 2), ("B", 0.2, "nx", -1)])
    more = froc_curve(pd.concat([candidates, extra]), nodules, 2)
    assert more["n_fp"].max() == base["n_fp"].max() == 4
    assert more["n_tp"].max() == base["n_tp"].max() == 2
    # a duplicate with a *higher* score replaces the TP's score, not adds one
    higher = pd.concat([candidates, _cands([("A", 0.97, "n1", 2)])])
    c = froc_curve(higher, nodules, 2)
    assert c["n_tp"].max() == 2
    assert c.loc[c["threshold"] == 0.97, "n_tp"].item() == 1


def test_missed_nodules_and_empty_scans_count(case: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    candidates, nodules = case
    # a third scan without candidates but with a nodule: sensitivity and FP rate both drop
    more_nodules = pd.concat(
        [nodules, pd.DataFrame({"nodule_id": ["n4"], "series_uid": ["C"], "code": [2]})]
    )
    curve = froc_curve(candidates, more_nodules, n_scans=3)
    assert curve["sensitivity"].max() == pytest.approx(2 / 4)
    assert curve["fps_per_scan"].max() == pytest.approx(4 / 3)


def test_cpm_is_the_best_sensitivity_within_each_fp_rate() -> None:
    # no tied scores: LUNA16's interpolation reduces to a step function
    rng = np.random.default_rng(3)
    rows = []
    nodule_rows = []
    for s in range(6):
        for j in range(3):
            nodule_rows.append((f"s{s}n{j}", f"s{s}"))
            if rng.random() < 0.7:
                rows.append((f"s{s}", rng.uniform(0.3, 1.0), f"s{s}n{j}", 1))
        for _ in range(15):
            rows.append((f"s{s}", rng.uniform(0.0, 0.9), None, 0))
    candidates = _cands(rows)
    nodules = pd.DataFrame(nodule_rows, columns=["nodule_id", "series_uid"])
    result = cpm(candidates, nodules, n_scans=6)
    score = candidates["score"].to_numpy()
    hit = candidates["nodule_id"].notna().to_numpy()
    for r in CPM_FP_RATES:
        best = 0.0
        for t in np.r_[np.inf, np.sort(score)[::-1]]:
            fps = (~hit & (score >= t)).sum() / 6
            if fps <= r:
                best = max(best, (hit & (score >= t)).sum() / len(nodules))
        assert result[f"sens@{r:g}"] == pytest.approx(best)


def test_unknown_nodule_is_an_error(case: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    candidates, nodules = case
    with pytest.raises(ConfigError, match="not among the counted nodules"):
        froc_curve(candidates, nodules[nodules["nodule_id"] != "n2"], 2)
    with pytest.raises(ConfigError, match="lacks column"):
        froc_curve(candidates.drop(columns="label_code"), nodules, 2)


def test_no_nodules_gives_nan() -> None:
    candidates = _cands([("A", 0.5, None, 0)])
    nodules = pd.DataFrame({"nodule_id": [], "series_uid": []})
    assert math.isnan(cpm(candidates, nodules, 1)["cpm"])


def test_bootstrap_brackets_point_and_prints(case: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    candidates, nodules = case
    # 8 patients: copies of the two scans under new ids
    cands, nods, scans = [], [], []
    for p in range(4):
        for s in ("A", "B"):
            uid = f"{s}{p}"
            c = candidates[candidates["series_uid"] == s].copy()
            c["series_uid"] = uid
            c["nodule_id"] = [f"{n}_{p}" if isinstance(n, str) else None for n in c["nodule_id"]]
            n = nodules[nodules["series_uid"] == s].copy()
            n["series_uid"] = uid
            n["nodule_id"] = n["nodule_id"] + f"_{p}"
            cands.append(c)
            nods.append(n)
            scans.append((uid, f"P{p}{s}"))
    c_all, n_all = pd.concat(cands), pd.concat(nods)
    scan_table = pd.DataFrame(scans, columns=["series_uid", "patient_id"])
    result = froc_bootstrap(c_all, n_all, scan_table, n_boot=200, seed=1)
    assert result["cpm"]["value"] == pytest.approx(3 / 7)
    for fig in result.values():
        assert fig["ci_low"] <= fig["value"] <= fig["ci_high"]
        assert fig["n_boot"] == 200
    assert result["cpm"]["ci_low"] < result["cpm"]["ci_high"]
    assert format_figure(result["cpm"]).startswith("0.429 [")
    again = froc_bootstrap(c_all, n_all, scan_table, n_boot=200, seed=1)
    assert again == result
    with pytest.raises(ConfigError, match="missing from the scan table"):
        froc_bootstrap(c_all, n_all, scan_table.iloc[1:], n_boot=5)


def test_recall_at_k_chance_exact() -> None:
    for n, m, k in [(20, 3, 5), (10, 1, 1), (7, 7, 1), (30, 4, 0), (12, 5, 9), (5, 2, 10)]:
        exact = 1 - math.comb(n - m, min(k, n)) / math.comb(n, min(k, n))
        assert recall_at_k_chance(n, m, k) == pytest.approx(exact, abs=1e-12)
    assert recall_at_k_chance(10, 0, 4) == 0.0
    arr = recall_at_k_chance(np.array([20, 10]), np.array([3, 1]), 5)
    assert isinstance(arr, np.ndarray) and arr.shape == (2,)
    assert arr[1] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="n_nodule_slices <= n_slices"):
        recall_at_k_chance(5, 6, 1)


def test_recall_at_k_chance_matches_simulation() -> None:
    n, m, k, trials = 40, 3, 6, 20000
    rng = np.random.default_rng(0)
    ranks = rng.permuted(np.tile(np.arange(n), (trials, 1)), axis=1)[:, :m]  # nodule slice ranks
    simulated = (ranks < k).any(axis=1).mean()
    exact = recall_at_k_chance(n, m, k)
    assert abs(simulated - exact) < 4 * math.sqrt(exact * (1 - exact) / trials)


def test_plot_froc(case: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path) -> None:
    candidates, nodules = case
    curve = froc_curve(candidates, nodules, 2)
    band = {
        k: {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1}
        for k, v in cpm_from_curve(curve).items()
    }
    out = plot_froc(curve, tmp_path / "f" / "froc.png", title="t", label="x", band=band)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
