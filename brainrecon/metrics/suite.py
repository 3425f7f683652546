"""Evaluate reconstructions with every available metric under a named preset.

A *preset* fixes the preprocessing, because the published numbers depend on it
(methods guide §5):

``brain_diffuser``
    Low-level metrics (PixCorr, SSIM, MSE) at 425x425 (bicubic, as PIL's default
    resize of the 512-px reconstructions); every feature network at 224x224;
    EfficientNet-B1 with torchvision's IMAGENET1K_V1 weights (``pretrained=True`` in
    torchvision 0.13).
``mindeye``
    Both sets first resized to 256x256; low-level metrics after a bilinear resize to
    425; AlexNet at 256, Inception at 342, CLIP at 224, EfficientNet-B1 at 255 with
    torchvision's DEFAULT (IMAGENET1K_V2) weights, SwAV at 224.
``native``
    No resizing for the low-level metrics (ground truth and reconstructions must
    have the same size, e.g. 28x28 digits); feature networks at 224.

Every preset adds "EffNet-Lite0 2-way" and "EffNet-Lite0 distance" (224 px), which
are not part of the published suite but run on every machine, and "CLIP-small 2-way"
(64 px), the image embedding of the small CLIP the project trained on its simulated
scenes: a semantic metric for the simulated experiment when the published CLIP is absent.

Statistics: every number comes with a percentile bootstrap CI over images and a
one-sided permutation p-value against "reconstructions do not correspond to their
images". Feature metrics use the exact permutation test on the N x N correlation
matrix. For PixCorr, SSIM and MSE an N x N matrix is too costly (SSIM of 10^6
pairs), so their null distribution is *approximated*: the metric is computed on a
pool of random mismatched pairs (``null_pairs``, default min(N, 250)) and the null of
the mean is built by drawing N values from that pool ``n_perm`` times (pairs of one
real permutation are not independent; this approximation ignores that).
Retrieval metrics use ``retrieval_perm`` permutations (default 200), each of which
repeats the 30 random candidate sets. Entries state which
test produced their p-value.

A backbone whose weights file is absent yields entries with ``unavailable =
"unavailable: <path looked for>"`` and no value: nothing is ever computed on random
weights.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError, MissingWeightsError, ShapeMismatchError
from brainrecon.metrics import identification as ident
from brainrecon.metrics import lowlevel, perceptual


# --------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """Preprocessing of one published evaluation protocol.

    Attributes
    ----------
    name : str
    description : str
    pre_resize : int or None
        Side both image sets are resized to before anything else (MindEye: 256).
    lowlevel_size : int or None
        Side for PixCorr/SSIM/MSE; None keeps the native size (sets must match).
    lowlevel_mode : str
        Interpolation for the low-level resize ("bicubic" or "bilinear").
    feature_sizes : dict
        Input side of each backbone.
    effnet_b1_weights : str
        "v1" or "v2": which torchvision EfficientNet-B1 checkpoint.
    """

    name: str
    description: str
    pre_resize: int | None
    lowlevel_size: int | None
    lowlevel_mode: str
    feature_sizes: Mapping[str, int]
    effnet_b1_weights: str


PRESETS: dict[str, Preset] = {
    "brain_diffuser": Preset(
        name="brain_diffuser",
        description="Brain-Diffuser: PixCorr/SSIM at 425 px (bicubic), all networks at 224 px, EffNet-B1 V1 weights",
        pre_resize=None,
        lowlevel_size=425,
        lowlevel_mode="bicubic",
        feature_sizes={"alexnet": 224, "inception_v3": 224, "clip_vit_l14": 224, "efficientnet_b1": 224,
                       "swav_resnet50": 224, "effnet_lite0": 224, "clip_small": 64},
        effnet_b1_weights="v1",
    ),
    "mindeye": Preset(
        name="mindeye",
        description=("MindEye: all images to 256 px first; PixCorr/SSIM at 425 px (bilinear); AlexNet 256, "
                     "Inception 342, CLIP 224, EffNet-B1 255 (DEFAULT=V2 weights), SwAV 224"),
        pre_resize=256,
        lowlevel_size=425,
        lowlevel_mode="bilinear",
        feature_sizes={"alexnet": 256, "inception_v3": 342, "clip_vit_l14": 224, "efficientnet_b1": 255,
                       "swav_resnet50": 224, "effnet_lite0": 224, "clip_small": 64},
        effnet_b1_weights="v2",
    ),
    "native": Preset(
        name="native",
        description="PixCorr/SSIM/MSE at the images' own size (no resize); all networks at 224 px",
        pre_resize=None,
        lowlevel_size=None,
        lowlevel_mode="bilinear",
        feature_sizes={"alexnet": 224, "inception_v3": 224, "clip_vit_l14": 224, "efficientnet_b1": 224,
                       "swav_resnet50": 224, "effnet_lite0": 224, "clip_small": 64},
        effnet_b1_weights="v1",
    ),
}


@dataclass(frozen=True)
class FeatureMetric:
    """A metric computed on one layer of one backbone."""

    name: str
    backbone: str
    layer: str
    kind: str  # "two_way" or "distance"
    description: str


FEATURE_METRICS: tuple[FeatureMetric, ...] = (
    FeatureMetric("AlexNet(2) 2-way", "alexnet", "features.4", "two_way", "AlexNet features[4] (ReLU after conv2)"),
    FeatureMetric("AlexNet(5) 2-way", "alexnet", "features.11", "two_way", "AlexNet features[11] (ReLU after conv5)"),
    FeatureMetric("Inception 2-way", "inception_v3", "avgpool", "two_way", "Inception v3 avgpool (2048)"),
    FeatureMetric("CLIP 2-way", "clip_vit_l14", "image_embeds", "two_way", "CLIP ViT-L/14 image embedding (768)"),
    FeatureMetric("EffNet-B distance", "efficientnet_b1", "avgpool", "distance", "EfficientNet-B1 avgpool (1280)"),
    FeatureMetric("SwAV distance", "swav_resnet50", "avgpool", "distance", "SwAV ResNet-50 avgpool (2048)"),
    FeatureMetric("EffNet-Lite0 2-way", "effnet_lite0", "avgpool", "two_way",
                  "EfficientNet-Lite0 avgpool (1280), extra metric, not in the published suite"),
    FeatureMetric("EffNet-Lite0 distance", "effnet_lite0", "avgpool", "distance",
                  "EfficientNet-Lite0 avgpool (1280), extra metric, not in the published suite"),
    FeatureMetric("CLIP-small 2-way", "clip_small", "image_embeds", "two_way",
                  "image embedding of the small CLIP the project trained on simulated scenes "
                  "(scripts/train_clip_small.py; bundled:clip_small, one fixed yardstick for every simulated "
                  "experiment); extra metric, meaningful for simulated scenes only"),
)
LOWLEVEL_METRICS: dict[str, tuple[bool, str]] = {
    "PixCorr": (True, "Pearson r of flattened RGB pixels"),
    "SSIM": (True, "grayscale SSIM, Gaussian sigma 1.5, population covariance, data_range 1"),
    "MSE": (False, "mean squared error of RGB pixels in [0, 1]"),
}
ALL_METRICS = tuple(LOWLEVEL_METRICS) + tuple(m.name for m in FEATURE_METRICS)


# --------------------------------------------------------------------------- results
@dataclass
class MetricValue:
    """One metric of one method.

    Attributes
    ----------
    name : str
    mean : float or None
        Mean over images; None when unavailable.
    ci : (float, float) or None
        Bootstrap confidence interval of the mean.
    p_value : float or None
        One-sided permutation p-value (see ``p_method``).
    per_image : ndarray or None, shape (n,)
    higher_is_better : bool
    chance : float or None
        Theoretical chance level (0.5 for two-way identification).
    null_mean : float or None
        Mean of the permutation null distribution (empirical chance).
    p_method : str
    unavailable : str or None
        ``"unavailable: <path looked for>"`` when the metric could not be computed.
    description : str
    """

    name: str
    mean: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    per_image: np.ndarray | None
    higher_is_better: bool
    chance: float | None = None
    null_mean: float | None = None
    p_method: str = ""
    unavailable: str | None = None
    description: str = ""

    @property
    def available(self) -> bool:
        """True when the metric has a value."""
        return self.unavailable is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no per-image values)."""
        return {
            "mean": self.mean,
            "ci_low": None if self.ci is None else self.ci[0],
            "ci_high": None if self.ci is None else self.ci[1],
            "p_value": self.p_value,
            "p_method": self.p_method,
            "null_mean": self.null_mean,
            "chance": self.chance,
            "higher_is_better": self.higher_is_better,
            "n": None if self.per_image is None else int(np.isfinite(self.per_image).sum()),
            "unavailable": self.unavailable,
            "description": self.description,
        }


