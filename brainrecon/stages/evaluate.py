"""The evaluate stage: every available metric for every method, and the report.

Methods are named ``<space>`` for reconstructions and ``<space> (ceiling)`` /
``<space> (chance)`` for the references decoded in the same run (see
:mod:`brainrecon.stages.generate`). Writes ``metrics.json``, ``per_image.csv``
and ``report/index.html``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from brainrecon.images import to_float_chw
from brainrecon.stages.base import Artifact, RunContext, Stage
from brainrecon.stages.fit import flat, target_names


def method_name(space: str, kind: str) -> str:
    """Display name of one image set of the generate stage."""
    return space if kind == "reconstruction" else f"{space} ({kind})"


class EvaluateStage(Stage):
    """Evaluate reconstructions with :func:`brainrecon.metrics.suite.evaluate_methods`.

    Parameters (``params``)
    -----------------------
    preset : str
        ``brain_diffuser`` or ``mindeye`` (resizing conventions, see the metrics guide).
    metrics : list of str, optional
        Subset of the suite's metrics (default: all; those whose backbone weights
        are absent are reported as unavailable).
    n_boot, n_perm : int
        Bootstrap resamples and permutations of the statistics.
    seed : int
    weights_root : path
        Root of published weights; backbones are looked for under ``metrics/`` (not hashed).
    experiment : str
        Title of the report.
    """

    name = "evaluate"
    version = 1

    def run(self, inputs: Mapping[str, Artifact], ctx: RunContext) -> dict[str, Any]:
        from brainrecon.metrics.suite import evaluate_methods
        from brainrecon.report import write_metrics, write_report

        data = inputs["data"]
        stimuli = to_float_chw(np.asarray(data.array("stimuli_test")))
        spaces = sorted(k.split("/", 1)[1] for k in inputs if k.startswith("generate/"))
        recons: dict[str, np.ndarray] = {}
        latents: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        for space in spaces:
            gen = inputs[f"generate/{space}"]
            for kind in gen.summary["kinds"]:
                recons[method_name(space, kind)] = to_float_chw(np.asarray(gen.array(kind)))
            if "reconstruction" in gen.summary["kinds"]:
                pred, extract = inputs[f"predict/{space}"], inputs[f"extract/{space}"]
                latents[space] = {
                    f"{space}.{t}": (flat(np.asarray(pred.array(f"test/{t}"))), flat(np.asarray(extract.array(f"test/{t}"))))
                    for t in target_names(extract)
                }
        results = evaluate_methods(
            stimuli,
            recons,
            preset=str(self.params.get("preset", "brain_diffuser")),
            latents=latents,
            metrics=self.params.get("metrics"),
            weights_root=self.params.get("weights_root"),
            n_boot=int(self.params.get("n_boot", 1000)),
            n_perm=int(self.params.get("n_perm", 1000)),
            seed=int(self.params.get("seed", 0)),
            device=str(ctx.resources.get("device", "cpu")),
            image_ids=[str(i) for i in np.asarray(data.array("test_ids"))],
            progress=ctx.progress,
        )
        write_metrics(ctx.out, results)
        write_report(
            ctx.out / "report",
            stimuli=stimuli,
            reconstructions=recons,
            metrics=results,
            title=f"brainrecon: {self.params.get('experiment', 'experiment')}",
        )
        return {
            m: {k: v.mean for k, v in r.metrics.items() if v.available} for m, r in results.items()
        }
