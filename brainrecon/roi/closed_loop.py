"""Closed-loop validation: does an ROI-optimal image drive its ROI?

None of the reference methods checks this. Each ROI-optimal image is passed through an
encoding model (images -> voxel responses); every voxel's predicted response is z-scored with
the mean and standard deviation of the same model's predictions for the natural training
stimuli, and averaged over each ROI's voxels. For each ROI image the table reports the target
ROI's response against the other ROIs of its group (``selective``: the target responds most)
and against the distribution over the natural test stimuli (``percentile``).

Encoding models
---------------
:class:`SimulatedResponses` (simulated data)
    The simulator's true model (:class:`brainrecon.sim.encoding.EncodingModel`). Its semantic
    features are the fraction of the image covered by each object category, which is known
    only for the simulated stimuli; for any other image it has to be **estimated**. The roi
    stage's default reader is a scene segmenter trained on other scenes' exact label maps
    (:class:`brainrecon.sim.segmenter.SegmenterSemantics`); :class:`SemanticEstimator` is the
    alternative, a kernel ridge readout (:class:`KernelRidgeReadout`) from the image's CLIP-small
    embedding, fitted on the training stimuli whose category areas are known. Either is scored
    on the test stimuli (``heldout_``). The closed loop on simulated data
    therefore uses the true low-level model and an *estimated* semantic input; natural stimuli
    are passed through the same estimator so that both sides are scored alike (their
    percentiles with the true category areas are reported too).
:class:`VoxelwiseEncodingModel` (any data)
    A voxel-wise ridge encoding model fitted by brainrecon on the training split of the same
    run: image features (Gabor energy and local luminance/colour, :class:`LowLevelFeatures`; the
    CLIP-small image embedding, :class:`ClipEmbeddingFeatures`) -> z-scored betas, one alpha per
    voxel by generalised cross-validation. Its held-out accuracy is reported with the table.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from brainrecon.errors import ConfigError, DataFormatError, ShapeMismatchError

__all__ = [
    "ImageFeatures",
    "LowLevelFeatures",
    "ClipEmbeddingFeatures",
    "KernelRidgeReadout",
    "SemanticEstimator",
    "SimulatedResponses",
    "VoxelwiseEncodingModel",
    "ResponseModel",
    "ClosedLoopResult",
    "closed_loop",
    "response_scale",
    "roi_means",
    "roi_response_correlation",
    "percentile_of",
    "column_scores",
]


def _check_images(images: np.ndarray, what: str = "images") -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ShapeMismatchError(what, "(n, H, W, 3) uint8", f"{arr.shape} {arr.dtype}",
                                 hint="convert float (n, 3, H, W) images with brainrecon.images.to_uint8_hwc")
    return arr


# ------------------------------------------------------------------------------ features
class ImageFeatures(Protocol):
    """Images ``(n, H, W, 3)`` uint8 -> features ``(n, d)`` float32."""

    name: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class LowLevelFeatures:
    """Pooled Gabor energy (3 scales x 4 orientations) and rectified local luminance/colour.

    The pixel-computed block of the simulator's feature space
    (:func:`brainrecon.sim.encoding.lowlevel_features`, 1,728 values): generic early-visual
    features, usable on any images.
    """

    name = "lowlevel"

    def __init__(self) -> None:
        from brainrecon.sim.encoding import FeatureSpec

        self.spec = FeatureSpec()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        from brainrecon.sim.encoding import lowlevel_features

        return lowlevel_features(_check_images(images), self.spec).astype(np.float32)


class ClipEmbeddingFeatures:
    """L2-normalised CLIP image embeddings (``ClipEncoder.embed_images``).

    Parameters
    ----------
    clip_path : str
        CLIP folder; ``bundled:clip_small`` (default) is the small CLIP the project trained on
        the simulated scenes (64-d); a published Versatile Diffusion folder gives CLIP ViT-L/14.
    device : str
    batch_size : int
    """

    name = "clip"

    def __init__(self, clip_path: str = "bundled:clip_small", device: str = "cpu", batch_size: int = 64) -> None:
        self.clip_path = clip_path
        self.device = device
        self.batch_size = int(batch_size)
        self._clip: Any = None

    @property
    def clip(self) -> Any:
        if self._clip is None:
            from brainrecon.latents.versatile.clip import load_clip
            from brainrecon.paths import resolve_weights_path

            self._clip = load_clip(str(resolve_weights_path(self.clip_path)), device=self.device)
        return self._clip

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.clip.embed_images(_check_images(images), batch_size=self.batch_size).astype(np.float32)


def stack_features(extractors: Sequence[ImageFeatures], images: np.ndarray) -> np.ndarray:
    """Concatenated features of several extractors, ``(n, sum d)`` float32."""
    if not extractors:
        raise ConfigError("image features: expected at least one feature extractor")
    return np.concatenate([np.asarray(f(images), dtype=np.float32) for f in extractors], axis=1)


# ------------------------------------------------------------------------------ readout
class KernelRidgeReadout:
    """Kernel ridge regression with hyper-parameters chosen by exact leave-one-out on training data.

    Features are standardised with training statistics. For each candidate kernel width the
    training kernel is eigendecomposed once, and every candidate alpha is scored by its exact
    leave-one-out error ``r_i / (1 - h_ii)`` (summed over outputs); the best pair is kept.

    Parameters
    ----------
    kernel : {"rbf", "linear"}
        ``rbf``: ``exp(-gamma ||a - b||^2)`` on standardised features; ``linear``: ``a . b / d``.
    alphas : sequence of float
        Candidate ridge penalties.
    gammas : sequence of float
        Candidate RBF widths in units of ``1 / n_features`` (ignored for ``linear``).
    nonnegative : bool
        Clip predictions at 0 (category areas cannot be negative).
    """

    def __init__(
        self,
        kernel: str = "rbf",
        alphas: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
        gammas: Sequence[float] = (0.1, 0.3, 1.0, 3.0),
        nonnegative: bool = True,
    ) -> None:
        if kernel not in ("rbf", "linear"):
            raise ConfigError(f"readout kernel: expected 'rbf' or 'linear', got {kernel!r}")
        if not alphas or any(not a > 0 for a in alphas):
            raise ConfigError(f"readout alphas: expected positive values, got {list(alphas)}")
        if kernel == "rbf" and (not gammas or any(not g > 0 for g in gammas)):
            raise ConfigError(f"readout gammas: expected positive values, got {list(gammas)}")
        self.kernel = kernel
        self.alphas = tuple(float(a) for a in alphas)
        self.gammas = tuple(float(g) for g in gammas) if kernel == "rbf" else (1.0,)
        self.nonnegative = nonnegative

    def _kernel(self, A: np.ndarray, B: np.ndarray, gamma: float) -> np.ndarray:
        d = A.shape[1]
        if self.kernel == "linear":
            return A @ B.T / d
        sq = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * A @ B.T
        return np.exp(-(gamma / d) * np.maximum(sq, 0.0))

    def fit(self, F: np.ndarray, Y: np.ndarray) -> KernelRidgeReadout:
        """Fit on features ``F`` (n, d) and targets ``Y`` (n, k)."""
        F = np.asarray(F, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64)
        if F.ndim != 2 or Y.ndim != 2 or len(F) != len(Y):
            raise ShapeMismatchError("readout features/targets", "(n, d) and (n, k) with equal n", (F.shape, Y.shape))
        self.f_mean_, self.f_std_ = F.mean(0), F.std(0)
        self.f_std_[self.f_std_ == 0] = 1.0
        Fs = (F - self.f_mean_) / self.f_std_
        self.y_mean_ = Y.mean(0)
        Yc = Y - self.y_mean_
        best = (math.inf, None, None, None)
        scores = {}
        for g in self.gammas:
            s, U = np.linalg.eigh(self._kernel(Fs, Fs, g))
            s = np.maximum(s, 0.0)
            C = U.T @ Yc
            for a in self.alphas:
                shrink = s / (s + a)
                resid = Yc - U @ (shrink[:, None] * C)
                h = np.einsum("ij,j,ij->i", U, shrink, U)
                loo = resid / np.maximum(1.0 - h, 1e-9)[:, None]
                mse = float((loo**2).mean())
                scores[(g, a)] = mse
                if mse < best[0]:
                    best = (mse, g, a, U @ ((1.0 / (s + a))[:, None] * C))
        self.loo_mse_, self.gamma_, self.alpha_, self.dual_coef_ = best
        self.cv_scores_ = {f"gamma={g:g},alpha={a:g}": v for (g, a), v in scores.items()}
        self.train_features_ = Fs
        return self

    def predict(self, F: np.ndarray) -> np.ndarray:
        """Predictions ``(m, k)`` for features ``F`` (m, d)."""
        if not hasattr(self, "dual_coef_"):
            raise ConfigError("KernelRidgeReadout is not fitted yet: call fit(F, Y) first")
        F = np.asarray(F, dtype=np.float64)
        if F.ndim != 2 or F.shape[1] != self.train_features_.shape[1]:
            raise ShapeMismatchError("readout features", f"(m, {self.train_features_.shape[1]})", F.shape)
        out = self._kernel((F - self.f_mean_) / self.f_std_, self.train_features_, self.gamma_) @ self.dual_coef_ + self.y_mean_
        return np.maximum(out, 0.0) if self.nonnegative else out


def column_scores(pred: np.ndarray, true: np.ndarray) -> tuple[list[float], list[float]]:
    """Pearson r and R^2 of each column of ``pred`` against ``true`` (NaN where undefined)."""
    r, r2 = [], []
    for j in range(true.shape[1]):
        p, t = pred[:, j], true[:, j]
        r.append(float(np.corrcoef(p, t)[0, 1]) if p.std() > 0 and t.std() > 0 else float("nan"))
        sst = float(((t - t.mean()) ** 2).sum())
        r2.append(1.0 - float(((t - p) ** 2).sum()) / sst if sst > 0 else float("nan"))
    return r, r2


class SemanticEstimator:
    """Category areas of any image, read out from image features (see the module docstring).

    Parameters
    ----------
    features : sequence of ImageFeatures
        Default: the CLIP-small embedding.
    readout : KernelRidgeReadout, optional
        Default: RBF kernel ridge, hyper-parameters by leave-one-out.
    categories : sequence of str
        Names of the semantic columns (reported).

    Attributes
    ----------
    heldout_ : dict
        ``{"r": [...], "r2": [...], "categories": [...], "n": int}`` on held-out images, set by
        :meth:`score`.
    """

    def __init__(
        self,
        features: Sequence[ImageFeatures] | None = None,
        readout: KernelRidgeReadout | None = None,
        categories: Sequence[str] = (),
    ) -> None:
        self.features = list(features) if features is not None else [ClipEmbeddingFeatures()]
        self.readout = readout if readout is not None else KernelRidgeReadout()
        self.categories = list(categories)
        self.heldout_: dict[str, Any] | None = None

    def fit(self, images: np.ndarray, semantics: np.ndarray) -> SemanticEstimator:
        """Fit on images with known category areas ``semantics`` (n, n_categories)."""
        self.readout.fit(stack_features(self.features, images), np.asarray(semantics, dtype=np.float64))
        if not self.categories:
            self.categories = [f"c{j}" for j in range(np.asarray(semantics).shape[1])]
        return self

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Estimated category areas ``(n, n_categories)`` float32."""
        return self.readout.predict(stack_features(self.features, images)).astype(np.float32)

    def score(self, images: np.ndarray, semantics: np.ndarray) -> dict[str, Any]:
        """Held-out accuracy per category (Pearson r and R^2); stored in ``heldout_``."""
        r, r2 = column_scores(self(images).astype(np.float64), np.asarray(semantics, dtype=np.float64))
        self.heldout_ = {"categories": self.categories, "r": r, "r2": r2, "n": int(len(images)),
                         "features": [f.name for f in self.features], "kernel": self.readout.kernel,
                         "alpha": self.readout.alpha_, "gamma": self.readout.gamma_}
        return self.heldout_


