"""The fit stage: one ridge decoder per target, voxels -> flattened latents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from brainrecon.stages.base import Artifact, RunContext, Stage


def target_names(extract: Artifact) -> list[str]:
    """The targets an extract artifact holds, in a stable order."""
    return sorted(extract.summary["targets"])


def flat(arr: np.ndarray) -> np.ndarray:
    """``(n, ...)`` -> ``(n, prod(...))`` view."""
    return arr.reshape(len(arr), -1)


class FitStage(Stage):
    """Fit :class:`~brainrecon.decoding.ridge.RidgeDecoder` per target on training data only.

    Parameters (``params``)
    -----------------------
    decoder : dict
        Keyword arguments of ``RidgeDecoder`` shared by all targets.
    targets : dict, optional
        Per-target overrides of ``decoder`` (e.g. the papers' fixed alphas).
    """

    name = "fit"
    version = 1

    def run(self, inputs: Mapping[str, Artifact], ctx: RunContext) -> dict[str, Any]:
        from brainrecon.decoding.ridge import RidgeDecoder

        data, extract = inputs["data"], inputs["extract"]
        X = np.asarray(data.array("X_train"))
        base = dict(self.params.get("decoder") or {})
        overrides = dict(self.params.get("targets") or {})
        summary: dict[str, Any] = {}
        for t in target_names(extract):
            kwargs = {**base, **(overrides.get(t) or {})}
            kwargs.setdefault("progress", ctx.progress)
            if "device" in ctx.resources:
                kwargs.setdefault("device", ctx.resources["device"])
            Y = flat(extract.array(f"train/{t}"))
            dec = RidgeDecoder(**kwargs).fit(X, Y)
            dec.save(ctx.out / t)
            alphas = np.asarray(dec.alpha_, dtype=np.float64).ravel()
            summary[t] = {
                "n_targets": int(Y.shape[1]),
                "alpha_median": float(np.median(alphas)),
                "alpha_min": float(alphas.min()),
                "alpha_max": float(alphas.max()),
            }
        return summary
