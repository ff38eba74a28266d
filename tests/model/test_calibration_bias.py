"""Temperature with class bias, and isotonic: the prior shift of balanced class weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lungslice.errors import BundleMismatchError, ConfigError
from lungslice.model.calibration import (
    CANDIDATE_METHODS,
    Calibrator,
    cross_calibrate,
    expected_calibration_error,
    saturation_rate,
)

PRIORS = np.array(
    [0.95, 0.03, 0.02]
)  # non-nodule, benign, malignant: candidates are mostly negative
MEANS = np.array([[0.0, 0.0], [2.0, 0.5], [1.5, 2.0]])


def _balanced_head(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, the Bayes posterior (calibrated by construction) and a balanced head's output.

    Two Gaussian features per class: the posterior is ``softmax(log prior - |x - mu|^2 / 2)``.
    A head trained with balanced class weights learns the posterior under equal priors,
    ``softmax(-|x - mu|^2 / 2)``: the rare classes' odds are inflated by the inverse prior ratio.
    """
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=PRIORS)
    x = MEANS[y] + rng.normal(size=(n, 2))
    loglik = -0.5 * ((x[:, None, :] - MEANS[None]) ** 2).sum(axis=2)

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        out: np.ndarray = e / e.sum(axis=1, keepdims=True)
        return out

    return y, softmax(loglik + np.log(PRIORS)), softmax(loglik)


def _p_nodule(p: np.ndarray) -> np.ndarray:
    out: np.ndarray = p[:, 1] + p[:, 2]
    return out


def test_class_bias_undoes_balanced_weights_where_temperature_alone_cannot() -> None:
    y, truth, balanced = _balanced_head()
    yb = (y > 0).astype(np.int64)
    ece_truth = expected_calibration_error(yb, _p_nodule(truth))
    assert expected_calibration_error(yb, _p_nodule(balanced)) > 0.1 > 5 * ece_truth

    temp = Calibrator("temperature").fit(balanced, y)
    bias = Calibrator("bias_temperature").fit(balanced, y)
    # one temperature cannot undo a shift of the odds: it stays near 1 and so does the error
    assert expected_calibration_error(yb, _p_nodule(temp.transform(balanced))) > 0.2
    # the bias recovers the priors' log ratios, at T = 1
    assert bias.temperature_ == pytest.approx(1.0, abs=0.08)
    assert bias.bias_[0] == 0.0
    assert bias.bias_[1:] == pytest.approx(np.log(PRIORS[1:] / PRIORS[0]), abs=0.2)
    p_bias = bias.transform(balanced)
    assert np.allclose(p_bias.sum(axis=1), 1.0)
    assert expected_calibration_error(yb, _p_nodule(p_bias)) < 2 * ece_truth + 0.005
    assert bias.nll_after_ < temp.nll_after_ <= temp.nll_before_
    # near-0 outputs are right here: as many as the Bayes posterior gives
    sat_truth = saturation_rate(_p_nodule(truth))
    assert saturation_rate(_p_nodule(p_bias)) == pytest.approx(sat_truth, abs=0.03)


def test_bias_temperature_held_out_and_binary() -> None:
    y, _, balanced = _balanced_head(seed=1)
    folds = np.arange(len(y)) % 4
    yb = (y > 0).astype(np.int64)
    out = {m: cross_calibrate(balanced, y, folds, m) for m in CANDIDATE_METHODS}
    for f in range(4):
        test = folds == f
        assert expected_calibration_error(
            yb[test], _p_nodule(out["bias_temperature"][test])
        ) < expected_calibration_error(yb[test], _p_nodule(balanced[test]))
    # binary input: T and one bias, i.e. Platt without the smoothed targets
    pb = _p_nodule(balanced)
    cal = Calibrator("bias_temperature").fit(pb, yb)
    assert cal.bias_.shape == (2,) and cal.b_ == cal.bias_[1] < 0.0
    assert expected_calibration_error(yb, cal.transform(pb)) < 0.02


def test_temperature_is_bounded_on_separable_data() -> None:
    p = np.array([0.4, 0.45, 0.55, 0.6] * 50)
    y = (p > 0.5).astype(np.int64)  # perfectly separated: the NLL keeps falling as T -> 0
    for method in CANDIDATE_METHODS:
        assert Calibrator(method).fit(p, y).temperature_ == pytest.approx(np.exp(-3.0), rel=1e-3)


def test_isotonic_is_monotone_and_never_says_zero_or_one() -> None:
    rng = np.random.default_rng(2)
    p = rng.uniform(size=2000)
    y = (rng.uniform(size=2000) < p**3).astype(np.int64)  # p**3 is the true probability
    cal = Calibrator("isotonic").fit(p, y)
    q = cal.transform(np.sort(p))
    assert np.all(np.diff(q) >= 0)
    assert q.min() >= 1 / 2002 and q.max() <= 1 - 1 / 2002
    assert expected_calibration_error(y, cal.transform(p)) < expected_calibration_error(y, p) / 3
    with pytest.raises(ConfigError, match=r"Calibrator\('isotonic'\) is binary"):
        Calibrator("isotonic").fit(np.full((4, 3), 1 / 3), np.array([0, 1, 2, 0]))


@pytest.mark.parametrize(
    ("method", "p", "y"),
    [
        ("bias_temperature", _balanced_head(600, 3)[2], _balanced_head(600, 3)[0]),
        ("bias_temperature", np.linspace(0.05, 0.95, 40), np.arange(40) % 3 == 0),
        ("isotonic", np.linspace(0.05, 0.95, 40), np.arange(40) % 3 == 0),
    ],
)
def test_round_trip_through_json(method: str, p: np.ndarray, y: np.ndarray) -> None:
    cal = Calibrator(method).fit(p, y.astype(np.int64))
    back = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert np.array_equal(back.transform(p), cal.transform(p))
    d = cal.to_dict()
    d.pop("bias" if method == "bias_temperature" else "x")
    with pytest.raises(BundleMismatchError, match="missing"):
        Calibrator.from_dict(d)


def test_platt_never_inverts_a_score() -> None:
    # a score that ranks the fitting studies backwards (as a handful of studies can)
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.1, 0.4, 0.5])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 0, 1])
    cal = Calibrator("platt").fit(p, y)
    assert cal.a_ == 0.0
    q = cal.transform(p)
    assert np.allclose(q, q[0])  # the base rate, with Platt's smoothed targets
    assert q[0] == pytest.approx(y.mean(), abs=0.06)
    assert Calibrator.from_dict(cal.to_dict()).transform(p) == pytest.approx(q)
