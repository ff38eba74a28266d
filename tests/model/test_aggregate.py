"""Aggregation on hand-made probability tracks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungslice.errors import ConfigError
from lungslice.model.aggregate import (
    AGGREGATION_METHODS,
    AggregateConfig,
    LearnedAggregator,
    aggregate,
    fit_learned_aggregator,
    map_to_source,
)


def _track(n: int = 60) -> np.ndarray:
    probs = np.zeros((n, 3))
    probs[:, 0] = 0.98
    probs[:, 1] = 0.01
    probs[:, 2] = 0.01
    return probs


def _set(probs: np.ndarray, rows: slice | int, benign: float, malignant: float) -> None:
    probs[rows, 1] = benign
    probs[rows, 2] = malignant
    probs[rows, 0] = 1.0 - benign - malignant


def test_persistent_blob_is_a_candidate_and_spike_is_not() -> None:
    probs = _track()
    _set(probs, slice(20, 28), 0.1, 0.8)  # 8 mm malignant-looking blob
    _set(probs, 45, 0.9, 0.05)  # one-slice spike (a vessel)
    res = aggregate(probs, np.arange(60.0), AggregateConfig(sigma_mm=2.0, threshold=0.5))
    assert len(res.candidates) == 1
    cand = res.candidates[0]
    assert 19 <= cand.start <= 21 and 26 <= cand.end <= 28
    assert cand.peak in (23, 24)
    assert cand.max_p_malignant > 0.6 and cand.max_p_malignant > cand.max_p_benign
    # without smoothing the spike passes the threshold but not the 3 mm minimum length
    raw = aggregate(probs, np.arange(60.0), AggregateConfig(sigma_mm=0.0, min_length_mm=3.0))
    assert [(c.start, c.end) for c in raw.candidates] == [(20, 27)]
    raw1 = aggregate(probs, np.arange(60.0), AggregateConfig(sigma_mm=0.0, min_length_mm=1.0))
    assert sorted((c.start, c.end) for c in raw1.candidates) == [(20, 27), (45, 45)]


def test_sigma_is_in_mm_not_slices() -> None:
    probs = _track(30)
    _set(probs, slice(12, 16), 0.1, 0.8)  # 4 slices of 2 mm = 8 mm
    z = np.arange(30) * 2.0
    res = aggregate(probs, z, AggregateConfig(sigma_mm=2.0, min_length_mm=4.0))
    assert len(res.candidates) == 1
    assert res.candidates[0].z_start >= 22.0 and res.candidates[0].z_end <= 32.0


def test_recommendations_distinct_candidates_first() -> None:
    probs = _track()
    _set(probs, slice(10, 16), 0.6, 0.3)  # strongest, wide
    _set(probs, slice(40, 45), 0.1, 0.6)  # second
    res = aggregate(probs, np.arange(60.0), AggregateConfig())
    rec = res.recommendations(4)
    assert 10 <= rec[0] <= 15 and 40 <= rec[1] <= 44
    assert len(set(rec.tolist())) == 4
    order = res.ranking()
    assert sorted(order.tolist()) == list(range(60))


def test_study_scores_by_method() -> None:
    probs = _track()
    _set(probs, slice(10, 16), 0.5, 0.4)
    _set(probs, slice(40, 46), 0.2, 0.7)
    z = np.arange(60.0)
    mx = aggregate(probs, z, AggregateConfig(method="max"))
    nor = aggregate(probs, z, AggregateConfig(method="noisy_or", leak=0.1))
    assert mx.p_any_nodule == pytest.approx(float((mx.smoothed[:, 1:]).sum(axis=1).max()))
    # noisy-OR over two strong candidates exceeds either candidate alone
    assert nor.p_any_nodule > max(c.p_nodule for c in nor.candidates)
    expected = 1 - 0.9 * np.prod(1 - nor.topk[:, 1])
    assert nor.p_malignant == pytest.approx(expected)
    clean = aggregate(_track(), z, AggregateConfig(method="noisy_or", leak=0.1))
    assert clean.candidates == ()
    assert clean.p_any_nodule < nor.p_any_nodule


def test_learned_aggregator_ranks_studies() -> None:
    rng = np.random.default_rng(0)
    cfg = AggregateConfig(top_k=3)
    results, has_any, has_mal = [], [], []
    for i in range(20):
        probs = _track(40)
        kind = i % 3
        if kind:
            start = int(rng.integers(5, 30))
            _set(
                probs, slice(start, start + 5), 0.7 if kind == 1 else 0.2, 0.2 if kind == 1 else 0.7
            )
        results.append(aggregate(probs, np.arange(40.0), cfg))
        has_any.append(kind > 0)
        has_mal.append(kind == 2)
    learned = fit_learned_aggregator(results, np.array(has_any), np.array(has_mal), cfg)
    assert learned.coef_any_.shape == learned.coef_malignant_.shape == (6,)  # 2 x top_k
    assert cfg == AggregateConfig(top_k=3)  # the config holds no fitted state
    as_learned = cfg.replace(method="learned")
    scored = [aggregate(r.smoothed, np.arange(40.0), as_learned, learned=learned) for r in results]
    p_mal = np.array([s.p_malignant for s in scored])
    assert p_mal[np.array(has_mal)].min() > p_mal[~np.array(has_mal)].max()
    again = LearnedAggregator.from_dict(json.loads(json.dumps(learned.to_dict())))
    assert again.predict(results[1].topk) == learned.predict(results[1].topk)
    with pytest.raises(ConfigError, match=r"method='learned'\) needs the fitted weights"):
        aggregate(results[0].smoothed, np.arange(40.0), as_learned)
    with pytest.raises(ConfigError, match=r"LearnedAggregator is not fitted"):
        LearnedAggregator(3).predict(results[0].topk)


def test_map_to_source(synthetic) -> None:
    one = synthetic.slices[synthetic.slices["series_uid"] == "1.2.3.0"].reset_index(drop=True)
    table = map_to_source(np.array([5, 2]), one)
    assert table["rank"].tolist() == [1, 2]
    assert table["sop_instance_uid"].tolist() == ["1.2.3.0.5", "1.2.3.0.2"]
    assert table["instance_number"].tolist() == [6, 3]
    with pytest.raises(ConfigError, match=r"slice table lacks columns \['sop_instance_uid'"):
        map_to_source(np.array([0]), one.drop(columns=["sop_instance_uid"]))


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"expected one of max, noisy_or, learned, got 'mean'"):
        AggregateConfig(method="mean")
    with pytest.raises(ConfigError, match=r"z_mm must be strictly increasing or decreasing"):
        aggregate(_track(3), np.array([0.0, 1.0, 1.0]), AggregateConfig())


def test_config_round_trips_and_methods_are_one_list() -> None:
    cfg = AggregateConfig(sigma_mm=1.5, top_k=4, method="max", leak=0.05)
    assert AggregateConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert AGGREGATION_METHODS == ("max", "noisy_or", "learned")
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) 'learned_any'"):
        AggregateConfig.from_dict({"learned_any": [0.0]})
