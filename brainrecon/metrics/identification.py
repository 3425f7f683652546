"""Identification, distance and retrieval metrics on feature vectors, with statistics.

Definitions (methods guide §5, identical in Brain-Diffuser and MindEye):

* **Two-way identification** — ``C[i, j]`` is the Pearson correlation between the
  flattened ground-truth features of image ``i`` (rows) and the reconstruction
  features of image ``j`` (columns). Reconstruction ``j`` scores the fraction of the
  other ``N - 1`` ground-truth images ``i`` with ``C[i, j] < C[j, j]`` (strict: ties
  count against it). The metric is the mean over reconstructions; chance is 0.5.
* **Correlation distance** — ``1 - C[j, j]`` per image (SciPy's ``correlation``
  distance), averaged. Lower is better.
* **n-way identification** — reconstruction ``j`` is correct in a trial when
  ``C[j, j]`` is strictly larger than ``C[i, j]`` for ``n - 1`` ground-truth
  distractors drawn at random; per-image accuracy over trials. Chance ``1 / n``.
* **Top-1 retrieval** (MindEye) — cosine similarity between predicted and true
  embeddings inside random candidate sets (300 by default, 30 repeats); image
  retrieval: each prediction picks the most similar true embedding; brain retrieval:
  each true embedding picks the most similar prediction. Chance ``1 / set size``.
* **Latent identification** — two-way identification with predicted latents in the
  role of reconstruction features and true latents as ground truth.

Statistics: :func:`bootstrap_ci` (percentile bootstrap over images of the per-image
values) and :func:`permutation_test` (exact permutation test on the similarity
matrix: reconstructions are re-assigned to ground-truth images at random and the
whole metric is recomputed, ``p = (1 + #{null at least as good}) / (1 + n_perm)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from brainrecon.errors import ShapeMismatchError

MatrixMetric = Callable[[np.ndarray], np.ndarray]


def _as_2d(features: np.ndarray, name: str) -> np.ndarray:
    f = np.asarray(features)
    if f.ndim < 2:
        raise ShapeMismatchError(name, "(n, ...) with n samples", f.shape)
    return f.reshape(len(f), -1)


def _check_feature_pair(gt: np.ndarray, recon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_2d(gt, "ground-truth features"), _as_2d(recon, "reconstruction features")
    if a.shape != b.shape:
        raise ShapeMismatchError("reconstruction features", a.shape, b.shape, "one feature row per ground-truth image")
    if len(a) < 2:
        raise ShapeMismatchError("number of images", ">= 2", len(a))
    return a, b


def _standardize_rows(x: np.ndarray, *, center: bool = True) -> np.ndarray:
    # float64 accumulation for the norms keeps correlations exact to ~1e-7 even for
    # 140k-dimensional AlexNet features; the matrix product itself runs in float32.
    x = x.astype(np.float32, copy=True)
    if center:
        x -= x.mean(1, keepdims=True, dtype=np.float64).astype(np.float32)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    norm[norm == 0] = np.nan  # a constant row has no correlation
    x /= norm[:, None]
    return x


def correlation_matrix(gt: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Pearson correlations ``C[i, j] = corr(gt[i], recon[j])`` of flattened rows.

    Parameters
    ----------
    gt, recon : ndarray, shape (n, ...) and (m, ...) with the same feature size

    Returns
    -------
    ndarray, shape (n, m), float64
    """
    a, b = _as_2d(gt, "ground-truth features"), _as_2d(recon, "reconstruction features")
    if a.shape[1] != b.shape[1]:
        raise ShapeMismatchError("feature size", a.shape[1], b.shape[1])
    return (_standardize_rows(a) @ _standardize_rows(b).T).astype(np.float64)


