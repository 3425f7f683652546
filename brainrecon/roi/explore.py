"""ROI exploration of one run: synthesis, images, closed loop, energy and weight analyses.

:func:`explore_rois` reads a run's artifacts (the data stage, and the extract and fit stages of
every latent space), builds the synthetic patterns of the requested ROIs, turns them into
ROI-optimal latents with each target's scaling scheme, decodes them with the run's latent
spaces (chained as in the run: Versatile Diffusion starts from the VDVAE image), and scores
the images (:mod:`brainrecon.roi.closed_loop`, :mod:`brainrecon.roi.energy`,
:mod:`brainrecon.roi.weights`). :class:`RoiExploration` holds the result and saves it as
plain files (``.npy``, ``.json``, ``.csv``, ``.png``); the ``roi`` stage and
``pipelines/explore_roi.py`` call it, the notebooks read it back with :meth:`RoiExploration.load`.

The *baseline* of each space is the decode of the decoders' intercepts (the all-zero synthetic
pattern); the energy analysis measures each ROI image against it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError
from brainrecon.roi.closed_loop import (
    ClosedLoopResult,
    ClipEmbeddingFeatures,
    KernelRidgeReadout,
    LowLevelFeatures,
    SemanticEstimator,
    SimulatedResponses,
    VoxelwiseEncodingModel,
    closed_loop,
    column_scores,
    percentile_of,
    roi_response_correlation,
)
from brainrecon.roi.energy import NSD_STIMULUS_DEG, EnergyResult, energy_analysis, neighbours_text, ordering
from brainrecon.roi.guidance import GUIDANCE_OBJECTIVES
from brainrecon.roi.masks import (
    ROI_GROUPS,
    RoiSpec,
    conditional_patterns,
    resolve_rois,
    roi_slug,
    synthetic_patterns,
)
from brainrecon.roi.synthesis import RoiScaling, TargetStats, decoder_intercept, resolve_scalings, roi_latents
from brainrecon.roi.weights import WeightAnalysis, weight_analysis


#: Working resolution of the energy analysis (pixels).
ENERGY_SIZE = 128

__all__ = ["RoiExploration", "explore_rois", "data_labels", "chain_order", "weights_across_subjects", "CLOSED_LOOP_MODELS"]

#: Encoding models of the closed loop: ``truth`` (the simulator's model; simulated data) and ``fitted`` (any data).
CLOSED_LOOP_MODELS: tuple[str, ...] = ("truth", "fitted")


def data_labels(data: Any) -> dict[str, np.ndarray]:
    """Per-voxel ROI label arrays of a data artifact (``roi_<file>.npy``), by file name."""
    return {p.name[4:-4]: np.asarray(np.load(p, allow_pickle=False)) for p in sorted(data.path.glob("roi_*.npy"))}


def chain_order(spaces: Sequence[str], init_from: Mapping[str, str]) -> list[str]:
    """Spaces ordered so that every space comes after the one it starts from."""
    order: list[str] = []
    pending = list(spaces)
    while pending:
        ready = [s for s in pending if init_from.get(s) is None or init_from[s] in order]
        if not ready:
            raise ConfigError(f"generate.init_from: a cycle or an unknown space among {pending} ({dict(init_from)})")
        order += ready
        pending = [s for s in pending if s not in ready]
    return order


def _to_uint8(images: np.ndarray) -> np.ndarray:
    from brainrecon.images import to_uint8_hwc

    return to_uint8_hwc(np.asarray(images, dtype=np.float32))


@dataclass
class RoiExploration:
    """Everything an ROI exploration produced (see the module docstring).

    Attributes
    ----------
    specs : list of RoiSpec
    masks : (n_rois, n_voxels) bool
    scalings : dict target key -> RoiScaling
    latents : dict space -> dict target -> (n_rois, *shape) float32
    images : dict space -> (n_rois, H, W, 3) uint8
    baseline : dict space -> (1, H, W, 3) uint8
    samples, baseline_samples : dict space -> (n_samples, n_rois | 1, H, W, 3) uint8
        Every image drawn when ``samples > 1`` (``images``/``baseline`` are sample 0); else empty.
    closed_loop : dict model name (``truth``, ``fitted``) -> ClosedLoopResult
    energy : dict space -> EnergyResult
    weights : WeightAnalysis or None
    info : dict (chains, seed, readout and encoding-model accuracy, orderings, acceptance)
    """

    specs: list[RoiSpec]
    masks: np.ndarray
    scalings: dict[str, RoiScaling]
    latents: dict[str, dict[str, np.ndarray]]
    images: dict[str, np.ndarray]
    baseline: dict[str, np.ndarray]
    closed_loop: dict[str, ClosedLoopResult] = field(default_factory=dict)
    energy: dict[str, EnergyResult] = field(default_factory=dict)
    weights: WeightAnalysis | None = None
    info: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    baseline_samples: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def rois(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def spaces(self) -> list[str]:
        return list(self.images)

    def mask_dict(self) -> dict[str, np.ndarray]:
        return {s.name: self.masks[i] for i, s in enumerate(self.specs)}

    def eccentricity_ordering(self, space: str) -> dict[str, Any] | None:
        """Ordering of the eccentricity bands' preferred eccentricity (None without bands)."""
        bands = [i for i, s in enumerate(self.specs) if s.group == "eccentricity" and s.ecc_range is not None]
        if len(bands) < 2 or space not in self.energy:
            return None
        bands.sort(key=lambda i: self.specs[i].ecc_range[0])
        e = self.energy[space]

        def per_draw(a: np.ndarray | None) -> np.ndarray | None:  # each draw's values, bands only
            return None if a is None else np.asarray(a)[:, bands]

        out = ordering([e.preferred_ecc[i] for i in bands], per_draw(e.preferred_ecc_samples))
        out["rois"] = [self.specs[i].name for i in bands]
        names = out["rois"]
        if all(n in e.reference_ecc for n in names):  # the same ordering of where the bands actually look
            ref = ordering([e.reference_ecc[n] for n in names])
            out["reference_values"], out["reference_strictly_increasing"] = ref["values"], ref["strictly_increasing"]
        if e.contrast_preferred_ecc is not None:  # the same question asked of the contrast the images add
            out["contrast"] = ordering([e.contrast_preferred_ecc[i] for i in bands],
                                       per_draw(e.contrast_preferred_ecc_samples))
        r = self.info.get("roi_response_r")
        if r is not None:  # r of each band's mean training response with the next band's
            out["neighbour_response_r"] = [float(r[i][j]) for i, j in zip(bands[:-1], bands[1:])]
        return out

    def summary(self) -> dict[str, Any]:
        """Acceptance-style numbers per image set: category ROIs, eccentricity ordering."""
        out: dict[str, Any] = {"rois": self.rois, "spaces": self.spaces}
        for model, res in self.closed_loop.items():
            out[f"closed_loop_{model}"] = {s: res.acceptance(s) for s in res.responses}
        out["eccentricity_ordering"] = {s: self.eccentricity_ordering(s) for s in self.spaces}
        return out

    def report_text(self) -> str:
        """A plain-text account: scalings, encoding models' accuracy, acceptance and energy measures."""

        def f(x: Any) -> str:  # values read back from JSON: NaN was written as null
            return "n/a" if x is None or not np.isfinite(x) else f"{x:.2f}"

        contrast, pattern = float(self.info.get("contrast", 0.0)), self.info.get("pattern", "mask")
        peers = ", ".join(self.info.get("peer_groups", []))
        lead = f"Synthetic pattern ({pattern}): the ROI {self.info.get('value', 1.0):g} above its mean, "
        lead += {"conditional": "every other voxel at its expected value then (regression on the ROI's training response)",
                 "partial": f"its peers in {peers} at their means, every other voxel at its expected value then",
                 }.get(pattern, "0 elsewhere (the references)" if contrast == 0 else
                       f"its peers in {peers} below their mean (contrast {contrast:g})")
        lines = [lead]
        g = self.info.get("guidance")
        if g:
            lines.append(f"Encoder guidance of {', '.join(g['spaces'])} (ROIs of {', '.join(g['groups'])}): scale "
                         f"{g['scale']:g}, objective {g['objective']}; {g['encoder']}")
        lines.append("Scaling of each target:")
        for k, sc in self.scalings.items():
            extra = "" if sc.norm is None else f", norm {sc.norm:.3g}"
            lines.append(f"  {k:<24} {sc.method:<15} scale {sc.scale:.3g}{extra}   ({sc.source})")
        for model, res in self.closed_loop.items():
            lines.append(f"\nClosed loop, {model} model: {res.model}")
            est = res.extra.get("semantic_estimator_heldout")
            if est:
                acc = ", ".join(f"{c} {f(r)}" for c, r in zip(est["categories"], est["r"]))
                lines.append(f"  semantic estimator, held-out r on {est['n']} test stimuli: {acc}")
            gen = res.extra.get("generator_ceiling_semantics_r")
            if gen:
                for sp, per in gen.items():
                    acc = ", ".join(f"{c} {f(r)}" for c, r in per.items())
                    lines.append(f"  estimator r on {sp} ceiling images (can the generator show it?): {acc}")
            for roi, row in (res.extra.get("natural_check") or {}).items():
                parts = [f"{tag}: drive {row[tag]['drive_with']:+.2f} with / {row[tag]['drive_without']:+.2f} without, "
                         f"{row[tag]['top10_with_category']}/10 top stimuli contain it" for tag in ("est", "true") if tag in row]
                lines.append(f"  natural test stimuli, {roi} ROI vs {row['category']} ({row['n_with']} contain it): "
                             + "; ".join(parts))
            for sp, rows in (res.extra.get("roi_latent_semantics") or {}).items():
                parts = ", ".join(f"{roi} {row['category']} {f(row['latent_area'])} ({row['percentile_vs_test']:.0f}th pct)"
                                  for roi, row in rows.items())
                lines.append(f"  {sp} ROI latents read before generation (CLIP-vision token 0): {parts}")
            enc = res.extra.get("encoding_model_heldout")
            if enc:
                lines.append(f"  encoding model, held-out median voxel r: {f(enc['median_r'])}")
            for sp in res.responses:
                acc = res.acceptance(sp)
                per = ", ".join(f"{r} {'pass' if ok else 'fail'}" for r, ok in acc["per_roi"].items())
                lines.append(f"  {sp:<10} category ROIs selective and >= {acc['min_percentile']:.0f}th percentile: "
                             f"{'PASS' if acc['passed'] else 'FAIL'} ({per})")
        for sp in self.spaces:
            order = self.eccentricity_ordering(sp)
            if order is not None:
                vals = ", ".join(f"{r} {f(v)}" for r, v in zip(order["rois"], order["values"]))
                lines.append(f"\n{sp}: preferred eccentricity of the band images (deg): {vals}; Spearman "
                             f"{f(order['spearman'])}, strictly increasing: {order['strictly_increasing']}")
            if order is not None and "neighbours" in order:
                lines.append(f"{sp}: neighbours over draws (outer/inner ratio [CI]): " + neighbours_text(order))
            if order is not None and "contrast" in order:
                c = order["contrast"]
                vals = ", ".join(f"{r} {f(v)}" for r, v in zip(order["rois"], c["values"]))
                lines.append(f"{sp}: preferred eccentricity of the contrast the band images add (deg): {vals}; "
                             f"Spearman {f(c['spearman'])}, strictly increasing: {c['strictly_increasing']}")
                if "neighbours" in c:
                    lines.append(f"{sp}: contrast added, neighbours over draws (outer/inner ratio [CI]): "
                                 + neighbours_text({**c, "rois": order["rois"]}))
            if order is not None and "reference_values" in order:
                vals = ", ".join(f"{r} {f(v)}" for r, v in zip(order["rois"], order["reference_values"]))
                lines.append(f"{sp}: preferred eccentricity of the bands' effective receptive fields (deg): {vals}")
            if order is not None and "neighbour_response_r" in order:
                pairs = ", ".join(f"{a}/{b} {f(v)}" for a, b, v in
                                  zip(order["rois"][:-1], order["rois"][1:], order["neighbour_response_r"]))
                lines.append(f"{sp}: r of neighbouring bands' mean training responses (near 1: they respond to "
                             f"nearly the same stimuli): {pairs}")
            e = self.energy.get(sp)
            if e is not None and e.coverage_r is not None:
                cov = ", ".join(f"{r} {f(c)}" for r, c in zip(e.rois, e.coverage_r) if np.isfinite(c))
                lines.append(f"{sp}: r(energy map, pRF coverage): {cov}")
            if e is not None and e.effective_r is not None:
                cov = ", ".join(f"{r} {f(c)}" for r, c in zip(e.rois, e.effective_r) if np.isfinite(c))
                lines.append(f"{sp}: r(energy map, effective receptive fields): {cov}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | os.PathLike, *, figures: bool = True) -> Path:
        """Write the exploration as plain files under ``folder`` (created); returns ``folder``."""
        from PIL import Image

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "masks.npy", self.masks, allow_pickle=False)
        meta = {
            "rois": [{**asdict(s), "ecc_range": None if s.ecc_range is None else list(s.ecc_range)} for s in self.specs],
            "scalings": {k: v.to_dict() for k, v in self.scalings.items()},
            "latents": {s: sorted(t) for s, t in self.latents.items()},
            "spaces": self.spaces,
            "closed_loop_models": list(self.closed_loop),
            "info": self.info,
        }
        for space, targets in self.latents.items():
            (folder / "latents" / space).mkdir(parents=True, exist_ok=True)
            for t, arr in targets.items():
                np.save(folder / "latents" / space / f"{t}.npy", np.asarray(arr, np.float32), allow_pickle=False)
        (folder / "images").mkdir(exist_ok=True)
        for space, imgs in self.images.items():
            np.save(folder / "images" / f"{space}.npy", imgs, allow_pickle=False)
            np.save(folder / "images" / f"{space}_baseline.npy", self.baseline[space], allow_pickle=False)
            (folder / "images" / space).mkdir(exist_ok=True)
            for i, roi in enumerate(self.rois):
                Image.fromarray(imgs[i]).save(folder / "images" / space / f"{i:02d}_{roi_slug(roi)}.png")
            Image.fromarray(self.baseline[space][0]).save(folder / "images" / space / "baseline.png")
            if space in self.samples:
                np.save(folder / "images" / f"{space}_samples.npy", self.samples[space], allow_pickle=False)
                np.save(folder / "images" / f"{space}_baseline_samples.npy", self.baseline_samples[space],
                        allow_pickle=False)
        for model, res in self.closed_loop.items():
            res.save(folder, f"closed_loop_{model}")
        (folder / "energy.json").write_text(json.dumps(_json_safe({s: e.to_json() for s, e in self.energy.items()}), indent=1))
        if self.weights is not None:
            (folder / "weights.json").write_text(json.dumps(_json_safe(self.weights.to_json()), indent=1))
        (folder / "exploration.json").write_text(json.dumps(_json_safe(meta), indent=1))
        (folder / "summary.json").write_text(json.dumps(_json_safe(self.summary()), indent=1))
        if figures:
            from brainrecon.roi.figures import save_exploration_figures

            save_exploration_figures(self, folder / "figures")
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> RoiExploration:
        """Read an exploration written by :meth:`save`."""
        folder = Path(folder)
        meta_path = folder / "exploration.json"
        if not meta_path.is_file():
            from brainrecon.errors import MissingDataError

            raise MissingDataError(meta_path, "ROI exploration", "write it with RoiExploration.save or run pipelines.explore_roi")
        meta = json.loads(meta_path.read_text())
        specs = [RoiSpec(name=d["name"], file=d["file"], labels=None if d["labels"] is None else tuple(d["labels"]),
                         exclude_files=tuple(d["exclude_files"]), group=d["group"],
                         ecc_range=None if d["ecc_range"] is None else (float(d["ecc_range"][0]),
                                                                        float("inf") if d["ecc_range"][1] is None
                                                                        else float(d["ecc_range"][1])))
                 for d in meta["rois"]]
        scalings = {k: RoiScaling(**v) for k, v in meta["scalings"].items()}
        latents = {s: {t: np.load(folder / "latents" / s / f"{t}.npy", allow_pickle=False) for t in ts}
                   for s, ts in meta["latents"].items()}
        images = {s: np.load(folder / "images" / f"{s}.npy", allow_pickle=False) for s in meta["spaces"]}
        baseline = {s: np.load(folder / "images" / f"{s}_baseline.npy", allow_pickle=False) for s in meta["spaces"]}
        loops = {m: ClosedLoopResult.from_json(json.loads((folder / f"closed_loop_{m}.json").read_text()))
                 for m in meta["closed_loop_models"]}
        energy = {s: EnergyResult.from_json(e) for s, e in json.loads((folder / "energy.json").read_text()).items()}
        weights = None
        if (folder / "weights.json").is_file():
            weights = WeightAnalysis.from_json(json.loads((folder / "weights.json").read_text()))
        samples = {s: np.load(folder / "images" / f"{s}_samples.npy", allow_pickle=False) for s in meta["spaces"]
                   if (folder / "images" / f"{s}_samples.npy").is_file()}
        baseline_samples = {s: np.load(folder / "images" / f"{s}_baseline_samples.npy", allow_pickle=False)
                            for s in samples}
        return cls(specs, np.load(folder / "masks.npy", allow_pickle=False), scalings, latents, images, baseline,
                   loops, energy, weights, dict(meta.get("info") or {}), samples, baseline_samples)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and not np.isfinite(obj):
        return None if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return _json_safe(obj.item())
    return obj


