"""The evaluate stage: every available metric for every method, and the report.

Methods are named ``<space>`` for reconstructions and ``<space> (ceiling)`` /
``<space> (chance)`` for the references decoded in the same run (see
:mod:`brainrecon.stages.generate`). Writes ``report/index.html`` with
``report/metrics.json``, ``report/per_image.csv`` and ``report/figures/`` beside it
(``brain_correlation.json`` at the top when the data are simulated).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError
from brainrecon.images import to_float_chw, to_uint8_hwc
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
    chains : dict, optional
        ``generate.init_from`` (space -> the space whose images it starts from); the report
        shows each chain stage by stage.
    compare : ``"auto"``, list of [a, b] method pairs, or empty
        Paired differences ``a - b`` per metric (:mod:`brainrecon.metrics.comparison`),
        written to ``report/comparisons.json`` and shown in the report. ``auto``: each chain's
        later stage against the stage it starts from, and every pair of final reconstructions.
    """

    name = "evaluate"
    # 2: brain correlation on simulated data; 3: metrics files only in report/; 4: chain grids; 5: paired comparisons
    version = 5

    def run(self, inputs: Mapping[str, Artifact], ctx: RunContext) -> dict[str, Any]:
        from brainrecon.metrics.suite import evaluate_methods
        from brainrecon.report import write_report

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
            weights_root=None if self.params.get("weights_root") is None else Path(self.params["weights_root"]).expanduser().resolve(),
            n_boot=int(self.params.get("n_boot", 1000)),
            n_perm=int(self.params.get("n_perm", 1000)),
            seed=int(self.params.get("seed", 0)),
            device=str(ctx.resources.get("device", "cpu")),
            image_ids=[str(i) for i in np.asarray(data.array("test_ids"))],
            progress=ctx.progress,
        )
        summary: dict[str, Any] = {
            m: {k: v.mean for k, v in r.metrics.items() if v.available} for m, r in results.items()
        }
        sections = []
        pairs = comparison_pairs(self.params.get("compare", "auto"), self.params.get("chains") or {}, recons)
        if pairs:
            from brainrecon.metrics.comparison import compare_methods
            from brainrecon.report import comparison_table_html

            diffs = compare_methods(results, pairs, n_boot=int(self.params.get("n_boot", 1000)),
                                    n_perm=int(self.params.get("n_perm", 1000)), seed=int(self.params.get("seed", 0)))
            summary["comparisons"] = [d.to_dict() for d in diffs]
            sections.append(("Paired differences between methods", comparison_table_html(diffs)))
        brain = sim_brain_correlation(data, recons, n_boot=int(self.params.get("n_boot", 1000)), seed=int(self.params.get("seed", 0)))
        if brain is not None:
            ctx.save_json("brain_correlation", brain)
            summary["brain_correlation"] = {m: {r: v["mean"] for r, v in rois.items()} for m, rois in brain["methods"].items()}
            sections.append(("Brain correlation (simulator's true encoding model)", brain_table_html(brain)))
        report = write_report(
            ctx.out / "report",
            stimuli=stimuli,
            reconstructions=recons,
            metrics=results,
            title=f"brainrecon: {self.params.get('experiment', 'experiment')}",
            extra_sections=sections,
            chains=chain_methods(self.params.get("chains") or {}, recons),
        )
        if pairs:
            (report.parent / "comparisons.json").write_text(json.dumps(summary["comparisons"], indent=1))
        return summary