@dataclass
class SuiteResult:
    """All metrics of one set of reconstructions.

    Attributes
    ----------
    preset : str
    n_images : int
    metrics : dict of str to MetricValue
        In a stable order: low-level, feature metrics, latent metrics.
    settings : dict
        Statistics settings (n_boot, n_perm, ci_level, seed, null_pairs) and the preset description.
    image_ids : list of str
        One identifier per image (row of ``per_image.csv``).
    """

    preset: str
    n_images: int
    metrics: dict[str, MetricValue]
    settings: dict[str, Any] = field(default_factory=dict)
    image_ids: list[str] = field(default_factory=list)

    def available(self) -> dict[str, MetricValue]:
        """The metrics that have a value."""
        return {k: v for k, v in self.metrics.items() if v.available}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: preset, settings and one entry per metric."""
        return {
            "preset": self.preset,
            "n_images": self.n_images,
            "settings": self.settings,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
        }


# --------------------------------------------------------------------------- backbone cache
_BACKBONE_CACHE: dict[tuple, Any] = {}


def clear_backbone_cache() -> None:
    """Forget loaded backbones (they are kept between calls to save the loading time)."""
    _BACKBONE_CACHE.clear()


def _get_module(name: str, root: str | os.PathLike | None, effnet_b1_weights: str):  # noqa: ANN202
    path = perceptual.resolve_weights(name, root=root, effnet_b1_weights=effnet_b1_weights)
    key = (name, str(path))
    if key not in _BACKBONE_CACHE:
        _BACKBONE_CACHE[key] = perceptual.load_backbone(name, root=root, effnet_b1_weights=effnet_b1_weights)
    return _BACKBONE_CACHE[key]


# --------------------------------------------------------------------------- helpers
def _tested(
    name: str, t: ident.TestedMetric, *, higher: bool, chance: float | None, p_method: str, description: str
) -> MetricValue:
    return MetricValue(name=name, mean=t.mean, ci=t.ci, p_value=t.p_value, per_image=t.per_image,
                       higher_is_better=higher, chance=chance, null_mean=t.null_mean, p_method=p_method,
                       description=description)


def _unavailable(name: str, reason: str, *, higher: bool, description: str) -> MetricValue:
    return MetricValue(name=name, mean=None, ci=None, p_value=None, per_image=None, higher_is_better=higher,
                       unavailable=f"unavailable: {reason}", description=description)


def _lowlevel_values(
    gt: np.ndarray, recon: np.ndarray, preset: Preset, batch_size: int, null_pairs: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """PixCorr, SSIM and MSE of matched pairs, and of ``null_pairs`` random mismatched pairs.

    Images are processed in random batches, resized per batch so that memory stays
    bounded; mismatched pairs are taken inside a batch (image k with reconstruction
    k + 1 of the same random batch), so they cost no extra resizing.
    """
    n = len(gt)
    rng = np.random.default_rng(seed + 7)
    order = rng.permutation(n)
    vals = {k: np.full(n, np.nan) for k in LOWLEVEL_METRICS}
    pool: dict[str, list[np.ndarray]] = {k: [] for k in LOWLEVEL_METRICS}
    n_pool = 0
    for s in range(0, n, batch_size):
        idx = np.sort(order[s : s + batch_size])  # sorted: contiguous-ish reads
        a, b = gt[idx], recon[idx]
        if preset.lowlevel_size is not None:
            a = lowlevel.resize_images(a, preset.lowlevel_size, mode=preset.lowlevel_mode)
            b = lowlevel.resize_images(b, preset.lowlevel_size, mode=preset.lowlevel_mode)
        elif a.shape != b.shape:
            raise ShapeMismatchError("reconstructions (preset 'native' does not resize)", a.shape[1:], b.shape[1:])
        ga, gb = lowlevel.to_grayscale(a), lowlevel.to_grayscale(b)
        vals["PixCorr"][idx] = lowlevel.pixcorr_unchecked(a, b)
        vals["SSIM"][idx] = lowlevel.ssim_gray(ga, gb)
        vals["MSE"][idx] = lowlevel.mse_unchecked(a, b)
        m = min(len(idx), null_pairs - n_pool) if len(idx) > 1 else 0
        if m > 0:
            shift = np.roll(np.arange(len(idx)), -1)[:m]  # partner k + 1, never k itself
            pool["PixCorr"].append(lowlevel.pixcorr_unchecked(a[:m], b[shift]))
            pool["SSIM"].append(lowlevel.ssim_gray(ga[:m], gb[shift]))
            pool["MSE"].append(lowlevel.mse_unchecked(a[:m], b[shift]))
            n_pool += m
    return vals, {k: np.concatenate(v) if v else np.empty(0) for k, v in pool.items()}


def _check_inputs(
    stimuli: np.ndarray, recons: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    stimuli = lowlevel.check_images(stimuli, "stimuli")
    if len(stimuli) < 2:
        raise ShapeMismatchError("number of stimuli", ">= 2", len(stimuli))
    checked = {}
    for method, r in recons.items():
        checked[method] = lowlevel.check_images(r, f"reconstructions[{method!r}]")
        if len(checked[method]) != len(stimuli):
            raise ShapeMismatchError(f"reconstructions[{method!r}] count", len(stimuli), len(checked[method]))
    return stimuli, checked


# --------------------------------------------------------------------------- evaluation
def evaluate_methods(
    stimuli: np.ndarray,
    reconstructions: Mapping[str, np.ndarray],
    *,
    preset: str = "brain_diffuser",
    latents: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]] | None = None,
    metrics: Sequence[str] | None = None,
    weights_root: str | os.PathLike | None = None,
    n_boot: int = 1000,
    n_perm: int = 1000,
    null_pairs: int | None = None,
    ci_level: float = 0.95,
    retrieval_candidates: int = 300,
    retrieval_repeats: int = 30,
    retrieval_perm: int = 200,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "cpu",
    image_ids: Sequence[str] | None = None,
    progress: bool | None = None,
) -> dict[str, SuiteResult]:
    """Evaluate several methods' reconstructions of the same stimuli.

    Ground-truth features are computed once per backbone and shared by all methods.

    Parameters
    ----------
    stimuli : ndarray, shape (n, 3, H, W), float in [0, 1]
        Ground-truth images, in the order of the reconstructions.
    reconstructions : mapping of str to ndarray (n, 3, h, w)
        One image set per method (sizes may differ from the stimuli; the preset resizes).
    preset : {"brain_diffuser", "mindeye", "native"}
    latents : mapping, optional
        ``{method: {key: (Z_hat, Z)}}`` predicted and true latents; adds "Latent 2-way (key)",
        "Image retrieval top-1 (key)" and "Brain retrieval top-1 (key)".
    metrics : sequence of str, optional
        Subset of :data:`ALL_METRICS` to compute (default all); latent metrics always run
        when latents are given.
    weights_root : path, optional
        Root of the published checkpoints (default :func:`brainrecon.paths.weights_root`).
    n_boot, n_perm : int
        Bootstrap resamples and permutations (0 disables p-values).
    null_pairs : int, optional
        Size of the mismatched-pair pool of the low-level null (default min(n, 250), at most n;
        0 disables their p-values).
    ci_level : float
    retrieval_candidates, retrieval_repeats : int
        MindEye's retrieval protocol (300 candidates, 30 repeats).
    retrieval_perm : int
        Permutations of the retrieval p-values (each costs the 30 repeats; at most ``n_perm``).
    seed : int
        Seed of every random draw (bootstrap, permutations, pools).
    batch_size : int
    device : str
        Torch device of the backbones.
    image_ids : sequence of str, optional
        Names of the images for ``per_image.csv`` (default "0", "1", ...).
    progress : bool, optional
        Show tqdm bars (default: when stderr is a terminal).

    Returns
    -------
    dict of str to SuiteResult
    """
    if preset not in PRESETS:
        raise ConfigError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    P = PRESETS[preset]
    wanted = list(ALL_METRICS) if metrics is None else list(metrics)
    unknown = sorted(set(wanted) - set(ALL_METRICS))
    if unknown:
        raise ConfigError(f"metrics: unknown {unknown}; expected names from {list(ALL_METRICS)}")
    if progress is None:
        import sys

        progress = sys.stderr.isatty()
    stimuli, recons = _check_inputs(stimuli, reconstructions)
    n = len(stimuli)
    ids = [str(k) for k in range(n)] if image_ids is None else [str(s) for s in image_ids]
    if len(ids) != n:
        raise ShapeMismatchError("image_ids", n, len(ids))
    if P.pre_resize is not None:
        stimuli = lowlevel.resize_images(stimuli, P.pre_resize)
        recons = {m: lowlevel.resize_images(r, P.pre_resize) for m, r in recons.items()}
    null_pairs = min(n, 250) if null_pairs is None else min(null_pairs, n)
    stats = dict(n_boot=n_boot, n_perm=n_perm, level=ci_level, seed=seed)
    settings = {
        "preset_description": P.description,
        "n_boot": n_boot,
        "n_perm": n_perm,
        "null_pairs": null_pairs,
        "ci_level": ci_level,
        "seed": seed,
        "retrieval_candidates": retrieval_candidates,
        "retrieval_repeats": retrieval_repeats,
        "retrieval_perm": min(retrieval_perm, n_perm),
    }
    per_method: dict[str, dict[str, MetricValue]] = {m: {} for m in recons}
    timings: dict[str, float] = {}

    # ---- low-level metrics
    ll_wanted = [k for k in LOWLEVEL_METRICS if k in wanted]
    if ll_wanted:
        t0 = time.perf_counter()
        for m, r in recons.items():
            vals, pool = _lowlevel_values(stimuli, r, P, batch_size, null_pairs, seed)
            for k in ll_wanted:
                higher, desc = LOWLEVEL_METRICS[k]
                per_method[m][k] = _lowlevel_value(k, vals[k], pool[k] if len(pool[k]) else None, higher, desc,
                                                   n_perm=n_perm, seed=seed, n_boot=n_boot, level=ci_level)
        timings["lowlevel"] = time.perf_counter() - t0

    # ---- feature metrics, one backbone at a time
    by_backbone: dict[str, list[FeatureMetric]] = {}
    for fm in FEATURE_METRICS:
        if fm.name in wanted:
            by_backbone.setdefault(fm.backbone, []).append(fm)
    for backbone, fms in by_backbone.items():
        t0 = time.perf_counter()
        try:
            module = _get_module(backbone, weights_root, P.effnet_b1_weights)
        except MissingWeightsError as exc:
            for m in recons:
                for fm in fms:
                    per_method[m][fm.name] = _unavailable(fm.name, str(exc.path), higher=fm.kind == "two_way",
                                                          description=fm.description)
            continue
        mean, std = perceptual.normalization(backbone)
        extractor = perceptual.FeatureExtractor(backbone, module, P.feature_sizes[backbone], mean, std, device)
        gt_feats = extractor(stimuli, batch_size=batch_size, progress=progress)
        for m, r in recons.items():
            rec_feats = extractor(r, batch_size=batch_size, progress=progress)
            for fm in fms:
                C = ident.correlation_matrix(gt_feats[fm.layer], rec_feats[fm.layer])
                per_method[m][fm.name] = _matrix_value(fm.name, C, fm.kind, fm.description, stats)
        timings[backbone] = time.perf_counter() - t0

    # ---- latent metrics
    t0 = time.perf_counter()
    for m, spaces in (latents or {}).items():
        if m not in per_method:
            raise ConfigError(f"latents: method {m!r} has no reconstructions; methods are {sorted(per_method)}")
        for key, (Z_hat, Z) in spaces.items():
            Z_hat, Z = np.asarray(Z_hat).reshape(len(Z_hat), -1), np.asarray(Z).reshape(len(Z), -1)
            if Z_hat.shape != Z.shape or len(Z) != n:
                raise ShapeMismatchError(f"latents[{m!r}][{key!r}] (Z_hat vs Z)", (n, Z.shape[1]), Z_hat.shape)
            C = ident.correlation_matrix(Z, Z_hat)
            name = f"Latent 2-way ({key})"
            per_method[m][name] = _matrix_value(name, C, "two_way", f"two-way identification of predicted {key}",
                                                stats)
            S = ident.cosine_matrix(Z, Z_hat)  # rows: true, columns: predicted
            k = min(retrieval_candidates, n)
            for direction, label in (("image", "Image retrieval"), ("brain", "Brain retrieval")):
                # image retrieval: each prediction (column) picks among true rows -> use S.T rows
                def metric(M: np.ndarray, d: str = direction) -> np.ndarray:
                    return ident.retrieval_from_matrix(M.T, d, retrieval_candidates, retrieval_repeats, seed)

                n_ret = min(retrieval_perm, n_perm)
                t = ident.permutation_test(S, metric, higher_is_better=True, **{**stats, "n_perm": n_ret})
                rname = f"{label} top-1 ({key})"
                per_method[m][rname] = _tested(rname, t, higher=True, chance=1.0 / k,
                                               p_method=f"exact permutation ({n_ret})",
                                               description=f"{label.lower()}, cosine, {k} candidates")

    if latents:
        timings["latents"] = time.perf_counter() - t0
    settings["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    order = list(ALL_METRICS)
    results = {}
    for m, vals in per_method.items():
        ordered = {k: vals[k] for k in order if k in vals}
        ordered.update({k: v for k, v in vals.items() if k not in ordered})
        results[m] = SuiteResult(preset=preset, n_images=n, metrics=ordered, settings=dict(settings), image_ids=ids)
    return results


def _matrix_value(name: str, C: np.ndarray, kind: str, description: str, stats: dict) -> MetricValue:
    if kind == "two_way":
        t = ident.permutation_test(C, ident.two_way_from_matrix, higher_is_better=True, **stats)
        return _tested(name, t, higher=True, chance=0.5, p_method=f"exact permutation ({stats['n_perm']})",
                       description=description)
    t = ident.permutation_test(C, ident.distance_from_matrix, higher_is_better=False, **stats)
    return _tested(name, t, higher=False, chance=None, p_method=f"exact permutation ({stats['n_perm']})",
                   description=description)


def _lowlevel_value(
    name: str, values: np.ndarray, pool: np.ndarray | None, higher: bool, description: str, *,
    n_perm: int, seed: int, n_boot: int, level: float,
) -> MetricValue:
    mean = float(np.nanmean(values))
    ci = ident.bootstrap_ci(values, n_boot=n_boot, level=level, seed=seed)
    p = null_mean = None
    p_method = "none"
    if pool is not None and n_perm > 0:
        pool = pool[np.isfinite(pool)]
        rng = np.random.default_rng(seed + 3)
        null = pool[rng.integers(0, len(pool), size=(n_perm, len(values)))].mean(1)
        p = ident.permutation_pvalue(mean, null, higher_is_better=higher)
        null_mean = float(null.mean())
        p_method = f"approximate permutation ({n_perm}) from {len(pool)} mismatched pairs"
    return MetricValue(name=name, mean=mean, ci=ci, p_value=p, per_image=np.asarray(values, dtype=np.float64),
                       higher_is_better=higher, null_mean=null_mean, p_method=p_method, description=description)


def evaluate(
    stimuli: np.ndarray,
    reconstructions: np.ndarray,
    *,
    latents: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    **kwargs: Any,
) -> SuiteResult:
    """Evaluate one set of reconstructions; see :func:`evaluate_methods` for the parameters.

    ``latents`` is ``{key: (Z_hat, Z)}`` here.
    """
    res = evaluate_methods(stimuli, {"recon": reconstructions},
                           latents=None if latents is None else {"recon": latents}, **kwargs)
    return res["recon"]
