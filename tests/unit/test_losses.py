"""Focal loss (summed over items) and KL against hand-computed numpy values."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vasp_model.nn.losses import FocalLoss, focal_terms, kl_divergence  # noqa: E402


def np_focal(y, p, alpha, gamma):
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    return -alpha * (1 - p) ** gamma * y * np.log(p) - (1 - alpha) * p**gamma * (1 - y) * np.log(1 - p)


def test_focal_terms_hand_computed():
    y = np.array([[1.0, 0.0, 1.0, 0.0]], np.float32)
    p = np.array([[0.9, 0.2, 0.3, 0.6]], np.float32)
    got = keras.ops.convert_to_numpy(focal_terms(y, p, 0.25, 2.0))
    # first item by hand: -0.25 * 0.1^2 * ln(0.9) = 0.000263401
    assert got[0, 0] == pytest.approx(-0.25 * 0.01 * np.log(0.9), rel=1e-5)
    # second: -0.75 * 0.2^2 * ln(0.8) = 0.0066943
    assert got[0, 1] == pytest.approx(-0.75 * 0.04 * np.log(0.8), rel=1e-5)
    np.testing.assert_allclose(got, np_focal(y, p, 0.25, 2.0), rtol=1e-5)


def test_a_label_of_minus_one_is_left_out_of_the_loss():
    y = np.array([[1.0, 0.0, -1.0, -1.0, 0.0]], np.float32)
    p = np.array([[0.9, 0.2, 0.3, 0.999, 0.6]], np.float32)
    got = keras.ops.convert_to_numpy(focal_terms(y, p, 0.25, 2.0))
    np.testing.assert_array_equal(got[0, 2:4], 0.0)
    np.testing.assert_allclose(got[0, [0, 1, 4]], np_focal(y[0, [0, 1, 4]], p[0, [0, 1, 4]], 0.25, 2.0), rtol=1e-5)
    kept = float(keras.ops.convert_to_numpy(FocalLoss()(y[:, [0, 1, 4]], p[:, [0, 1, 4]])))
    assert float(keras.ops.convert_to_numpy(FocalLoss()(y, p))) == pytest.approx(kept, rel=1e-6)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (0.9, 1.5)])
def test_focal_loss_sums_items_and_averages_users(alpha, gamma):
    rng = np.random.default_rng(0)
    y = (rng.random((5, 11)) < 0.3).astype(np.float32)
    p = rng.uniform(0.01, 0.99, (5, 11)).astype(np.float32)
    expected = np_focal(y, p, alpha, gamma).sum(axis=1).mean()
    got = float(keras.ops.convert_to_numpy(FocalLoss(alpha, gamma)(y, p)))
    assert got == pytest.approx(expected, rel=1e-5)
    # Keras' built-in focal loss averages over items: ours is exactly I times it
    builtin = keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=alpha, gamma=gamma)
    assert got == pytest.approx(float(keras.ops.convert_to_numpy(builtin(y, p))) * y.shape[1], rel=1e-4)


def test_focal_loss_is_finite_at_saturated_probabilities():
    y = np.array([[1.0, 0.0]], np.float32)
    p = np.array([[0.0, 1.0]], np.float32)
    assert np.isfinite(float(keras.ops.convert_to_numpy(FocalLoss()(y, p))))


def test_focal_loss_config_round_trip():
    loss = FocalLoss(0.3, 1.5)
    again = FocalLoss.from_config(loss.get_config())
    assert (again.alpha, again.gamma) == (0.3, 1.5)


def test_kl_hand_computed():
    mean = np.array([[0.0, 1.0], [0.5, -0.5]], np.float32)
    log_var = np.array([[0.0, 0.0], [np.log(2.0), np.log(0.5)]], np.float32)
    got = keras.ops.convert_to_numpy(kl_divergence(mean, log_var))
    # user 0: dims 0 and 0.5 -> mean 0.25; user 1: 0.5*(2 + .25 - 1 - ln2) and 0.5*(.5 + .25 - 1 - ln .5)
    u1 = [0.5 * (2 + 0.25 - 1 - np.log(2)), 0.5 * (0.5 + 0.25 - 1 - np.log(0.5))]
    np.testing.assert_allclose(got, [0.25, np.mean(u1)], rtol=1e-5)
    assert kl_divergence(np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32)).shape == (1,)