# ------------------------------------------------------------------------------ encoding models
class ResponseModel(Protocol):
    """Images -> predicted voxel responses ``(n, n_voxels)`` in the data's voxel order."""

    description: str

    def predict(self, images: np.ndarray) -> np.ndarray: ...


class SimulatedResponses:
    """The simulator's true encoding model with estimated category content.

    Parameters
    ----------
    model : brainrecon.sim.encoding.EncodingModel
    voxel_index : (n_voxels,) int
        Model voxel of each column of the data's betas.
    semantics : callable, optional
        Images -> category areas (a fitted :class:`SemanticEstimator`). ``None`` sets them to 0
        (the low-level part of the model only).
    """

    def __init__(self, model: Any, voxel_index: np.ndarray, semantics: Callable[[np.ndarray], np.ndarray] | None) -> None:
        self.model = model
        self.voxel_index = np.asarray(voxel_index, dtype=np.int64)
        self.semantics = semantics
        self.description = (
            "simulator's true encoding model; category areas "
            + (f"estimated from the image ({getattr(semantics, 'name', type(semantics).__name__)})"
               if semantics is not None else "set to 0")
        )

    @classmethod
    def from_sim_root(
        cls, sim_root: str | os.PathLike, voxel_ijk: np.ndarray, semantics: Callable[[np.ndarray], np.ndarray] | None
    ) -> SimulatedResponses:
        """Load the true model of the simulation under ``sim_root`` and map its voxels to ``voxel_ijk``."""
        from brainrecon.sim.encoding import EncodingModel
        from brainrecon.sim.layout import truth_dir

        model = EncodingModel.load(truth_dir(Path(sim_root)) / "model")
        lookup = {tuple(v): i for i, v in enumerate(np.asarray(model.voxels["ijk"]).tolist())}
        try:
            idx = np.array([lookup[tuple(v)] for v in np.asarray(voxel_ijk).tolist()], dtype=np.int64)
        except KeyError as exc:
            raise DataFormatError(
                f"{sim_root}: voxel {exc.args[0]} of the betas is not a voxel of the simulation's encoding model"
            ) from None
        return cls(model, idx, semantics)

    def predict(self, images: np.ndarray, semantics: np.ndarray | None = None) -> np.ndarray:
        """Noise-free responses ``(n, n_voxels)`` float64; ``semantics`` overrides the estimator."""
        images = _check_images(images)
        if semantics is None:
            semantics = (self.semantics(images) if self.semantics is not None
                         else np.zeros((len(images), len(self.model.spec.categories)), np.float32))
        return self.model.predict(images, semantics=semantics)[:, self.voxel_index].astype(np.float64)