def _natural_check(res: ClosedLoopResult, specs: Sequence[RoiSpec], semantics: np.ndarray,
                   categories: Sequence[str]) -> dict[str, Any]:
    """Does the loop itself work? Per category ROI, its drive by natural test stimuli with and without
    the ROI's category, and how many of the 10 stimuli that drive it most contain the category; with
    estimated (``est``) and true (``true``) category areas."""
    from brainrecon.sim.stimuli import FLOC_CATEGORY

    out: dict[str, Any] = {}
    for s in specs:
        cat = FLOC_CATEGORY.get(s.file)
        if cat is None or cat not in categories or s.labels is not None:
            continue
        has = semantics[:, list(categories).index(cat)] > 0
        if not has.any() or has.all():
            continue
        i = res.rois.index(s.name)
        row = {"category": cat, "n_with": int(has.sum())}
        for tag, nat in (("est", res.natural), ("true", res.natural_true)):
            if nat is None:
                continue
            top = np.argsort(-nat[:, i])[: min(10, len(nat))]
            row[tag] = {"drive_with": float(nat[has, i].mean()), "drive_without": float(nat[~has, i].mean()),
                        "top10_with_category": int(has[top].sum())}
        out[s.name] = row
    return out


def _latent_semantics(latents: Mapping[str, Mapping[str, np.ndarray]], spaces: Mapping[str, Any],
                      clip_features: ClipEmbeddingFeatures, estimator: SemanticEstimator, specs: Sequence[RoiSpec],
                      natural_est: np.ndarray) -> dict[str, Any]:
    """Category content of the ROI *latents*, before any image is generated.

    A space whose latents hold an image embedding of the same CLIP as the semantic estimator's
    (``clip_image_embedding``: token 0 of Versatile Diffusion's ``clip_vision``, the projected class
    token; IC-GAN's ``instance`` with a CLIP instance encoder) lets the estimator read the ROI
    latent directly. Comparing this with the closed loop on the
    generated image separates the two causes of a failure: a wrong ROI latent (synthesis) or a
    generator that does not render it (decoding). Per category ROI: the estimated area of its
    category, its percentile among the natural test stimuli's estimates, and every category's area.
    """
    from brainrecon.sim.stimuli import FLOC_CATEGORY

    out: dict[str, Any] = {}
    want = clip_features.clip.fingerprint()
    for space, sp in spaces.items():
        read = getattr(sp, "clip_image_embedding", None)
        found = read(latents.get(space, {})) if callable(read) else None
        if found is None or found[1] != want:
            continue
        emb = np.asarray(found[0], dtype=np.float64)
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        est = estimator.readout.predict(emb)
        rows = {}
        for i, s in enumerate(specs):
            cat = FLOC_CATEGORY.get(s.file)
            if cat is None or cat not in estimator.categories or s.labels is not None:
                continue
            j = estimator.categories.index(cat)
            rows[s.name] = {"category": cat, "latent_area": float(est[i, j]),
                            "percentile_vs_test": percentile_of(est[i, j], natural_est[:, j]),
                            "areas": dict(zip(estimator.categories, (float(x) for x in est[i])))}
        out[space] = rows
    return out


