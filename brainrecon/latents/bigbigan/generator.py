"""BigBiGAN's generator: an unconditional BigGAN with a hierarchical latent.

Forward pass for a latent ``z`` of ``dim_z`` values split into ``n_blocks + 1`` chunks
``z_0 .. z_B`` and the (single, learned) embedding ``e``:

1. ``h = linear(z_0)`` reshaped to ``(in_mult[0] * ch, bottom_width, bottom_width)``;
2. for every block ``b``: ``y_b = concat(e, z_{b+1})`` conditions both batch norms of an
   up-sampling residual block (BN-ReLU-up-conv3x3-BN-ReLU-conv3x3, plus a 1x1-conv
   shortcut of the up-sampled input), followed by self-attention where configured;
3. BN-ReLU-conv3x3 to RGB and ``tanh``: images in [-1, 1].

Parameter names (``state_dict`` keys) equal those of BigGAN-PyTorch's ``Generator``, the
layout of the public conversion ``BigBiGAN_x1.pth``; see ``docs/bigbigan.md``.
"""

from __future__ import annotations

import torch
from torch import nn

from brainrecon.errors import ShapeMismatchError
from brainrecon.latents.bigbigan.config import GeneratorConfig
from brainrecon.latents.bigbigan.layers import ConditionalBatchNorm, OutputBatchNorm, SNConv2d, SNLinear
from brainrecon.latents.biggan_layers import GBlockBase, SelfAttentionBase

__all__ = ["BigBiGANGenerator", "GBlock", "SelfAttention"]


class GBlock(GBlockBase):
    """Up-sampling residual block conditioned through its two batch norms (forward: :class:`GBlockBase`)."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.conv1 = SNConv2d(c_in, c_out, 3, eps=cfg.sn_eps)
        self.conv2 = SNConv2d(c_out, c_out, 3, eps=cfg.sn_eps)
        # Every block up-samples, so the shortcut always needs its own (1x1) convolution.
        self.conv_sc = SNConv2d(c_in, c_out, 1, eps=cfg.sn_eps)
        self.bn1 = ConditionalBatchNorm(c_in, cond_dim, eps=cfg.bn_eps, sn_eps=cfg.sn_eps)
        self.bn2 = ConditionalBatchNorm(c_out, cond_dim, eps=cfg.bn_eps, sn_eps=cfg.sn_eps)


class SelfAttention(SelfAttentionBase):
    """SAGAN self-attention with 2x max-pooled keys and values and a learned gate ``gamma``.

    Forward: :class:`SelfAttentionBase`.
    """

    def __init__(self, ch: int, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.ch = ch
        self.theta = SNConv2d(ch, ch // 8, 1, bias=False, eps=cfg.sn_eps)
        self.phi = SNConv2d(ch, ch // 8, 1, bias=False, eps=cfg.sn_eps)
        self.g = SNConv2d(ch, ch // 2, 1, bias=False, eps=cfg.sn_eps)
        self.o = SNConv2d(ch // 2, ch, 1, bias=False, eps=cfg.sn_eps)
        self.gamma = nn.Parameter(torch.tensor(0.0))  # a scalar, as in the converted file


class BigBiGANGenerator(nn.Module):
    """The generator; ``forward(z)`` maps ``(n, dim_z)`` latents to ``(n, 3, R, R)`` in [-1, 1].

    Parameters
    ----------
    cfg : GeneratorConfig
        Architecture (``GeneratorConfig.published()`` for the released model).
    """

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        cond_dim = cfg.shared_dim + cfg.z_chunk
        self.shared = nn.Embedding(cfg.n_classes, cfg.shared_dim)
        self.linear = SNLinear(cfg.z_chunk, cfg.in_mult[0] * cfg.ch * cfg.bottom_width**2, eps=cfg.sn_eps)
        blocks = []
        for i, (m_in, m_out) in enumerate(zip(cfg.in_mult, cfg.out_mult)):
            layers: list[nn.Module] = [GBlock(m_in * cfg.ch, m_out * cfg.ch, cond_dim, cfg)]
            if cfg.block_resolutions[i] in cfg.attention:
                layers.append(SelfAttention(m_out * cfg.ch, cfg))
            blocks.append(nn.ModuleList(layers))
        # Doubly nested (blocks.<i>.<j>) because that is the converted checkpoint's naming.
        self.blocks = nn.ModuleList(blocks)
        c_last = cfg.out_mult[-1] * cfg.ch
        self.output_layer = nn.Sequential(
            OutputBatchNorm(c_last, eps=cfg.out_bn_eps),
            nn.ReLU(),
            SNConv2d(c_last, 3, 3, eps=cfg.sn_eps),
        )
        self._init_random()

    @torch.no_grad()
    def _init_random(self) -> None:
        """Small random weights, so that an unloaded model (tests, tiny configs) is well behaved."""
        for name, p in self.named_parameters():
            if name.endswith("weight") and p.ndim >= 2:
                nn.init.normal_(p, std=0.02)

    def embedding(self, n: int) -> torch.Tensor:
        """The unconditional model's embedding (row 0 of ``shared``) for ``n`` images."""
        return self.shared.weight[0].expand(n, -1)

    def forward(self, z: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        if z.ndim != 2 or z.shape[1] != cfg.dim_z:
            raise ShapeMismatchError("bigbigan generator input z", f"(n, {cfg.dim_z})", tuple(z.shape))
        n = z.shape[0]
        y = self.embedding(n) if embedding is None else embedding
        chunks = torch.split(z, cfg.z_chunk, dim=1)
        h = self.linear(chunks[0]).reshape(n, -1, cfg.bottom_width, cfg.bottom_width)
        for layers, z_b in zip(self.blocks, chunks[1:]):
            y_b = torch.cat([y, z_b], dim=1)  # embedding first: the converted weights' input order
            for layer in layers:
                h = layer(h, y_b)
        return torch.tanh(self.output_layer(h))
