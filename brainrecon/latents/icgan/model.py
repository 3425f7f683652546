"""The IC-GAN generator (BigGAN backbone, instance conditioning, hierarchical noise).

Written for inference with the published weights: every module registers its parameters and
buffers under the names and shapes of the reference's ``G_ema`` state dict, so the checkpoint
loads strictly. Batch norms use their stored statistics and spectral norms never update their
singular-vector estimates: that is the reference's evaluation mode (``G_eval_mode`` is set for
the published model), in which results do not depend on the batch. The one exception is opt-in
and used only by ``scripts/train_icgan_small.py``: a batch norm whose ``train_momentum`` is set
normalises with batch statistics in training mode (see
:class:`~brainrecon.latents.biggan_layers.StoredStatsNorm`).

Data flow for a batch of instance features ``f`` (n, 2048) and noise ``z`` (n, 119):

* ``e = shared_feat(f)`` (n, 512): linear instance embedding;
* ``z`` is cut into 7 chunks of 17; ``dense = linear(z_0)`` (n, 24576) is reshaped to
  (n, 1536, 4, 4); block ``k`` is conditioned on ``[e, z_{k+1}]`` (n, 529) through the
  gains and biases of its two conditional batch norms;
* six residual up-blocks (nearest 2x upsampling) with self-attention after the 64x64 one,
  then batch norm, ReLU, a 3x3 convolution to RGB and ``tanh``.

Passing ``dense`` replaces the first linear layer's output (IC-GAN fMRI decoding); the noise
chunks still condition the blocks, the first chunk is then unused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from brainrecon.errors import ShapeMismatchError
from brainrecon.latents.biggan_layers import (
    ConditionalBatchNormBase,
    GBlockBase,
    OutputBatchNorm,
    SelfAttentionBase,
    spectral_normalised,
)
from brainrecon.latents.icgan.config import ICGANConfig


class _SpectralNorm(nn.Module):
    """Shared part of the spectrally normalised layers: the ``u<i>``/``sv<i>`` buffers and sigma.

    The weight is divided by an estimate of its largest singular value, obtained by one power
    iteration started from the stored left singular vector ``u0`` (the reference runs
    ``num_itrs`` iterations, but in evaluation mode ``u0`` is not updated between them, so they
    all give the same value). ``sv<i>`` only logged training; they are kept for the key layout.
    """

    def _register_sn(self, num_outputs: int, num_svs: int, eps: float) -> None:
        self.num_svs = num_svs
        self.sn_eps = eps
        for i in range(num_svs):
            self.register_buffer(f"u{i}", torch.randn(1, num_outputs))
            self.register_buffer(f"sv{i}", torch.ones(1))

    def normalised_weight(self) -> torch.Tensor:
        """``weight`` divided by its singular value estimated from ``u0`` (see :func:`spectral_normalised`)."""
        return spectral_normalised(self.weight, self.u0, self.sn_eps)  # type: ignore[arg-type]


class SNLinear(_SpectralNorm):
    """Linear layer with spectral norm; keys ``weight``, ``bias`` (optional), ``u0``, ``sv0``."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, num_svs: int = 1, eps: float = 1e-6):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._register_sn(out_features, num_svs, eps)
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalised_weight(), self.bias)


