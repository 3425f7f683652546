"""The roi stage: ROI-optimal images of a run, scored in closed loop (:mod:`brainrecon.roi`).

Reads the data artifact and the extract and fit artifacts of every latent space (and, for the
generator check, the generate artifacts' ``ceiling`` images), and writes an
:class:`~brainrecon.roi.explore.RoiExploration`: ``masks.npy``, ``latents/``, ``images/``
(``.npy`` and one PNG per ROI), ``closed_loop_<model>.json/.csv``, ``energy.json``,
``weights.json``, ``summary.json`` and ``figures/*.png``.

It is the last stage of :data:`brainrecon.stages.pipeline.STAGE_ORDER` and runs only when asked
(``until=roi``, or ``python -m pipelines.explore_roi``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from brainrecon.errors import ConfigError
from brainrecon.stages.base import Artifact, RunContext, Stage

#: Parameters of the roi stage (conf/roi/default.yaml documents them) and their defaults.
ROI_DEFAULTS: dict[str, Any] = {
    "rois": ["auto"],
    "scaling": {},
    "value": 1.0,
    "pattern": "mask",
    "contrast": 0.0,
    "peer_groups": ["category"],
    "models": "auto",
    "clip_weights": "auto",
    "readout_kernel": "rbf",
    "semantic_estimator": "segmenter",
    "segmenter_weights": "bundled:scene_segmenter.safetensors",
    "stimulus_deg": 8.4,
    "weights": True,
    "semantic_pair": "auto",
    "ceiling_check": True,
    "decode_seed": None,
    "samples": 4,
    "guidance": {"scale": 0.0, "objective": "selective", "groups": ["visual", "eccentricity"]},
}


def roi_entries(rois: Any) -> list[Any]:
    """ROI entries with NIfTI paths turned into ``{"name", "path"}`` (absolute; the path is not hashed)."""
    from brainrecon.roi.masks import is_nifti, nifti_name

    if isinstance(rois, (str, os.PathLike)):
        rois = [rois]
    out: list[Any] = []
    for e in rois or []:
        if isinstance(e, Mapping):
            if "path" not in e:
                raise ConfigError(f"roi.rois: a mapping entry needs 'path' (a NIfTI mask), got keys {sorted(e)}")
            p = Path(os.fspath(e["path"])).expanduser().resolve()
            out.append({"name": str(e.get("name") or nifti_name(p)), "path": str(p)})
        elif is_nifti(e):
            p = Path(os.fspath(e)).expanduser().resolve()
            out.append({"name": nifti_name(p), "path": str(p)})
        else:
            out.append(str(e))
    return out


class RoiStage(Stage):
    """ROI-optimal synthesis, closed loop, energy and weight analyses of one subject's run.

    Parameters (``params``)
    -----------------------
    rois : list
        ROI names, set names (``brain_diffuser``, ``icgan``...), label files or NIfTI masks;
        ``["auto"]`` picks the reference set of the data.
    scaling : dict
        Per-target overrides of the scaling (``{vdvae: {z: {norm: 80}}}``).
    value, pattern, contrast, peer_groups, models, clip_weights, readout_kernel, semantic_estimator, stimulus_deg,
    weights, semantic_pair
        See :func:`brainrecon.roi.explore.explore_rois`.
    segmenter_weights : str
        Weights of the scene segmenter (``semantic_estimator: segmenter``).
    ceiling_check : bool
        Also read the semantic estimator on each space's ``ceiling`` images (test stimuli
        decoded from their true latents): can the generator show each category at all?
    decode_seed : int, optional
        Seed of the decoders' sampling (default: the experiment's ``seed``); another value gives
        another sample of the same ROI-optimal latents without touching the upstream stages.
    samples : int
        Images drawn per ROI (seeds ``decode_seed ...``); the closed loop and the energy analysis
        average over them, the first is shown (:func:`~brainrecon.roi.explore.explore_rois`).
    guidance : dict
        Encoder guidance of the diffusion decoder (:mod:`brainrecon.roi.guidance`): ``scale``
        (0: off, the references' images), ``objective`` (``selective`` | ``roi``), ``groups``.
    seed : int
    chains : dict
        ``generate.init_from``.
    """

    name = "roi"
    version = 6  # 2: several samples per ROI, ROI-latent semantics; 3: also of IC-GAN CLIP instances; 4: ROI response r;
    # 5: contrast-energy measure of the energy analysis; 6: per-draw preferred eccentricities

    def fingerprint(self) -> dict[str, Any]:
        """Content digests of NIfTI masks (their paths are not hashed)."""
        from brainrecon.fingerprint import path_fingerprint

        masks = {e["name"]: path_fingerprint(e["path"]) for e in self.params.get("rois", []) if isinstance(e, Mapping)}
        return {"masks": masks} if masks else {}

    def run(self, inputs: Mapping[str, Artifact], ctx: RunContext) -> dict[str, Any]:
        from brainrecon.roi.explore import explore_rois

        spaces = ctx.resources.get("spaces")
        if not spaces:
            raise ConfigError("roi stage: resources['spaces'] must hold the built latent spaces")
        p = {**ROI_DEFAULTS, **self.params}
        fits = {k.split("/", 1)[1]: a for k, a in inputs.items() if k.startswith("fit/")}
        extracts = {k.split("/", 1)[1]: a for k, a in inputs.items() if k.startswith("extract/")}
        ceilings = {}
        if p["ceiling_check"]:
            for k, a in inputs.items():
                if k.startswith("generate/") and "ceiling" in a.summary.get("kinds", []):
                    ceilings[k.split("/", 1)[1]] = a.array("ceiling")
        exploration = explore_rois(
            inputs["data"], fits, extracts, {s: spaces[s] for s in fits},
            rois=p["rois"], scaling=p["scaling"], init_from=p.get("chains") or {},
            seed=int(p["decode_seed"] if p["decode_seed"] is not None else p.get("seed", 0)), samples=int(p["samples"]),
            value=float(p["value"]), pattern=str(p["pattern"]), contrast=float(p["contrast"]),
            peer_groups=p["peer_groups"], models=p["models"], clip_path=str(p["clip_weights"]),
            readout_kernel=str(p["readout_kernel"]), semantic_estimator=str(p["semantic_estimator"]),
            segmenter_path=str(p["segmenter_weights"]), stimulus_deg=float(p["stimulus_deg"]), weights=bool(p["weights"]),
            semantic_pair=p["semantic_pair"], device=str(ctx.resources.get("device", "cpu")),
            ceilings=ceilings or None, progress=ctx.progress, **_guidance_args(p["guidance"]),
        )
        exploration.save(ctx.out)
        return exploration.summary()


def _guidance_args(g: Any) -> dict[str, Any]:
    """``roi.guidance`` as keyword arguments of :func:`~brainrecon.roi.explore.explore_rois`."""
    defaults = ROI_DEFAULTS["guidance"]
    if not isinstance(g, Mapping):
        raise ConfigError(f"roi.guidance: expected a mapping with keys {sorted(defaults)}, got {g!r}")
    unknown = sorted(set(g) - set(defaults))
    if unknown:
        raise ConfigError(f"roi.guidance: unknown keys {unknown}; expected {sorted(defaults)}")
    g = {**defaults, **g}
    groups = [g["groups"]] if isinstance(g["groups"], str) else [str(x) for x in g["groups"]]
    return {"guidance_scale": float(g["scale"]), "guidance_objective": str(g["objective"]), "guidance_groups": groups}


#: The CLIP of ``clip_weights: auto`` when no latent space of the run holds one.
FALLBACK_CLIP = "bundled:clip_small"


def run_clip_weights(spaces: Mapping[str, Any]) -> str:
    """The CLIP whose embeddings the run's latents hold: the first space's ``clip_weights``, else :data:`FALLBACK_CLIP`.

    Versatile Diffusion's CLIP-vision tokens and IC-GAN's CLIP instance features are embeddings of
    one particular CLIP; reading ROI latents before generation needs a readout on the same one.
    """
    for sp in spaces.values():
        found = getattr(sp, "clip_weights", None)
        if found:
            return str(found)
    return FALLBACK_CLIP


def build_roi_stage(
    cfg_roi: Mapping[str, Any],
    stages: Mapping[str, Stage],
    spaces: Mapping[str, Any],
    *,
    scope: str,
    seed: int,
    chains: Mapping[str, str],
    resources: Mapping[str, Any],
) -> RoiStage:
    """The roi stage of an experiment, wired to its data, extract, fit (and generate) stages."""
    params = {**ROI_DEFAULTS, **dict(cfg_roi or {})}
    unknown = sorted(set(params) - set(ROI_DEFAULTS))
    if unknown:
        raise ConfigError(f"roi: unknown parameter(s) {unknown}; expected names from {sorted(ROI_DEFAULTS)}")
    params["rois"] = roi_entries(params["rois"])
    g = _guidance_args(params["guidance"])  # checked here, and complete in the key whatever was overridden
    if g["guidance_scale"] > 0:
        params["guidance"] = {"scale": g["guidance_scale"], "objective": g["guidance_objective"],
                              "groups": g["guidance_groups"]}
    else:  # off: the references' images, whose key does not depend on the guidance settings
        del params["guidance"]
    if params["clip_weights"] == "auto":
        params["clip_weights"] = run_clip_weights(spaces)
    params.update({"seed": int(seed), "chains": dict(chains)})
    # The ROI images are decoded with each space's decode-only settings (img2img strength, truncation, ...),
    # which the extract key leaves out; without them a changed strength would reuse stale ROI images
    # whenever no generate stage is upstream (ceiling_check off).
    decode = {name: {k: getattr(sp, k) for k in getattr(sp, "decode_params", ()) or () if hasattr(sp, k)}
              for name, sp in spaces.items()}
    decode = {name: d for name, d in decode.items() if d}
    if decode:
        params["decode"] = decode
    up: dict[str, Stage] = {"data": stages["data"]}
    for name in spaces:
        up[f"fit/{name}"] = stages[f"fit/{name}"]
        up[f"extract/{name}"] = stages[f"extract/{name}"]
        if params["ceiling_check"]:
            up[f"generate/{name}"] = stages[f"generate/{name}"]
    return RoiStage(params, up, scope=scope, resources={**resources, "spaces": dict(spaces)})
