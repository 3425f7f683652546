"""BigBiGAN's encoder: a pre-activation (v2) ResNet-50 and an MLP head predicting ``z``.

The TF-Hub module's ``encode`` signature takes 256x256 RGB in [-1, 1] and returns
``z_mean`` and ``z_sample`` (120-d), the pooled ResNet features ``avepool_feat`` and
``bn_crelu_feat``. No PyTorch conversion of the encoder has been published (see
``docs/bigbigan.md``), so this module defines the project's converted layout; which parts
of it are verified facts and which are our reading of the paper is stated there.

Layout (``state_dict`` keys): ``stem.weight``; per unit
``stages.<s>.<u>.{preact,bn1,bn2}.{weight,bias,running_mean,running_var}``,
``stages.<s>.<u>.{conv1,conv2,conv3}.weight`` and, for the first unit of every stage,
``stages.<s>.<u>.shortcut.weight``; ``post_norm.*``; ``head.<k>.{weight,bias}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from brainrecon.errors import ShapeMismatchError
from brainrecon.latents.bigbigan.config import EncoderConfig
from brainrecon.latents.bigbigan.layers import FrozenBatchNorm2d

__all__ = ["BigBiGANEncoder", "BottleneckV2"]


class BottleneckV2(nn.Module):
    """Pre-activation bottleneck unit: BN-ReLU, then 1x1 / 3x3 (strided) / 1x1 convolutions.

    The projection shortcut (first unit of a stage) reads the pre-activated input, as in
    He et al. (2016), "Identity mappings in deep residual networks".
    """

    def __init__(self, c_in: int, width: int, c_out: int, stride: int, project: bool, eps: float) -> None:
        super().__init__()
        self.preact = FrozenBatchNorm2d(c_in, eps=eps)
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(width, eps=eps)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(width, eps=eps)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.preact(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        h = F.relu(self.bn1(self.conv1(pre)))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.conv3(h) + skip


class BigBiGANEncoder(nn.Module):
    """Images ``(n, 3, S, S)`` in [-1, 1] -> ``(mean, scale)`` of the posterior over ``z``.

    Parameters
    ----------
    cfg : EncoderConfig
        Architecture (``EncoderConfig.published()``: ResNet-50, 4096-wide 3-hidden-layer MLP).
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        eps = cfg.bn_eps
        self.stem = nn.Conv2d(3, cfg.stem_width, 7, stride=2, padding=3, bias=False)
        stages = []
        c_in = cfg.stem_width
        for s, (width, n_units) in enumerate(zip(cfg.widths, cfg.blocks)):
            c_out = width * cfg.expansion
            units = []
            for u in range(n_units):
                stride = 2 if (u == 0 and s > 0) else 1  # the first stage follows the stem's max pool
                units.append(BottleneckV2(c_in, width, c_out, stride, project=(u == 0), eps=eps))
                c_in = c_out
            stages.append(nn.Sequential(*units))
        self.stages = nn.ModuleList(stages)
        self.post_norm = FrozenBatchNorm2d(c_in, eps=eps)
        sizes = [cfg.feature_dim, *cfg.mlp, 2 * cfg.dim_z]
        self.head = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled ResNet features ``(n, feature_dim)`` (``avepool_feat``)."""
        s = self.cfg.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise ShapeMismatchError("bigbigan encoder input", f"(n, 3, {s}, {s}) in [-1, 1]", tuple(x.shape))
        h = F.max_pool2d(self.stem(x), 3, stride=2, padding=1)
        for stage in self.stages:
            h = stage(h)
        return F.relu(self.post_norm(h)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.pooled(x)
        for i, layer in enumerate(self.head):
            h = layer(h)
            if i < len(self.head) - 1:
                h = F.relu(h)
        mean, raw_scale = h.split(self.cfg.dim_z, dim=1)
        return mean, F.softplus(raw_scale)
