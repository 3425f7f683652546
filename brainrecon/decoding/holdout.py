"""Predictions for training images the decoder has not seen: choose settings on training data only.

Settings that act after the decoder (how predicted latents become images, e.g. the img2img
strength of a reconstruction chain) must be chosen without the test set, as the ridge alpha
is. :func:`holdout_predictions` splits the training images into a fitting part and a held-out
part, fits each target's decoder on the first with the experiment's decoder settings, and
predicts the second exactly as the predict stage predicts the test set (same rescaling), so
any downstream setting can be scored on the held-out images.

:func:`predict_rescaled` is that shared prediction step (the predict stage uses it too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brainrecon.decoding.rescale import RESCALE_METHODS, rescale
from brainrecon.errors import ConfigError, ShapeMismatchError

__all__ = ["HoldoutPredictions", "holdout_predictions", "holdout_split", "methods_per_target", "predict_rescaled"]


def methods_per_target(setting: Any, targets: list[str]) -> dict[str, str]:
    """Rescaling method of each target from a method name or a mapping target -> method.

    A mapping may hold ``default`` (else ``"none"``) and one entry per target.
    """
    if isinstance(setting, Mapping):
        unknown = sorted(set(setting) - set(targets) - {"default"})
        if unknown:
            raise ConfigError(f"predict.rescale: unknown target(s) {unknown}; expected 'default' or one of {targets}")
        chosen = {t: str(setting.get(t, setting.get("default", "none"))) for t in targets}
    else:
        chosen = {t: str(setting) for t in targets}
    for t, m in chosen.items():
        if m not in RESCALE_METHODS:
            raise ConfigError(f"predict.rescale ({t}): expected one of {list(RESCALE_METHODS)}, got {m!r}")
    return chosen


def predict_rescaled(decoder: Any, X: np.ndarray, Y_train: np.ndarray, method: str) -> np.ndarray:
    """``decoder.predict(X)`` rescaled by ``method`` (see :mod:`brainrecon.decoding.rescale`).

    Parameters
    ----------
    decoder : RidgeDecoder
        Fitted on ``Y_train``.
    X : ndarray (n, p)
    Y_train : ndarray (n_train, t)
        The targets the decoder was fitted on (their mean and std are the rescaling's goal).
    method : str
        One of :data:`~brainrecon.decoding.rescale.RESCALE_METHODS`.
    """
    Z_hat = decoder.predict(X)
    pred_mean = pred_std = None
    if method == "train_stats":  # statistics of the training predictions (LOO or in-sample)
        if decoder.train_pred_mean_ is None:
            decoder.compute_train_prediction_stats()
        pred_mean, pred_std = decoder.train_pred_mean_, decoder.train_pred_std_
    return rescale(
        Z_hat,
        method,
        train_mean=np.asarray(Y_train.mean(0, dtype=np.float64), dtype=np.float32),
        train_std=np.asarray(Y_train.std(0, dtype=np.float64), dtype=np.float32),
        pred_mean=pred_mean,
        pred_std=pred_std,
    )


def holdout_split(n: int, n_holdout: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices ``(fit, held_out)`` of a seeded random split of ``n`` training images."""
    if not 1 <= n_holdout < n - 1:
        raise ConfigError(f"n_holdout: expected 1 <= n_holdout < n_train - 1 = {n - 1}, got {n_holdout}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_holdout:]), np.sort(perm[:n_holdout])


@dataclass
class HoldoutPredictions:
    """Predicted targets of held-out training images.

    Attributes
    ----------
    fit_index, holdout_index : ndarray of int
        Rows of the training set used to fit and held out.
    predicted, true : dict of str to ndarray
        Per target, ``(n_holdout, *target_shape)`` predictions and the true values.
    alphas : dict of str to float
        Median chosen alpha per target (for the log).
    """

    fit_index: np.ndarray
    holdout_index: np.ndarray
    predicted: dict[str, np.ndarray] = field(default_factory=dict)
    true: dict[str, np.ndarray] = field(default_factory=dict)
    alphas: dict[str, float] = field(default_factory=dict)


def holdout_predictions(
    X: np.ndarray,
    targets: Mapping[str, np.ndarray],
    *,
    decoder: Mapping[str, Any],
    per_target: Mapping[str, Mapping[str, Any]] | None = None,
    rescale_setting: Any = "none",
    n_holdout: int = 200,
    seed: int = 0,
) -> HoldoutPredictions:
    """Fit on part of the training images, predict the rest as the predict stage would.

    Parameters
    ----------
    X : ndarray (n_train, n_voxels)
        Training betas.
    targets : mapping of str to ndarray (n_train, ...)
        Training targets of one latent space.
    decoder : mapping
        ``RidgeDecoder`` keyword arguments (the experiment's ``decoder`` section); the alpha is
        chosen again on the fitting part alone.
    per_target : mapping, optional
        Per-target overrides of ``decoder``.
    rescale_setting : str or mapping
        The predict stage's ``rescale`` for this space.
    n_holdout : int
        Images held out.
    seed : int
        Seed of the split.
    """
    from brainrecon.decoding.ridge import RidgeDecoder

    X = np.asarray(X)
    n = len(X)
    for name, Y in targets.items():
        if len(Y) != n:
            raise ShapeMismatchError(f"holdout_predictions targets[{name!r}] rows", n, len(Y))
    fit_idx, hold_idx = holdout_split(n, n_holdout, seed)
    methods = methods_per_target(rescale_setting, sorted(targets))
    out = HoldoutPredictions(fit_idx, hold_idx)
    X_fit, X_hold = X[fit_idx], X[hold_idx]
    for name in sorted(targets):
        Y = np.asarray(targets[name], dtype=np.float32)
        Y_fit = Y[fit_idx].reshape(len(fit_idx), -1)
        kwargs = {**dict(decoder), **dict((per_target or {}).get(name) or {})}
        dec = RidgeDecoder(**kwargs).fit(X_fit, Y_fit)
        Z_hat = predict_rescaled(dec, X_hold, Y_fit, methods[name])
        out.predicted[name] = Z_hat.reshape((len(hold_idx), *Y.shape[1:])).astype(np.float32)
        out.true[name] = Y[hold_idx]
        out.alphas[name] = float(np.median(np.asarray(dec.alpha_, dtype=np.float64)))
    return out
