"""Tests of brainrecon.decoding.ridge against independent float64 computations.

References are scikit-learn ``Ridge``/``RidgeCV`` and closed-form ridge algebra written out here
(explicit hat matrices, brute-force refits), never numbers taken from the decoder itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import Ridge, RidgeCV

from brainrecon.decoding.ridge import RidgeDecoder
from brainrecon.errors import ConfigError, DataFormatError, ShapeMismatchError

ALPHAS = np.logspace(-1, 4, 11)


def make_problem(n: int, p: int, t: int, seed: int = 0, x_offset: float = 0.0, y_offset: float = 1.5):
    """Well-conditioned synthetic problem; targets differ in noise level so they prefer different alphas."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p)) + x_offset
    W = rng.standard_normal((p, t)) / np.sqrt(p)
    noise = rng.standard_normal((n, t)) * np.linspace(0.05, 3.0, t)
    Y = X @ W + noise + y_offset
    Xt = rng.standard_normal((15, p)) + x_offset
    return X.astype(np.float32), Y.astype(np.float32), Xt.astype(np.float32)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def explicit_coef(X: np.ndarray, Y: np.ndarray, alphas: np.ndarray, fit_intercept: bool) -> tuple[np.ndarray, np.ndarray]:
    """Primal ridge weights per target in float64: W_j = (Xc^T Xc + a_j I)^-1 Xc^T yc_j."""
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    xm = X.mean(0) if fit_intercept else np.zeros(X.shape[1])
    ym = Y.mean(0) if fit_intercept else np.zeros(Y.shape[1])
    Xc, Yc = X - xm, Y - ym
    W = np.empty((X.shape[1], Y.shape[1]))
    for a in np.unique(alphas):
        cols = alphas == a
        W[:, cols] = np.linalg.solve(Xc.T @ Xc + a * np.eye(X.shape[1]), Xc.T @ Yc[:, cols])
    return W, ym - xm @ W


# ------------------------------------------------------------------ fixed alpha
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("solver", ["auto", "eigen"])
@pytest.mark.parametrize("shape", [(60, 150), (150, 40)], ids=["dual_p>n", "primal_n>p"])
def test_fixed_alpha_matches_sklearn_ridge(fit_intercept, solver, shape):
    n, p = shape
    X, Y, Xt = make_problem(n, p, 23, seed=1)
    alpha = 25.0
    ref = Ridge(alpha=alpha, fit_intercept=fit_intercept).fit(X.astype(np.float64), Y.astype(np.float64))
    model = RidgeDecoder(alpha, fit_intercept=fit_intercept, solver=solver, chunk_size=5).fit(X, Y)
    pred = model.predict(Xt)
    assert pred.dtype == np.float32 and pred.shape == (15, 23)
    assert rel_err(pred, ref.predict(Xt.astype(np.float64))) <= 1e-4
    assert rel_err(model.coef_, ref.coef_.T) <= 1e-4
    if fit_intercept:
        assert rel_err(model.intercept_, ref.intercept_) <= 1e-4
    else:
        assert np.all(model.intercept_ == 0)
    np.testing.assert_array_equal(model.alpha_, np.full(23, alpha))
    assert model.cv_scores_ is None
    assert (model.n_features_in_, model.n_targets_) == (p, 23)


def test_solver_choice_is_reported():
    X, Y, _ = make_problem(30, 80, 4)
    assert RidgeDecoder(5.0).fit(X, Y).solver_ == "cholesky"
    assert RidgeDecoder([5.0, 50.0]).fit(X, Y).solver_ == "eigen"
    assert RidgeDecoder(5.0).fit(X[:, :10], Y).form_ == "primal"


def test_float64_dtype_is_tighter():
    X, Y, Xt = make_problem(40, 90, 6, seed=2, x_offset=2.0)
    ref = Ridge(alpha=1.0, fit_intercept=False).fit(X.astype(np.float64), Y.astype(np.float64))
    model = RidgeDecoder(1.0, fit_intercept=False, dtype="float64", solver="eigen").fit(X, Y)
    assert model.predict(Xt).dtype == np.float64
    assert rel_err(model.predict(Xt), ref.predict(Xt.astype(np.float64))) <= 1e-9


