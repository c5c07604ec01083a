"""Wilson intervals, ECE and temperature scaling (export.calibration): pure functions, checked
against values worked out by hand and against their defining properties."""

import numpy as np
import pytest

from export.calibration import (
    BETA_RANGE,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    nll,
    softmax,
    wilson_interval,
)


def test_wilson_matches_the_formula_and_the_issue():
    low, high = wilson_interval(348, 359)  # 96.94% of the digits test split
    assert (round(low, 4), round(high, 4)) == (0.946, 0.9828)  # worked by hand from the formula
    assert 0.017 < (high - low) / 2 < 0.02  # "about ±1.8 points"
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(10 / (10 + 1.96**2), abs=1e-4)  # n/(n+z²)
    assert wilson_interval(0, 10)[0] == 0.0
    narrow, wide = wilson_interval(970, 1000), wilson_interval(97, 100)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    with pytest.raises(ValueError):
        wilson_interval(5, 0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_ece_of_perfect_and_overconfident_predictions():
    labels = np.array([0, 1, 0, 1])
    sure_right = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(sure_right, labels) == 0.0
    sure_half_wrong = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert expected_calibration_error(sure_half_wrong, labels) == pytest.approx(0.5)
    # 0.75 confident, right 3 times in 4: calibrated
    probs = np.tile([0.75, 0.25], (4, 1))
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0)


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (4000, 10))
    labels = np.array([rng.choice(10, p=p) for p in softmax(true_logits)])
    t = fit_temperature(true_logits * 3, labels)  # overconfident by 3x
    assert t == pytest.approx(3, rel=0.1)
    assert nll(true_logits * 3, labels, t) < nll(true_logits * 3, labels, 1.0)
    kept, before, after = calibrate(true_logits * 3, labels)
    assert kept == t and after < before  # lowers the ECE, so it is kept


def test_calibrate_keeps_one_when_the_temperature_does_not_help():
    labels = np.array([0, 1, 2, 0, 1, 2])
    logits = np.eye(3)[labels] * 50  # always right and sure: ECE 0 already
    assert calibrate(logits, labels) == (1.0, 0.0, 0.0)


def test_calibrate_keeps_one_on_a_validation_split_classified_entirely_right():
    """No error to calibrate against: the NLL falls all the way to the search's bound, and that T
    (certain of everything) would be folded in although it lowers the validation ECE to 0."""
    labels = np.array([0, 1, 2, 0, 1, 2])
    logits = np.eye(3)[labels] * 2  # always right, about 79% sure
    assert fit_temperature(logits, labels) == pytest.approx(1 / BETA_RANGE[1], rel=0.05)
    t, before, after = calibrate(logits, labels)
    assert t == 1.0 and after == before > 0.2
