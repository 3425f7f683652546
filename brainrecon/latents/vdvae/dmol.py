"""Discretised mixture of logistics over RGB pixels (PixelCNN++ output, as used by VDVAE).

The output convolution produces ``10 * M`` channels per pixel for ``M`` components. Their
layout (fixed by the published weights) is: channels ``[0, M)`` are the mixture logits;
the remaining ``9 * M`` channels are, for each colour ``c`` in (R, G, B), a run of ``3 * M``
channels holding the ``M`` means, the ``M`` log-scales and the ``M`` raw colour coupling
coefficients. The coupling makes the channels autoregressive within a component:
``mean_G += a * x_R`` and ``mean_B += b * x_R + c * x_G`` with ``(a, b, c) = tanh(raw)``
stored in the R, G and B runs respectively.

Pixel values live in [-1, 1] (``x_uint8 / 127.5 - 1``) with 256 bins of width ``2 / 255``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Lower bound on log-scales (as in the reference) so that bins never become infinitely sharp.
MIN_LOG_SCALE = -7.0
#: Half the width of one 8-bit bin in [-1, 1] units.
HALF_BIN = 1.0 / 255.0


@dataclass
class MixtureParams:
    """Unpacked parameters, all ``(n, ..., h, w)``.

    Attributes
    ----------
    logits : Tensor, shape (n, M, h, w)
    means : Tensor, shape (n, 3, M, h, w)
    log_scales : Tensor, shape (n, 3, M, h, w)
        Clamped below at :data:`MIN_LOG_SCALE`.
    coeffs : Tensor, shape (n, 3, M, h, w)
        ``tanh`` of the raw coupling coefficients: ``[:, 0]`` couples G on R, ``[:, 1]``
        couples B on R and ``[:, 2]`` couples B on G.
    """

    logits: torch.Tensor
    means: torch.Tensor
    log_scales: torch.Tensor
    coeffs: torch.Tensor


def unpack(out: torch.Tensor, n_mix: int) -> MixtureParams:
    """Split the output-convolution tensor ``(n, 10 * M, h, w)`` into mixture parameters."""
    n, ch, h, w = out.shape
    if ch != 10 * n_mix:
        raise ValueError(f"mixture output has {ch} channels, expected 10 * {n_mix}")
    logits = out[:, :n_mix]
    # (colour, kind, component) is the C-order split of the remaining 9M channels.
    rest = out[:, n_mix:].reshape(n, 3, 3, n_mix, h, w)
    return MixtureParams(
        logits=logits,
        means=rest[:, :, 0],
        log_scales=rest[:, :, 1].clamp(min=MIN_LOG_SCALE),
        coeffs=torch.tanh(rest[:, :, 2]),
    )


def _coupled_means(p: MixtureParams, x: torch.Tensor) -> torch.Tensor:
    """Per-component means of G and B shifted by the observed R (and G) values ``x`` (n,3,1,h,w)."""
    r, g = x[:, 0], x[:, 1]
    m_r = p.means[:, 0]
    m_g = p.means[:, 1] + p.coeffs[:, 0] * r
    m_b = p.means[:, 2] + p.coeffs[:, 1] * r + p.coeffs[:, 2] * g
    return torch.stack([m_r, m_g, m_b], dim=1)


def log_prob(out: torch.Tensor, x: torch.Tensor, n_mix: int) -> torch.Tensor:
    """Log-probability of every pixel's 8-bit RGB value, ``(n, h, w)``.

    Parameters
    ----------
    out : Tensor, shape (n, 10 * M, h, w)
        Output-convolution activations.
    x : Tensor, shape (n, 3, h, w)
        Target pixels scaled to [-1, 1] (on the 8-bit grid).
    n_mix : int
        Number of components ``M``.
    """
    p = unpack(out, n_mix)
    xe = x.unsqueeze(2)  # (n, 3, 1, h, w) broadcasts against the M components
    centred = xe - _coupled_means(p, xe)
    inv_s = torch.exp(-p.log_scales)
    plus_in = inv_s * (centred + HALF_BIN)
    min_in = inv_s * (centred - HALF_BIN)
    cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
    log_cdf_plus = plus_in - F.softplus(plus_in)  # bin 0 takes all mass below it
    log_one_minus_cdf_min = -F.softplus(min_in)  # bin 255 takes all mass above it
    mid_in = inv_s * centred
    # When the bin mass underflows, approximate it by density at the centre times bin width.
    log_pdf_mid = mid_in - p.log_scales - 2.0 * F.softplus(mid_in) - math.log(127.5)
    log_mid = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid)
    log_probs = torch.where(xe < -0.999, log_cdf_plus, torch.where(xe > 0.999, log_one_minus_cdf_min, log_mid))
    log_probs = log_probs.sum(dim=1) + torch.log_softmax(p.logits, dim=1)  # (n, M, h, w)
    return torch.logsumexp(log_probs, dim=1)


def nll(out: torch.Tensor, x: torch.Tensor, n_mix: int) -> torch.Tensor:
    """Negative log-likelihood per image in nats per sub-pixel, ``(n,)`` (see :func:`log_prob`)."""
    return -log_prob(out, x, n_mix).sum(dim=(1, 2)) / (3 * x.shape[2] * x.shape[3])


def mean(out: torch.Tensor, n_mix: int) -> torch.Tensor:
    """Mixture mean per pixel, ``(n, 3, h, w)`` in [-1, 1].

    Each component's mean follows the coupling (G and B means shifted by the component's
    own R and G means); components are weighted by their softmax probabilities. Each
    component's location is clipped to [-1, 1]; the logistic tails beyond the edges (which
    sampling would clip) are ignored, so this is approximate only near the edges.
    """
    p = unpack(out, n_mix)
    r = p.means[:, 0].clamp(-1, 1)
    g = (p.means[:, 1] + p.coeffs[:, 0] * r).clamp(-1, 1)
    b = (p.means[:, 2] + p.coeffs[:, 1] * r + p.coeffs[:, 2] * g).clamp(-1, 1)
    w = torch.softmax(p.logits, dim=1)
    return torch.stack([(w * r).sum(1), (w * g).sum(1), (w * b).sum(1)], dim=1)


def sample(out: torch.Tensor, n_mix: int, uniform: torch.Tensor) -> torch.Tensor:
    """Draw one image per sample, ``(n, 3, h, w)`` in [-1, 1], from given uniform noise.

    Parameters
    ----------
    out : Tensor, shape (n, 10 * M, h, w)
    n_mix : int
    uniform : Tensor, shape (n, M + 3, h, w)
        Uniform(0, 1) noise: the first ``M`` channels pick the component (Gumbel-max),
        the last 3 drive the logistic draws. Passing it in keeps sampling seedable.
    """
    p = unpack(out, n_mix)
    u = uniform.clamp(1e-5, 1.0 - 1e-5)  # keeps both logs finite, as the reference does
    gumbel = -torch.log(-torch.log(u[:, :n_mix]))
    pick = F.one_hot(torch.argmax(p.logits + gumbel, dim=1), n_mix).permute(0, 3, 1, 2).to(out.dtype)
    pick = pick.unsqueeze(1)  # (n, 1, M, h, w)
    mu = (p.means * pick).sum(2)
    log_s = (p.log_scales * pick).sum(2)
    co = (p.coeffs * pick).sum(2)
    ul = u[:, n_mix:]
    x = mu + torch.exp(log_s) * (torch.log(ul) - torch.log1p(-ul))
    r = x[:, 0].clamp(-1, 1)
    g = (x[:, 1] + co[:, 0] * r).clamp(-1, 1)
    b = (x[:, 2] + co[:, 1] * r + co[:, 2] * g).clamp(-1, 1)
    return torch.stack([r, g, b], dim=1)
