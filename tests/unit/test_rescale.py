"""Tests of brainrecon.decoding.rescale with hand-worked values and defining properties."""

from __future__ import annotations

import numpy as np
import pytest

from brainrecon.decoding.rescale import RESCALE_METHODS, rescale, rescale_none, rescale_paper, rescale_train_stats
from brainrecon.decoding.ridge import RidgeDecoder
from brainrecon.errors import ConfigError, ShapeMismatchError


def test_paper_hand_worked():
    # column 0: batch mean 2, std 1 -> standardised [-1, 1] -> *2 + 100
    # column 1: no spread in the batch -> train mean
    z = np.array([[1.0, 10.0], [3.0, 10.0]])
    out = rescale_paper(z, train_mean=np.array([100.0, 7.0]), train_std=np.array([2.0, 5.0]))
    np.testing.assert_allclose(out, [[98.0, 7.0], [102.0, 7.0]])
    assert out.dtype == np.float32


def test_paper_matches_formula_and_is_transductive():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((20, 6)) * 0.3 + 2
    mu, sd = rng.standard_normal(6), rng.random(6) + 0.5
    out = rescale_paper(z, mu, sd)
    np.testing.assert_allclose(out.mean(0), mu, atol=1e-5)
    np.testing.assert_allclose(out.std(0), sd, rtol=1e-5)
    # the result for image 0 changes when the *other* images change
    z2 = z.copy()
    z2[1:] *= 3
    assert not np.allclose(rescale_paper(z2, mu, sd)[0], out[0])


def test_paper_ddof():
    z = np.array([[0.0], [2.0]])
    out = rescale_paper(z, np.array([0.0]), np.array([1.0]), ddof=1)
    np.testing.assert_allclose(out[:, 0], [-1 / np.sqrt(2), 1 / np.sqrt(2)], rtol=1e-6)


def test_train_stats_hand_worked_and_row_independent():
    z = np.array([[4.0, 1.0], [6.0, 1.0]])
    out = rescale_train_stats(z, train_mean=np.array([10.0, 0.0]), train_std=np.array([3.0, 1.0]),
                              pred_mean=np.array([5.0, 1.0]), pred_std=np.array([0.5, 0.0]))
    # (4-5)/0.5*3+10 = 4, (6-5)/0.5*3+10 = 16; zero pred_std -> train mean
    np.testing.assert_allclose(out, [[4.0, 0.0], [16.0, 0.0]])
    single = rescale_train_stats(z[:1], np.array([10.0, 0.0]), np.array([3.0, 1.0]), np.array([5.0, 1.0]),
                                 np.array([0.5, 0.0]))
    np.testing.assert_allclose(single, out[:1])


def test_train_stats_with_decoder_restores_training_scale():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((60, 120)).astype(np.float32)
    Y = (X @ rng.standard_normal((120, 5)) * 0.1 + rng.standard_normal((60, 5)) + 3).astype(np.float32)
    model = RidgeDecoder(np.logspace(0, 4, 9), cv="gcv").fit(X, Y)
    # applied to the in-sample predictions it describes, the map restores the training mean/std exactly
    out = rescale(model.predict(X), "train_stats", Y.mean(0), Y.std(0),
                  pred_mean=model.train_pred_mean_, pred_std=model.train_pred_std_)
    np.testing.assert_allclose(out.mean(0), Y.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.std(0), Y.std(0), rtol=1e-3)


def test_none_and_dispatch():
    z = np.arange(6.0).reshape(3, 2)
    out = rescale(z, "none")
    np.testing.assert_array_equal(out, z)
    assert out is not z and out.dtype == np.float32
    np.testing.assert_array_equal(rescale_none(z), z)
    np.testing.assert_allclose(rescale(z, "paper", np.zeros(2), np.ones(2)), rescale_paper(z, np.zeros(2), np.ones(2)))
    assert RESCALE_METHODS == ("none", "paper", "train_stats")


def test_errors():
    z = np.ones((3, 2))
    with pytest.raises(ConfigError, match="expected one of"):
        rescale(z, "zscore")
    with pytest.raises(ConfigError, match="train_mean"):
        rescale(z, "paper", None, np.ones(2))
    with pytest.raises(ConfigError, match="pred_mean"):
        rescale(z, "train_stats", np.zeros(2), np.ones(2))
    with pytest.raises(ShapeMismatchError, match=r"train_std: expected shape \(2,\)"):
        rescale(z, "paper", np.zeros(2), np.ones(3))
    with pytest.raises(ShapeMismatchError, match="2-D"):
        rescale(np.ones(3), "paper", np.zeros(3), np.ones(3))
    with pytest.raises(ShapeMismatchError, match="rows"):
        rescale_paper(z[:1], np.zeros(2), np.ones(2), ddof=1)
