"""Rescaling of decoded latents before they are handed to a generator.

Ridge predictions shrink towards the training mean (more so for larger alpha), so their
per-dimension spread is smaller than that of real latents. Generators are sensitive to that
scale, and the published methods rescale the predictions. Three options are offered:

``"none"``
    Predictions as they come out of the decoder.
``"paper"``
    Brain-Diffuser / IC-GAN (instance features): standardise every dimension **across the batch
    of predictions** (mean and std over the test images), then map to the training latents' mean
    and std. This is **transductive**: each image's result depends on the other test images in
    the batch (its size and content), so it cannot be applied to one image at a time and it
    uses test-set statistics. Kept for faithful reproduction.
``"train_stats"``
    Non-transductive variant: the same affine map, but the predictions' mean and std are the
    statistics of the decoder's predictions **on the training set** (in-sample, or leave-one-out
    when the decoder chose alpha by exact LOO; see ``RidgeDecoder.train_pred_mean_`` /
    ``train_pred_std_``). Each test image is rescaled independently of the others.

All functions work per column (target dimension) on 2-D arrays ``(n_images, n_targets)``;
standard deviations use ``ddof=0`` by default, as ``numpy.std``.
"""

from __future__ import annotations

import numpy as np

from brainrecon.errors import ConfigError, ShapeMismatchError

__all__ = ["RESCALE_METHODS", "rescale", "rescale_none", "rescale_paper", "rescale_train_stats"]

RESCALE_METHODS: tuple[str, ...] = ("none", "paper", "train_stats")


def _check_2d(z: np.ndarray, name: str) -> np.ndarray:
    z = np.asarray(z)
    if z.ndim != 2:
        raise ShapeMismatchError(f"{name} dimensions", "a 2-D array (images x targets)", f"shape {z.shape}")
    return z


def _check_stat(stat: np.ndarray | None, name: str, t: int) -> np.ndarray:
    if stat is None:
        raise ConfigError(f"{name}: required by this rescaling method, got None")
    stat = np.asarray(stat, dtype=np.float64)
    if stat.shape != (t,):
        raise ShapeMismatchError(name, f"shape ({t},) (one value per target)", stat.shape)
    if not np.all(np.isfinite(stat)):
        raise ConfigError(f"{name}: expected finite values, got {int((~np.isfinite(stat)).sum())} NaN/inf")
    return stat


def _affine(z: np.ndarray, src_mean: np.ndarray, src_std: np.ndarray, dst_mean: np.ndarray, dst_std: np.ndarray) -> np.ndarray:
    # A dimension with no spread in the source cannot be standardised; it is mapped to the
    # target mean instead of producing inf/NaN.
    with np.errstate(divide="ignore", invalid="ignore"):
        standard = np.where(src_std > 0, (z - src_mean) / src_std, 0.0)
    return standard * dst_std + dst_mean


def rescale_none(z_hat: np.ndarray) -> np.ndarray:
    """Return the predictions unchanged (as a float32 copy)."""
    return np.array(_check_2d(z_hat, "z_hat"), dtype=np.float32)


def rescale_paper(z_hat: np.ndarray, train_mean: np.ndarray, train_std: np.ndarray, *, ddof: int = 0) -> np.ndarray:
    """Transductive rescaling of Brain-Diffuser: batch-standardise, then map to training statistics.

    ``out[:, j] = (z_hat[:, j] - mean_batch_j) / std_batch_j * train_std[j] + train_mean[j]``.
    Transductive: the result for one image depends on every other image in ``z_hat``; with a
    single image every dimension becomes ``train_mean``. Dimensions with zero spread across
    the batch are set to ``train_mean``.

    Parameters
    ----------
    z_hat : (m, t) predictions for a batch of test images.
    train_mean, train_std : (t,) mean and std of the training latents.
    ddof : degrees of freedom of the batch std (the reference uses numpy's default, 0).
    """
    z = _check_2d(z_hat, "z_hat").astype(np.float64)
    t = z.shape[1]
    mu, sd = _check_stat(train_mean, "train_mean", t), _check_stat(train_std, "train_std", t)
    if z.shape[0] - ddof < 1:
        raise ShapeMismatchError("z_hat rows", f"more than ddof={ddof} predictions to standardise across", z.shape[0])
    return _affine(z, z.mean(0), z.std(0, ddof=ddof), mu, sd).astype(np.float32)


def rescale_train_stats(
    z_hat: np.ndarray,
    train_mean: np.ndarray,
    train_std: np.ndarray,
    pred_mean: np.ndarray,
    pred_std: np.ndarray,
) -> np.ndarray:
    """Non-transductive rescaling from training statistics only.

    ``out[:, j] = (z_hat[:, j] - pred_mean[j]) / pred_std[j] * train_std[j] + train_mean[j]``
    where ``pred_mean``/``pred_std`` describe the decoder's predictions on the training set
    (in-sample or leave-one-out). Each row is rescaled independently of the others.
    """
    z = _check_2d(z_hat, "z_hat").astype(np.float64)
    t = z.shape[1]
    stats = [_check_stat(s, name, t) for s, name in (
        (train_mean, "train_mean"), (train_std, "train_std"), (pred_mean, "pred_mean"), (pred_std, "pred_std"))]
    return _affine(z, stats[2], stats[3], stats[0], stats[1]).astype(np.float32)


def rescale(
    z_hat: np.ndarray,
    method: str,
    train_mean: np.ndarray | None = None,
    train_std: np.ndarray | None = None,
    *,
    pred_mean: np.ndarray | None = None,
    pred_std: np.ndarray | None = None,
    ddof: int = 0,
) -> np.ndarray:
    """Dispatch to one of :data:`RESCALE_METHODS` (``"none"``, ``"paper"``, ``"train_stats"``).

    ``train_mean``/``train_std`` are required by ``paper`` and ``train_stats``;
    ``pred_mean``/``pred_std`` (statistics of training-set predictions, e.g.
    ``RidgeDecoder.train_pred_mean_``) by ``train_stats`` only.
    """
    if method == "none":
        return rescale_none(z_hat)
    if method == "paper":
        return rescale_paper(z_hat, train_mean, train_std, ddof=ddof)
    if method == "train_stats":
        return rescale_train_stats(z_hat, train_mean, train_std, pred_mean, pred_std)
    raise ConfigError(f"rescale method: expected one of {list(RESCALE_METHODS)}, got {method!r}")
