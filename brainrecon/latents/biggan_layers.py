"""BigGAN building blocks shared by the BigBiGAN and IC-GAN generators.

Both generators are BigGAN-PyTorch networks run for inference and compute the same things.
They differ in what each release's checkpoint stores: IC-GAN's spectrally normalised layers
keep ``sv<i>`` buffers that BigBiGAN's conversion does not, and the constructors take each
package's config. So this module holds only what is the same to the letter, and every
parameter or buffer is still registered under the name its package's checkpoint uses:

* :func:`spectral_normalised`: a weight divided by its power-iteration singular value;
* :class:`StoredStatsNorm`: batch norm on stored statistics, batch statistics opt-in;
* :class:`ConditionalBatchNormBase` and :class:`OutputBatchNorm`: BigGAN's conditional
  ("HyperBN") and output batch norms (keys ``stored_mean``, ``stored_var`` and
  ``gain``/``bias``, the same in both checkpoints);
* :class:`GBlockBase` and :class:`SelfAttentionBase`: the forward passes of the residual
  up-block and of SAGAN self-attention; each package's subclass creates the submodules
  with its own spectrally normalised layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConditionalBatchNormBase",
    "GBlockBase",
    "OutputBatchNorm",
    "SelfAttentionBase",
    "StoredStatsNorm",
    "spectral_normalised",
]


def spectral_normalised(weight: torch.Tensor, u0: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight / sigma`` with sigma from one power iteration started at ``u0``.

    The weight is viewed as an ``(out, -1)`` matrix ``W``: ``v = normalise(u0 W)``,
    ``u = normalise(v W^T)``, ``sigma = v W^T u^T``. ``u0`` is a trained buffer that
    inference never updates, so the estimate is part of the released model (the reference's
    further iterations from the same ``u0`` give the same value). ``u`` and ``v`` carry no
    gradient (as in training), sigma does.

    Parameters
    ----------
    weight : torch.Tensor
        ``(out, ...)``: a linear or convolution weight.
    u0 : torch.Tensor
        ``(1, out)``: the stored left singular vector estimate.
    eps : float
        Normalisation epsilon.
    """
    w = weight.reshape(weight.shape[0], -1)
    with torch.no_grad():
        v = F.normalize(u0 @ w, dim=1, eps=eps)
        u = F.normalize(v @ w.t(), dim=1, eps=eps)
    sigma = ((v @ w.t()) @ u.t()).squeeze()
    return weight / sigma


class StoredStatsNorm(nn.Module):
    """Batch norm that normalises with its stored statistics unless training opts in.

    ``train_momentum`` is ``None`` by default: stored statistics in every mode, the
    behaviour of a released model, whatever ``.train()``/``.eval()`` says. The project's
    training scripts (``scripts/train_bigbigan_small.py``, ``scripts/train_icgan_small.py``)
    set it to a float on every module whose class has the attribute: in training mode the
    layer then normalises with the batch's statistics and moves the stored ones towards them
    by that momentum, as BigGAN trains. The state dict is the same either way.
    """

    train_momentum: float | None = None

    def _normalise(
        self,
        x: torch.Tensor,
        mean: torch.Tensor,
        var: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        eps: float,
    ) -> torch.Tensor:
        batch_stats = self.training and self.train_momentum is not None
        momentum = float(self.train_momentum) if batch_stats else 0.0
        return F.batch_norm(x, mean, var, weight, bias, batch_stats, momentum, eps)


class ConditionalBatchNormBase(StoredStatsNorm):
    """Batch norm on stored statistics with a gain and bias predicted from a conditioning vector.

    ``out = bn(x) * (1 + gain(y)) + bias(y)`` (BigGAN's "HyperBN"). Keys: ``stored_mean``,
    ``stored_var`` (C,) and the ``gain.*``/``bias.*`` of the two maps, which the subclass
    builds (spectrally normalised linear maps without bias, ``cond_dim -> C``, in the
    layout of its checkpoint).

    Parameters
    ----------
    channels : int
        C, the channels normalised.
    gain, bias : nn.Module
        The maps from the conditioning vector to C gains and C biases.
    eps : float
        Batch-norm epsilon.
    """

    def __init__(self, channels: int, gain: nn.Module, bias: nn.Module, *, eps: float) -> None:
        super().__init__()
        self.gain = gain
        self.bias = bias
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self._normalise(x, self.stored_mean, self.stored_var, None, None, self.eps)
        gain = (1.0 + self.gain(y))[:, :, None, None]
        bias = self.bias(y)[:, :, None, None]
        return out * gain + bias


class OutputBatchNorm(StoredStatsNorm):
    """Unconditional batch norm on stored statistics; keys ``gain``, ``bias``, ``stored_mean``, ``stored_var``."""

    def __init__(self, channels: int, *, eps: float) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalise(x, self.stored_mean, self.stored_var, self.gain, self.bias, self.eps)


class GBlockBase(nn.Module):
    """Forward pass of BigGAN's up-sampling residual block, conditioned through its batch norms.

    ``BN-ReLU-upsample-conv1``, ``BN-ReLU-conv2``, plus the up-sampled input through the 1x1
    ``conv_sc`` (every block up-samples, so the shortcut always has its convolution).
    Subclasses create ``conv1``, ``conv2``, ``conv_sc``, ``bn1`` and ``bn2``: the names are
    the checkpoints' keys.
    """

    conv1: nn.Module
    conv2: nn.Module
    conv_sc: nn.Module
    bn1: nn.Module
    bn2: nn.Module

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(x, y))
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        h = self.conv1(h)
        h = self.conv2(F.relu(self.bn2(h, y)))
        return h + self.conv_sc(x)


class SelfAttentionBase(nn.Module):
    """Forward pass of SAGAN self-attention with 2x max-pooled keys and values and a learned gate.

    Subclasses create the 1x1 convolutions ``theta``, ``phi`` (C -> C/8), ``g`` (C -> C/2),
    ``o`` (C/2 -> C) and the scalar parameter ``gamma``: the names are the checkpoints' keys.
    """

    theta: nn.Module
    phi: nn.Module
    g: nn.Module
    o: nn.Module
    gamma: nn.Parameter

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        n, c, hgt, wid = x.shape
        theta = self.theta(x).reshape(n, c // 8, hgt * wid)
        phi = F.max_pool2d(self.phi(x), 2).reshape(n, c // 8, hgt * wid // 4)
        g = F.max_pool2d(self.g(x), 2).reshape(n, c // 2, hgt * wid // 4)
        attn = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # (n, queries, keys)
        o = self.o((g @ attn.transpose(1, 2)).reshape(n, c // 2, hgt, wid))
        return self.gamma * o + x
