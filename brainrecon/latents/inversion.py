"""Optimisation-based GAN inversion: find latents whose rendering matches target images.

Used to build regression targets that a generator has no encoder for (IC-GAN's noise
and dense vectors were obtained this way; the reference never released that code), and
to refine encoder outputs (BigBiGAN).

The objective of image ``i`` is

.. math::

    L_i = w_{pix}\\,\\mathrm{mean}\\big((G(z_i) - x_i)^2\\big)
        + w_{perc}\\,\\mathrm{mean}\\big((\\phi(G(z_i)) - \\phi(x_i))^2\\big)
        + \\sum_k \\lambda_k\\,\\mathrm{mean}(z_{i,k}^2)

with ``G`` the ``render`` function, ``phi`` an optional feature extractor and ``lambda_k``
the optional L2 penalty of latent ``k``. Means run over the elements of one image, so
weights do not depend on resolution or latent size. Adam minimises the *sum* of the
per-image losses of a batch: each latent then receives exactly the gradient of its own
image's loss, and because Adam is element-wise, an image's trajectory does not depend on
which other images share its batch (as long as ``render`` treats images independently).

Randomness: the only randomness is whatever ``render`` or ``perceptual`` draw from
torch's global generator (dropout, injected noise). It is seeded with ``seed`` inside a
forked RNG state, so the caller's generator is left untouched and repeated calls agree.
On CPU results are bit-for-bit reproducible; on CUDA they are up to the non-determinism
of the kernels ``render`` uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from brainrecon.errors import ConfigError, ShapeMismatchError

__all__ = ["InversionResult", "invert"]

Render = Callable[[dict[str, torch.Tensor]], torch.Tensor]


@dataclass
class InversionResult:
    """What :func:`invert` returns.

    Attributes
    ----------
    latents : dict of str to ndarray
        Optimised value of every latent of ``init``, float32, shape ``(n, ...)`` as given.
    loss : ndarray, shape (n,)
        Each image's objective evaluated at the returned latents.
    curve : ndarray, shape (steps,)
        Mean objective over all images at the start of each step (before the update),
        the images of every batch aligned by step number.
    """

    latents: dict[str, np.ndarray]
    loss: np.ndarray
    curve: np.ndarray


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: expected a tensor or array, got {type(x).__name__}") from exc


def _validate(
    init: Mapping[str, Any],
    targets: Any,
    fixed: Mapping[str, Any] | None,
    latent_reg: Mapping[str, float] | None,
    steps: int,
    lr: float,
    batch_size: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
    """Check arguments; return float32 ``init`` and ``targets`` tensors and ``fixed`` tensors."""
    T = _as_tensor(targets, "targets")
    if T.ndim != 4 or T.shape[1] != 3:
        raise ShapeMismatchError("targets", "(n, 3, H, W) images in [0, 1]", tuple(T.shape))
    n = int(T.shape[0])
    if n == 0:
        raise ShapeMismatchError("targets", "at least one image", tuple(T.shape))
    if not torch.is_floating_point(T):
        raise ConfigError(f"targets: expected floating-point images in [0, 1], got dtype {T.dtype}")
    if not isinstance(init, Mapping) or not init:
        raise ConfigError("init: expected a non-empty dict {latent name: (n, ...) starting values}")
    Z0: dict[str, torch.Tensor] = {}
    for key, value in init.items():
        t = _as_tensor(value, f"init[{key!r}]")
        if t.ndim < 2 or t.shape[0] != n:
            raise ShapeMismatchError(
                f"init[{key!r}]", f"({n}, ...) (one row per target image)", tuple(t.shape)
            )
        if not torch.is_floating_point(t):
            raise ConfigError(f"init[{key!r}]: expected floating-point values, got dtype {t.dtype}")
        Z0[key] = t.detach().float()
    F: dict[str, torch.Tensor] = {}
    for key, value in (fixed or {}).items():
        if key in Z0:
            raise ConfigError(f"fixed[{key!r}]: also in init; a latent is either optimised or fixed")
        t = _as_tensor(value, f"fixed[{key!r}]")
        if t.ndim < 1 or t.shape[0] != n:
            raise ShapeMismatchError(f"fixed[{key!r}]", f"({n}, ...) (one row per target image)", tuple(t.shape))
        F[key] = t.detach()
    unknown = sorted(set(latent_reg or {}) - set(Z0))
    if unknown:
        raise ConfigError(f"latent_reg: keys {unknown} are not optimised latents; init has {sorted(Z0)}")
    for key, w in (latent_reg or {}).items():
        if not float(w) >= 0:
            raise ConfigError(f"latent_reg[{key!r}] must be >= 0, got {w}")
    if int(steps) != steps or steps < 0:
        raise ConfigError(f"steps must be a non-negative integer, got {steps}")
    if not lr > 0:
        raise ConfigError(f"lr must be > 0, got {lr}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
    return Z0, T.detach().float(), F


def _features(perceptual: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    feats = perceptual(images)
    if not isinstance(feats, torch.Tensor) or feats.ndim < 1 or feats.shape[0] != images.shape[0]:
        got = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise ShapeMismatchError("perceptual(images)", f"({images.shape[0]}, ...) features", got)
    return feats.reshape(images.shape[0], -1)


def invert(
    render: Render,
    init: dict[str, torch.Tensor],
    targets: torch.Tensor,
    *,
    steps: int = 200,
    lr: float = 0.05,
    seed: int = 0,
    batch_size: int = 16,
    perceptual: Callable[[torch.Tensor], torch.Tensor] | None = None,
    perceptual_weight: float = 1.0,
    pixel_weight: float = 1.0,
    latent_reg: dict[str, float] | None = None,
    progress: bool = False,
    fixed: dict[str, torch.Tensor] | None = None,
    device: str | torch.device | None = None,
) -> InversionResult:
    """Optimise latents so that ``render(latents)`` reproduces ``targets``.

    Parameters
    ----------
    render : callable
        ``render(latents) -> images``: ``latents`` maps each key of ``init`` (and of
        ``fixed``) to the rows of one batch, ``images`` is ``(b, 3, H, W)`` in [0, 1] and
        differentiable with respect to the latents. Its parameters are not updated
        (only the latents are handed to the optimiser); freeze them to save memory.
    init : dict of str to tensor
        Starting value ``(n, ...)`` of every latent to optimise; only these are optimised.
    targets : tensor, shape (n, 3, H, W)
        Images to reproduce, float in [0, 1].
    steps : int
        Adam steps per batch (0 evaluates the objective at ``init``).
    lr : float
        Adam learning rate.
    seed : int
        Seed of torch's global generator while ``render``/``perceptual`` run (forked, so
        the caller's RNG state is unchanged).
    batch_size : int
        Images optimised together.
    perceptual : callable, optional
        ``perceptual(images) -> features (b, ...)``, differentiable; the squared feature
        distance to the targets' features (computed once) is added to the objective.
    perceptual_weight, pixel_weight : float
        Weights of the feature and pixel mean squared errors.
    latent_reg : dict of str to float, optional
        L2 penalty weight per latent key: ``weight * mean(z ** 2)`` per image (with a
        standard-normal prior, this pulls latents towards the region the generator saw).
    progress : bool
        Show a tqdm bar over all optimisation steps with the running mean loss.
    fixed : dict of str to tensor, optional
        Per-image inputs ``(n, ...)`` that ``render`` needs but that are not optimised
        (e.g. IC-GAN's instance features); sliced per batch like the latents.
    device : str or torch.device, optional
        Where latents and targets live during optimisation; default: ``targets.device``.
        ``render`` must accept tensors on that device.

    Returns
    -------
    InversionResult
        Optimised latents (numpy float32), per-image final loss and mean loss curve.

    Raises
    ------
    ShapeMismatchError
        ``targets`` is not ``(n, 3, H, W)``, a latent does not have ``n`` rows, or
        ``render``/``perceptual`` return the wrong shape.
    ConfigError
        Invalid option values or ``latent_reg``/``fixed`` keys that do not fit ``init``.
    """
    Z0, T, F = _validate(init, targets, fixed, latent_reg, steps, lr, batch_size)
    dev = torch.device(device) if device is not None else T.device
    n = int(T.shape[0])
    reg = {k: float(w) for k, w in (latent_reg or {}).items() if float(w) > 0}
    out = {k: np.empty(tuple(v.shape), dtype=np.float32) for k, v in Z0.items()}
    final = np.empty(n, dtype=np.float64)
    curve = np.zeros(int(steps), dtype=np.float64)
    starts = range(0, n, int(batch_size))

    from tqdm.auto import tqdm

    bar = tqdm(total=len(starts) * int(steps), desc="inversion", disable=not progress, leave=False)

    def objective(
        params: dict[str, torch.Tensor], fix: dict[str, torch.Tensor], tgt: torch.Tensor, tgt_feats: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-image loss ``(b,)``."""
        images = render({**fix, **params})
        if not isinstance(images, torch.Tensor) or tuple(images.shape) != tuple(tgt.shape):
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ShapeMismatchError("render(latents)", f"images of the targets' shape {tuple(tgt.shape)}", got)
        b = tgt.shape[0]
        loss = pixel_weight * (images.float() - tgt).pow(2).reshape(b, -1).mean(1)
        if tgt_feats is not None:
            feats = _features(perceptual, images)  # type: ignore[arg-type]
            if feats.shape != tgt_feats.shape:
                raise ShapeMismatchError("perceptual(render(latents))", tuple(tgt_feats.shape), tuple(feats.shape))
            loss = loss + perceptual_weight * (feats.float() - tgt_feats).pow(2).mean(1)
        for key, w in reg.items():
            loss = loss + w * params[key].pow(2).reshape(b, -1).mean(1)
        return loss

    # fork_rng restores the caller's CPU (and CUDA, when used) generator state afterwards.
    cuda_devices = [dev] if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(int(seed))
            for start in starts:
                stop = min(start + int(batch_size), n)
                tgt = T[start:stop].to(dev)
                fix = {k: v[start:stop].to(dev) for k, v in F.items()}
                tgt_feats = None
                if perceptual is not None and perceptual_weight != 0:
                    with torch.no_grad():
                        tgt_feats = _features(perceptual, tgt).float()
                params = {k: v[start:stop].clone().to(dev).requires_grad_(True) for k, v in Z0.items()}
                opt = torch.optim.Adam(list(params.values()), lr=float(lr))
                for step in range(int(steps)):
                    opt.zero_grad(set_to_none=True)
                    loss = objective(params, fix, tgt, tgt_feats)
                    # Sum, not mean: each latent gets its own image's gradient whatever the batch.
                    loss.sum().backward()
                    opt.step()
                    curve[step] += float(loss.detach().sum())
                    bar.update(1)
                    if progress and step % 10 == 0:
                        bar.set_postfix(loss=f"{float(loss.detach().mean()):.4g}")
                with torch.no_grad():
                    final[start:stop] = objective(params, fix, tgt, tgt_feats).double().cpu().numpy()
                for k, p in params.items():
                    out[k][start:stop] = p.detach().float().cpu().numpy()
    finally:
        bar.close()
    return InversionResult(latents=out, loss=final.astype(np.float32), curve=(curve / n).astype(np.float32))