class VoxelwiseEncodingModel:
    """Ridge from image features to every voxel, fitted on a run's training split.

    Parameters
    ----------
    features : sequence of ImageFeatures
        Default: :class:`LowLevelFeatures` and :class:`ClipEmbeddingFeatures`.
    alphas : sequence of float
        Candidate alphas, one chosen per voxel by generalised cross-validation.
    """

    def __init__(self, features: Sequence[ImageFeatures] | None = None,
                 alphas: Sequence[float] = tuple(10.0**k for k in range(-1, 6))) -> None:
        self.features = list(features) if features is not None else [LowLevelFeatures(), ClipEmbeddingFeatures()]
        self.alphas = [float(a) for a in alphas]
        self.description = "voxel-wise ridge encoding model (" + " + ".join(f.name for f in self.features) + \
            " features -> betas), fitted on the training split"
        self.heldout_: dict[str, Any] | None = None

    def _design(self, images: np.ndarray) -> np.ndarray:
        F = stack_features(self.features, images).astype(np.float64)
        return ((F - self.f_mean_) / self.f_std_).astype(np.float32)

    def fit(self, images: np.ndarray, X: np.ndarray) -> VoxelwiseEncodingModel:
        """Fit features of ``images`` (n, H, W, 3) to betas ``X`` (n, n_voxels)."""
        from brainrecon.decoding.ridge import RidgeDecoder

        F = stack_features(self.features, _check_images(images)).astype(np.float64)
        X = np.asarray(X, dtype=np.float32)
        if len(F) != len(X):
            raise ShapeMismatchError("encoding model betas rows (one per image)", len(F), len(X))
        self.f_mean_, self.f_std_ = F.mean(0), F.std(0)
        self.f_std_[self.f_std_ == 0] = 1.0
        # constant columns (e.g. a colour channel absent from grey stimuli) carry nothing
        self.ridge_ = RidgeDecoder(self.alphas, cv="gcv", on_constant_features="ignore").fit(
            ((F - self.f_mean_) / self.f_std_).astype(np.float32), np.ascontiguousarray(X)
        )
        return self

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Predicted betas ``(n, n_voxels)`` float64."""
        if not hasattr(self, "ridge_"):
            raise ConfigError("VoxelwiseEncodingModel is not fitted yet: call fit(images, X) first")
        return self.ridge_.predict(self._design(_check_images(images))).astype(np.float64)

    def score(self, images: np.ndarray, X: np.ndarray, masks: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Held-out Pearson r per voxel (median overall and per ROI); stored in ``heldout_``."""
        from brainrecon.metrics.brain import rowwise_pearson

        r = rowwise_pearson(self.predict(images).T, np.asarray(X, dtype=np.float64).T)
        out = {"median_r": float(np.nanmedian(r)), "n": int(len(images))}
        if masks:
            out["median_r_per_roi"] = {k: float(np.nanmedian(r[m])) for k, m in masks.items()}
        self.heldout_ = out
        return out


