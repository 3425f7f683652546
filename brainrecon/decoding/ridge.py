"""Multi-target ridge regression from voxels to latents, built for t up to ~200,000 targets.

Model
-----
For training data ``X`` (n samples x p voxels) and ``Y`` (n x t targets) the decoder fits,
for every target j, ``w_j = argmin ||y_j - X w - b_j||^2 + alpha_j ||w||^2``. With an intercept,
``X`` and ``Y`` are centred with their training means (``Xc``, ``Yc``) and ``b = mean(Y) - mean(X) W``.

How it is computed
------------------
* One decomposition of the Gram matrix of the smaller side is shared by every alpha and
  every target: ``Xc Xc^T = U diag(s) U^T`` (dual / kernel form, used when ``p >= n``) or
  ``Xc^T Xc = V diag(s) V^T`` (primal form, ``p < n``; then ``U = Xc V s^-1/2``).
* Any linear query ``q`` (test betas, an ROI mask, the identity for ``coef_``) is evaluated left to
  right: ``q W = ((q Xc^T U) diag(1/(s+alpha)) U^T) Yc``. The first factor is ``m x n`` and
  costs nothing in ``t``; the last product is one GEMM of ``m x n`` by ``n x t``, streamed over
  target chunks. Neither an ``n x t`` nor a ``p x t`` intermediate is formed.
* Alpha selection streams ``Y`` once in chunks of ``chunk_size`` targets and computes
  ``C = U^T Yc`` for the chunk only (``n^2`` flops per target, the dominant cost); every candidate
  alpha is then scored from ``C`` and ``s`` with a tiny ``(n_alphas x n) @ (n x chunk)`` product.
* With one fixed alpha (the papers' setting) no eigendecomposition is needed: a Cholesky factor
  of ``Xc Xc^T + alpha I`` replaces it and the fit never touches ``Y`` beyond a finiteness/mean pass.

What selection costs (and why it is not free)
--------------------------------------------
Scoring a target at any alpha needs its coordinates ``U^T y`` in the eigenbasis: ``n^2`` multiply-adds
per target, ``n^2 t`` in all, paid once for every candidate alpha together. The fixed-alpha fit never
forms them (predictions go left to right through ``(q Xc^T U) diag(.) U^T`` and one ``n x t`` GEMM
with ``m`` rows). On a 2-core CPU at the NSD/VDVAE shape (n 8,859, t 91,168) that pass is 1.4e13 flop,
about 58 s at 247 GFLOP/s, while the whole fixed-alpha fit by the same eigendecomposition takes about
50 s (``eigh`` ~40 s, predictions ~10 s), so selection costs at least ~2.2x that fit whatever the
scoring rule (GCV or LOO); measured: 2.1-2.6x. Where GEMM is much faster than ``eigh`` (a GPU), the
same pass is a small fraction of the fit.

What is stored (trade-off)
--------------------------
The decoder keeps the centred training betas ``Xc`` (``n x p``; primal form: ``V s^1/2``,
``p x r``), the factorisation (``U``, ``s`` or the Cholesky factor, ``n x n``) and a
**reference** to the training targets ``Y`` (no copy when ``Y`` is already a C-ordered array
of the working dtype; pass ``copy_targets=True`` to own a copy). It does not store the
``p x t`` weight matrix (11.5 GB in float64 for VDVAE) nor dual coefficients: dual
coefficients would be ``n x t``, the same size as ``Y``, and computing them costs an extra
``n^2 t`` GEMM that predictions do not need. The price is that the caller must not modify ``Y``
in place after ``fit`` (it would silently change the model); :meth:`RidgeDecoder.save` writes
``Y`` next to the factorisation so a saved decoder is self-contained.

Selection criteria (``cv``)
---------------------------
``"gcv"``
    Generalised cross-validation: ``n ||(I-H) y||^2 / (n - df)^2`` per target, read off the
    eigendecomposition at no extra GEMM. Default, because it keeps alpha selection at one
    ``U^T Y`` pass (the exact LOO below costs one more ``n^2 t`` GEMM per candidate alpha).
``"loo"``
    Exact efficient leave-one-out (the criterion of scikit-learn ``RidgeCV(cv=None)``):
    ``e_i = r_i / (1 - h_ii)`` from the same decomposition; costs ``n_alphas`` extra GEMMs of
    ``n x n`` by ``n x chunk``.
``int K``
    K-fold cross-validation on contiguous folds (no shuffling, like scikit-learn ``KFold``),
    one decomposition per fold, mean squared error over all held-out samples.

``cv_scores_`` holds, for each candidate alpha and target, the mean squared prediction error
of the criterion (lower is better), shape ``(n_alphas, n_targets)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError, DataFormatError, MissingDataError, ShapeMismatchError

__all__ = ["RidgeDecoder", "DEFAULT_ALPHAS"]

#: Default candidate alphas (1e0 ... 1e6), one decade apart.
DEFAULT_ALPHAS: tuple[float, ...] = tuple(10.0**k for k in range(7))

_FORMAT_VERSION = 1
_NPZ_NAME = "ridge.npz"
_JSON_NAME = "ridge.json"
_CV_NAMES = ("gcv", "loo")


# --------------------------------------------------------------------------------------
# Backends: the algorithm is written once against this small set of operations.
# --------------------------------------------------------------------------------------
class _NumpyOps:
    """Dense linear algebra with numpy/scipy (LAPACK ``syevd`` for the eigendecomposition)."""

    name = "numpy"

    def __init__(self, dtype: str, device: str) -> None:
        if device not in ("cpu", None):
            raise ConfigError(f"device: the numpy backend runs on 'cpu' only, got {device!r}")
        self.dtype = np.dtype(dtype)

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=self.dtype)

    def to_numpy(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a)

    def eigh(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import scipy.linalg

        # 'evd' (divide and conquer) is ~4x faster than the default 'evr' for full spectra.
        return scipy.linalg.eigh(a, driver="evd", overwrite_a=True, check_finite=False)

    def cholesky(self, a: np.ndarray) -> np.ndarray:
        import torch

        # torch's LAPACK (zero-copy on the numpy buffer) factors ~2x faster than scipy's bundled
        # OpenBLAS on one thread, and does not collapse when other processes share the cores
        # (scipy's spotrf took 15x longer than torch's with a second job running).
        return torch.linalg.cholesky(torch.from_numpy(np.ascontiguousarray(a))).numpy()

    def cho_solve(self, low: np.ndarray, b: np.ndarray) -> np.ndarray:
        import scipy.linalg

        return scipy.linalg.cho_solve((low, True), b, check_finite=False)

    def maximum(self, a: np.ndarray, value: float) -> np.ndarray:
        return np.maximum(a, value)

    def sqrt(self, a: np.ndarray) -> np.ndarray:
        return np.sqrt(a)

    def add_diag(self, a: np.ndarray, value: float) -> None:
        a.flat[:: a.shape[0] + 1] += value

    def index(self, idx: np.ndarray) -> np.ndarray:
        return idx

    def cat(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts, axis=0)


class _TorchOps:
    """The same operations with torch tensors on ``device`` (CPU or CUDA)."""

    name = "torch"

    def __init__(self, dtype: str, device: str) -> None:
        import torch

        self.torch = torch
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
        self.np_dtype = np.dtype(dtype)
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"device: not a torch device string: {device!r} ({exc})") from exc
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device: {device!r} requested but torch sees no CUDA device")

    def asarray(self, a: Any) -> Any:
        if isinstance(a, self.torch.Tensor):
            return a.to(device=self.device, dtype=self.dtype)
        arr = np.ascontiguousarray(a, dtype=self.np_dtype)
        return self.torch.from_numpy(arr).to(self.device)

    def to_numpy(self, a: Any) -> np.ndarray:
        return a.detach().cpu().numpy()

    def eigh(self, a: Any) -> tuple[Any, Any]:
        return self.torch.linalg.eigh(a)

    def cholesky(self, a: Any) -> Any:
        return self.torch.linalg.cholesky(a)

    def cho_solve(self, low: Any, b: Any) -> Any:
        return self.torch.cholesky_solve(b, low)

    def maximum(self, a: Any, value: float) -> Any:
        return self.torch.clamp(a, min=value)

    def sqrt(self, a: Any) -> Any:
        return self.torch.sqrt(a)

    def add_diag(self, a: Any, value: float) -> None:
        a.diagonal().add_(value)

    def index(self, idx: np.ndarray) -> Any:
        return self.torch.as_tensor(idx, device=self.device)

    def cat(self, parts: list[Any]) -> Any:
        return self.torch.cat(parts, dim=0)


def _make_ops(backend: str, dtype: str, device: str) -> _NumpyOps | _TorchOps:
    if dtype not in ("float32", "float64"):
        raise ConfigError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    if backend == "numpy":
        return _NumpyOps(dtype, device)
    if backend == "torch":
        return _TorchOps(dtype, device)
    raise ConfigError(f"backend: expected 'numpy' or 'torch', got {backend!r}")


# --------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------
def _as_2d(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 1 and name == "Y":
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ShapeMismatchError(f"{name} dimensions", "a 2-D array (samples x columns)", f"{arr.ndim}-D shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise DataFormatError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    return arr


def _check_finite(arr: np.ndarray, name: str, row_offset: int = 0, col_offset: int = 0) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataFormatError(
            f"{name}: expected only finite values, got {int(bad.sum())} NaN/inf "
            f"(first at row {int(i) + row_offset}, column {int(j) + col_offset})"
        )


def _column_sums(block: np.ndarray, rows: int = 4096) -> np.ndarray:
    """Column sums of ``block`` (n, c) as float64, at GEMV speed.

    Each band of ``rows`` rows is summed by a BLAS GEMV in the block's precision and the bands are
    accumulated in float64, so float32 round-off grows with ``rows`` rather than with n. This is
    about 2x faster than ``np.add.reduce(..., dtype=float64)``, which converts every element
    (measured on the VDVAE shape: 0.25 s vs 0.55 s per pass over Y).
    """
    n = block.shape[0]
    ones = np.ones((1, min(rows, n)), dtype=block.dtype)
    out = np.zeros(block.shape[1], dtype=np.float64)
    # Overflow is detected by the caller (a non-finite sum), so numpy's warning would only be noise.
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, rows):
            band = block[start : start + rows]
            out += (ones[:, : band.shape[0]] @ band)[0]
    return out


def _chunks(total: int, size: int) -> list[slice]:
    return [slice(a, min(a + size, total)) for a in range(0, total, size)]


# --------------------------------------------------------------------------------------
# The decoder
# --------------------------------------------------------------------------------------
class RidgeDecoder:
    """Ridge regression X (n x p) -> Y (n x t) with per-target alpha, streamed over targets.

    Parameters
    ----------
    alphas : float or sequence of float
        Candidate regularisation strengths (all > 0). A single float fixes alpha for every
        target (fixed-alpha mode, e.g. 50,000 for VDVAE in Brain-Diffuser); a sequence is
        searched with ``cv``.
    fit_intercept : bool
        Centre X and Y with their training means and fit an unpenalised intercept.
    cv : {"gcv", "loo"} or int
        Selection criterion when several alphas are given (see the module docstring):
        ``"gcv"`` generalised cross-validation (default; cheapest: one ``U^T Y`` pass),
        ``"loo"`` exact leave-one-out (scikit-learn ``RidgeCV``; one extra ``n^2 t`` GEMM per
        alpha), or K >= 2 for K-fold. Ignored in fixed-alpha mode.
    alpha_per_target : bool
        Choose alpha per target. If False (and ``target_groups`` is None) one alpha is chosen
        for all targets by the summed criterion.
    target_groups : array of int of shape (t,), optional
        Choose one alpha per group of targets (e.g. per CLIP token) by the summed criterion.
        Overrides ``alpha_per_target``.
    backend : {"numpy", "torch"}
        Linear-algebra backend. ``torch`` accepts ``device="cuda"``; inputs and outputs stay numpy.
    device : str
        Torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``); numpy supports ``"cpu"`` only.
    chunk_size : int
        Number of targets processed at once. Working memory beyond the inputs is about
        ``n*p`` (centred copy of X) ``+ 3 n^2`` (Gram, eigenvectors, LAPACK workspace)
        ``+ 4 n * chunk_size`` values, independent of t (measured: +2 GB over the data for the
        VDVAE shape with the default 8192).
    dtype : {"float32", "float64"}
        Working precision. float32 is the default and matches float64 references to ~1e-5
        relative error for well-conditioned problems (``s_max / alpha`` below ~1e3).
    progress : bool
        Show a tqdm bar over target chunks.
    solver : {"auto", "eigen", "cholesky"}
        ``auto`` uses a Cholesky factor in fixed-alpha dual mode and the eigendecomposition
        otherwise. ``eigen`` forces the eigendecomposition (shared by all alphas).
    copy_targets : bool
        Keep a private copy of Y instead of a reference (see module docstring).
    on_constant_features : {"raise", "ignore"}
        What to do when X has zero-variance columns (with an intercept they carry no
        information and usually mean a bad voxel mask); ``ignore`` fits them as zero weights.

    Attributes
    ----------
    alpha_ : ndarray of shape (t,)
        Alpha used for each target.
    cv_scores_ : ndarray of shape (n_alphas, t) or None
        Mean squared error of the selection criterion per candidate alpha and target (lower is
        better); None in fixed-alpha mode.
    intercept_ : ndarray of shape (t,)
    n_features_in_, n_targets_, n_samples_fit_ : int
    train_pred_mean_, train_pred_std_ : ndarray of shape (t,) or None
        Mean and standard deviation (ddof=0) of the training predictions at the chosen alpha:
        leave-one-out predictions for ``cv="loo"``, in-sample predictions for ``"gcv"``.
        Used by the non-transductive rescaling (:func:`brainrecon.decoding.rescale.rescale`).
        None otherwise until :meth:`compute_train_prediction_stats` is called.
    """

    def __init__(
        self,
        alphas: float | Sequence[float] = DEFAULT_ALPHAS,
        *,
        fit_intercept: bool = True,
        cv: str | int = "gcv",
        alpha_per_target: bool = True,
        target_groups: np.ndarray | None = None,
        backend: str = "numpy",
        device: str = "cpu",
        chunk_size: int = 8192,
        dtype: str = "float32",
        progress: bool = False,
        solver: str = "auto",
        copy_targets: bool = False,
        on_constant_features: str = "raise",
    ) -> None:
        self.alphas = alphas
        self.fit_intercept = fit_intercept
        self.cv = cv
        self.alpha_per_target = alpha_per_target
        self.target_groups = target_groups
        self.backend = backend
        self.device = device
        self.chunk_size = chunk_size
        self.dtype = dtype
        self.progress = progress
        self.solver = solver
        self.copy_targets = copy_targets
        self.on_constant_features = on_constant_features
        self._fitted = False

    # ------------------------------------------------------------------ parameters
    def _alpha_grid(self) -> tuple[np.ndarray, bool]:
        fixed = np.ndim(self.alphas) == 0
        grid = np.atleast_1d(np.asarray(self.alphas, dtype=np.float64))
        if grid.ndim != 1 or grid.size == 0:
            raise ConfigError(f"alphas: expected a positive float or a non-empty 1-D sequence, got shape {grid.shape}")
        if not np.all(np.isfinite(grid)) or np.any(grid <= 0):
            bad = grid[~(np.isfinite(grid) & (grid > 0))]
            raise ConfigError(f"alphas: expected every alpha > 0 and finite, got {bad.tolist()}")
        return grid, fixed or grid.size == 1

    def _check_params(self) -> None:
        if isinstance(self.cv, bool) or not (
            self.cv in _CV_NAMES or (isinstance(self.cv, (int, np.integer)) and self.cv >= 2)
        ):
            raise ConfigError(f"cv: expected 'gcv', 'loo' or an int K >= 2, got {self.cv!r}")
        if not isinstance(self.chunk_size, (int, np.integer)) or self.chunk_size < 1:
            raise ConfigError(f"chunk_size: expected a positive int, got {self.chunk_size!r}")
        if self.solver not in ("auto", "eigen", "cholesky"):
            raise ConfigError(f"solver: expected 'auto', 'eigen' or 'cholesky', got {self.solver!r}")
        if self.on_constant_features not in ("raise", "ignore"):
            raise ConfigError(
                f"on_constant_features: expected 'raise' or 'ignore', got {self.on_constant_features!r}"
            )

    def _progress(self, it: Sequence[Any], desc: str) -> Any:
        if not self.progress:
            return it
        from tqdm.auto import tqdm

        return tqdm(it, desc=desc, leave=False)

    # ------------------------------------------------------------------ fit
    def fit(self, X: np.ndarray, Y: np.ndarray) -> RidgeDecoder:
        """Fit on training betas ``X`` (n, p) and targets ``Y`` (n, t).

        Raises
        ------
        ShapeMismatchError
            X or Y not 2-D, or different numbers of rows.
        DataFormatError
            NaN/inf in X or Y, constant columns in X (see ``on_constant_features``).
        ConfigError
            Non-positive alphas or other invalid parameters.
        """
        self._check_params()
        grid, fixed = self._alpha_grid()
        ops = _make_ops(self.backend, self.dtype, self.device)
        X = _as_2d(X, "X")
        Y = _as_2d(Y, "Y")
        n, p = X.shape
        if Y.shape[0] != n:
            raise ShapeMismatchError("Y rows (samples)", f"{n} rows like X", f"{Y.shape[0]} rows")
        if n < 2:
            raise ShapeMismatchError("X rows (samples)", "at least 2", n)
        t = Y.shape[1]
        if self.target_groups is not None:
            groups = np.asarray(self.target_groups)
            if groups.shape != (t,):
                raise ShapeMismatchError("target_groups", f"shape ({t},) (one label per target)", groups.shape)
        _check_finite(X, "X")

        np_dtype = np.dtype(self.dtype)
        # Y is kept by reference when possible (see module docstring); chunks are converted on the fly.
        if self.copy_targets:
            Y = np.array(Y, dtype=np_dtype, order="C", copy=True)
        elif Y.dtype != np_dtype:
            Y = np.ascontiguousarray(Y, dtype=np_dtype)

        x_mean = X.mean(axis=0, dtype=np.float64) if self.fit_intercept else np.zeros(p)
        if self.fit_intercept:
            constant = np.flatnonzero(np.ptp(X, axis=0) == 0)
            if constant.size and self.on_constant_features == "raise":
                raise DataFormatError(
                    f"X: expected every column (voxel) to vary across the {n} training samples, got "
                    f"{constant.size} constant column(s), e.g. {constant[:5].tolist()}; drop them or pass "
                    f"on_constant_features='ignore'"
                )
            if constant.size == p:
                raise DataFormatError(f"X: all {p} columns are constant; nothing to fit")
        # One pass over Y, chunk by chunk: column sums give the training means and double as the
        # finiteness check (a NaN/inf makes its column sum non-finite), so the element-wise test only
        # runs on a chunk known to be bad.
        y_mean = np.zeros(t, dtype=np.float64)
        for sl in _chunks(t, self.chunk_size):
            sums = _column_sums(Y[:, sl])
            if not np.all(np.isfinite(sums)):
                _check_finite(Y[:, sl], "Y", col_offset=sl.start)
                # Finite values whose working-precision partial sums overflowed: sum in float64.
                sums = np.add.reduce(Y[:, sl], axis=0, dtype=np.float64)
            if self.fit_intercept:
                y_mean[sl] = sums / n

        # Centre in the working dtype: a float64 intermediate would double the peak memory of X.
        xc_np = np.subtract(X, x_mean.astype(np_dtype), dtype=np_dtype) if self.fit_intercept else np.array(X, dtype=np_dtype)
        self._ops = ops
        self._y = Y
        self.x_mean_ = x_mean.astype(np_dtype)
        self.y_mean_ = y_mean.astype(np_dtype)
        self.n_samples_fit_, self.n_features_in_, self.n_targets_ = n, p, t
        self.alphas_ = grid
        self.form_ = "dual" if p >= n else "primal"
        use_chol = fixed and self.form_ == "dual" and self.solver in ("auto", "cholesky")
        if self.solver == "cholesky" and not use_chol:
            raise ConfigError("solver='cholesky' needs a single alpha and p >= n (dual form)")
        self.solver_ = "cholesky" if use_chol else "eigen"
        self.cv_scores_ = None
        self.train_pred_mean_ = None
        self.train_pred_std_ = None
        self._ym_b = ops.asarray(self.y_mean_)
        self._u = self._s = self._xc = self._vs = self._chol = None

        if fixed:
            self._alpha_idx = np.zeros(t, dtype=np.int64)
            if use_chol:
                self._factor_cholesky(xc_np, float(grid[0]))
            else:
                self._factor_eigen(xc_np)
        elif isinstance(self.cv, str):
            self._factor_eigen(xc_np)
            scores, stats = self._select_from_eigen(grid, loo=self.cv == "loo")
            self._set_selection(scores, grid)
            # Training-prediction statistics at the chosen alpha (for the non-transductive rescaling).
            pick = self._alpha_idx, np.arange(t)
            self.train_pred_mean_ = stats[0][pick].astype(np_dtype)
            self.train_pred_std_ = np.sqrt(np.maximum(stats[1][pick], 0.0)).astype(np_dtype)
        else:
            scores = self._select_kfold(xc_np, Y, grid, int(self.cv))
            self._factor_eigen(xc_np)
            self._set_selection(scores, grid)
        self._fitted = True
        # The intercept costs a full pass over Y and predict() does not need it (it centres the query
        # instead), so it is computed on first access.
        self._intercept = None
        return self

    @property
    def intercept_(self) -> np.ndarray:
        """Intercept (t,): ``mean(Y) - mean(X) W``, evaluated through the dual form on first access."""
        self._check_fitted()
        if self._intercept is None:
            if self.fit_intercept:
                self._intercept = (self.y_mean_ - self._apply(self.x_mean_[None, :], centred=False)[0]).astype(self.dtype)
            else:
                self._intercept = np.zeros(self.n_targets_, dtype=self.dtype)
        return self._intercept

    # ------------------------------------------------------------------ factorisations
    def _factor_cholesky(self, xc_np: np.ndarray, alpha: float) -> None:
        ops = self._ops
        xc = ops.asarray(xc_np)
        gram = xc @ xc.T
        ops.add_diag(gram, alpha)
        self._xc, self._chol = xc, ops.cholesky(gram)
        self._u = self._s = self._vs = None

    def _factor_eigen(self, xc_np: np.ndarray) -> None:
        ops = self._ops
        xc = ops.asarray(xc_np)
        self._chol = None
        if self.form_ == "dual":
            s, u = ops.eigh(xc @ xc.T)
            # Null directions (e.g. the constant vector after centring) come out of eigh as +-round-off;
            # set them to exactly 0 so they neither leak into predictions nor bias GCV's degrees of freedom
            # (which matter a lot at small alpha, where n - dof is close to 0).
            tol = float(ops.to_numpy(s).max()) * xc_np.shape[0] * np.finfo(xc_np.dtype).eps
            s = s * (s > tol)
            self._s, self._u, self._xc, self._vs = s, u, xc, None
        else:
            s, v = ops.eigh(xc.T @ xc)
            s_np = ops.to_numpy(s)
            # Directions with eigenvalue at round-off level carry no signal and would blow up U = Xc V / sqrt(s).
            keep = np.flatnonzero(s_np > s_np.max() * max(xc_np.shape) * np.finfo(xc_np.dtype).eps)
            kidx = ops.index(keep)
            s, v = s[kidx], v[:, kidx]
            root = ops.sqrt(s)
            self._s, self._u, self._vs, self._xc = s, (xc @ v) / root, v * root, None

    def _fold_factor(self, xtr: np.ndarray) -> tuple[Any, Any, Any, Any]:
        """Eigen-factor one training fold; returns (U, s, xc_or_None, vs_or_None) like the full fit."""
        saved = (self._u, self._s, self._xc, self._vs, self._chol, self.form_)
        self.form_ = "dual" if xtr.shape[1] >= xtr.shape[0] else "primal"
        self._factor_eigen(xtr)
        out = (self._u, self._s, self._xc, self._vs, self.form_)
        self._u, self._s, self._xc, self._vs, self._chol, self.form_ = saved
        return out

    # ------------------------------------------------------------------ selection
    def _y_chunk(self, sl: slice | np.ndarray, rows: np.ndarray | slice = slice(None), mean: Any = None) -> Any:
        """Centred target block on the backend: a bounded copy of ``Y[rows, sl]`` (sl: slice or indices)."""
        raw = self._y[rows, sl]
        if isinstance(sl, slice) and isinstance(rows, slice) and self._ops.name == "numpy":
            # A basic-indexing view may alias Y itself (single chunk): copy before centring in place.
            raw = np.array(raw, dtype=self._ops.dtype, order="C", copy=True)
        block = self._ops.asarray(raw)
        if self.fit_intercept:
            centre = self._ym_b[self._ops.index(sl) if not isinstance(sl, slice) else sl] if mean is None else mean
            if self._ops.name == "numpy":
                block -= centre
            else:
                block = block - centre
        return block

    def _select_from_eigen(self, grid: np.ndarray, loo: bool) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Score every alpha for every target in one streamed pass over Y.

        Returns the (n_alphas, t) mean squared GCV or LOO error, and the mean and variance of the
        training predictions (in-sample for GCV, leave-one-out for LOO) per alpha and target.
        """
        ops = self._ops
        n, t = self.n_samples_fit_, self.n_targets_
        u, s = self._u, self._s
        alphas = ops.asarray(grid[:, None])
        shrink = s[None, :] / (s[None, :] + alphas)  # (A, r): eigen-direction gains of the hat matrix
        resid_gain2 = (1.0 - shrink) ** 2
        shrink2 = shrink**2
        u1 = u.sum(0)  # U^T 1, for the mean of in-sample predictions without intercept
        full_basis = u.shape[1] == n
        dof = ops.to_numpy(shrink.sum(1)).astype(np.float64) + (1.0 if self.fit_intercept else 0.0)
        if loo:
            h = (u * u) @ shrink.T  # (n, A): diagonal of the hat matrix for every alpha
            if self.fit_intercept:
                h = h + 1.0 / n
            inv_1mh = 1.0 / (1.0 - h)
        a_count = grid.size
        scores = np.empty((a_count, t))
        pmean = np.empty((a_count, t))
        pvar = np.empty((a_count, t))
        for sl in self._progress(_chunks(t, self.chunk_size), "ridge alpha selection"):
            yc = self._y_chunk(sl)
            c = u.T @ yc
            c2 = c * c
            if not loo:
                rss = ops.to_numpy(resid_gain2 @ c2).astype(np.float64)
                if not full_basis:
                    # Part of y outside span(U) is never fitted; float64 to limit cancellation.
                    outside = ops.to_numpy((yc * yc).sum(0)).astype(np.float64) - ops.to_numpy(c2.sum(0)).astype(np.float64)
                    rss += np.maximum(outside, 0.0)[None, :]
                scores[:, sl] = rss / n / (1.0 - dof[:, None] / n) ** 2
                pm = ops.to_numpy((u1[None, :] * shrink) @ c).astype(np.float64) / n
                pvar[:, sl] = ops.to_numpy(shrink2 @ c2).astype(np.float64) / n - pm**2
                pmean[:, sl] = pm + self.y_mean_[sl].astype(np.float64)[None, :]
            else:
                for a in range(a_count):
                    fitted = u @ (shrink[a][:, None] * c)
                    err = (yc - fitted) * inv_1mh[:, a : a + 1]
                    scores[a, sl] = ops.to_numpy((err * err).mean(0))
                    pred = yc - err  # leave-one-out predictions, centred
                    pm = ops.to_numpy(pred.mean(0)).astype(np.float64)
                    pvar[a, sl] = ops.to_numpy((pred * pred).mean(0)).astype(np.float64) - pm**2
                    pmean[a, sl] = pm + self.y_mean_[sl]
        return scores, (pmean, pvar)

    def _select_kfold(self, xc_np: np.ndarray, Y: np.ndarray, grid: np.ndarray, k: int) -> np.ndarray:
        """Mean squared K-fold error, shape (n_alphas, t); contiguous folds, centring per training fold."""
        ops = self._ops
        n, t = self.n_samples_fit_, self.n_targets_
        if k > n:
            raise ConfigError(f"cv: expected at most {n} folds (the number of samples), got {k}")
        sse = np.zeros((grid.size, t))
        bounds = np.linspace(0, n, k + 1).astype(int)
        # xc_np is centred with the full-data mean; re-centring per fold only needs the fold mean.
        for f in range(k):
            va = np.arange(bounds[f], bounds[f + 1])
            tr = np.setdiff1d(np.arange(n), va)
            xtr = xc_np[tr]
            xm = xtr.mean(0, dtype=np.float64).astype(xc_np.dtype) if self.fit_intercept else 0.0
            u, s, xc_f, vs_f, form = self._fold_factor(xtr - xm)
            xva = ops.asarray(xc_np[va] - xm)
            coords = (xva @ xc_f.T) @ u if form == "dual" else xva @ vs_f
            # (A * n_va, n_tr) map from centred training targets to held-out predictions, all alphas stacked.
            maps = [(coords / (s[None, :] + float(a))) @ u.T for a in grid]
            stacked = ops.cat(maps)
            nv = va.size
            for sl in self._progress(_chunks(t, self.chunk_size), f"ridge fold {f + 1}/{k}"):
                ytr = ops.asarray(Y[tr, sl])
                ym = ytr.mean(0) if self.fit_intercept else 0.0
                pred = stacked @ (ytr - ym) + ym
                yva = ops.asarray(Y[va, sl])
                for a in range(grid.size):
                    d = yva - pred[a * nv : (a + 1) * nv]
                    sse[a, sl] += ops.to_numpy((d * d).sum(0))
        return sse / n

    def _set_selection(self, scores: np.ndarray, grid: np.ndarray) -> None:
        t = self.n_targets_
        if self.target_groups is not None:
            labels, inverse = np.unique(np.asarray(self.target_groups), return_inverse=True)
            per_group = np.zeros((grid.size, labels.size))
            np.add.at(per_group.T, inverse, scores.T)
            self._alpha_idx = np.argmin(per_group, axis=0)[inverse]
        elif self.alpha_per_target:
            self._alpha_idx = np.argmin(scores, axis=0)
        else:
            self._alpha_idx = np.full(t, int(np.argmin(scores.sum(1))))
        self.cv_scores_ = scores.astype(np.float32 if self.dtype == "float32" else np.float64)

    # ------------------------------------------------------------------ queries
    @property
    def alpha_(self) -> np.ndarray:
        """Alpha used for each target, shape (t,)."""
        self._check_fitted()
        return self.alphas_[self._alpha_idx]

    def _check_fitted(self) -> None:
        if not getattr(self, "_fitted", False):
            raise ConfigError("RidgeDecoder is not fitted yet: call fit(X, Y) (or RidgeDecoder.load) first")

    def _check_query(self, Q: Any, name: str) -> np.ndarray:
        self._check_fitted()
        Q = np.asarray(Q)
        if Q.ndim == 1:
            Q = Q[None, :]
        if Q.ndim != 2:
            raise ShapeMismatchError(f"{name} dimensions", "a 2-D array (rows x voxels)", f"shape {Q.shape}")
        if Q.shape[1] != self.n_features_in_:
            raise ShapeMismatchError(
                f"{name} columns (voxels)", f"{self.n_features_in_} as in the training betas", Q.shape[1],
                hint="the voxel mask or ROI differs from the one used to fit",
            )
        _check_finite(Q, name)
        return Q

    def _sample_maps(self, q: Any, alpha_ids: np.ndarray) -> dict[int, Any]:
        """For each alpha index, the (m, n) matrix B with q W = B Yc."""
        ops = self._ops
        if self.solver_ == "cholesky":
            coords = q @ self._xc.T
            return {int(alpha_ids[0]): ops.cho_solve(self._chol, coords.T).T}
        coords = (q @ self._xc.T) @ self._u if self.form_ == "dual" else q @ self._vs
        return {int(a): (coords / (self._s[None, :] + float(self.alphas_[a]))) @ self._u.T for a in alpha_ids}

    def _apply(self, Q: np.ndarray, centred: bool) -> np.ndarray:
        """``(Q - x_mean) W`` if ``centred`` else ``Q W``, streamed over target chunks."""
        ops = self._ops
        q = ops.asarray(np.asarray(Q, dtype=np.float64) - self.x_mean_ if centred else Q)
        alpha_ids = np.unique(self._alpha_idx)
        maps = self._sample_maps(q, alpha_ids)
        out = np.empty((Q.shape[0], self.n_targets_), dtype=np.dtype(self.dtype))
        # Visit targets grouped by alpha (stable order), so that inside a chunk every alpha owns a
        # contiguous run of columns: one gather of Y per chunk, then one GEMM per run on a view.
        order = np.argsort(self._alpha_idx, kind="stable")
        for sl in self._progress(_chunks(self.n_targets_, self.chunk_size), "ridge predict"):
            cols = order[sl]
            ids = self._alpha_idx[cols]
            contiguous = bool(np.all(np.diff(cols) == 1))  # always true with a single alpha
            dest = slice(int(cols[0]), int(cols[-1]) + 1) if contiguous else cols
            # B Yc = B Y - (B 1) mean(Y): the GEMM reads Y in place (a strided view BLAS accepts), so
            # no centred copy of the chunk is made. B 1 vanishes in exact arithmetic (the centred
            # training betas are orthogonal to 1), so the correction only removes round-off.
            y = self._y[:, dest]
            yb = y if ops.name == "numpy" else ops.asarray(np.ascontiguousarray(y))
            starts = np.concatenate(([0], np.flatnonzero(np.diff(ids)) + 1, [ids.size]))
            block = out[:, dest] if contiguous else np.empty((Q.shape[0], ids.size), dtype=out.dtype)
            for a, b in zip(starts[:-1], starts[1:]):
                a, b = int(a), int(b)
                bmap = maps[int(ids[a])]
                ym = None
                if self.fit_intercept:
                    ym = self._ym_b[dest][a:b] if contiguous else self._ym_b[ops.index(cols[a:b])]
                if ops.name == "numpy":
                    # The GEMM writes straight into the output (a strided view BLAS accepts), and the
                    # rank-one correction runs row by row in place: no chunk-sized temporaries, whose
                    # fresh pages cost ~1 s per predict at the VDVAE shape.
                    view = block[:, a:b]
                    np.matmul(bmap, yb[:, a:b], out=view)
                    if ym is not None:
                        b1 = bmap.sum(axis=1)
                        for i in range(view.shape[0]):
                            view[i] -= b1[i] * ym
                    continue
                part = bmap @ yb[:, a:b]
                if ym is not None:
                    part -= bmap.sum(axis=1)[:, None] * ym[None, :]
                block[:, a:b] = ops.to_numpy(part)
            if not contiguous:
                out[:, dest] = block
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted targets for betas ``X`` (m, p); returns (m, t) in the working dtype."""
        X = self._check_query(X, "X")
        out = self._apply(X, centred=True)
        if self.fit_intercept:
            out += self.y_mean_
        return out

    def project(self, Q: np.ndarray) -> np.ndarray:
        """``Q @ coef_`` for any (m, p) query (e.g. ROI masks), without intercept, via the dual form."""
        Q = self._check_query(Q, "Q")
        return self._apply(Q, centred=False)

    @property
    def coef_(self) -> np.ndarray:
        """Weights (p, t), computed on demand (p x t values: 5.7 GB float32 for VDVAE)."""
        self._check_fitted()
        p = self.n_features_in_
        out = np.empty((p, self.n_targets_), dtype=np.dtype(self.dtype))
        for sl in _chunks(p, max(self.chunk_size, 1)):
            eye = np.zeros((sl.stop - sl.start, p), dtype=np.dtype(self.dtype))
            eye[np.arange(sl.stop - sl.start), np.arange(sl.start, sl.stop)] = 1
            out[sl] = self._apply(eye, centred=False)
        return out

    def score(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Coefficient of determination R^2 per target (NaN where Y has zero variance)."""
        pred = self.predict(X)
        Y = _as_2d(Y, "Y")
        if Y.shape != pred.shape:
            raise ShapeMismatchError("Y", f"shape {pred.shape} (rows of X x fitted targets)", Y.shape)
        y64 = Y.astype(np.float64)
        sse = ((y64 - pred) ** 2).sum(0)
        sst = ((y64 - y64.mean(0)) ** 2).sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(sst > 0, 1.0 - sse / sst, np.nan)

    def compute_train_prediction_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std (ddof=0) of in-sample training predictions, one streamed pass over Y.

        Sets and returns ``train_pred_mean_``, ``train_pred_std_``. Costs about one GEMM of
        ``n x n`` by ``n x t`` (solve for the Cholesky path), so it is not done by fixed-alpha ``fit``.
        """
        self._check_fitted()
        ops = self._ops
        t = self.n_targets_
        mean = np.empty(t)
        var = np.empty(t)
        for sl in self._progress(_chunks(t, self.chunk_size), "ridge train predictions"):
            yc = self._y_chunk(sl)
            if self.solver_ == "cholesky":
                # H yc = yc - alpha (K + alpha I)^-1 yc
                pred = yc - float(self.alphas_[0]) * ops.cho_solve(self._chol, yc)
            else:
                c = self._u.T @ yc
                gains = self._s[:, None] / (self._s[:, None] + ops.asarray(self.alphas_[self._alpha_idx[sl]][None, :]))
                pred = self._u @ (gains * c)
            pm = ops.to_numpy(pred.mean(0)).astype(np.float64)
            var[sl] = ops.to_numpy((pred * pred).mean(0)).astype(np.float64) - pm**2
            mean[sl] = pm + self.y_mean_[sl]
        self.train_pred_mean_ = mean.astype(np.dtype(self.dtype))
        self.train_pred_std_ = np.sqrt(np.maximum(var, 0.0)).astype(np.dtype(self.dtype))
        return self.train_pred_mean_, self.train_pred_std_

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> None:
        """Write ``ridge.json`` (parameters, shapes) and ``ridge.npz`` (arrays, incl. training Y) to ``folder``."""
        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        ops = self._ops
        arrays: dict[str, np.ndarray] = {
            "x_mean": self.x_mean_, "y_mean": self.y_mean_,
            "alphas": self.alphas_, "alpha_idx": self._alpha_idx, "y_train": np.asarray(self._y),
        }
        for name in ("_xc", "_u", "_s", "_vs", "_chol"):
            value = getattr(self, name)
            if value is not None:
                arrays[name.lstrip("_")] = ops.to_numpy(value)
        for name in ("cv_scores_", "train_pred_mean_", "train_pred_std_"):
            if getattr(self, name) is not None:
                arrays[name.rstrip("_")] = getattr(self, name)
        groups = None if self.target_groups is None else np.asarray(self.target_groups)
        if groups is not None:
            arrays["target_groups"] = groups
        meta = {
            "format_version": _FORMAT_VERSION,
            "class": "RidgeDecoder",
            "params": {
                "alphas": self.alphas if np.ndim(self.alphas) == 0 else [float(a) for a in self.alphas],
                "fit_intercept": bool(self.fit_intercept), "cv": self.cv if isinstance(self.cv, str) else int(self.cv),
                "alpha_per_target": bool(self.alpha_per_target), "backend": self.backend, "device": self.device,
                "chunk_size": int(self.chunk_size), "dtype": self.dtype, "progress": bool(self.progress),
                "solver": self.solver, "copy_targets": bool(self.copy_targets),
                "on_constant_features": self.on_constant_features,
            },
            "form": self.form_, "solver_used": self.solver_,
            "n_samples": int(self.n_samples_fit_), "n_features": int(self.n_features_in_), "n_targets": int(self.n_targets_),
            "arrays": sorted(arrays),
        }
        if np.ndim(self.alphas) == 0:
            meta["params"]["alphas"] = float(self.alphas)
        with open(folder / _NPZ_NAME, "wb") as fh:
            np.savez(fh, **arrays)
        (folder / _JSON_NAME).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: str | Path, *, backend: str | None = None, device: str | None = None) -> RidgeDecoder:
        """Read a decoder written by :meth:`save`; ``backend``/``device`` override the saved ones."""
        folder = Path(folder)
        jpath, npath = folder / _JSON_NAME, folder / _NPZ_NAME
        for path in (jpath, npath):
            if not path.is_file():
                raise MissingDataError(path, "saved ridge decoder file", hint="write it with RidgeDecoder.save")
        meta = json.loads(jpath.read_text())
        if meta.get("class") != "RidgeDecoder" or meta.get("format_version") != _FORMAT_VERSION:
            raise DataFormatError(
                f"{jpath}: expected class RidgeDecoder format_version {_FORMAT_VERSION}, got "
                f"{meta.get('class')!r} version {meta.get('format_version')!r}"
            )
        params = dict(meta["params"])
        if backend is not None:
            params["backend"] = backend
        if device is not None:
            params["device"] = device
        with np.load(npath, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        missing = sorted(set(meta["arrays"]) - set(arrays))
        if missing:
            raise DataFormatError(f"{npath}: expected arrays {meta['arrays']}, missing {missing}")
        model = cls(target_groups=arrays.get("target_groups"), **params)
        ops = _make_ops(model.backend, model.dtype, model.device)
        model._ops = ops
        model._y = arrays["y_train"]
        n, p, t = meta["n_samples"], meta["n_features"], meta["n_targets"]
        if model._y.shape != (n, t):
            raise DataFormatError(f"{npath}: y_train expected shape {(n, t)}, got {model._y.shape}")
        model.x_mean_, model.y_mean_ = arrays["x_mean"], arrays["y_mean"]
        model._intercept, model.alphas_ = arrays.get("intercept"), arrays["alphas"]
        model._alpha_idx = arrays["alpha_idx"]
        model._ym_b = ops.asarray(model.y_mean_)
        for name in ("xc", "u", "s", "vs", "chol"):
            setattr(model, "_" + name, ops.asarray(arrays[name]) if name in arrays else None)
        model.cv_scores_ = arrays.get("cv_scores")
        model.train_pred_mean_ = arrays.get("train_pred_mean")
        model.train_pred_std_ = arrays.get("train_pred_std")
        model.form_, model.solver_ = meta["form"], meta["solver_used"]
        model.n_samples_fit_, model.n_features_in_, model.n_targets_ = n, p, t
        model._fitted = True
        return model