def cosine_matrix(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Cosine similarities ``S[i, j] = cos(pred[i], true[j])`` of flattened rows, shape (n, m)."""
    a, b = _as_2d(pred, "predicted embeddings"), _as_2d(true, "true embeddings")
    if a.shape[1] != b.shape[1]:
        raise ShapeMismatchError("embedding size", a.shape[1], b.shape[1])
    return (_standardize_rows(a, center=False) @ _standardize_rows(b, center=False).T).astype(np.float64)


# --------------------------------------------------------------------------- matrix metrics
def two_way_from_matrix(C: np.ndarray) -> np.ndarray:
    """Per-reconstruction two-way identification from ``C`` (GT rows, reconstructions columns).

    Returns
    -------
    ndarray, shape (n,)
        For column ``j``: ``#{i != j : C[i, j] < C[j, j]} / (n - 1)``.
    """
    n = C.shape[0]
    diag = np.diagonal(C)
    # the diagonal itself is never strictly below itself, so no explicit exclusion
    below = (C < diag[None, :]).sum(0)
    # a constant feature vector has no correlation: undefined, not "never identified"
    return np.where(np.isnan(diag), np.nan, below / (n - 1))


def distance_from_matrix(C: np.ndarray) -> np.ndarray:
    """Per-image correlation distance ``1 - C[j, j]``."""
    return 1.0 - np.diagonal(C).copy()


def n_way_from_matrix(C: np.ndarray, n_way: int, n_trials: int = 100, seed: int = 0) -> np.ndarray:
    """Per-reconstruction n-way identification accuracy from ``C`` (see module docstring).

    Distractors for each trial are ``n_way - 1`` distinct ground-truth images other
    than the target, drawn with ``np.random.default_rng(seed)``.
    """
    n = C.shape[0]
    if not 2 <= n_way <= n:
        raise ValueError(f"n_way: expected 2..{n} (number of images), got {n_way}")
    rng = np.random.default_rng(seed)
    diag = np.diagonal(C)
    cols = np.arange(n)[:, None]
    wins = np.zeros(n)
    for _ in range(n_trials):
        # n_way - 1 distinct indices among the n - 1 others: rank random keys over
        # 0..n-2, then shift indices >= j by one to skip the target itself
        picks = np.argpartition(rng.random((n, n - 1)), n_way - 2, axis=1)[:, : n_way - 1]
        distractors = picks + (picks >= cols)
        wins += diag > C[distractors, cols].max(axis=1)
    return wins / n_trials


def retrieval_from_matrix(S: np.ndarray, direction: str, n_candidates: int, n_repeats: int, seed: int) -> np.ndarray:
    """Per-item top-1 retrieval from ``S`` (predictions in rows, true embeddings in columns).

    ``direction="image"``: each prediction picks among the true embeddings of its candidate
    set; ``"brain"``: each true embedding picks among the predictions. Returns the rate of
    correct picks per item over the repeats it was drawn in (NaN if never drawn).
    """
    n = S.shape[0]
    if direction == "brain":
        S = S.T
    rng = np.random.default_rng(seed)
    if n <= n_candidates:
        # every item is in every candidate set: the result is deterministic
        return (S.argmax(1) == np.arange(n)).astype(np.float64)
    correct = np.zeros(n)
    seen = np.zeros(n)
    for _ in range(n_repeats):
        sub = rng.choice(n, n_candidates, replace=False)
        hit = S[np.ix_(sub, sub)].argmax(1) == np.arange(n_candidates)
        correct[sub] += hit
        seen[sub] += 1
    with np.errstate(invalid="ignore"):
        return correct / seen  # NaN for an item never drawn


# --------------------------------------------------------------------------- public per-image metrics
def two_way_identification(gt_features: np.ndarray, recon_features: np.ndarray) -> np.ndarray:
    """Per-image two-way identification by feature correlation (Brain-Diffuser / MindEye).

    Parameters
    ----------
    gt_features, recon_features : ndarray, shape (n, ...)
        Row ``j`` of each belongs to image ``j``; features are flattened.

    Returns
    -------
    ndarray, shape (n,), values in [0, 1]; the metric is its mean (chance 0.5).
    """
    a, b = _check_feature_pair(gt_features, recon_features)
    return two_way_from_matrix(correlation_matrix(a, b))


def correlation_distance(gt_features: np.ndarray, recon_features: np.ndarray) -> np.ndarray:
    """Per-image correlation distance ``1 - pearson(gt_j, recon_j)`` (lower is better)."""
    a, b = _check_feature_pair(gt_features, recon_features)
    za, zb = _standardize_rows(a).astype(np.float64), _standardize_rows(b).astype(np.float64)
    return 1.0 - np.einsum("ij,ij->i", za, zb)


def n_way_identification(
    gt_features: np.ndarray, recon_features: np.ndarray, *, n_way: int = 50, n_trials: int = 100, seed: int = 0
) -> np.ndarray:
    """Per-image n-way identification accuracy (chance ``1 / n_way``)."""
    a, b = _check_feature_pair(gt_features, recon_features)
    return n_way_from_matrix(correlation_matrix(a, b), n_way, n_trials, seed)


def top1_retrieval(
    pred: np.ndarray,
    true: np.ndarray,
    *,
    n_candidates: int = 300,
    n_repeats: int = 30,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """MindEye top-1 retrieval by cosine similarity, per item.

    Parameters
    ----------
    pred : ndarray, shape (n, ...)
        Embeddings predicted from brain data.
    true : ndarray, shape (n, ...)
        Embeddings of the seen images.
    n_candidates : int
        Size of each random candidate set (all items when ``n <= n_candidates``).
    n_repeats : int
        Number of random candidate sets.

    Returns
    -------
    dict
        ``"image"``: per-item rate at which the prediction retrieves its own image;
        ``"brain"``: per-item rate at which the image retrieves its own prediction.
        NaN for an item that was never drawn.

    Notes
    -----
    The mean of the per-item rates weights items equally; MindEye averages over
    candidate sets, which weights items by how often they were drawn. Both agree in
    expectation, and exactly when ``n <= n_candidates``.
    """
    a, b = _check_feature_pair(true, pred)
    S = cosine_matrix(b, a)
    return {d: retrieval_from_matrix(S, d, n_candidates, n_repeats, seed) for d in ("image", "brain")}


def latent_identification(Z_hat: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Per-sample two-way identification of predicted latents ``Z_hat`` against true latents ``Z``."""
    return two_way_identification(Z, Z_hat)


# --------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class TestedMetric:
    """A metric's per-image values with its mean, confidence interval and p-value.

    Attributes
    ----------
    per_image : ndarray, shape (n,)
    mean : float
        Mean over images (NaN values ignored).
    ci : (float, float)
        Percentile bootstrap interval of the mean.
    p_value : float or None
        Permutation p-value against the null of no image correspondence.
    null_mean : float or None
        Mean of the permutation null (the empirical chance level).
    """

    per_image: np.ndarray
    mean: float
    ci: tuple[float, float]
    p_value: float | None
    null_mean: float | None = None


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of per-image values.

    Images are resampled with replacement; NaN entries are dropped first. For
    identification scores the per-image value depends on the other images; resampling
    per-image values (rather than recomputing the metric on the resampled set) is the
    usual approximation and is what this function does.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    # chunked so that 1000 x 1000 indices never exceed a few MB
    step = max(1, 2_000_000 // max(len(v), 1))
    for s in range(0, n_boot, step):
        k = min(step, n_boot - s)
        means[s : s + k] = v[rng.integers(0, len(v), size=(k, len(v)))].mean(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def permutation_pvalue(observed: float, null: np.ndarray, *, higher_is_better: bool = True) -> float:
    """``(1 + #{null at least as extreme as observed}) / (1 + len(null))``, one-sided."""
    null = np.asarray(null, dtype=np.float64)
    hits = np.sum(null >= observed) if higher_is_better else np.sum(null <= observed)
    return float((1 + hits) / (1 + len(null)))


def permutation_test(
    M: np.ndarray,
    metric: MatrixMetric,
    *,
    higher_is_better: bool = True,
    n_perm: int = 1000,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> TestedMetric:
    """Evaluate a matrix metric with a bootstrap CI and an exact permutation p-value.

    Parameters
    ----------
    M : ndarray, shape (n, n)
        Similarity matrix, ground truth in rows, reconstructions (predictions) in columns.
    metric : callable
        ``metric(M) -> per-image values`` (e.g. :func:`two_way_from_matrix`).
    higher_is_better : bool
        Direction of the one-sided test.
    n_perm : int
        Number of random re-assignments of columns (0 disables the test).
    """
    per_image = np.asarray(metric(M), dtype=np.float64)
    mean = float(np.nanmean(per_image))
    ci = bootstrap_ci(per_image, n_boot=n_boot, level=level, seed=seed)
    if n_perm <= 0:
        return TestedMetric(per_image, mean, ci, None, None)
    rng = np.random.default_rng(seed + 1)
    null = np.empty(n_perm)
    for k in range(n_perm):
        null[k] = np.nanmean(metric(M[:, rng.permutation(M.shape[1])]))
    return TestedMetric(
        per_image, mean, ci, permutation_pvalue(mean, null, higher_is_better=higher_is_better), float(null.mean())
    )
