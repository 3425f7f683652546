"""Layers of the BigBiGAN networks, with the parameter names of the converted checkpoints.

The generator's layers follow BigGAN-PyTorch's parameterisation, which the public
conversion of the TF-Hub weights uses: a spectrally normalised layer stores the raw
weight (``weight``), its bias and the running left singular vector ``u0`` of shape
``(1, out_features)``; at inference it divides the weight by the singular value
estimated with one power iteration from ``u0`` (``u0`` itself is not updated; it is a
trained buffer, so the estimate is part of the published model). Batch norms run on
stored statistics (``stored_mean``/``stored_var``) unless a training script opts in to
batch statistics (``train_momentum``, see :class:`~brainrecon.latents.biggan_layers.StoredStatsNorm`);
the library itself only runs the networks. The computations BigBiGAN shares with IC-GAN (spectral
normalisation, the batch norms) live in :mod:`brainrecon.latents.biggan_layers`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from brainrecon.latents.biggan_layers import (
    ConditionalBatchNormBase,
    OutputBatchNorm,
    StoredStatsNorm,
    spectral_normalised,
)

__all__ = ["SNConv2d", "SNLinear", "ConditionalBatchNorm", "OutputBatchNorm", "FrozenBatchNorm2d"]


class SNConv2d(nn.Module):
    """Spectrally normalised 2-D convolution (stride 1, 'same' padding).

    Parameters
    ----------
    c_in, c_out : int
        Channels.
    kernel : int
        Square kernel size (odd).
    bias : bool
        Whether the layer has a bias.
    eps : float
        Power-iteration normalisation epsilon.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, *, bias: bool = True, eps: float = 1e-4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.register_buffer("u0", torch.randn(1, c_out))
        self.padding = kernel // 2
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = spectral_normalised(self.weight, self.u0, self.eps)
        return F.conv2d(x, w, self.bias, padding=self.padding)


class SNLinear(nn.Module):
    """Spectrally normalised linear layer (``weight`` is ``(out, in)``, as ``nn.Linear``)."""

    def __init__(self, c_in: int, c_out: int, *, bias: bool = True, eps: float = 1e-4) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(c_out, c_in))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.register_buffer("u0", torch.randn(1, c_out))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, spectral_normalised(self.weight, self.u0, self.eps), self.bias)


class ConditionalBatchNorm(ConditionalBatchNormBase):
    """Batch norm on stored statistics with a gain and bias predicted from a conditioning vector.

    ``out = bn(x) * (1 + gain(y)) + bias(y)``, ``gain`` and ``bias`` spectrally normalised
    linear maps without bias (BigGAN's "HyperBN").
    """

    def __init__(self, channels: int, cond_dim: int, *, eps: float, sn_eps: float) -> None:
        super().__init__(
            channels,
            SNLinear(cond_dim, channels, bias=False, eps=sn_eps),
            SNLinear(cond_dim, channels, bias=False, eps=sn_eps),
            eps=eps,
        )


class FrozenBatchNorm2d(StoredStatsNorm):
    """Inference batch norm: ``weight``, ``bias``, ``running_mean``, ``running_var``.

    Unlike ``nn.BatchNorm2d`` it has no ``num_batches_tracked`` buffer, so the state dict
    holds exactly the four tensors a converted TF batch norm provides (gamma, beta,
    moving mean, moving variance).
    """

    def __init__(self, channels: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalise(x, self.running_mean, self.running_var, self.weight, self.bias, self.eps)