# ------------------------------------------------------------------------------ the loop
def roi_means(Z: np.ndarray, masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """Mean over each ROI's voxels of ``Z`` (n, n_voxels): ``(n, n_rois)``."""
    Z = np.asarray(Z, dtype=np.float64)
    cols = []
    for name, m in masks.items():
        m = np.asarray(m, dtype=bool)
        if m.shape != (Z.shape[1],):
            raise ShapeMismatchError(f"ROI {name!r} mask", (Z.shape[1],), m.shape)
        cols.append(Z[:, m].mean(1))
    return np.stack(cols, axis=1)


def roi_response_correlation(X: np.ndarray, masks: Mapping[str, np.ndarray]) -> np.ndarray:
    """Pearson r between ROIs' mean responses over trials: ``(n_rois, n_rois)``, in ``masks`` order.

    Each voxel of ``X`` (n_trials, n_voxels) is z-scored over trials before the ROI means are taken,
    so that every voxel weighs alike. Two ROIs whose means correlate near 1 respond to nearly the
    same stimuli, so the images synthesised from their masks can differ only through the little
    the two do not share, whatever the generator.

    Raises
    ------
    ShapeMismatchError
        If ``X`` is not 2-D with at least 3 trials, or a mask does not match its voxels.
    ConfigError
        If a mask selects no voxel.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 3:
        raise ShapeMismatchError("ROI responses", "(n_trials >= 3, n_voxels)", X.shape)
    empty = [n for n, m in masks.items() if not np.asarray(m, dtype=bool).any()]
    if empty:
        raise ConfigError(f"ROI response correlation: ROIs {empty} select no voxel")
    sd = X.std(0)
    Z = (X - X.mean(0)) / np.where(sd > 0, sd, 1.0)  # constant voxels contribute 0, not NaN
    return np.corrcoef(roi_means(Z, masks).T)


def percentile_of(value: float, reference: np.ndarray) -> float:
    """Percent of ``reference`` below ``value`` (ties count half), in [0, 100]."""
    ref = np.asarray(reference, dtype=np.float64)
    if ref.size == 0:
        return float("nan")
    return float(100.0 * ((ref < value).sum() + 0.5 * (ref == value).sum()) / ref.size)


@dataclass
class ClosedLoopResult:
    """ROI responses to ROI-optimal images and to natural test stimuli, under one encoding model.

    Attributes
    ----------
    model : str
        Description of the encoding model.
    rois : list of str
        ROI names (columns of every matrix; also the rows of ``responses``: image of ROI i).
    groups : dict of ROI -> group
    n_voxels : dict of ROI -> voxel count
    responses : dict of image set (space) -> (n_rois, n_rois)
        ``responses[s][i, j]``: mean z-scored response of ROI j to the ROI-optimal image of ROI i.
    natural : (n_test, n_rois)
        ROI responses to the natural test stimuli (same model, same semantic estimator).
    natural_true : (n_test, n_rois), optional
        The same with the true category areas (simulated data only).
    extra : dict
        Held-out accuracy of the model's parts and other notes.
    sample_responses : dict of image set -> (n_samples, n_rois, n_rois)
        Per-sample responses when a stochastic decoder drew several images per ROI;
        ``responses`` is then their mean over samples.
    """

    model: str
    rois: list[str]
    groups: dict[str, str]
    n_voxels: dict[str, int]
    responses: dict[str, np.ndarray]
    natural: np.ndarray
    natural_true: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    sample_responses: dict[str, np.ndarray] = field(default_factory=dict)

    def table(self, space: str) -> list[dict[str, Any]]:
        """One row per ROI image of ``space``.

        Columns: ``roi``, ``group``, ``n_voxels``; ``response`` (the ROI's mean z-scored response to
        its own image); ``best_other_roi``/``best_other_response``/``margin`` (the strongest other ROI
        of the same group on that image); ``selective`` (the ROI beats its group), ``selective_all``
        (it beats every ROI); ``specific`` (the ROI responds more to its own image than to its peers'
        images); ``percentile`` (of the response among the natural test stimuli; ties count half),
        ``natural_mean``, ``natural_p90``; with true category areas, ``percentile_true_semantics``.
        With several samples per ROI (``sample_responses``) the drive is the mean over samples, and
        ``samples``, ``samples_selective`` (fraction of samples in which the ROI beats its group) and
        ``samples_percentile_min`` (the lowest per-sample percentile) are added.
        """
        if space not in self.responses:
            raise ConfigError(f"closed loop: no images for {space!r}; have {sorted(self.responses)}")
        M = self.responses[space]
        rows = []
        for i, roi in enumerate(self.rois):
            group = self.groups[roi]
            peers = [j for j, r in enumerate(self.rois) if self.groups[r] == group and j != i]
            others = [j for j in range(len(self.rois)) if j != i]
            best_peer = max(peers, key=lambda j: M[i, j]) if peers else None
            row = {
                "roi": roi,
                "group": group,
                "n_voxels": int(self.n_voxels[roi]),
                "response": float(M[i, i]),
                "best_other_roi": None if best_peer is None else self.rois[best_peer],
                "best_other_response": None if best_peer is None else float(M[i, best_peer]),
                "margin": None if best_peer is None else float(M[i, i] - M[i, best_peer]),
                "selective": None if best_peer is None else bool(M[i, i] > M[i, best_peer]),
                "selective_all": bool(all(M[i, i] > M[i, j] for j in others)) if others else None,
                # column view: does this ROI respond more to its own image than to its peers' images?
                "specific": None if not peers else bool(all(M[i, i] > M[j, i] for j in peers)),
                "percentile": percentile_of(M[i, i], self.natural[:, i]),
                "natural_mean": float(self.natural[:, i].mean()),
                "natural_p90": float(np.percentile(self.natural[:, i], 90)),
            }
            if self.natural_true is not None:
                row["percentile_true_semantics"] = percentile_of(M[i, i], self.natural_true[:, i])
            S = self.sample_responses.get(space)
            if S is not None:
                row["samples"] = int(len(S))
                row["samples_selective"] = (None if not peers else
                                            float(np.mean([S[k, i, i] > S[k, i, peers].max() for k in range(len(S))])))
                row["samples_percentile_min"] = min(percentile_of(S[k, i, i], self.natural[:, i]) for k in range(len(S)))
            rows.append(row)
        return rows

    def format_table(self, space: str) -> str:
        """:meth:`table` as fixed-width text (for terminals and notebooks)."""

        def fmt(v: Any) -> str:
            if isinstance(v, bool) or v is None:
                return {True: "yes", False: "no", None: "-"}[v]
            return f"{v:.2f}" if isinstance(v, float) else str(v)

        rows = self.table(space)
        cols = [("roi", "ROI"), ("group", "group"), ("response", "drive"), ("best_other_roi", "best other in group"),
                ("best_other_response", "its drive"), ("selective", "selective"), ("percentile", "pct vs test")]
        if rows and "percentile_true_semantics" in rows[0]:
            cols.append(("percentile_true_semantics", "pct (true sem.)"))
        cells = [[h for _, h in cols]] + [[fmt(r.get(k)) for k, _ in cols] for r in rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
        return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(cols))).rstrip() for c in cells)

    def acceptance(self, space: str, group: str = "category", min_percentile: float = 90.0) -> dict[str, Any]:
        """Whether every ROI of ``group`` is selective within its group and above ``min_percentile``."""
        rows = [r for r in self.table(space) if r["group"] == group]
        per = {r["roi"]: bool(r["selective"]) and r["percentile"] >= min_percentile for r in rows}
        return {"space": space, "group": group, "min_percentile": min_percentile, "per_roi": per,
                "passed": bool(rows) and all(per.values())}

    # ----------------------------------------------------------------- persistence
    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model, "rois": self.rois, "groups": self.groups, "n_voxels": self.n_voxels,
            "responses": {k: v.tolist() for k, v in self.responses.items()},
            "natural": self.natural.tolist(),
            "natural_true": None if self.natural_true is None else self.natural_true.tolist(),
            "extra": self.extra,
            "sample_responses": {k: v.tolist() for k, v in self.sample_responses.items()},
            "tables": {k: self.table(k) for k in self.responses},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ClosedLoopResult:
        try:
            return cls(
                model=d["model"], rois=list(d["rois"]), groups=dict(d["groups"]), n_voxels=dict(d["n_voxels"]),
                responses={k: np.asarray(v, dtype=np.float64) for k, v in d["responses"].items()},
                natural=np.asarray(d["natural"], dtype=np.float64),
                natural_true=None if d.get("natural_true") is None else np.asarray(d["natural_true"], dtype=np.float64),
                extra=dict(d.get("extra") or {}),
                sample_responses={k: np.asarray(v, dtype=np.float64) for k, v in (d.get("sample_responses") or {}).items()},
            )
        except KeyError as exc:
            raise DataFormatError(f"closed-loop JSON: missing key {exc.args[0]!r}") from None

    def save(self, folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
        """Write ``<name>.json`` (everything) and ``<name>.csv`` (the tables, one row per space and ROI)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        jpath, cpath = folder / f"{name}.json", folder / f"{name}.csv"
        jpath.write_text(json.dumps(_finite(self.to_json()), indent=1))
        rows = [{"images": s, **r} for s in self.responses for r in self.table(s)]
        fields = list(dict.fromkeys(k for r in rows for k in r))  # spaces may differ in optional columns
        with open(cpath, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields, restval="")
            w.writeheader()
            for r in rows:
                w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()})
        return jpath, cpath


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def response_scale(model: ResponseModel, natural_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel mean and std of ``model``'s predictions for natural training stimuli.

    Every closed-loop response is z-scored with them (a constant voxel gets std 1), so that a
    drive reads as "standard deviations above the voxel's response to natural images".
    """
    ref = model.predict(_check_images(natural_train, "natural training stimuli"))
    mu, sd = ref.mean(0), ref.std(0)
    sd[sd == 0] = 1.0
    return mu, sd


def closed_loop(
    model: ResponseModel,
    roi_images: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    groups: Mapping[str, str],
    *,
    natural_train: np.ndarray,
    natural_test: np.ndarray,
    natural_test_semantics: np.ndarray | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ClosedLoopResult:
    """Score ROI-optimal images with an encoding model (see the module docstring).

    Parameters
    ----------
    model : ResponseModel
    roi_images : mapping of image set (space) -> (n_rois, H, W, 3) or (n_samples, n_rois, H, W, 3) uint8
        Row i is the ROI-optimal image of the i-th ROI of ``masks``. With several samples per ROI
        (a stochastic decoder), the responses are averaged over samples and kept per sample too.
    masks : mapping of ROI name -> (n_voxels,) bool
    groups : mapping of ROI name -> group
    natural_train : (n_train, H, W, 3) uint8
        Natural stimuli whose predicted responses define each voxel's mean and std.
    natural_test : (n_test, H, W, 3) uint8
        Natural stimuli the ROI images are ranked against.
    natural_test_semantics : (n_test, n_categories), optional
        True category areas of the test stimuli (simulated data with :class:`SimulatedResponses`).
    """
    names = list(masks)
    stacks = {}
    for s, imgs in roi_images.items():
        arr = np.asarray(imgs)
        stack = arr if arr.ndim == 5 else arr[None]
        if stack.ndim != 5 or stack.shape[1] != len(names):
            raise ShapeMismatchError(f"ROI images of {s!r} (one per ROI)",
                                     f"({len(names)}, H, W, 3) or (samples, {len(names)}, H, W, 3)", arr.shape)
        stacks[s] = stack
    mu, sd = response_scale(model, natural_train)

    def z(R: np.ndarray) -> np.ndarray:
        return (R - mu) / sd

    natural = roi_means(z(model.predict(_check_images(natural_test, "natural test stimuli"))), masks)
    natural_true = None
    if natural_test_semantics is not None:
        if not isinstance(model, SimulatedResponses):
            raise ConfigError("natural_test_semantics: only the simulator's model (SimulatedResponses) takes category areas")
        natural_true = roi_means(z(model.predict(natural_test, semantics=natural_test_semantics)), masks)
    per_sample = {
        s: np.stack([roi_means(z(model.predict(_check_images(x, f"ROI images of {s!r}"))), masks) for x in stack])
        for s, stack in stacks.items()
    }
    return ClosedLoopResult(
        model=model.description, rois=names, groups={k: str(groups.get(k, "custom")) for k in names},
        n_voxels={k: int(np.asarray(m).sum()) for k, m in masks.items()},
        responses={s: R.mean(0) for s, R in per_sample.items()},
        natural=natural, natural_true=natural_true, extra=dict(extra or {}),
        sample_responses={s: R for s, R in per_sample.items() if len(R) > 1},
    )
