"""Temperature / Platt scaling, ECE with patient CIs, saturation rate and reliability plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lungslice.errors import BundleMismatchError, ConfigError
from lungslice.model.calibration import (
    Calibrator,
    cross_calibrate,
    ece_bootstrap,
    expected_calibration_error,
    plot_reliability,
    reliability_curve,
    saturation_rate,
)
from lungslice.model.metrics import format_figure


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _overconfident(n: int = 4000, factor: float = 4.0, seed: int = 0):
    """Labels drawn from sigmoid(z); the model reports sigmoid(factor * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    y = (rng.uniform(size=n) < _sigmoid(z)).astype(np.int64)
    return y, _sigmoid(factor * z), _sigmoid(z)


def test_ece_of_a_calibrated_set_is_near_zero() -> None:
    rng = np.random.default_rng(1)
    p = rng.uniform(size=20000)
    y = (rng.uniform(size=p.size) < p).astype(np.int64)
    assert expected_calibration_error(y, p) < 0.015


def test_ece_by_hand() -> None:
    # bin [0.1, 0.2): p 0.1, 0.1 with outcomes 0, 1 -> |0.5 - 0.1| = 0.4, weight 2/4
    # bin [0.9, 1.0]: p 0.9, 1.0 with outcomes 1, 1 -> |1 - 0.95| = 0.05, weight 2/4
    y = np.array([0, 1, 1, 1])
    p = np.array([0.1, 0.1, 0.9, 1.0])
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(0.225)
    mean_p, freq, count = reliability_curve(y, p, n_bins=10)
    assert count.tolist() == [0, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert np.isnan(freq[0]) and freq[1] == pytest.approx(0.5) and mean_p[9] == pytest.approx(0.95)


def test_temperature_scaling_reduces_ece_of_an_overconfident_set() -> None:
    y, p, _ = _overconfident()
    cal = Calibrator("temperature").fit(p, y)
    assert cal.temperature_ == pytest.approx(4.0, rel=0.15)
    after = cal.transform(p)
    assert expected_calibration_error(y, after) < 0.5 * expected_calibration_error(y, p)
    assert cal.nll_after_ < cal.nll_before_
    assert saturation_rate(after) < saturation_rate(p)
    # a monotone map: the ranking is kept (ties only where p is within 1e-7 of 0 or 1)
    assert np.all(np.diff(after[np.argsort(p)]) >= 0)


def test_platt_recovers_slope_and_shift() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(0.0, 2.0, 6000)
    y = (rng.uniform(size=z.size) < _sigmoid(0.5 * z - 1.0)).astype(np.int64)
    cal = Calibrator("platt").fit(z, y, logits=True)
    assert cal.a_ == pytest.approx(0.5, abs=0.08)
    assert cal.b_ == pytest.approx(-1.0, abs=0.15)
    p_raw = _sigmoid(z)
    assert expected_calibration_error(y, cal.transform(z, logits=True)) < 0.03
    assert expected_calibration_error(y, p_raw) > 0.1


def test_multiclass_temperature_on_probabilities() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 1.0, (5000, 3))
    true = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = (rng.uniform(size=(true.shape[0], 1)) > np.cumsum(true, axis=1)).sum(axis=1)
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(axis=1, keepdims=True)
    cal = Calibrator().fit(sharp, y)
    assert cal.temperature_ == pytest.approx(3.0, rel=0.15)
    after = cal.transform(sharp)
    assert after.shape == sharp.shape
    assert np.allclose(after.sum(axis=1), 1.0)
    assert expected_calibration_error(y, after) < 0.5 * expected_calibration_error(y, sharp)


def test_cross_calibrate_is_better_on_the_same_folds() -> None:
    y, p, _ = _overconfident(n=3000, seed=4)
    folds = np.arange(y.size) % 5
    after = cross_calibrate(p, y, folds, "temperature")
    for f in range(5):
        k = folds == f
        assert expected_calibration_error(y[k], after[k]) < expected_calibration_error(y[k], p[k])


def test_ece_bootstrap_over_patients_prints_as_a_figure() -> None:
    y, p, _ = _overconfident(n=600, seed=5)
    groups = np.repeat(np.arange(60), 10)  # 60 patients, 10 predictions each
    fig = ece_bootstrap(y, p, groups, n_boot=100, seed=0)
    assert set(fig) == {"value", "ci_low", "ci_high", "n_boot"}
    assert fig["ci_low"] <= fig["value"] <= fig["ci_high"]
    assert fig["value"] == pytest.approx(expected_calibration_error(y, p))
    assert fig == ece_bootstrap(y, p, groups, n_boot=100, seed=0)
    assert format_figure(fig).startswith(f"{fig['value']:.3f} [")


def test_saturation_rate() -> None:
    assert saturation_rate(np.array([0.0, 0.5, 1.0, 0.0005])) == 0.75
    assert saturation_rate(np.array([[0.9995, 0.0005], [0.6, 0.4]])) == 0.5


def test_round_trip_through_json() -> None:
    y, p, _ = _overconfident(n=500, seed=6)
    for method in ("temperature", "platt"):
        cal = Calibrator(method).fit(p, y)
        back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
        assert np.allclose(back.transform(p), cal.transform(p))


def test_bad_input_is_refused() -> None:
    with pytest.raises(ConfigError, match="method must be one of"):
        Calibrator("beta")
    with pytest.raises(ConfigError, match=r"Calibrator\('platt'\) is binary"):
        Calibrator("platt").fit(np.full((4, 3), 1 / 3), np.array([0, 1, 2, 0]))
    with pytest.raises(ConfigError, match=r"must lie in \[0, 1\]"):
        Calibrator().fit(np.array([0.2, 1.5]), np.array([0, 1]))
    with pytest.raises(ConfigError, match=r"labels must be integers in 0\.\.1"):
        Calibrator().fit(np.array([0.2, 0.5]), np.array([0, 2]))
    with pytest.raises(ConfigError, match="not fitted"):
        Calibrator().transform(np.array([0.5]))
    cal = Calibrator().fit(np.array([0.2, 0.7, 0.9]), np.array([0, 1, 1]))
    with pytest.raises(BundleMismatchError, match="fitted on 2-class"):
        cal.transform(np.full((2, 3), 1 / 3))
    with pytest.raises(BundleMismatchError, match="missing"):
        Calibrator.from_dict({"method": "platt"})


def test_plot_reliability_writes_png(tmp_path: Path) -> None:
    y, p, _ = _overconfident(n=400, seed=7)
    after = Calibrator().fit(p, y).transform(p)
    out = plot_reliability(y, p, after, tmp_path / "sub" / "rel.png", title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
