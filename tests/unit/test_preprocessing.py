"""Tests of brainrecon.preprocessing against hand-worked values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from brainrecon.errors import ConfigError, DataFormatError, ShapeMismatchError
from brainrecon.preprocessing import (
    NSD_BETA_SCALE,
    RunningMoments,
    add_rows_at,
    apply_zscore,
    average_repeats,
    check_voxels,
    drop_voxels,
    first_appearance_order,
    fit_zscore,
    scale_betas,
    zscore_by_group,
    zscore_train_test,
)


def test_scale_betas_divides_by_300():
    raw = np.array([[300, -150, 0], [600, 3, 30000]], dtype=np.int16)
    out = scale_betas(raw)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([[1.0, -0.5, 0.0], [2.0, 0.01, 100.0]], np.float32))
    assert NSD_BETA_SCALE == 300.0
    with pytest.raises(ConfigError):
        scale_betas(raw, scale=0)


def test_zscore_train_stats_only_ddof1():
    # voxel 0: train values 1, 2, 3 -> mean 2, std(ddof=1) 1; voxel 1: 0, 0, 6 -> mean 2, std sqrt(12)
    X_train = np.array([[1, 0], [2, 0], [3, 6]], dtype=np.float32)
    X_test = np.array([[4, 2], [0, 8]], dtype=np.float32)
    Ztr, Zte, stats = zscore_train_test(X_train, X_test)
    s = np.sqrt(12.0)
    np.testing.assert_allclose(stats.mean, [2, 2])
    np.testing.assert_allclose(stats.std, [1, s])
    np.testing.assert_allclose(Ztr, [[-1, -2 / s], [0, -2 / s], [1, 4 / s]], rtol=1e-6)
    np.testing.assert_allclose(Zte, [[2, 0], [-2, 6 / s]], rtol=1e-6)
    assert Ztr.dtype == np.float32 and Zte.dtype == np.float32
    # ddof=0 (sklearn scale): voxel 0 std = sqrt(2/3)
    st0 = fit_zscore(X_train, ddof=0)
    np.testing.assert_allclose(st0.std[0], np.sqrt(2 / 3))


def test_running_moments_matches_numpy_over_blocks():
    rng = np.random.default_rng(0)
    X = rng.normal(5, 3, size=(101, 7))
    rm = RunningMoments(7)
    for a, b in [(0, 13), (13, 14), (14, 80), (80, 101)]:
        rm.update(X[a:b])
    st = rm.stats(ddof=1)
    np.testing.assert_allclose(st.mean, X.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st.std, X.std(0, ddof=1), rtol=1e-12)
    assert st.n_samples == 101


def test_apply_zscore_refuses_constant_voxels():
    X = np.array([[1, 5], [2, 5], [3, 5]], dtype=np.float32)
    with pytest.raises(DataFormatError, match="constant"):
        apply_zscore(X, fit_zscore(X))


def test_zscore_by_group():
    X = np.array([[1], [3], [10], [20], [30]], dtype=np.float32)
    g = np.array([1, 1, 2, 2, 2])
    out = zscore_by_group(X, g, ddof=1)
    # group 1: mean 2, std sqrt(2); group 2: mean 20, std 10
    np.testing.assert_allclose(out[:, 0], [-1 / np.sqrt(2), 1 / np.sqrt(2), -1, 0, 1], rtol=1e-6)
    with pytest.raises(ShapeMismatchError):
        zscore_by_group(X, g[:3])
    with pytest.raises(DataFormatError, match="constant within group"):
        zscore_by_group(np.array([[1.0], [1.0], [2.0]]), np.array([0, 0, 1]))


def test_average_repeats_first_appearance_order():
    X = np.array([[1, 1], [10, 0], [3, 5], [20, 2], [5, 9]], dtype=np.float32)
    ids = np.array([7, 2, 7, 2, 7])
    Xa, u, c = average_repeats(X, ids)
    np.testing.assert_array_equal(u, [7, 2])
    np.testing.assert_array_equal(c, [3, 2])
    np.testing.assert_allclose(Xa, [[3, 5], [15, 1]])
    np.testing.assert_array_equal(first_appearance_order(np.array([5, 3, 5, 1, 3])), [5, 3, 1])
    Xb, u2, _ = average_repeats(X, ids, order=np.array([2, 7]))
    np.testing.assert_allclose(Xb, [[15, 1], [3, 5]])
    with pytest.raises(ConfigError):
        average_repeats(X, ids, order=np.array([2]))
    with pytest.raises(ShapeMismatchError):
        average_repeats(X, ids[:3])


def test_check_voxels_counts_and_warns():
    X = np.array([[1, 4, np.nan, 2], [2, 4, 1, 2], [3, 4, 2, 2]], dtype=np.float32)
    with pytest.raises(DataFormatError, match="1 of 4 voxel"):
        check_voxels(X, source="train betas")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        rep = check_voxels(X, nan="warn")
    msgs = [str(w.message) for w in rec]
    assert any("1 of 4 voxel(s) hold NaN" in m for m in msgs)
    assert any("2 of 4 voxel(s) are constant" in m for m in msgs)
    assert rep.n_nan == 1 and rep.n_constant == 2
    np.testing.assert_array_equal(rep.keep, [True, False, False, False])
    assert rep.as_dict()["n_constant_voxels"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clean = check_voxels(np.array([[1.0, 2.0], [2.0, 3.0]]))
    assert clean.n_constant == 0
    np.testing.assert_array_equal(drop_voxels(X, rep.keep), X[:, :1])


def test_add_rows_at_matches_add_at_with_repeats():
    rng = np.random.default_rng(1)
    rows = np.array([3, 0, 3, 3, 1, 0, 4])
    vals = rng.normal(size=(7, 5))
    acc = np.zeros((6, 5))
    add_rows_at(acc, rows, vals)
    ref = np.zeros((6, 5))
    for r, v in zip(rows, vals):
        ref[r] += v
    np.testing.assert_allclose(acc, ref, rtol=1e-12)
    assert not acc[2].any() and not acc[5].any()
