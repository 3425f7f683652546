"""The calibrate stage: choose a chain's img2img strength on held-out training images.

Brain-Diffuser starts Versatile Diffusion at strength 0.75, a value set for 512-pixel images.
How much of the first-stage image survives a given strength depends on the resolution (a
small image's layout is erased at lower noise levels), so a model of another size needs its
own value, and it must be chosen without the test set, as the ridge alpha is.

The stage holds out ``n_holdout`` training images, fits every target of both chain stages on
the rest with the experiment's decoder settings, predicts the held-out images as the predict
stage predicts the test set, decodes them through the chain at each candidate strength and
scores them against their stimuli. The chosen strength is the largest one whose PixCorr stays
within ``max_pixcorr_drop`` of the first-stage images' (:func:`~brainrecon.reconstruct.choose_strength`):
the most semantic change that keeps the layout. It is reported, not applied: set
``latents.<space>.strength`` to use it.

Writes ``calibration.json`` (every metric per strength, with bootstrap CIs), ``holdout_index.npy``,
``images/<label>.npy`` (uint8) and ``figures/strength.png`` (metrics against strength) and
``figures/examples.png`` (held-out stimuli, first stage, each strength).

Runs only when asked: ``python -m pipelines.calibrate_strength``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError
from brainrecon.stages.base import Artifact, RunContext, Stage

#: Parameters of the calibrate stage (conf/calibrate_strength.yaml documents them) and their defaults.
CALIBRATE_DEFAULTS: dict[str, Any] = {
    "space": "auto",  # the experiment's one chained space
    "strengths": [0.3, 0.4, 0.5, 0.6, 0.75],
    "n_holdout": 200,
    "max_pixcorr_drop": 0.2,
    "metrics": None,  # default: brainrecon.reconstruct.CALIBRATION_METRICS
    "preset": "brain_diffuser",
    "n_boot": 1000,
    "batch_size": 32,
    "n_examples": 8,
    "weights_root": None,  # of the published metric backbones (not hashed)
}


class CalibrateStage(Stage):
    """Score a chain's second stage at several img2img strengths on held-out training images.

    Parameters (``params``)
    -----------------------
    space, init : str
        The chained space (e.g. ``versatile``; ``auto`` in the configuration: the experiment's one
        chained space) and the space its images start from (``vdvae``).
    strengths : list of float
        Candidate strengths in (0, 1].
    n_holdout : int
        Training images held out (the rest fit the decoders).
    max_pixcorr_drop : float
        Relative PixCorr loss allowed against the first stage (the selection rule).
    metrics : list of str, optional
        Metrics of :mod:`brainrecon.metrics.suite` to score.
    preset, n_boot, batch_size, n_examples, weights_root
        Metric preset, bootstrap resamples, images per decode call, images in the example figure,
        root of the published metric backbones.
    decoder, targets, rescale : dict
        The experiment's decoder settings, per-target overrides per space, and the predict
        stage's rescaling per space.
    seed : int
        Seed of the split, of the decoders' sampling and of the bootstrap.
    """

    name = "calibrate"
    version = 1

    def run(self, inputs: Mapping[str, Artifact], ctx: RunContext) -> dict[str, Any]:
        from brainrecon.decoding.holdout import holdout_predictions
        from brainrecon.images import to_float_chw, to_uint8_hwc
        from brainrecon.metrics.suite import evaluate_methods
        from brainrecon.reconstruct import CALIBRATION_METRICS, choose_strength, strength_sweep
        from brainrecon.report import grid_png
        from brainrecon.stages.fit import target_names

        p = {**CALIBRATE_DEFAULTS, **self.params}
        spaces = ctx.resources.get("spaces") or {}
        name, init = str(p["space"]), str(p["init"])
        strengths = _checked_strengths(p["strengths"])
        seed = int(p.get("seed", 0))
        data = inputs["data"]
        X = np.asarray(data.array("X_train"))
        held: dict[str, Any] = {}
        for s in (init, name):
            ex = inputs[f"extract/{s}"]
            held[s] = holdout_predictions(
                X, {t: ex.array(f"train/{t}") for t in target_names(ex)},
                decoder={**dict(p.get("decoder") or {}), "progress": False},
                per_target=(p.get("targets") or {}).get(s), rescale_setting=(p.get("rescale") or {}).get(s, "none"),
                n_holdout=int(p["n_holdout"]), seed=seed,
            )
        idx = held[name].holdout_index
        stimuli = to_float_chw(np.asarray(data.array("stimuli_train")[idx]))
        images = strength_sweep(
            spaces[init], held[init].predicted, spaces[name], held[name].predicted, strengths,
            seed=seed, batch_size=int(p["batch_size"]), progress=ctx.progress,
        )
        labels = {"init": init, **{f"strength={s:g}": f"{name} @ {s:g}" for s in strengths}}
        recons = {labels[k]: v for k, v in images.items()}
        results = evaluate_methods(
            stimuli, recons, preset=str(p["preset"]), metrics=list(p["metrics"] or CALIBRATION_METRICS),
            n_boot=int(p["n_boot"]), n_perm=0, null_pairs=0, seed=seed, weights_root=p["weights_root"],
            device=str(ctx.resources.get("device", "cpu")), progress=ctx.progress,
        )
        table: dict[str, dict[str, Any]] = {}
        for label, res in results.items():
            table[label] = {m: {"mean": v.mean, "ci": None if v.ci is None else [float(c) for c in v.ci]}
                            for m, v in res.metrics.items() if v.available}
        unavailable = sorted({m for res in results.values() for m, v in res.metrics.items() if not v.available})
        reference = table[init]["PixCorr"]["mean"]
        by_strength = {s: table[labels[f"strength={s:g}"]]["PixCorr"]["mean"] for s in strengths}
        chosen = choose_strength(by_strength, reference, float(p["max_pixcorr_drop"]))
        summary = {
            "space": name, "init": init, "n_holdout": int(len(idx)), "strengths": strengths,
            "chosen_strength": chosen,
            "rule": f"largest strength with PixCorr >= (1 - {float(p['max_pixcorr_drop']):g}) x the {init} images' PixCorr",
            "reference_pixcorr": reference, "pixcorr_floor": (1.0 - float(p["max_pixcorr_drop"])) * reference,
            "alphas": {s: h.alphas for s, h in held.items()}, "unavailable_metrics": unavailable,
        }
        ctx.save_json("calibration", {**summary, "labels": labels, "metrics": table})
        ctx.save_array("holdout_index", idx.astype(np.int64))
        for key, imgs in images.items():
            ctx.save_array(f"images/{key}", to_uint8_hwc(imgs))
        figures = ctx.out / "figures"
        figures.mkdir(exist_ok=True)
        (figures / "strength.png").write_bytes(_strength_png(table, labels, strengths, summary))
        n_ex = min(int(p["n_examples"]), len(idx))
        shown = {label.replace(" @ ", "\nstrength "): imgs for label, imgs in recons.items()}  # short row labels
        (figures / "examples.png").write_bytes(grid_png(
            stimuli, shown, list(range(n_ex)),
            f"held-out training images: stimulus, {init}, {name} at each strength (chosen: {chosen})"))
        return summary


def _checked_strengths(values: Any) -> list[float]:
    """Sorted distinct strengths; ConfigError unless there is at least one and each is in (0, 1]."""
    vals = list(values or [])
    if not vals or not all(isinstance(v, (int, float)) and 0.0 < float(v) <= 1.0 for v in vals):
        raise ConfigError(f"calibrate.strengths: expected one or more values in (0, 1], got {values}")
    return sorted({float(v) for v in vals})


def _strength_png(table: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str], strengths: list[float],
                  summary: Mapping[str, Any]) -> bytes:
    """One panel per metric: the chain's score against strength (95 % CI), the first stage as a line."""
    from brainrecon.report import new_figure, png_bytes

    init = labels["init"]
    metrics = [m for m in table[init] if m != "MSE"]
    fig = new_figure(figsize=(3.0 * len(metrics), 2.8))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, m in zip(axes, metrics):
        rows = [table[labels[f"strength={s:g}"]].get(m) for s in strengths]
        means = np.array([r["mean"] if r else np.nan for r in rows], dtype=float)
        lo = np.array([r["ci"][0] if r and r["ci"] else np.nan for r in rows], dtype=float)
        hi = np.array([r["ci"][1] if r and r["ci"] else np.nan for r in rows], dtype=float)
        ax.fill_between(strengths, lo, hi, alpha=0.25, color="C0")
        ax.plot(strengths, means, "o-", color="C0", label=summary["space"])
        ax.axhline(table[init][m]["mean"], color="C1", ls="--", label=init)
        if m == "PixCorr":
            ax.axhline(summary["pixcorr_floor"], color="grey", ls=":", label="floor")
        if summary["chosen_strength"] is not None:
            ax.axvline(summary["chosen_strength"], color="C2", lw=1, label="chosen")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("img2img strength", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{summary['space']} strength on {summary['n_holdout']} held-out training images", fontsize=10, y=1.04)
    return png_bytes(fig)


def build_calibrate_stage(
    cfg: Mapping[str, Any],
    stages: Mapping[str, Stage],
    spaces: Mapping[str, Any],
    *,
    experiment: Mapping[str, Any],
    scope: str,
    seed: int,
    resources: Mapping[str, Any],
) -> CalibrateStage:
    """The calibrate stage of an experiment, wired to its data and extract stages.

    ``experiment`` is the resolved configuration (its ``decoder``, ``predict`` and
    ``generate.init_from`` sections are read).
    """
    from brainrecon.stages.pipeline import predict_params

    params = {**CALIBRATE_DEFAULTS, **dict(cfg or {})}
    unknown = sorted(set(params) - set(CALIBRATE_DEFAULTS))
    if unknown:
        raise ConfigError(f"calibrate: unknown parameter(s) {unknown}; expected names from {sorted(CALIBRATE_DEFAULTS)}")
    _checked_strengths(params["strengths"])
    if int(params["n_holdout"]) < 2:
        raise ConfigError(f"calibrate.n_holdout: expected at least 2 held-out images, got {params['n_holdout']}")
    if params["metrics"] is not None and "PixCorr" not in params["metrics"]:
        raise ConfigError(f"calibrate.metrics: the selection rule needs PixCorr; got {list(params['metrics'])}")
    name = str(params["space"])
    init_from = dict((experiment.get("generate") or {}).get("init_from") or {})
    if name == "auto":
        if len(init_from) != 1:
            raise ConfigError(f"calibrate.space: 'auto' needs exactly one chained space (generate.init_from), "
                              f"this experiment has {init_from or 'none'}; name the space to calibrate")
        name = next(iter(init_from))
    if name not in spaces:
        raise ConfigError(f"calibrate.space: expected one of this experiment's spaces {sorted(spaces)}, got {name!r}")
    if name not in init_from:
        raise ConfigError(f"calibrate.space: {name!r} does not start from another space's images "
                          f"(generate.init_from is {init_from}); only a chain's later stage has a strength")
    if not hasattr(spaces[name], "with_strength"):
        raise ConfigError(f"calibrate.space: the space {name!r} has no img2img strength to calibrate")
    init = init_from[name]
    decoder = dict(experiment.get("decoder") or {})
    per_target = dict(decoder.pop("targets", None) or {})
    predict = dict(experiment.get("predict") or {})
    params.update({
        "space": name, "init": init, "seed": int(seed), "decoder": decoder,
        "targets": {s: dict(per_target.get(s) or {}) for s in (init, name)},
        "rescale": {s: predict_params(predict, s)["rescale"] for s in (init, name)},
    })
    up: dict[str, Stage] = {"data": stages["data"], f"extract/{init}": stages[f"extract/{init}"],
                            f"extract/{name}": stages[f"extract/{name}"]}
    return CalibrateStage(params, up, scope=scope, resources={**resources, "spaces": dict(spaces)})
