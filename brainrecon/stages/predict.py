"""The predict stage: test betas -> predicted latents, with optional rescaling."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from brainrecon.stages.base import Artifact, RunContext, Stage
from brainrecon.stages.fit import flat, target_names


def _r2_per_column(y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    ss_res = ((y - yhat) ** 2).sum(0)
    ss_tot = ((y - y.mean(0)) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - ss_res / ss_tot


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
        from brainrecon.decoding.holdout import methods_per_target, predict_rescaled
        from brainrecon.decoding.ridge import RidgeDecoder
        from brainrecon.metrics.brain import rowwise_pearson
        from brainrecon.metrics.identification import latent_identification

        data, extract, fit = inputs["data"], inputs["extract"], inputs["fit"]
        X_test = np.asarray(data.array("X_test"))
        setting = self.params.get("rescale", "none")
        names = target_names(extract)
        methods = methods_per_target(setting, names)
        summary: dict[str, Any] = {"rescale": setting if isinstance(setting, str) else methods}
        (ctx.out / "test").mkdir(exist_ok=True)
        for t in names:
            method = methods[t]
            dec = RidgeDecoder.load(fit.path / t)
            Y_train = flat(extract.array(f"train/{t}"))
            Z_hat = predict_rescaled(dec, X_test, Y_train, method)
            true = extract.array(f"test/{t}")
            ctx.save_array(f"test/{t}", Z_hat.reshape(true.shape).astype(np.float32))
            Y_true = flat(np.asarray(true, dtype=np.float32))
            summary[t] = {
                "r2_mean": float(np.nanmean(_r2_per_column(Y_true, Z_hat))),
                "pearson_mean": float(np.nanmean(rowwise_pearson(Y_true.T, Z_hat.T))),
                "two_way_identification": float(np.mean(latent_identification(Z_hat, Y_true))),
            }
        return summary