# ------------------------------------------------------------------ alpha selection
@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("shape", [(80, 200), (200, 50)], ids=["dual", "primal"])
def test_loo_matches_sklearn_ridgecv(fit_intercept, shape):
    n, p = shape
    X, Y, Xt = make_problem(n, p, 40, seed=3)
    ref = RidgeCV(alphas=ALPHAS, fit_intercept=fit_intercept, alpha_per_target=True, store_cv_results=True)
    ref.fit(X.astype(np.float64), Y.astype(np.float64))
    model = RidgeDecoder(ALPHAS, fit_intercept=fit_intercept, cv="loo", chunk_size=16).fit(X, Y)
    np.testing.assert_array_equal(model.alpha_, ref.alpha_)
    # cv_results_: (n_samples, n_targets, n_alphas) squared LOO errors
    ref_scores = ref.cv_results_.mean(0).T
    np.testing.assert_allclose(model.cv_scores_, ref_scores, rtol=2e-3)
    assert rel_err(model.predict(Xt), ref.predict(Xt.astype(np.float64))) <= 1e-4


def test_loo_shared_alpha_matches_sklearn():
    X, Y, _ = make_problem(70, 160, 12, seed=4)
    ref = RidgeCV(alphas=ALPHAS, alpha_per_target=False).fit(X.astype(np.float64), Y.astype(np.float64))
    model = RidgeDecoder(ALPHAS, cv="loo", alpha_per_target=False).fit(X, Y)
    np.testing.assert_array_equal(model.alpha_, np.full(12, ref.alpha_))


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("shape", [(60, 140), (140, 30)], ids=["dual", "primal"])
def test_gcv_matches_explicit_hat_matrix(fit_intercept, shape):
    n, p = shape
    X, Y, _ = make_problem(n, p, 9, seed=5)
    model = RidgeDecoder(ALPHAS, fit_intercept=fit_intercept, cv="gcv").fit(X, Y)
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    if fit_intercept:
        X64, Y64 = X64 - X64.mean(0), Y64 - Y64.mean(0)
    expected = np.empty((ALPHAS.size, 9))
    for i, a in enumerate(ALPHAS):
        hat = X64 @ np.linalg.solve(X64.T @ X64 + a * np.eye(p), X64.T)
        resid = Y64 - hat @ Y64
        # The unpenalised intercept adds the averaging projector 11^T/n to the hat matrix:
        # it removes nothing more from the centred Y but uses one more degree of freedom.
        dof = np.trace(hat) + (1.0 if fit_intercept else 0.0)
        expected[i] = n * (resid**2).sum(0) / (n - dof) ** 2
    np.testing.assert_allclose(model.cv_scores_, expected, rtol=2e-3)
    np.testing.assert_array_equal(model.alpha_, ALPHAS[np.argmin(expected, axis=0)])


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_kfold_matches_bruteforce_refits(fit_intercept):
    X, Y, _ = make_problem(60, 130, 8, seed=6)
    k = 4
    model = RidgeDecoder(ALPHAS, fit_intercept=fit_intercept, cv=k, chunk_size=3).fit(X, Y)
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    bounds = np.linspace(0, 60, k + 1).astype(int)
    sse = np.zeros((ALPHAS.size, 8))
    for f in range(k):
        va = np.arange(bounds[f], bounds[f + 1])
        tr = np.setdiff1d(np.arange(60), va)
        for i, a in enumerate(ALPHAS):
            fit = Ridge(alpha=a, fit_intercept=fit_intercept).fit(X64[tr], Y64[tr])
            sse[i] += ((Y64[va] - fit.predict(X64[va])) ** 2).sum(0)
    np.testing.assert_allclose(model.cv_scores_, sse / 60, rtol=2e-3)
    np.testing.assert_array_equal(model.alpha_, ALPHAS[np.argmin(sse, axis=0)])


