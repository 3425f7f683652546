"""The VDVAE network: bottom-up encoder, top-down decoder with one latent group per block.

Attribute names (``encoder.in_conv``, ``encoder.enc_blocks.<i>.c1`` ...,
``decoder.dec_blocks.<i>.{enc,prior,z_proj,resnet}``, ``decoder.bias_xs.<j>``,
``decoder.out_net.out_conv``, ``decoder.gain``, ``decoder.bias``) are the parameter names of
the published checkpoints, so their state dicts load with ``strict=True``.

Top-down block (one latent group ``z`` of shape ``(zdim, res, res)``)::

    x  <- state at res (+ nearest-upsampled state of the mix-in resolution)
    q  = enc([x, encoder activation at res])     -> posterior mean, log-std
    p  = prior(x)                                -> prior mean, log-std, residual
    x  <- x + residual ; x <- x + z_proj(z) ; x <- resnet(x)

Both Gaussians are parameterised by their log standard deviation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from brainrecon.latents.vdvae import dmol
from brainrecon.latents.vdvae.config import VDVAEConfig

#: ``noise(shape) -> Tensor`` returns standard-normal noise of ``shape`` (batch dim first).
NoiseFn = Callable[[tuple[int, ...]], torch.Tensor]


def _conv(c_in: int, c_out: int, k: int, *, zero_weight: bool = False) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, k, padding=k // 2)
    with torch.no_grad():
        conv.bias.zero_()  # the reference starts every conv with a zero bias
        if zero_weight:
            conv.weight.zero_()
    return conv


class BottleneckBlock(nn.Module):
    """GELU -> 1x1 -> GELU -> kxk -> GELU -> kxk -> GELU -> 1x1, optionally residual and pooled.

    Parameters
    ----------
    c_in, c_mid, c_out : int
        Outer input, inner (bottleneck) and outer output widths.
    residual : bool
        Add the input to the output (requires ``c_in == c_out``).
    use_3x3 : bool
        Inner convolutions are 3x3 (else 1x1: used at resolutions 1 and 2).
    down : int, optional
        Average-pooling factor applied at the end.
    zero_last : bool
        Start the last convolution at zero (the prior block starts as an identity map).
    """

    def __init__(
        self,
        c_in: int,
        c_mid: int,
        c_out: int,
        *,
        residual: bool,
        use_3x3: bool,
        down: int | None = None,
        zero_last: bool = False,
    ) -> None:
        super().__init__()
        k = 3 if use_3x3 else 1
        self.residual = residual
        self.down = down
        self.c1 = _conv(c_in, c_mid, 1)
        self.c2 = _conv(c_mid, c_mid, k)
        self.c3 = _conv(c_mid, c_mid, k)
        self.c4 = _conv(c_mid, c_out, 1, zero_weight=zero_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.gelu(x))
        h = self.c2(F.gelu(h))
        h = self.c3(F.gelu(h))
        h = self.c4(F.gelu(h))
        out = x + h if self.residual else h
        if self.down:
            out = F.avg_pool2d(out, kernel_size=self.down, stride=self.down)
        return out


def _scale_(t: torch.Tensor, factor: float) -> None:
    with torch.no_grad():
        t.mul_(factor)


class Encoder(nn.Module):
    """Bottom-up pass: returns the last activation at every resolution."""

    def __init__(self, cfg: VDVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_conv = _conv(3, cfg.width, 3)
        blocks = []
        specs = cfg.encoder_blocks()
        for b in specs:
            w = cfg.width_at(b.res)
            blocks.append(
                BottleneckBlock(
                    w, int(w * cfg.bottleneck_multiple), w, residual=True, use_3x3=b.res > 2, down=b.down
                )
            )
        for blk in blocks:
            # Keeps the residual stream's variance bounded in a deep stack at initialisation.
            _scale_(blk.c4.weight, math.sqrt(1.0 / len(specs)))
        self.enc_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """``x``: normalised images ``(n, 3, S, S)`` -> ``{res: activation}``."""
        x = self.in_conv(x)
        acts = {x.shape[2]: x}
        for blk in self.enc_blocks:
            x = blk(x)
            res = x.shape[2]
            want = self.cfg.width_at(res)
            if x.shape[1] < want:  # a wider resolution after pooling: zero-pad channels
                x = F.pad(x, (0, 0, 0, 0, 0, want - x.shape[1]))
            acts[res] = x
        return acts


class TopDownBlock(nn.Module):
    """One decoder block holding one latent group."""

    def __init__(self, cfg: VDVAEConfig, res: int, mixin: int | None, n_blocks: int) -> None:
        super().__init__()
        self.res = res
        self.mixin = mixin
        self.zdim = cfg.zdim
        w = cfg.width_at(res)
        mid = int(w * cfg.bottleneck_multiple)
        use_3x3 = res > 2
        self.enc = BottleneckBlock(2 * w, mid, 2 * cfg.zdim, residual=False, use_3x3=use_3x3)
        self.prior = BottleneckBlock(w, mid, 2 * cfg.zdim + w, residual=False, use_3x3=use_3x3, zero_last=True)
        self.z_proj = _conv(cfg.zdim, w, 1)
        _scale_(self.z_proj.weight, math.sqrt(1.0 / n_blocks))
        self.resnet = BottleneckBlock(w, mid, w, residual=True, use_3x3=use_3x3)
        _scale_(self.resnet.c4.weight, math.sqrt(1.0 / n_blocks))

    def split_prior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prior mean, prior log-std and the residual added to the state."""
        f = self.prior(x)
        z = self.zdim
        return f[:, :z], f[:, z : 2 * z], f[:, 2 * z :]

    def posterior(self, x: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-std given the state and the encoder activation."""
        q = self.enc(torch.cat([x, act], dim=1))
        return q[:, : self.zdim], q[:, self.zdim :]


def gaussian_kl(qm: torch.Tensor, pm: torch.Tensor, qlogs: torch.Tensor, plogs: torch.Tensor) -> torch.Tensor:
    """KL(N(qm, e^qlogs) || N(pm, e^plogs)) per element."""
    return -0.5 + plogs - qlogs + 0.5 * (torch.exp(2 * qlogs) + (qm - pm) ** 2) * torch.exp(-2 * plogs)


@dataclass
class TopDownResult:
    """Outcome of a top-down pass.

    Attributes
    ----------
    out : Tensor or None
        Mixture parameters ``(n, 10 * M, S, S)``; ``None`` when the pass stopped early.
    z : list of Tensor
        Latent group values used, ``(n, zdim, res, res)`` each, top first.
    kl : list of Tensor
        Per-element KL of every posterior group (only when requested).
    """

    out: torch.Tensor | None
    z: list[torch.Tensor] = field(default_factory=list)
    kl: list[torch.Tensor] = field(default_factory=list)


class MixtureHead(nn.Module):
    """1x1 convolution to the discretised-logistic mixture parameters."""

    def __init__(self, width: int, n_mix: int) -> None:
        super().__init__()
        self.n_mix = n_mix
        self.out_conv = _conv(width, 10 * n_mix, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(x)


class Decoder(nn.Module):
    """Top-down pass over all latent groups."""

    def __init__(self, cfg: VDVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        specs = cfg.decoder_blocks()
        self.dec_blocks = nn.ModuleList(TopDownBlock(cfg, b.res, b.mixin, len(specs)) for b in specs)
        self.resolutions = sorted({b.res for b in specs})
        self.bias_res = [r for r in self.resolutions if r <= cfg.no_bias_above]
        self.bias_xs = nn.ParameterList(
            nn.Parameter(torch.zeros(1, cfg.width_at(r), r, r)) for r in self.bias_res
        )
        self.out_net = MixtureHead(cfg.width, cfg.num_mixtures)
        self.gain = nn.Parameter(torch.ones(1, cfg.width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, cfg.width, 1, 1))

    def _initial_state(self, n: int, like: torch.Tensor) -> dict[int, torch.Tensor]:
        xs = {r: p.expand(n, -1, -1, -1) for r, p in zip(self.bias_res, self.bias_xs)}
        for r in self.resolutions:
            if r not in xs:  # resolutions without a learned start begin at zero
                xs[r] = like.new_zeros(n, self.cfg.width_at(r), r, r)
        return xs

    def top_down(
        self,
        n: int,
        *,
        activations: dict[int, torch.Tensor] | None = None,
        fixed: Sequence[torch.Tensor] = (),
        n_blocks: int | None = None,
        posterior_mean: bool = False,
        temperature: float = 1.0,
        noise: NoiseFn | None = None,
        with_kl: bool = False,
    ) -> TopDownResult:
        """Run the decoder blocks from the top.

        Parameters
        ----------
        n : int
            Batch size.
        activations : dict, optional
            Encoder activations; groups not in ``fixed`` then come from the posterior.
            Without them they come from the prior at ``temperature``.
        fixed : sequence of Tensor
            Values of the first ``len(fixed)`` groups.
        n_blocks : int, optional
            Stop after this many blocks (no image output then).
        posterior_mean : bool
            Use the posterior mean instead of a sample.
        temperature : float
            Scale of the prior standard deviation (0 = prior mean).
        noise : callable, optional
            Source of standard-normal noise; defaults to ``torch.randn``.
        with_kl : bool
            Also return the per-element KL of posterior groups.
        """
        ref = self.gain
        if noise is None:
            noise = lambda shape: torch.randn(shape, device=ref.device, dtype=ref.dtype)  # noqa: E731
        xs = self._initial_state(n, ref)
        result = TopDownResult(out=None)
        stop = len(self.dec_blocks) if n_blocks is None else n_blocks
        for i, blk in enumerate(self.dec_blocks):
            if i >= stop:
                return result
            x = xs[blk.res]
            if blk.mixin is not None:
                up = xs[blk.mixin][:, : x.shape[1]]
                x = x + F.interpolate(up, scale_factor=blk.res // blk.mixin, mode="nearest")
            pm, plogs, resid = blk.split_prior(x)
            if i < len(fixed):
                z = fixed[i].to(x.dtype)
            elif activations is not None:
                qm, qlogs = blk.posterior(x, activations[blk.res])
                z = qm if posterior_mean else qm + torch.exp(qlogs) * noise(tuple(qm.shape))
                if with_kl:
                    result.kl.append(gaussian_kl(qm, pm, qlogs, plogs))
            elif temperature == 0:
                z = pm
            else:
                z = pm + torch.exp(plogs) * temperature * noise(tuple(pm.shape))
            result.z.append(z)
            x = x + resid
            x = x + blk.z_proj(z)
            xs[blk.res] = blk.resnet(x)
        h = xs[self.cfg.image_size] * self.gain + self.bias
        result.out = self.out_net(h)
        return result


class VDVAE(nn.Module):
    """Encoder + decoder; ``state_dict()`` keys equal the published checkpoints'."""

    def __init__(self, cfg: VDVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def normalise(self, images_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel values 0..255 ``(n, 3, S, S)`` -> (encoder input, loss target in [-1, 1])."""
        x = images_uint8.to(self.decoder.gain.dtype)
        return (x + self.cfg.shift) * self.cfg.scale, x / 127.5 - 1.0

    def elbo(self, images_uint8: torch.Tensor, noise: NoiseFn | None = None) -> dict[str, torch.Tensor]:
        """Negative ELBO in nats per sub-pixel: distortion (mixture NLL) + rate (sum of group KLs)."""
        x_in, x_target = self.normalise(images_uint8)
        acts = self.encoder(x_in)
        res = self.decoder.top_down(len(x_in), activations=acts, noise=noise, with_kl=True)
        distortion = dmol.nll(res.out, x_target, self.cfg.num_mixtures)
        ndims = x_target[0].numel()
        rate = sum(k.sum(dim=(1, 2, 3)) for k in res.kl) / ndims
        return {"elbo": (distortion + rate).mean(), "distortion": distortion.mean(), "rate": rate.mean()}
