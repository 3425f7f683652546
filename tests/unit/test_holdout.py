"""Held-out predictions on training images: a disjoint seeded split, predicted as the predict stage does."""

from __future__ import annotations

import numpy as np
import pytest

from brainrecon.decoding.holdout import holdout_predictions, holdout_split, methods_per_target
from brainrecon.errors import ConfigError, ShapeMismatchError


def test_split_is_disjoint_complete_and_seeded():
    fit, held = holdout_split(50, 10, seed=3)
    assert len(held) == 10 and len(fit) == 40
    assert not set(fit) & set(held)
    assert sorted(set(fit) | set(held)) == list(range(50))
    assert np.all(np.diff(held) > 0)
    np.testing.assert_array_equal(held, holdout_split(50, 10, seed=3)[1])
    assert not np.array_equal(held, holdout_split(50, 10, seed=4)[1])


@pytest.mark.parametrize("n_holdout", [0, 49, 60])
def test_split_refuses_sizes_that_leave_nothing_to_fit(n_holdout):
    with pytest.raises(ConfigError, match="n_holdout"):
        holdout_split(50, n_holdout)


def _linear(n=240, p=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)).astype(np.float32)
    W = rng.standard_normal((p, 2 * 3)).astype(np.float32)
    Y = (X @ W + 0.3 * rng.standard_normal((n, 6))).astype(np.float32)
    return X, Y.reshape(n, 2, 3)


def test_predictions_recover_held_out_targets_in_their_shape():
    X, Y = _linear()
    out = holdout_predictions(X, {"z": Y}, decoder={"alphas": [0.1, 1.0, 10.0, 100.0]}, n_holdout=40, seed=1)
    assert out.predicted["z"].shape == (40, 2, 3)
    np.testing.assert_array_equal(out.true["z"], Y[out.holdout_index])
    r = np.corrcoef(out.predicted["z"].ravel(), out.true["z"].ravel())[0, 1]
    assert r > 0.95
    assert set(out.alphas) == {"z"}


def test_rescaling_follows_the_predict_setting():
    X, Y = _linear()
    dec = {"alphas": 1e4}  # heavy shrinkage: rescaling must restore the spread
    none = holdout_predictions(X, {"z": Y}, decoder=dec, n_holdout=40, rescale_setting="none")
    stats = holdout_predictions(X, {"z": Y}, decoder=dec, n_holdout=40, rescale_setting={"z": "train_stats"})
    spread = Y[none.fit_index].std(0).mean()
    assert none.predicted["z"].std(0).mean() < 0.5 * spread
    assert stats.predicted["z"].std(0).mean() > 0.7 * spread


def test_bad_inputs_name_the_problem():
    X, Y = _linear()
    with pytest.raises(ShapeMismatchError, match="targets\\['z'\\] rows"):
        holdout_predictions(X, {"z": Y[:-1]}, decoder={}, n_holdout=10)
    with pytest.raises(ConfigError, match="predict.rescale"):
        holdout_predictions(X, {"z": Y}, decoder={}, n_holdout=10, rescale_setting="papr")
    with pytest.raises(ConfigError, match="unknown target"):
        methods_per_target({"w": "paper"}, ["z"])
