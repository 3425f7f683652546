"""Layers of the BigBiGAN networks, with the parameter names of the converted checkpoints.

The generator's layers follow BigGAN-PyTorch's parameterisation, which the public
conversion of the TF-Hub weights uses: a spectrally normalised layer stores the raw
weight (``weight``), its bias and the running left singular vector ``u0`` of shape
``(1, out_features)``; at inference it divides the weight by the singular value
estimated with one power iteration from ``u0`` (``u0`` itself is not updated; it is a
trained buffer, so the estimate is part of the published model). Batch norms run on
stored statistics (``stored_mean``/``stored_var``) unless a training script opts in to
batch statistics (``train_momentum``, see :class:`_StoredStatsNorm`); the library itself
only runs the networks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SNConv2d", "SNLinear", "ConditionalBatchNorm", "OutputBatchNorm", "FrozenBatchNorm2d"]


def _spectral_normalised(weight: torch.Tensor, u0: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight / sigma`` with sigma from one power iteration started at ``u0``.

    The weight is viewed as an ``(out, -1)`` matrix ``W``: ``v = normalise(u0 W)``,
    ``u = normalise(v W^T)``, ``sigma = v W^T u^T``. ``u`` and ``v`` carry no gradient (as in
    training), sigma does.
    """
    w = weight.reshape(weight.shape[0], -1)
    with torch.no_grad():
        v = F.normalize(u0 @ w, dim=1, eps=eps)
        u = F.normalize(v @ w.t(), dim=1, eps=eps)
    sigma = ((v @ w.t()) @ u.t()).squeeze()
    return weight / sigma


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
        w = _spectral_normalised(self.weight, self.u0, self.eps)
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
        return F.linear(x, _spectral_normalised(self.weight, self.u0, self.eps), self.bias)


class _StoredStatsNorm(nn.Module):
    """Batch norm that normalises with its stored statistics unless training opts in.

    ``train_momentum`` is ``None`` by default: stored statistics in every mode, the
    behaviour of a released model, whatever ``.train()``/``.eval()`` says. The project's
    training scripts (``scripts/train_bigbigan_small.py``) set it to a float: in training
    mode the layer then normalises with the batch's statistics and moves the stored ones
    towards them by that momentum, as BigGAN trains. The state dict is the same either way.
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


class ConditionalBatchNorm(_StoredStatsNorm):
    """Batch norm on stored statistics with a gain and bias predicted from a conditioning vector.

    ``out = bn(x) * (1 + gain(y)) + bias(y)``, ``gain`` and ``bias`` spectrally normalised
    linear maps without bias (BigGAN's "HyperBN").
    """

    def __init__(self, channels: int, cond_dim: int, *, eps: float, sn_eps: float) -> None:
        super().__init__()
        self.gain = SNLinear(cond_dim, channels, bias=False, eps=sn_eps)
        self.bias = SNLinear(cond_dim, channels, bias=False, eps=sn_eps)
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self._normalise(x, self.stored_mean, self.stored_var, None, None, self.eps)
        gain = (1.0 + self.gain(y))[:, :, None, None]
        bias = self.bias(y)[:, :, None, None]
        return out * gain + bias


class OutputBatchNorm(_StoredStatsNorm):
    """Unconditional batch norm on stored statistics with learned ``gain`` and ``bias``."""

    def __init__(self, channels: int, *, eps: float) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("stored_mean", torch.zeros(channels))
        self.register_buffer("stored_var", torch.ones(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._normalise(x, self.stored_mean, self.stored_var, self.gain, self.bias, self.eps)


class FrozenBatchNorm2d(_StoredStatsNorm):
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