class SNConv2d(_SpectralNorm):
    """2-D convolution (stride 1, 'same' padding) with spectral norm."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, *, bias: bool = True,
        num_svs: int = 1, eps: float = 1e-6,
    ):
        super().__init__()
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self._register_sn(out_channels, num_svs, eps)
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.normalised_weight(), self.bias, padding=self.padding)


class ConditionalBatchNorm(ConditionalBatchNormBase):
    """Batch norm (stored statistics) whose gain ``1 + gain(y)`` and bias ``bias(y)`` depend on ``y``.

    Keys: ``stored_mean``, ``stored_var`` (C,), ``gain.*`` and ``bias.*`` (spectrally normalised
    linear maps without bias, ``cond_dim -> C``, with IC-GAN's ``sv<i>`` buffers).
    """

    def __init__(self, channels: int, cond_dim: int, *, eps: float, num_svs: int, sn_eps: float):
        super().__init__(
            channels,
            SNLinear(cond_dim, channels, bias=False, num_svs=num_svs, eps=sn_eps),
            SNLinear(cond_dim, channels, bias=False, num_svs=num_svs, eps=sn_eps),
            eps=eps,
        )


class GBlock(GBlockBase):
    """Residual up-block: BN-ReLU-up-conv3, BN-ReLU-conv3, plus an upsampled 1x1 shortcut.

    Forward: :class:`GBlockBase`.
    """

    def __init__(self, in_channels: int, out_channels: int, cfg: ICGANConfig):
        super().__init__()
        sn = {"num_svs": cfg.num_svs, "eps": cfg.sn_eps}
        self.conv1 = SNConv2d(in_channels, out_channels, 3, **sn)
        self.conv2 = SNConv2d(out_channels, out_channels, 3, **sn)
        # Every block upsamples, so the reference always has a learnable shortcut.
        self.conv_sc = SNConv2d(in_channels, out_channels, 1, **sn)
        bn = {"eps": cfg.bn_eps, "num_svs": cfg.num_svs, "sn_eps": cfg.sn_eps}
        self.bn1 = ConditionalBatchNorm(in_channels, cfg.cond_dim, **bn)
        self.bn2 = ConditionalBatchNorm(out_channels, cfg.cond_dim, **bn)


class SelfAttention(SelfAttentionBase):
    """SAGAN non-local block: keys/values max-pooled 2x, output scaled by the learned ``gamma``.

    Forward: :class:`SelfAttentionBase`.
    """

    def __init__(self, channels: int, cfg: ICGANConfig):
        super().__init__()
        sn = {"bias": False, "num_svs": cfg.num_svs, "eps": cfg.sn_eps}
        self.channels = channels
        self.theta = SNConv2d(channels, channels // 8, 1, **sn)
        self.phi = SNConv2d(channels, channels // 8, 1, **sn)
        self.g = SNConv2d(channels, channels // 2, 1, **sn)
        self.o = SNConv2d(channels // 2, channels, 1, **sn)
        self.gamma = nn.Parameter(torch.tensor(0.0))


class ICGANGenerator(nn.Module):
    """IC-GAN generator; ``state_dict()`` keys equal the published ``G_ema`` checkpoint's.

    Parameters
    ----------
    cfg : ICGANConfig
        Architecture (``ICGANConfig.imagenet256()`` for the published model).
    """

    def __init__(self, cfg: ICGANConfig):
        super().__init__()
        self.cfg = cfg
        sn = {"num_svs": cfg.num_svs, "eps": cfg.sn_eps}
        # Class embedding of BigGAN: unused by instance-only IC-GAN but stored in its checkpoint.
        self.shared = nn.Embedding(cfg.n_classes, cfg.shared_dim)
        self.shared_feat = SNLinear(cfg.feature_dim, cfg.shared_dim_feat, **sn)
        self.linear = SNLinear(cfg.chunk_size, cfg.dense_dim, **sn)
        blocks = []
        for plan in cfg.blocks():
            stage: list[nn.Module] = [GBlock(plan.in_channels, plan.out_channels, cfg)]
            if plan.attention:
                stage.append(SelfAttention(plan.out_channels, cfg))
            blocks.append(nn.ModuleList(stage))
        self.blocks = nn.ModuleList(blocks)
        last = cfg.blocks()[-1].out_channels
        # Index 1 of the reference's Sequential is a ReLU (no parameters); keep the indices.
        self.output_layer = nn.Sequential(OutputBatchNorm(last, eps=cfg.bn_eps), nn.ReLU(), SNConv2d(last, 3, 3, **sn))

    # ---------------------------------------------------------------- pieces
    def _check(self, what: str, t: torch.Tensor, size: int) -> None:
        if t.ndim != 2 or t.shape[1] != size:
            raise ShapeMismatchError(f"icgan {what}", f"(n, {size})", tuple(t.shape))

    def embed_instance(self, instance: torch.Tensor) -> torch.Tensor:
        """Instance features (n, feature_dim) -> embedding (n, shared_dim_feat)."""
        self._check("instance", instance, self.cfg.feature_dim)
        return self.shared_feat(instance)

    def split_noise(self, noise: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Noise (n, noise_dim) -> (chunk of the first linear layer, one chunk per block)."""
        self._check("noise", noise, self.cfg.noise_dim)
        if not self.cfg.hier:
            return noise, [noise[:, :0]] * self.cfg.n_blocks
        chunks = list(torch.split(noise, self.cfg.chunk_size, dim=1))
        return chunks[0], chunks[1:]

    def dense_from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """The first linear layer's output (n, dense_dim) for ``noise``: the "dense" vector."""
        first, _ = self.split_noise(noise)
        return self.linear(first)

    # ---------------------------------------------------------------- forward
    def forward(self, instance: torch.Tensor, noise: torch.Tensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        """Images (n, 3, R, R) in [-1, 1].

        Parameters
        ----------
        instance : tensor (n, feature_dim)
            Instance features (L2-normalised SwAV features for the published model).
        noise : tensor (n, noise_dim)
        dense : tensor (n, dense_dim), optional
            Replaces the output of the first linear layer (which is then not evaluated).
        """
        first, chunks = self.split_noise(noise)
        e = self.embed_instance(instance)
        if len(e) != len(noise):
            raise ShapeMismatchError("icgan noise rows (one per instance)", len(e), len(noise))
        if dense is None:
            dense = self.linear(first)
        else:
            self._check("dense", dense, self.cfg.dense_dim)
            if len(dense) != len(e):
                raise ShapeMismatchError("icgan dense rows (one per instance)", len(e), len(dense))
        h = dense.reshape(len(dense), *self.cfg.dense_shape)
        # The instance embedding comes first, then the block's noise chunk (reference order).
        conds = [torch.cat([e, z], dim=1) for z in chunks]
        for stage, y in zip(self.blocks, conds):
            for layer in stage:
                h = layer(h, y)
        return torch.tanh(self.output_layer(h))