def test_kfold_alpha_agrees_with_himalaya():
    himalaya_kr = pytest.importorskip("himalaya.kernel_ridge")
    from himalaya.backend import set_backend
    from himalaya.scoring import l2_neg_loss

    set_backend("numpy")
    X, Y, _ = make_problem(60, 130, 10, seed=7)
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    ref = himalaya_kr.KernelRidgeCV(alphas=ALPHAS, kernel="linear", fit_intercept=True, cv=5,
                                    solver_params={"score_func": l2_neg_loss}).fit(X64, Y64)
    model = RidgeDecoder(ALPHAS, cv=5).fit(X, Y)
    np.testing.assert_allclose(model.alpha_, np.asarray(ref.best_alphas_), rtol=1e-9)  # himalaya returns exp(log(alpha))


def test_target_groups_share_the_group_best_alpha():
    X, Y, _ = make_problem(70, 150, 12, seed=8)
    groups = np.repeat([0, 1, 2], 4)
    per_target = RidgeDecoder(ALPHAS, cv="loo").fit(X, Y)
    grouped = RidgeDecoder(ALPHAS, cv="loo", target_groups=groups).fit(X, Y)
    for g in range(3):
        cols = groups == g
        best = ALPHAS[np.argmin(per_target.cv_scores_[:, cols].sum(1))]
        np.testing.assert_array_equal(grouped.alpha_[cols], best)


def test_chunk_size_does_not_change_results():
    X, Y, Xt = make_problem(50, 120, 17, seed=9)
    a = RidgeDecoder(ALPHAS, chunk_size=4).fit(X, Y)
    b = RidgeDecoder(ALPHAS, chunk_size=1000).fit(X, Y)
    np.testing.assert_array_equal(a.alpha_, b.alpha_)
    np.testing.assert_allclose(a.predict(Xt), b.predict(Xt), rtol=1e-5, atol=1e-5)


def test_per_target_alpha_predictions_match_explicit_weights():
    X, Y, Xt = make_problem(60, 140, 20, seed=10)
    model = RidgeDecoder(ALPHAS, cv="gcv", chunk_size=6).fit(X, Y)
    assert np.unique(model.alpha_).size > 1, "problem should select several alphas"
    W, b = explicit_coef(X, Y, model.alpha_, True)
    assert rel_err(model.predict(Xt), Xt.astype(np.float64) @ W + b) <= 1e-4
    assert rel_err(model.coef_, W) <= 1e-4
    assert rel_err(model.intercept_, b) <= 1e-4


# ------------------------------------------------------------------ projection
@pytest.mark.parametrize("alphas", [30.0, ALPHAS], ids=["fixed", "selected"])
@pytest.mark.parametrize("shape", [(50, 120), (120, 30)], ids=["dual", "primal"])
def test_project_equals_mask_times_explicit_coef(alphas, shape):
    n, p = shape
    X, Y, _ = make_problem(n, p, 11, seed=11)
    model = RidgeDecoder(alphas).fit(X, Y)
    W, _ = explicit_coef(X, Y, model.alpha_, True)
    rng = np.random.default_rng(0)
    masks = (rng.random((4, p)) < 0.3).astype(np.float32)
    assert rel_err(model.project(masks), masks.astype(np.float64) @ W) <= 1e-4
    assert model.project(masks[0]).shape == (1, 11)  # a single 1-D mask is one query


# ------------------------------------------------------------------ training-prediction statistics
def test_gcv_train_prediction_stats_are_in_sample_stats():
    X, Y, _ = make_problem(50, 110, 7, seed=12)
    model = RidgeDecoder(ALPHAS, cv="gcv").fit(X, Y)
    insample = model.predict(X).astype(np.float64)
    np.testing.assert_allclose(model.train_pred_mean_, insample.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.train_pred_std_, insample.std(0), rtol=1e-3)


