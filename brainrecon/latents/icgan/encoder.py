"""Instance feature extractors of IC-GAN: SwAV ResNet-50 (published) and a CLIP vision tower (small model).

SwAV: the network is torchvision's ResNet with bottleneck blocks and the classifier removed, which
is how both SwAV (``hubconf.py``) and IC-GAN load the published SwAV weights. (SwAV's own
model class pads by 1 and then convolves with padding 2 in the stem; torchvision pads by 3:
the same zero-padded input.) The feature is the 2048-d global average pool, divided by its
L2 norm, as IC-GAN does before conditioning the generator.

Input handling follows IC-GAN: images in [0, 1] at the generator's resolution (256 px) are
normalised with the ImageNet mean and std and then resized to 224 px with bicubic
interpolation and ``align_corners=True``.

CLIP (:class:`ClipInstanceEncoder`): the small configuration the project trains on its simulated
scenes conditions on the L2-normalised pooled embedding of the project's small CLIP instead
(``instance_encoder: clip`` in the space's configuration; ``conf/latents/icgan_small.yaml``,
``scripts/README.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from brainrecon.errors import ShapeMismatchError
from brainrecon.latents.icgan.config import SwAVConfig


class SwAVEncoder(ResNet):
    """ResNet (bottleneck) trunk without ``fc``; ``state_dict()`` keys are torchvision's minus ``fc.*``.

    Parameters
    ----------
    cfg : SwAVConfig
        ``SwAVConfig.resnet50()`` for the published weights.
    """

    description = "L2-normalised SwAV ResNet-50 instance feature"

    def __init__(self, cfg: SwAVConfig):
        super().__init__(Bottleneck, list(cfg.layers), width_per_group=cfg.width_per_group)
        self.cfg = cfg
        self.fc = nn.Identity()  # the SwAV file has no classifier; its projection head is not used
        self.register_buffer("_mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images (n, 3, H, W) in [0, 1] -> normalised network input (n, 3, S, S), S = ``input_size``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ShapeMismatchError("icgan encoder images", "(n, 3, H, W) in [0, 1]", tuple(images.shape))
        x = (images - self._mean) / self._std
        s = self.cfg.input_size
        if tuple(x.shape[2:]) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=True)
        return x

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input -> pooled features (n, 2048), before L2 normalisation."""
        return super().forward(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (n, 3, H, W) in [0, 1] -> L2-normalised instance features (n, 2048)."""
        feats = self.pooled(self.preprocess(images))
        # The reference divides by the norm without an epsilon; one guards all-zero features only.
        return F.normalize(feats, dim=1, eps=1e-12)


@dataclass(frozen=True)
class ClipInstanceConfig:
    """What :class:`ClipInstanceEncoder` exposes of its CLIP vision tower.

    Attributes
    ----------
    feature_dim : int
        Size of the instance feature (the tower's ``projection_dim``).
    input_size : int
        Side of the images the tower reads.
    """

    feature_dim: int
    input_size: int


class ClipInstanceEncoder(nn.Module):
    """Instance features from a CLIP vision tower: the L2-normalised pooled image embedding.

    The substitute for SwAV in the small IC-GAN the project trains on its simulated scenes
    (``scripts/train_icgan_small.py``, ``conf/latents/icgan_small.yaml``): SwAV ResNet-50 is
    self-supervised on ImageNet and too large for the laptop-CPU configuration, while the
    project's small CLIP (``bundled:clip_small``) is trained on the same kind of scenes. The
    feature is the one :meth:`~brainrecon.latents.versatile.clip.ClipEncoder.embed_images`
    returns (``image_embeds`` divided by its norm), computed here from float images so that it
    is differentiable (the inversion's optional perceptual term, the training script's feature
    loss). Same interface as :class:`SwAVEncoder`: ``cfg.feature_dim``, :meth:`preprocess`,
    :meth:`pooled`, ``forward``.

    Parameters
    ----------
    vision_model : transformers.CLIPVisionModelWithProjection
        The vision tower (e.g. ``load_clip("bundled:clip_small").vision_model``); frozen here.
    clip_fingerprint : dict, optional
        The CLIP's ``fingerprint()``.
    """

    description = "L2-normalised CLIP image embedding (instance feature)"

    def __init__(self, vision_model: nn.Module, clip_fingerprint: dict[str, Any] | None = None):
        super().__init__()
        self.vision_model = vision_model.eval().requires_grad_(False)
        #: Identity of the CLIP (``VersatileClip.fingerprint()``), when known: diagnostics compare it
        #: with their own CLIP's before reading instance features as that CLIP's image embeddings.
        self.clip_fingerprint = clip_fingerprint
        vc = vision_model.config
        self.cfg = ClipInstanceConfig(feature_dim=int(vc.projection_dim), input_size=int(vc.image_size))

    def train(self, mode: bool = True) -> ClipInstanceEncoder:
        # The tower is a fixed feature extractor: keep it in evaluation mode (no dropout) always.
        super().train(mode)
        self.vision_model.eval()
        return self

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images (n, 3, H, W) in [0, 1] -> CLIP input (n, 3, S, S), as the project's CLIP preprocesses them."""
        from brainrecon.latents.versatile.clip import preprocess_images

        if images.ndim != 4 or images.shape[1] != 3:
            raise ShapeMismatchError("icgan clip encoder images", "(n, 3, H, W) in [0, 1]", tuple(images.shape))
        return preprocess_images(images.float(), self.cfg.input_size)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed input -> projected class-token embedding (n, feature_dim), before L2 normalisation."""
        return self.vision_model(pixel_values=x).image_embeds

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (n, 3, H, W) in [0, 1] -> L2-normalised instance features (n, feature_dim)."""
        return F.normalize(self.pooled(self.preprocess(images)), dim=1, eps=1e-12)