def _nsd_affine(info: Mapping[str, Any]) -> np.ndarray | None:
    """The betas' affine, read from the NSD root's nsdgeneral volume when it is at hand."""
    root = info.get("nsd_root")
    if not root:
        return None
    try:
        import nibabel as nib

        from brainrecon.data.nsd import NSDLayout

        path = NSDLayout(Path(root)).roi_file(int(info.get("subject", 1)), "nsdgeneral")
        return np.asarray(nib.load(str(path)).affine, dtype=np.float64) if Path(path).is_file() else None
    except (OSError, ValueError, TypeError):  # a moved dataset: the shape check still applies
        return None


def explore_rois(
    data: Any,
    fits: Mapping[str, Any],
    extracts: Mapping[str, Any],
    spaces: Mapping[str, Any],
    *,
    rois: Sequence[Any] = ("auto",),
    scaling: Mapping[str, Mapping] | None = None,
    init_from: Mapping[str, str] | None = None,
    seed: int = 0,
    samples: int = 1,
    value: float = 1.0,
    pattern: str = "mask",
    contrast: float = 0.0,
    peer_groups: Sequence[str] = ("category",),
    guidance_scale: float = 0.0,
    guidance_objective: str = "selective",
    guidance_groups: Sequence[str] = ("visual", "eccentricity"),
    models: Sequence[str] | str = "auto",
    clip_path: str = "bundled:clip_small",
    readout_kernel: str = "rbf",
    semantic_estimator: str = "segmenter",
    segmenter_path: str = "bundled:scene_segmenter.safetensors",
    stimulus_deg: float = NSD_STIMULUS_DEG,
    weights: bool = True,
    semantic_pair: Sequence[str] | str | None = "auto",
    device: str = "cpu",
    ceilings: Mapping[str, np.ndarray] | None = None,
    progress: bool = False,
) -> RoiExploration:
    """ROI-optimal images of a run, scored in closed loop (see the module docstring).

    Parameters
    ----------
    data : Artifact
        The run's data artifact (betas, stimuli, ``roi_*.npy``, ``voxel_ijk.npy``).
    fits, extracts : mapping space -> Artifact
        The fit and extract artifacts of every latent space to synthesise.
    spaces : mapping space -> LatentSpace
        The built latent spaces (for decoding).
    rois : sequence
        ROI names, set names, label files or NIfTI paths (:func:`~brainrecon.roi.masks.resolve_rois`);
        ``"auto"``: ``brain_diffuser`` when the NSD ROI files are present, ``icgan`` for GOD flags.
    scaling : mapping, optional
        Per-target overrides of the scaling (``{"vdvae.z": {"norm": 80}}``).
    init_from : mapping, optional
        Chained spaces (``{"versatile": "vdvae"}``), as ``generate.init_from``.
    seed : int
        Decoding seed.
    samples : int
        Images drawn per ROI from a stochastic decoder (seeds ``seed .. seed + samples - 1``).
        The closed loop averages the responses over samples and the energy analysis the energy
        maps (each sample against the baseline of the same seed); the first sample is the one
        shown. Deterministic decoders give identical samples.
    value : float
        Activation of ROI voxels in the synthetic pattern.
    pattern : {"mask", "conditional", "partial"}
        ``mask``: the references' pattern (``value`` in the ROI, 0 elsewhere, optionally with
        ``contrast``); ``conditional``: the brain state expected when the ROI is ``value``
        above its mean, from the training betas; ``partial``: the same with the ROI's peers
        (the other ROIs of its group, for groups in ``peer_groups``) held at their means
        (:func:`~brainrecon.roi.masks.conditional_patterns`).
    contrast : float
        Pattern ``mask`` only: weight in [0, 1] of the peer ROIs, set below their mean
        (:func:`~brainrecon.roi.masks.synthetic_patterns`); 0 is the references' pattern.
    peer_groups : sequence of str
        Groups whose ROIs are set against their peers (by ``contrast`` or ``partial``).
        Default: the category ROIs only; for early visual ROIs, whose neighbours see nearly
        the same part of the field, it moves energy away from the ROI's receptive fields.
    guidance_scale : float
        Encoder guidance (:mod:`brainrecon.roi.guidance`) of the spaces that support it (Versatile
        Diffusion), in units of the noise's RMS per step; 0 (default) decodes the references' images.
    guidance_objective : {"selective", "roi"}
        ``selective``: the ROI's predicted response minus the mean of its group peers'; ``roi``:
        the ROI's alone (BrainDiVE's).
    guidance_groups : sequence of str
        ROI groups that are guided (default V1-V4 and the eccentricity bands; the guiding encoder
        reads low-level features only).
    models : ``"auto"`` or subset of :data:`CLOSED_LOOP_MODELS`
        ``auto``: ``truth`` and ``fitted`` on simulated data, ``fitted`` otherwise.
    clip_path : str
        CLIP used by the semantic estimator and the fitted encoding model's features.
    readout_kernel : {"rbf", "linear"}
        Kernel of the semantic estimator.
    semantic_estimator : {"segmenter", "clip"}
        What reads the category areas of images for the ``truth`` model: ``segmenter`` (default),
        the scene segmenter at ``segmenter_path`` (:mod:`brainrecon.sim.segmenter`), trained on
        other procedural scenes' exact label maps; ``clip``, a kernel readout of the CLIP-small
        embedding fitted on the training stimuli (less accurate, bodies above all). The CLIP
        readout is fitted either way: it reads the ROI latents before generation.
    segmenter_path : str
        Weights of the scene segmenter.
    stimulus_deg : float
        Visual angle of the stimuli (energy analysis).
    weights : bool
        Run the voxel-weight analysis.
    semantic_pair : (semantic key, low-level key), ``"auto"`` or None
    ceilings : mapping space -> (n_test, H, W, 3) uint8, optional
        The run's ceiling images (test stimuli decoded from their true latents). With the true
        model, the semantic estimator is read on them too: its accuracy says whether a
        generator can show each category at all (``generator_ceiling_semantics_r``).
    """
    from tqdm.auto import tqdm

    from brainrecon.decoding.ridge import RidgeDecoder
    from brainrecon.images import to_float_chw

    peer_groups = [peer_groups] if isinstance(peer_groups, str) else [str(g) for g in peer_groups]
    bad = sorted(set(peer_groups) - set(ROI_GROUPS))
    if bad:
        raise ConfigError(f"roi.peer_groups: expected names from {list(ROI_GROUPS)}, got {bad}")
    if semantic_estimator not in ("clip", "segmenter"):
        raise ConfigError(f"roi.semantic_estimator: expected 'clip' or 'segmenter', got {semantic_estimator!r}")
    if pattern not in ("mask", "conditional", "partial"):
        raise ConfigError(f"roi.pattern: expected 'mask', 'conditional' or 'partial', got {pattern!r}")
    if pattern != "mask" and float(contrast) != 0.0:
        raise ConfigError(f"roi.contrast: applies to pattern 'mask' only, got contrast {contrast!r} with pattern "
                          f"{pattern!r}")
    guidance_scale = float(guidance_scale)
    if not np.isfinite(guidance_scale) or guidance_scale < 0:
        raise ConfigError(f"roi.guidance.scale: expected a finite value >= 0, got {guidance_scale!r}")
    if guidance_objective not in GUIDANCE_OBJECTIVES:
        raise ConfigError(f"roi.guidance.objective: expected one of {list(GUIDANCE_OBJECTIVES)}, "
                          f"got {guidance_objective!r}")
    bad = sorted(set(guidance_groups) - set(ROI_GROUPS))
    if bad:
        raise ConfigError(f"roi.guidance.groups: expected names from {list(ROI_GROUPS)}, got {bad}")
    guided = [s for s in spaces if getattr(spaces[s], "supports_guidance", False)] if guidance_scale > 0 else []
    if guidance_scale > 0 and not guided:
        raise ConfigError(f"roi.guidance.scale > 0: no latent space of this run supports encoder guidance "
                          f"({sorted(spaces)}; Versatile Diffusion does)")
    init_from = dict(init_from or {})
    missing = sorted(set(spaces) - set(fits)) + sorted(set(spaces) - set(extracts))
    if missing:
        raise ConfigError(f"explore_rois: no fit/extract artifact for space(s) {sorted(set(missing))}")
    info = data.json("info")
    labels = data_labels(data)
    entries = [rois] if isinstance(rois, (str, os.PathLike)) else list(rois)
    if entries == ["auto"]:
        if {"floc-faces", "prf-visualrois", "prf-eccrois"} <= set(labels):
            entries = ["brain_diffuser"]
        elif {"V1", "LOC", "FFA", "PPA"} <= set(labels):
            entries = ["icgan"]
        else:
            raise ConfigError(
                f"roi.rois: 'auto' found neither NSD ROI files nor GOD ROI flags in the data ({sorted(labels)}); "
                "name the ROIs or give NIfTI masks"
            )
    voxel_ijk = np.asarray(data.array("voxel_ijk")) if data.has("voxel_ijk.npy") else None
    shape = tuple(info["volume_shape"]) if info.get("volume_shape") else None
    restrict = labels["nsdgeneral"] > 0 if "nsdgeneral" in labels else None
    specs, masks = resolve_rois(entries, labels, voxel_ijk=voxel_ijk, volume_shape=shape,
                                affine=_nsd_affine(info), restrict=restrict)
    names = [s.name for s in specs]
    X_train = np.asarray(data.array("X_train"))  # read once: patterns, response correlation, fitted model
    # the group each ROI is set against its peers in (None: no peers, the plain pattern)
    peers_of = [s.group if s.group in peer_groups else None for s in specs]
    if pattern == "mask":
        Q = synthetic_patterns(masks, value=value, restrict=restrict, contrast=contrast, groups=peers_of)
    else:
        Q = conditional_patterns(masks, X_train, value=value, restrict=restrict,
                                 groups=peers_of if pattern == "partial" else None)

    # ---- latents
    decoders: dict[str, RidgeDecoder] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for space in spaces:
        for t in sorted(extracts[space].summary["targets"]):
            key = f"{space}.{t}"
            decoders[key] = RidgeDecoder.load(fits[space].path / t)
            shapes[key] = tuple(extracts[space].array(f"train/{t}").shape[1:])
    scalings = resolve_scalings(shapes, scaling)
    latents: dict[str, dict[str, np.ndarray]] = {s: {} for s in spaces}
    base_latents: dict[str, dict[str, np.ndarray]] = {s: {} for s in spaces}
    for key in tqdm(list(decoders), desc="ROI latents", disable=not progress):
        space, t = key.split(".", 1)
        dec, sc = decoders[key], scalings[key]
        stats = None
        if sc.method in ("paper_vdvae", "train_norm"):
            stats = TargetStats.from_latents(extracts[space].array(f"train/{t}"))
        b = decoder_intercept(dec)
        z = roi_latents(dec, Q, sc, stats=stats, intercept=b, roi_names=names)
        latents[space][t] = z.reshape(len(names), *shapes[key])
        base_latents[space][t] = b.astype(np.float32).reshape(1, *shapes[key])

    # ---- encoder guidance of the spaces that support it (off by default: the references' images)
    guide = None
    if guidance_scale > 0:
        from brainrecon.roi.guidance import EncoderGuide

        guide = EncoderGuide.fit(np.asarray(data.array("stimuli_train")), X_train, masks,
                                 {s.name: s.group for s in specs}, [*names, None], objective=guidance_objective,
                                 guided_groups=list(guidance_groups))
        if not guide.guided_rows().any():
            raise ConfigError(f"roi.guidance.groups {list(guidance_groups)}: none of the ROIs {names} is in them")

    # ---- images (chained like the run); sample k is decoded with seed + k, its chain from the source's sample k
    if int(samples) < 1:
        raise ConfigError(f"roi.samples: expected an integer >= 1, got {samples!r}")
    drawn: dict[str, list[np.ndarray]] = {s: [] for s in spaces}
    drawn_base: dict[str, list[np.ndarray]] = {s: [] for s in spaces}
    order = chain_order(list(spaces), init_from)
    steps = [(k, space) for k in range(int(samples)) for space in order]
    for k, space in tqdm(steps, desc="ROI images", disable=not progress):
        src = init_from.get(space)
        # the baseline rides along as the last row: one decode call per space (diffusion steps cost per call)
        both = {t: np.concatenate([latents[space][t], base_latents[space][t]]) for t in latents[space]}
        init = None if src is None else to_float_chw(np.concatenate([drawn[src][k], drawn_base[src][k]]))
        extra_args = {"guide": guide, "guide_scale": guidance_scale} if space in guided else {}
        out = _to_uint8(spaces[space].decode(both, init=init, seed=seed + k, **extra_args))
        drawn[space].append(out[:-1])
        drawn_base[space].append(out[-1:])
    images = {s: drawn[s][0] for s in spaces}
    baseline = {s: drawn_base[s][0] for s in spaces}

    exploration = RoiExploration(specs, np.stack([masks[n] for n in names]), scalings, latents, images, baseline,
                                 info={"chains": init_from, "seed": int(seed), "samples": int(samples),
                                       "value": float(value), "pattern": str(pattern), "contrast": float(contrast),
                                       "peer_groups": list(peer_groups),
                                       "guidance": None if guide is None else {
                                           "scale": guidance_scale, "objective": str(guidance_objective),
                                           "groups": list(guidance_groups), "spaces": guided,
                                           "encoder": guide.description},
                                       "rois_requested": [str(e) if not isinstance(e, Mapping) else dict(e) for e in entries],
                                       "source": info.get("source")})
    if int(samples) > 1:
        exploration.samples = {s: np.stack(drawn[s]) for s in spaces}
        exploration.baseline_samples = {s: np.stack(drawn_base[s]) for s in spaces}
    scored = exploration.samples or images  # the closed loop averages over samples when there are several
    # how far the training responses themselves tell the ROIs apart (read with the eccentricity ordering)
    exploration.info["roi_response_r"] = roi_response_correlation(
        X_train, {n: masks[n] for n in names}).tolist()

    # ---- closed loop
    is_sim = info.get("source") == "sim" and voxel_ijk is not None and info.get("sim_root")
    if models == "auto":
        models = ["truth", "fitted"] if is_sim else ["fitted"]
    models = [models] if isinstance(models, str) else list(models)
    bad = sorted(set(models) - set(CLOSED_LOOP_MODELS))
    if bad:
        raise ConfigError(f"roi.models: expected a subset of {list(CLOSED_LOOP_MODELS)} or 'auto', got {bad}")
    stim_tr = np.asarray(data.array("stimuli_train"))
    stim_te = np.asarray(data.array("stimuli_test"))
    groups = {s.name: s.group for s in specs}
    clip_features = ClipEmbeddingFeatures(clip_path, device=device)
    if "truth" in models:
        if not is_sim:
            raise ConfigError("roi.models: 'truth' needs simulated data (data.source=sim)")
        from brainrecon.sim.truth import load_truth

        truth = load_truth(Path(info["sim_root"]))
        tr_ids, te_ids = np.asarray(data.array("train_ids")), np.asarray(data.array("test_ids"))
        # the CLIP readout also reads ROI latents before generation (_latent_semantics), whichever reads images
        estimator = SemanticEstimator([clip_features], KernelRidgeReadout(kernel=readout_kernel),
                                      categories=truth.categories).fit(stim_tr, truth.semantics[tr_ids])
        clip_heldout = estimator.score(stim_te, truth.semantics[te_ids])
        if semantic_estimator == "segmenter":
            from brainrecon.sim.segmenter import SegmenterSemantics

            image_estimator: Any = SegmenterSemantics(segmenter_path, device=device, categories=truth.categories)
            heldout = image_estimator.score(stim_te, truth.semantics[te_ids])
        else:
            image_estimator, heldout = estimator, {**clip_heldout, "estimator": "clip_readout"}
        extra: dict[str, Any] = {"semantic_estimator_heldout": heldout, "clip_readout_heldout": clip_heldout}
        if ceilings:
            extra["generator_ceiling_semantics_r"] = {
                s: dict(zip(truth.categories, column_scores(image_estimator(np.asarray(c)).astype(np.float64),
                                                            truth.semantics[te_ids])[0]))
                for s, c in ceilings.items() if len(c) == len(te_ids)
            }
        model = SimulatedResponses.from_sim_root(info["sim_root"], voxel_ijk, image_estimator)
        res = closed_loop(
            model, scored, masks, groups, natural_train=stim_tr, natural_test=stim_te,
            natural_test_semantics=truth.semantics[te_ids], extra=extra,
        )
        res.extra["natural_check"] = _natural_check(res, specs, truth.semantics[te_ids], truth.categories)
        res.extra["roi_latent_semantics"] = _latent_semantics(latents, spaces, clip_features, estimator, specs,
                                                              estimator(stim_te))
        exploration.closed_loop["truth"] = res
        prf_index = model.voxel_index
        retino = [n for n in names if groups[n] in ("visual", "eccentricity")]
        prfs = {n: (truth.prf["x"][prf_index][masks[n]], truth.prf["y"][prf_index][masks[n]],
                    truth.prf["sigma"][prf_index][masks[n]]) for n in retino}
        # where the simulator's voxels actually look: pRFs seen through its pooled features
        from brainrecon.sim.encoding import lowlevel_features

        train_features = lowlevel_features(stim_tr, model.model.spec)
        reference_maps = {
            n: model.model.spatial_sensitivity(train_features, prf_index[masks[n]], size=ENERGY_SIZE).mean(0)
            for n in retino if masks[n].any()
        }
    else:
        prfs, reference_maps = None, None
    if "fitted" in models:
        enc = VoxelwiseEncodingModel([LowLevelFeatures(), clip_features]).fit(stim_tr, X_train)
        heldout = enc.score(stim_te, np.asarray(data.array("X_test")), masks)
        exploration.closed_loop["fitted"] = closed_loop(
            enc, scored, masks, groups, natural_train=stim_tr, natural_test=stim_te,
            extra={"encoding_model_heldout": heldout},
        )

    # ---- energy (every ROI; the retinotopic ones are the ones to read)
    ranges = {s.name: s.ecc_range for s in specs if s.ecc_range is not None}
    for space in spaces:
        if exploration.samples:
            ims = np.stack([to_float_chw(x) for x in exploration.samples[space]])
            base = np.stack([to_float_chw(x) for x in exploration.baseline_samples[space]])
        else:
            ims, base = to_float_chw(images[space]), to_float_chw(baseline[space])
        exploration.energy[space] = energy_analysis(ims, base, names, stimulus_deg=stimulus_deg, prfs=prfs,
                                                    nominal_ranges=ranges, reference_maps=reference_maps,
                                                    size=ENERGY_SIZE)

    # ---- weights
    if weights:
        pair = semantic_pair if semantic_pair in ("auto", None) else tuple(semantic_pair)
        exploration.weights = weight_analysis(decoders, masks, semantic_pair=pair, progress=progress)
    exploration.info["acceptance"] = _json_safe(exploration.summary())
    return exploration



def weights_across_subjects(explorations: Sequence[RoiExploration], alpha: float = 0.008) -> dict[str, Any]:
    """The weight analysis over subjects: per target and for the semantic index, mean, SEM and
    pairwise Welch t-tests between ROIs (:func:`brainrecon.roi.weights.across_subjects`).

    Parameters
    ----------
    explorations : one :class:`RoiExploration` per subject, with the same ROIs and a weight analysis
    alpha : significance threshold reported with the tests (IC-GAN: 0.008)
    """
    from brainrecon.roi.weights import across_subjects

    if not explorations or any(e.weights is None for e in explorations):
        raise ConfigError("weights_across_subjects: every exploration needs a weight analysis (roi.weights=true)")
    first = explorations[0].weights
    out: dict[str, Any] = {"n_subjects": len(explorations), "targets": {}}
    for target in first.percentiles:
        out["targets"][target] = across_subjects([e.weights.percentiles[target] for e in explorations], alpha)
    if first.semantic_index is not None:
        out["semantic_pair"] = list(first.semantic_pair)
        out["semantic_index"] = across_subjects([e.weights.semantic_index for e in explorations], alpha)
    return out
