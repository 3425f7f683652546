"""Encoder guidance: steer a diffusion decoder towards images an encoding model predicts an ROI prefers.

The references' ROI images (:mod:`brainrecon.roi.synthesis`) decode a synthetic fMRI pattern through
linear decoders, so they can only hold what is linear in the decoders' targets. Early visual
cortex is driven by local contrast whatever its sign, and a linear image of a band of such voxels
holds little of where they look (``docs/roi.md``). BrainDiVE (Luo et al., NeurIPS 2023) asks the
question the other way round: it guides a diffusion model with the gradient of a voxel-wise
encoding model's predicted ROI activation. This module gives the roi stage that option, with
three choices of ours:

* **the encoder** is a voxel-wise ridge from the low-level features of
  :class:`~brainrecon.roi.closed_loop.LowLevelFeatures` (pooled Gabor energy and rectified local
  luminance/colour) to the run's training betas, fitted on the training split only, and
  re-implemented in torch (:class:`LowLevelTorchFeatures`, equal to the numpy features to float
  precision) so that it has a gradient. BrainDiVE's encoder reads CLIP features; a low-level
  encoder is what retinotopic ROIs need, so guidance applies to the ROI groups of ``groups``
  (default: V1-V4 and the eccentricity bands);
* **the objective** is either the ROI's mean predicted response, z-scored per voxel over the
  natural training stimuli (``"roi"``, BrainDiVE's), or that minus the mean of the other ROIs of its
  group (``"selective"``, default): neighbouring bands and areas respond to nearly the same
  stimuli, and maximising one of them alone adds contrast everywhere;
* **the step**: each DDIM step's noise prediction is moved against the gradient of the objective
  with respect to the current latent, taken through the one-step estimate of the clean latent and
  the VAE decoder; the gradient is normalised per image to unit root-mean-square, so ``scale``
  reads in units of the noise's own size (``eps <- eps - scale * g / rms(g)``).

The simulated experiment's true encoding model is never used here: the closed loop judges the
guided images with it. On simulated data the low-level features are those of the simulator's
feature space, so the encoder family is right by construction; on real data it is an assumption,
as in every encoding-model-guided method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError, ShapeMismatchError

__all__ = ["GUIDANCE_OBJECTIVES", "LowLevelTorchFeatures", "EncoderGuide"]

#: Objectives of :class:`EncoderGuide`.
GUIDANCE_OBJECTIVES: tuple[str, ...] = ("selective", "roi")


class LowLevelTorchFeatures:
    """Differentiable :func:`brainrecon.sim.encoding.lowlevel_features` (torch; same column order).

    Images are reduced to the feature space's ``model_size`` by box averaging, which is what the
    numpy features' box-filter resize does for sizes that are a multiple of it (other sizes: an
    antialiased bilinear resize, close to it but not equal).
    """

    def __init__(self, spec: Any = None) -> None:
        import torch

        from brainrecon.sim.encoding import LUMCOL_OFFSETS, LUMCOL_WEIGHTS, FeatureSpec, gabor_bank

        self.spec = spec if spec is not None else FeatureSpec()
        self.bank = torch.from_numpy(gabor_bank(self.spec))
        self.lumcol_weights = torch.from_numpy(np.asarray(LUMCOL_WEIGHTS, dtype=np.float32))
        self.lumcol_offsets = torch.from_numpy(np.asarray(LUMCOL_OFFSETS, dtype=np.float32))

    @property
    def n_features(self) -> int:
        return int(self.spec.n_lowlevel)

    def __call__(self, images: Any) -> Any:
        """Features ``(b, n_features)`` of images ``(b, 3, H, W)`` in [0, 1] (a float tensor)."""
        import torch
        import torch.nn.functional as F

        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise ShapeMismatchError("guidance images", "(b, 3, S, S)", tuple(images.shape))
        spec, n = self.spec, int(self.spec.model_size)
        x = images.float()
        size = int(x.shape[-1])
        if size != n:
            x = F.avg_pool2d(x, size // n) if size % n == 0 else F.interpolate(
                x, size=(n, n), mode="bilinear", antialias=True, align_corners=False)
        b = x.shape[0]
        bank = self.bank.to(x.device)
        lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
        lum = lum - lum.mean(dim=(1, 2), keepdim=True)
        resp = torch.fft.ifft2(torch.fft.fft2(lum)[:, None] * bank[None]).abs()
        cols = []
        k_ori = spec.n_orientations
        for k, g in enumerate(spec.grids):
            cols.append(F.avg_pool2d(resp[:, k * k_ori:(k + 1) * k_ori], n // g).reshape(b, -1))
        signed = torch.einsum("bchw,kc->bkhw", x, self.lumcol_weights.to(x.device))
        signed = signed + self.lumcol_offsets.to(x.device)[None, :, None, None]
        m = F.avg_pool2d(signed, n // spec.lumcol_grid).reshape(b, 3, -1)
        for k in range(3):
            cols += [m[:, k].clamp(min=0.0), (-m[:, k]).clamp(min=0.0)]
        return torch.cat(cols, dim=1)


class EncoderGuide:
    """Per-row objectives of a low-level voxel-wise encoding model, differentiable in the images.

    Build it with :meth:`fit`; then ``guide(images, rows)`` returns the objective of each image,
    ``rows`` saying which ROI (row of the decoded batch) each image is for. Rows with no ROI to
    guide (the baseline, ROIs outside ``groups``) have a zero objective, hence no guidance.

    Parameters
    ----------
    weights : (n_rows, n_features) array
        Linear objective of each row on the raw low-level features.
    description : str
    """

    def __init__(self, weights: np.ndarray, description: str = "") -> None:
        self.weights = np.asarray(weights, dtype=np.float32)
        if self.weights.ndim != 2:
            raise ShapeMismatchError("guidance weights", "(n_rows, n_features)", self.weights.shape)
        self.features = LowLevelTorchFeatures()
        if self.weights.shape[1] != self.features.n_features:
            raise ShapeMismatchError("guidance weights columns", self.features.n_features, self.weights.shape[1])
        self.description = description

    @classmethod
    def fit(
        cls,
        images: np.ndarray,
        X: np.ndarray,
        masks: Mapping[str, np.ndarray],
        groups: Mapping[str, str],
        rows: Sequence[str | None],
        *,
        objective: str = "selective",
        guided_groups: Sequence[str] = ("visual", "eccentricity"),
    ) -> EncoderGuide:
        """Fit the encoder on training stimuli and betas; one objective per row of ``rows``.

        Parameters
        ----------
        images : (n, H, W, 3) uint8
            Training stimuli.
        X : (n, n_voxels)
            Their betas (z-scored per voxel, as the decoders were fitted on).
        masks : mapping ROI -> (n_voxels,) bool
        groups : mapping ROI -> group
        rows : one ROI name per decoded row (None: not guided, e.g. the baseline)
        objective : ``"selective"`` or ``"roi"`` (module docstring)
        guided_groups : groups whose ROIs are guided; others get no guidance
        """
        from brainrecon.roi.closed_loop import LowLevelFeatures, VoxelwiseEncodingModel

        if objective not in GUIDANCE_OBJECTIVES:
            raise ConfigError(f"roi.guidance.objective: expected one of {list(GUIDANCE_OBJECTIVES)}, got {objective!r}")
        unknown = [r for r in rows if r is not None and r not in masks]
        if unknown:
            raise ConfigError(f"encoder guidance: rows name ROIs without a mask: {unknown}")
        enc = VoxelwiseEncodingModel([LowLevelFeatures()]).fit(images, X)
        # the spread of the in-sample predictions is that of the predictions for the training stimuli
        # (closed_loop.response_scale) without extracting their features again
        _, sd = enc.ridge_.compute_train_prediction_stats()
        sd = np.where(sd > 0, sd, 1.0).astype(np.float64)
        coef = np.asarray(enc.ridge_.coef_, dtype=np.float64)  # (features, voxels), on standardised features
        if coef.shape[1] != len(sd):
            raise ShapeMismatchError("encoder weights (voxels)", len(sd), coef.shape[1])
        # d(mean z-scored response of the ROI) / d(raw features), once per ROI
        vectors = {name: (coef[:, np.asarray(m, dtype=bool)] / sd[np.asarray(m, dtype=bool)]).mean(1) / enc.f_std_
                   for name, m in masks.items()}

        W = np.zeros((len(rows), coef.shape[0]))
        for i, name in enumerate(rows):
            if name is None or groups.get(name) not in set(guided_groups):
                continue
            W[i] = vectors[name]
            peers = [p for p in masks if p != name and groups.get(p) == groups[name]]
            if objective == "selective" and peers:
                W[i] -= np.mean([vectors[p] for p in peers], axis=0)
        desc = (f"low-level voxel-wise ridge encoder (fitted on {len(images)} training stimuli), objective "
                f"{objective!r}, groups {list(guided_groups)}")
        return cls(W, desc)

    @property
    def n_rows(self) -> int:
        return int(self.weights.shape[0])

    def guided_rows(self) -> np.ndarray:
        """Boolean (n_rows,): rows with a non-zero objective."""
        return np.abs(self.weights).sum(1) > 0

    def __call__(self, images: Any, rows: Any) -> Any:
        """Objective ``(b,)`` of images ``(b, 3, H, W)`` in [0, 1]; ``rows`` (b,) indexes :attr:`weights`."""
        import torch

        W = torch.from_numpy(self.weights).to(images.device)[torch.as_tensor(rows, device=images.device)]
        return (self.features(images) * W).sum(1)

    def objective_numpy(self, images: np.ndarray, rows: Sequence[int]) -> np.ndarray:
        """The objective of uint8 ``(b, H, W, 3)`` or float ``(b, 3, H, W)`` images, without gradient."""
        import torch

        from brainrecon.images import to_float_chw

        arr = np.asarray(images)
        x = to_float_chw(arr) if arr.dtype == np.uint8 else arr.astype(np.float32)
        with torch.no_grad():
            return self(torch.from_numpy(np.ascontiguousarray(x)), np.asarray(rows)).numpy().astype(np.float64)
