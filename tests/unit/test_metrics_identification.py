"""Identification, distance, retrieval and statistics against hand-worked and direct computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import correlation as scipy_correlation
from scipy.stats import binom

from brainrecon.errors import ShapeMismatchError
from brainrecon.metrics import identification as ident


def _two_way_double_loop(gt: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """Direct transcription of the §5 definition with np.corrcoef, one pair at a time."""
    n = len(gt)
    out = np.zeros(n)
    for j in range(n):
        own = np.corrcoef(gt[j], rec[j])[0, 1]
        count = 0
        for i in range(n):
            if i != j and np.corrcoef(gt[i], rec[j])[0, 1] < own:
                count += 1
        out[j] = count / (n - 1)
    return out


def test_identical_features_give_100_percent() -> None:
    x = np.random.default_rng(0).standard_normal((30, 50))
    np.testing.assert_array_equal(ident.two_way_identification(x, x), 1.0)
    np.testing.assert_allclose(ident.correlation_distance(x, x), 0.0, atol=1e-6)


def test_random_permutation_is_near_chance_within_binomial_bound() -> None:
    rng = np.random.default_rng(1)
    n, d = 400, 64
    gt = rng.standard_normal((n, d))
    rec = gt + 0.5 * rng.standard_normal((n, d))  # informative features ...
    rec = rec[rng.permutation(n)]  # ... assigned to the wrong images
    score = ident.two_way_identification(gt, rec).mean()
    # each of the n(n-1) comparisons is a coin flip under the null; the comparisons of one
    # column are not independent, so use the conservative bound with only n trials
    lo, hi = binom.ppf([0.0005, 0.9995], n, 0.5) / n
    assert lo <= score <= hi, (score, lo, hi)


def test_three_by_three_by_hand() -> None:
    # Correlations chosen so the counts are easy to read:
    #        rec0  rec1  rec2
    # gt0     0.9   0.2   0.5
    # gt1     0.1   0.3   0.6
    # gt2     0.4   0.8   0.4
    # rec0: own 0.9 > 0.1, 0.4 -> 2/2;  rec1: own 0.3 > 0.2 but < 0.8 -> 1/2;
    # rec2: own 0.4 < 0.5, < 0.6 -> 0/2 ; tie rule tested below
    C = np.array([[0.9, 0.2, 0.5], [0.1, 0.3, 0.6], [0.4, 0.8, 0.4]])
    np.testing.assert_allclose(ident.two_way_from_matrix(C), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(ident.two_way_from_matrix(C).mean(), 0.5)
    # a tie counts against the reconstruction (strict "<")
    C_tie = np.array([[0.5, 0.0, 0.0], [0.5, 0.9, 0.0], [0.0, 0.0, 0.7]])
    np.testing.assert_allclose(ident.two_way_from_matrix(C_tie), [0.5, 1.0, 1.0])
    np.testing.assert_allclose(ident.distance_from_matrix(C), [0.1, 0.7, 0.6])


def test_three_images_from_features_by_hand() -> None:
    # features built so that corr(gt_i, rec_j) is +1 or -1 exactly
    gt = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    rec = np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])  # rec1 and rec2 swapped
    # corr of one-hot vectors: 1 if same position, -0.5 otherwise
    # rec0: own 1 > -0.5, -0.5 -> 1; rec1 (=e2): own corr(gt1,e2) = -0.5, gt2 gives 1 -> 0 of 2
    # (gt0 gives -0.5: tie) -> 0; same for rec2
    np.testing.assert_allclose(ident.two_way_identification(gt, rec), [1.0, 0.0, 0.0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_double_loop_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt = rng.standard_normal((25, 40))
    rec = 0.4 * gt + rng.standard_normal((25, 40))
    np.testing.assert_allclose(ident.two_way_identification(gt, rec), _two_way_double_loop(gt, rec))


def test_correlation_distance_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    gt, rec = rng.standard_normal((6, 20)), rng.standard_normal((6, 20))
    want = [scipy_correlation(a, b) for a, b in zip(gt, rec)]
    np.testing.assert_allclose(ident.correlation_distance(gt, rec), want, rtol=1e-5)


def test_multidimensional_features_are_flattened() -> None:
    rng = np.random.default_rng(4)
    gt = rng.standard_normal((8, 3, 4, 5))
    rec = gt + rng.standard_normal(gt.shape)
    np.testing.assert_allclose(
        ident.two_way_identification(gt, rec), _two_way_double_loop(gt.reshape(8, -1), rec.reshape(8, -1))
    )


def test_shape_mismatch() -> None:
    with pytest.raises(ShapeMismatchError):
        ident.two_way_identification(np.zeros((4, 5)), np.zeros((4, 6)))
    with pytest.raises(ShapeMismatchError):
        ident.two_way_identification(np.zeros((1, 5)), np.zeros((1, 5)))


def test_n_way_all_distractors_and_chance() -> None:
    C = np.array([[0.9, 0.2, 0.5], [0.1, 0.3, 0.6], [0.4, 0.8, 0.4]])
    # n_way = n: every other image is a distractor -> correct iff own beats all
    np.testing.assert_allclose(ident.n_way_from_matrix(C, 3, n_trials=5), [1.0, 0.0, 0.0])
    # n_way = 2 over many trials converges to two-way identification
    rng = np.random.default_rng(5)
    gt = rng.standard_normal((40, 30))
    rec = 0.3 * gt + rng.standard_normal((40, 30))
    Cr = ident.correlation_matrix(gt, rec)
    two = ident.two_way_from_matrix(Cr).mean()
    assert abs(ident.n_way_from_matrix(Cr, 2, n_trials=400).mean() - two) < 0.02
    # random features: accuracy near 1 / n_way
    noise = rng.standard_normal((200, 30))
    acc = ident.n_way_identification(rng.standard_normal((200, 30)), noise, n_way=10, n_trials=50).mean()
    assert abs(acc - 0.1) < 0.03


def test_top1_retrieval_brute_force() -> None:
    rng = np.random.default_rng(6)
    true = rng.standard_normal((50, 16))
    pred = true + 1.5 * rng.standard_normal((50, 16))
    got = ident.top1_retrieval(pred, true, n_candidates=300)
    cos = (pred / np.linalg.norm(pred, axis=1, keepdims=True)) @ (true / np.linalg.norm(true, axis=1, keepdims=True)).T
    np.testing.assert_array_equal(got["image"], cos.argmax(1) == np.arange(50))
    np.testing.assert_array_equal(got["brain"], cos.argmax(0) == np.arange(50))
    # identical embeddings always retrieve themselves, also with random candidate subsets
    sub = ident.top1_retrieval(true, true, n_candidates=10, n_repeats=5)
    assert np.nanmin(sub["image"]) == 1.0 and np.nanmin(sub["brain"]) == 1.0


def test_latent_identification_orientation() -> None:
    rng = np.random.default_rng(7)
    Z = rng.standard_normal((20, 12))
    Z_hat = Z + rng.standard_normal((20, 12))
    np.testing.assert_allclose(ident.latent_identification(Z_hat, Z), _two_way_double_loop(Z, Z_hat))


def test_bootstrap_ci_covers_and_shrinks() -> None:
    rng = np.random.default_rng(8)
    small = rng.normal(0.7, 0.1, 30)
    big = rng.normal(0.7, 0.1, 3000)
    lo_s, hi_s = ident.bootstrap_ci(small, seed=1)
    lo_b, hi_b = ident.bootstrap_ci(big, seed=1)
    assert lo_s < small.mean() < hi_s and lo_b < big.mean() < hi_b
    assert (hi_b - lo_b) < (hi_s - lo_s) / 5
    # standard error check: 95 % width ~ 2 * 1.96 * sd / sqrt(n)
    assert abs((hi_b - lo_b) - 2 * 1.96 * big.std() / np.sqrt(len(big))) < 0.002
    assert ident.bootstrap_ci(small, seed=3) == ident.bootstrap_ci(small, seed=3)


def test_permutation_test_signal_and_null() -> None:
    rng = np.random.default_rng(9)
    gt = rng.standard_normal((60, 20))
    strong = ident.permutation_test(
        ident.correlation_matrix(gt, gt + 0.5 * rng.standard_normal(gt.shape)), ident.two_way_from_matrix,
        n_perm=200, seed=0,
    )
    assert strong.p_value == pytest.approx(1 / 201)
    assert abs(strong.null_mean - 0.5) < 0.02
    # p-values under the null are roughly uniform: most are not small
    ps = [
        ident.permutation_test(
            ident.correlation_matrix(gt, rng.standard_normal(gt.shape)), ident.two_way_from_matrix,
            n_perm=100, n_boot=10, seed=s,
        ).p_value
        for s in range(20)
    ]
    assert np.mean(np.array(ps) < 0.05) <= 0.2
    # distance: lower is better
    dist = ident.permutation_test(
        ident.correlation_matrix(gt, gt + rng.standard_normal(gt.shape)), ident.distance_from_matrix,
        higher_is_better=False, n_perm=100, seed=0,
    )
    assert dist.p_value == pytest.approx(1 / 101) and dist.mean < dist.null_mean


def test_permutation_pvalue_hand() -> None:
    null = np.array([0.1, 0.2, 0.3, 0.4])
    assert ident.permutation_pvalue(0.3, null) == pytest.approx(3 / 5)
    assert ident.permutation_pvalue(0.3, null, higher_is_better=False) == pytest.approx(4 / 5)
