"""The predict stage: test betas -> predicted latents, with optional rescaling."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError
from brainrecon.stages.base import Artifact, RunContext, Stage
from brainrecon.stages.fit import flat, target_names


def _r2_per_column(y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    ss_res = ((y - yhat) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - ss_res / ss_tot


def _methods_per_target(setting: Any, targets: list[str]) -> dict[str, str]:
    """Rescaling method of each target from a method name or a mapping target -> method."""
    from brainrecon.decoding.rescale import RESCALE_METHODS

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


class PredictStage(Stage):
    """Predict every target for the test betas.

    Parameters (``params``)
    -----------------------
    rescale : str or mapping
        ``"none"``, ``"paper"`` (transductive: standardise across the test
        predictions, then map to training mean/std, as Brain-Diffuser) or
        ``"train_stats"`` (non-transductive). See :mod:`brainrecon.decoding.rescale`.
        A mapping target -> method (with an optional ``default``, else ``"none"``) sets it per
        target, e.g. IC-GAN rescales only ``instance``.
    """

    name = "predict"
    version = 1

    def run(self, inputs: Mapping[str, Artifact], ctx: RunContext) -> dict[str, Any]:
        from brainrecon.decoding.ridge import RidgeDecoder
        from brainrecon.decoding.rescale import rescale
        from brainrecon.metrics.brain import rowwise_pearson
        from brainrecon.metrics.identification import latent_identification

        data, extract, fit = inputs["data"], inputs["extract"], inputs["fit"]
        X_test = np.asarray(data.array("X_test"))
        setting = self.params.get("rescale", "none")
        names = target_names(extract)
        methods = _methods_per_target(setting, names)
        summary: dict[str, Any] = {"rescale": setting if isinstance(setting, str) else methods}
        (ctx.out / "test").mkdir(exist_ok=True)
        for t in names:
            method = methods[t]
            dec = RidgeDecoder.load(fit.path / t)
            Y_train = flat(extract.array(f"train/{t}"))
            Z_hat = dec.predict(X_test)
            pred_mean = pred_std = None
            if method == "train_stats":  # statistics of the training predictions (LOO or in-sample)
                if dec.train_pred_mean_ is None:
                    dec.compute_train_prediction_stats()
                pred_mean, pred_std = dec.train_pred_mean_, dec.train_pred_std_
            Z_hat = rescale(
                Z_hat,
                method,
                train_mean=np.asarray(Y_train.mean(0, dtype=np.float64), dtype=np.float32),
                train_std=np.asarray(Y_train.std(0, dtype=np.float64), dtype=np.float32),
                pred_mean=pred_mean,
                pred_std=pred_std,
            )
            true = extract.array(f"test/{t}")
            ctx.save_array(f"test/{t}", Z_hat.reshape(true.shape).astype(np.float32))
            Y_true = flat(np.asarray(true, dtype=np.float32))
            summary[t] = {
                "r2_mean": float(np.nanmean(_r2_per_column(Y_true, Z_hat))),
                "pearson_mean": float(np.nanmean(rowwise_pearson(Y_true.T, Z_hat.T))),
                "two_way_identification": float(np.mean(latent_identification(Z_hat, Y_true))),
            }
        return summary