def test_loo_train_prediction_stats_match_bruteforce_refits():
    X, Y, _ = make_problem(24, 60, 3, seed=13)
    model = RidgeDecoder(ALPHAS, cv="loo").fit(X, Y)
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    loo = np.empty_like(Y64)
    for i in range(24):
        keep = np.arange(24) != i
        for j in range(3):
            fit = Ridge(alpha=model.alpha_[j]).fit(X64[keep], Y64[keep, j])
            loo[i, j] = fit.predict(X64[i : i + 1])[0]
    np.testing.assert_allclose(model.train_pred_mean_, loo.mean(0), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(model.train_pred_std_, loo.std(0), rtol=1e-3)


@pytest.mark.parametrize("solver", ["cholesky", "eigen"])
def test_compute_train_prediction_stats_fixed_alpha(solver):
    X, Y, _ = make_problem(40, 90, 5, seed=14)
    model = RidgeDecoder(10.0, solver=solver).fit(X, Y)
    assert model.train_pred_std_ is None
    mean, std = model.compute_train_prediction_stats()
    insample = model.predict(X).astype(np.float64)
    np.testing.assert_allclose(mean, insample.mean(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(std, insample.std(0), rtol=1e-3)


def test_score_is_r2_per_target():
    from sklearn.metrics import r2_score

    X, Y, Xt = make_problem(60, 130, 6, seed=15)
    model = RidgeDecoder(ALPHAS).fit(X, Y)
    Yt = model.predict(Xt) + np.random.default_rng(1).standard_normal((15, 6)).astype(np.float32)
    expected = r2_score(Yt, model.predict(Xt), multioutput="raw_values")
    np.testing.assert_allclose(model.score(Xt, Yt), expected, rtol=1e-5)


# ------------------------------------------------------------------ backends, persistence
@pytest.mark.parametrize("alphas", [30.0, ALPHAS], ids=["fixed", "selected"])
def test_torch_backend_equals_numpy(alphas):
    pytest.importorskip("torch")
    X, Y, Xt = make_problem(50, 120, 9, seed=16)
    a = RidgeDecoder(alphas, backend="numpy").fit(X, Y)
    b = RidgeDecoder(alphas, backend="torch", device="cpu").fit(X, Y)
    np.testing.assert_array_equal(a.alpha_, b.alpha_)
    assert rel_err(b.predict(Xt), a.predict(Xt).astype(np.float64)) <= 1e-4
    assert rel_err(b.project(Xt), a.project(Xt).astype(np.float64)) <= 1e-4
    if a.cv_scores_ is not None:
        np.testing.assert_allclose(b.cv_scores_, a.cv_scores_, rtol=1e-3)


@pytest.mark.gpu
def test_torch_cuda_equals_numpy():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    X, Y, Xt = make_problem(50, 120, 9, seed=16)
    a = RidgeDecoder(ALPHAS).fit(X, Y)
    b = RidgeDecoder(ALPHAS, backend="torch", device="cuda").fit(X, Y)
    np.testing.assert_array_equal(a.alpha_, b.alpha_)
    assert rel_err(b.predict(Xt), a.predict(Xt).astype(np.float64)) <= 1e-4


@pytest.mark.parametrize("alphas", [30.0, ALPHAS], ids=["fixed", "selected"])
@pytest.mark.parametrize("p", [120, 30], ids=["dual", "primal"])
def test_save_load_roundtrip(tmp_path, alphas, p):
    X, Y, Xt = make_problem(50, p, 9, seed=17)
    model = RidgeDecoder(alphas, target_groups=np.arange(9) % 2).fit(X, Y)
    model.save(tmp_path / "dec")
    assert sorted(f.name for f in (tmp_path / "dec").iterdir()) == ["ridge.json", "ridge.npz"]
    json.loads((tmp_path / "dec" / "ridge.json").read_text())
    with np.load(tmp_path / "dec" / "ridge.npz", allow_pickle=False) as data:  # no object arrays inside
        assert all(data[k].dtype != object for k in data.files)
    loaded = RidgeDecoder.load(tmp_path / "dec")
    np.testing.assert_array_equal(loaded.predict(Xt), model.predict(Xt))
    np.testing.assert_array_equal(loaded.alpha_, model.alpha_)
    np.testing.assert_allclose(loaded.intercept_, model.intercept_, rtol=1e-5, atol=1e-6)  # lazily recomputed
    assert loaded.n_features_in_ == p and loaded.n_targets_ == 9


def test_load_missing_folder_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="ridge.json"):
        RidgeDecoder.load(tmp_path / "nowhere")


def test_targets_are_referenced_not_copied_by_default():
    X, Y, _ = make_problem(30, 70, 4)
    assert RidgeDecoder(1.0).fit(X, Y)._y is Y
    assert RidgeDecoder(1.0, copy_targets=True).fit(X, Y)._y is not Y


# ------------------------------------------------------------------ bad input
def test_sample_count_mismatch():
    X, Y, _ = make_problem(30, 70, 4)
    with pytest.raises(ShapeMismatchError, match=r"expected 30 rows.*got 29 rows"):
        RidgeDecoder(1.0).fit(X, Y[:29])


@pytest.mark.parametrize("where", ["X", "Y"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_values(where, value):
    X, Y, _ = make_problem(30, 70, 4)
    (X if where == "X" else Y)[3, 2] = value
    with pytest.raises(DataFormatError, match=rf"{where}: expected only finite values, got 1 NaN/inf \(first at row 3, column 2\)"):
        RidgeDecoder(1.0, chunk_size=2).fit(X, Y)


def test_large_finite_targets_whose_float32_sums_overflow_are_accepted():
    # Column sums run in float32 GEMVs; values near float32's maximum overflow them to inf although
    # every value is finite. That must fall back to float64 sums, not raise a NaN/inf error.
    X, Y, _ = make_problem(30, 70, 3)
    Y = Y.astype(np.float32)
    Y[:, 1] = np.float32(2e38)
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.ones((1, 30), np.float32) @ Y[:, 1:2]).all()  # the GEMV does overflow
    model = RidgeDecoder(1.0).fit(X, Y)
    np.testing.assert_allclose(model.y_mean_[1], 2e38, rtol=1e-6)


def test_non_finite_query():
    X, Y, Xt = make_problem(30, 70, 4)
    model = RidgeDecoder(1.0).fit(X, Y)
    Xt[0, 0] = np.nan
    with pytest.raises(DataFormatError, match="X: expected only finite"):
        model.predict(Xt)


def test_constant_columns_raise_or_are_ignored():
    X, Y, Xt = make_problem(30, 70, 4)
    X[:, [5, 9]] = 2.0
    with pytest.raises(DataFormatError, match=r"expected every column .* got 2 constant column\(s\), e.g. \[5, 9\]"):
        RidgeDecoder(1.0).fit(X, Y)
    model = RidgeDecoder(3.0, on_constant_features="ignore").fit(X, Y)
    assert np.abs(model.coef_[[5, 9]]).max() < 1e-6
    ref = Ridge(alpha=3.0).fit(X.astype(np.float64), Y.astype(np.float64))
    assert rel_err(model.predict(Xt), ref.predict(Xt.astype(np.float64))) <= 1e-4


@pytest.mark.parametrize("alphas", [0.0, -1.0, [1.0, 0.0], [1.0, np.nan], []])
def test_non_positive_alphas(alphas):
    X, Y, _ = make_problem(30, 70, 4)
    with pytest.raises(ConfigError, match="alphas"):
        RidgeDecoder(alphas).fit(X, Y)


def test_predict_with_different_voxel_count():
    X, Y, Xt = make_problem(30, 70, 4)
    model = RidgeDecoder(1.0).fit(X, Y)
    with pytest.raises(ShapeMismatchError, match=r"columns \(voxels\): expected 70 .*got 69"):
        model.predict(Xt[:, :69])
    with pytest.raises(ShapeMismatchError, match="expected 70"):
        model.project(np.ones((2, 71)))


@pytest.mark.parametrize("kwargs", [{"cv": "kfold"}, {"cv": 1}, {"chunk_size": 0}, {"backend": "jax"},
                                    {"dtype": "float16"}, {"solver": "qr"}, {"on_constant_features": "drop"}])
def test_bad_parameters(kwargs):
    X, Y, _ = make_problem(30, 70, 4)
    with pytest.raises(ConfigError):
        RidgeDecoder(ALPHAS, **kwargs).fit(X, Y)


def test_unfitted_and_bad_shapes():
    with pytest.raises(ConfigError, match="not fitted"):
        RidgeDecoder().predict(np.zeros((2, 3)))
    X, Y, _ = make_problem(30, 70, 4)
    with pytest.raises(ShapeMismatchError, match="2-D"):
        RidgeDecoder(1.0).fit(X[None], Y)
    with pytest.raises(ShapeMismatchError, match="target_groups"):
        RidgeDecoder(ALPHAS, target_groups=np.zeros(3)).fit(X, Y)