def comparison_pairs(compare: Any, init_from: Mapping[str, str], recons: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Method pairs ``(a, b)`` to compare (``a - b``); see :class:`EvaluateStage` (``compare``).

    Raises
    ------
    ConfigError
        ``compare`` is neither ``"auto"`` nor a list of pairs of known methods.
    """
    if compare in (None, "none", False) or (isinstance(compare, (list, tuple)) and not compare):
        return []
    plain = [m for m in recons if "(" not in m]  # reconstructions; references are named "<space> (<kind>)"
    if compare == "auto":
        pairs = [(m, init_from[m]) for m in sorted(init_from) if m in plain and init_from[m] in plain]
        finals = sorted(m for m in plain if m not in init_from.values())
        pairs += [(a, b) for i, a in enumerate(finals) for b in finals[i + 1:]]
        return pairs
    if isinstance(compare, str) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in compare):
        raise ConfigError(f"metrics.compare: expected 'auto', 'none' or a list of [method, method] pairs, got {compare!r}")
    pairs = [(str(a), str(b)) for a, b in compare]
    unknown = sorted({m for p in pairs for m in p} - set(recons))  # references may be compared when named
    if unknown:
        raise ConfigError(f"metrics.compare: unknown method(s) {unknown}; this run's methods are {sorted(recons)}")
    return pairs


def chain_methods(init_from: Mapping[str, str], recons: Mapping[str, Any]) -> dict[str, list[str]]:
    """Stage-by-stage method lists of multi-stage reconstructions, from ``generate.init_from``.

    ``{"versatile": "vdvae"}`` gives ``{"vdvae -> versatile": ["vdvae", "versatile"]}``; chains
    of more stages are followed back to their first stage.
    """
    out: dict[str, list[str]] = {}
    for final in init_from:
        if final in init_from.values():
            continue  # an intermediate stage: its chain is shown with the final one
        stages = [final]
        while stages[0] in init_from and len(stages) <= len(init_from):
            stages.insert(0, init_from[stages[0]])
        if all(s in recons for s in stages):
            out[" -> ".join(stages)] = stages
    return out


def sim_brain_correlation(
    data: Artifact, recons: Mapping[str, np.ndarray], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any] | None:
    """Brain correlation per ROI through the simulator's true encoding model (None unless data are simulated).

    Every image (the stimulus itself as the reference, and each method's
    reconstruction) is scored with its category content set to zero, because
    category content cannot be read from pixels: the comparison is fair, and
    category ROIs are scored on their (weak) low-level drive only.
    """
    from brainrecon.metrics.brain import brain_correlation, roi_masks_from_labels
    from brainrecon.metrics.identification import bootstrap_ci
    from brainrecon.sim.encoding import EncodingModel
    from brainrecon.sim.layout import truth_dir

    info = data.json("info")
    if info.get("source") != "sim" or not data.has("voxel_ijk.npy"):
        return None
    model = EncodingModel.load(truth_dir(Path(info["sim_root"])) / "model")
    lookup = {tuple(v): i for i, v in enumerate(np.asarray(model.voxels["ijk"]).tolist())}
    idx = np.array([lookup[tuple(v)] for v in np.asarray(data.array("voxel_ijk")).tolist()])
    n_cat = len(model.spec.categories)

    def predict(images_hwc: np.ndarray) -> np.ndarray:
        zeros = np.zeros((len(images_hwc), n_cat), dtype=np.float32)
        return model.predict(images_hwc, semantics=zeros)[:, idx].astype(np.float64)

    train_pred = predict(np.asarray(data.array("stimuli_train")))
    mu, sd = train_pred.mean(0), train_pred.std(0, ddof=1)
    sd[sd == 0] = 1.0
    measured = np.asarray(data.array("X_test"), dtype=np.float64)
    rois = roi_masks_from_labels(
        {p.name[4:-4]: np.asarray(np.load(p, allow_pickle=False)) for p in sorted(data.path.glob("roi_*.npy"))}
    )
    images = {"stimulus": np.asarray(data.array("stimuli_test"))}
    images.update({m: to_uint8_hwc(r) for m, r in recons.items()})
    methods = {}
    for m, imgs in images.items():
        per = brain_correlation((predict(imgs) - mu) / sd, measured, rois)
        methods[m] = {
            r: {"mean": float(np.nanmean(v)), "ci": list(bootstrap_ci(v, n_boot=n_boot, seed=seed))} for r, v in per.items()
        }
    return {
        "description": "per-image Pearson r across ROI voxels between the true encoding model's predicted "
        "response to the image (z-scored with the statistics of predictions for the training stimuli) and the "
        "measured z-scored test betas; category content set to zero for every image",
        "rois": {r: int(mask.sum()) for r, mask in rois.items()},
        "methods": methods,
    }


def brain_table_html(brain: Mapping[str, Any]) -> str:
    """An HTML table of :func:`sim_brain_correlation`'s result."""
    import html

    rois = list(brain["rois"])
    head = "".join(f"<th>{html.escape(r)}<br><small>{brain['rois'][r]} vox</small></th>" for r in rois)
    rows = []
    for m, vals in brain["methods"].items():
        cells = "".join(
            f"<td>{vals[r]['mean']:.3f}<br><small>[{vals[r]['ci'][0]:.3f}, {vals[r]['ci'][1]:.3f}]</small></td>" for r in rois
        )
        rows.append(f"<tr><td>{html.escape(m)}</td>{cells}</tr>")
    return (
        f"<p>{html.escape(brain['description'])}. Mean over test images [95 % bootstrap CI]; "
        "the <em>stimulus</em> row is the reference (the true image through the same model).</p>"
        f"<table><tr><th>images</th>{head}</tr>{''.join(rows)}</table>"
    )
