"""Multi-stage reconstructors: chains of latent spaces, each refining the previous images.

Brain-Diffuser is a two-stage chain: the VDVAE decodes its predicted latents into a
low-level image, and Versatile Diffusion runs img2img from that image, guided by the
predicted CLIP text and vision tokens. :class:`Reconstructor` runs such a chain on
latents held in memory (notebooks, scripts). The staged pipeline runs the same chain
with ``generate.init_from.<space>: <previous space>``, which also caches every stage.

Example
-------
>>> chain = brain_diffuser(vdvae_space, versatile_space)            # doctest: +SKIP
>>> images = chain({"vdvae": {"z": z_hat}, "versatile": {"clip_text": t_hat, "clip_vision": v_hat}})
>>> images["vdvae"], images["versatile"]                             # each (n, 3, H, W) in [0, 1]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError, ShapeMismatchError
from brainrecon.latents.base import LatentSpace


class Reconstructor:
    """Decode latents through a chain of spaces; each stage starts from the previous stage's images.

    Parameters
    ----------
    stages : sequence of (str, LatentSpace)
        Stage names and spaces, in order. The first stage decodes without an initial image.
    batch_size : int
        Images per ``decode`` call (bounds memory; results do not depend on it beyond the
        per-batch seeds ``seed + start``, as in the generate stage).
    """

    def __init__(self, stages: Sequence[tuple[str, LatentSpace]], batch_size: int = 32) -> None:
        if not stages:
            raise ConfigError("Reconstructor: expected at least one (name, space) stage, got none")
        names = [n for n, _ in stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"Reconstructor: stage names must be unique, got {names}")
        if batch_size < 1:
            raise ConfigError(f"Reconstructor.batch_size: expected >= 1, got {batch_size}")
        self.stages = list(stages)
        self.batch_size = int(batch_size)

    def __call__(self, latents: Mapping[str, Mapping[str, np.ndarray]], *, seed: int = 0) -> dict[str, np.ndarray]:
        """Images of every stage, ``{name: (n, 3, H, W) float32 in [0, 1]}``.

        ``latents[name]`` holds that stage's targets (e.g. ``{"z": ...}`` for the VDVAE).
        """
        out: dict[str, np.ndarray] = {}
        previous: np.ndarray | None = None
        n: int | None = None
        for name, space in self.stages:
            if name not in latents:
                raise ShapeMismatchError("Reconstructor latents", f"a mapping for every stage {[s for s, _ in self.stages]}", sorted(latents))
            lat = {k: np.asarray(v) for k, v in latents[name].items()}
            rows = {len(v) for v in lat.values()}
            if len(rows) != 1 or (n is not None and rows != {n}):
                raise ShapeMismatchError(f"Reconstructor latents[{name!r}] rows", n if n is not None else "one count", sorted(rows))
            n = rows.pop()
            previous = _decode_batched(space, lat, previous, self.batch_size, seed)
            out[name] = previous
        return out


def brain_diffuser(vdvae: LatentSpace, versatile: LatentSpace, batch_size: int = 32) -> Reconstructor:
    """Brain-Diffuser's chain: VDVAE image, then Versatile Diffusion img2img from it."""
    return Reconstructor([("vdvae", vdvae), ("versatile", versatile)], batch_size=batch_size)


# --------------------------------------------------------------------------- strength calibration
#: Metrics scored on the held-out images (those the acceptance of a chain looks at).
CALIBRATION_METRICS: tuple[str, ...] = ("PixCorr", "SSIM", "EffNet-Lite0 2-way", "CLIP-small 2-way", "CLIP 2-way",
                                        "Inception 2-way")


def choose_strength(pixcorr: Mapping[float, float], reference: float, max_drop: float = 0.2) -> float | None:
    """The largest strength whose PixCorr stays within ``max_drop`` (relative) of ``reference``.

    The rule keeps the most semantic change img2img allows while the layout of the image it
    starts from survives; None when no strength keeps it.

    Parameters
    ----------
    pixcorr : mapping of float to float
        Mean PixCorr of the chain's images per strength (held-out training images).
    reference : float
        Mean PixCorr of the images the chain starts from, on the same images.
    max_drop : float
        Largest relative loss allowed, in [0, 1).
    """
    if not 0.0 <= max_drop < 1.0:
        raise ConfigError(f"max_pixcorr_drop: expected a value in [0, 1), got {max_drop}")
    floor = (1.0 - max_drop) * float(reference)
    ok = [float(s) for s, v in pixcorr.items() if np.isfinite(v) and v >= floor]
    return max(ok) if ok else None


def _decode_batched(space: LatentSpace, latents: Mapping[str, np.ndarray], init: np.ndarray | None,
                    batch_size: int, seed: int) -> np.ndarray:
    n = len(next(iter(latents.values())))
    parts = []
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        parts.append(space.decode({k: v[sl] for k, v in latents.items()},
                                  init=None if init is None else init[sl], seed=seed + start))
    return np.concatenate(parts).astype(np.float32, copy=False)


def strength_sweep(
    init_space: LatentSpace,
    init_latents: Mapping[str, np.ndarray],
    space: Any,
    latents: Mapping[str, np.ndarray],
    strengths: Sequence[float],
    *,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Images of a two-stage chain at several img2img strengths of its second stage.

    Returns ``{"init": first-stage images, "strength=<s>": second-stage images, ...}``, each
    ``(n, 3, H, W)`` in [0, 1]; every strength starts from the same first-stage images and seeds.
    ``space`` must offer ``with_strength`` (:class:`~brainrecon.latents.versatile.VersatileSpace`).
    """
    from tqdm.auto import tqdm

    if not hasattr(space, "with_strength"):
        raise ConfigError(f"strength_sweep: the space {getattr(space, 'name', space)!r} has no img2img strength")
    if not strengths:
        raise ConfigError("strengths: expected at least one value, got none")
    init = _decode_batched(init_space, init_latents, None, batch_size, seed)
    out = {"init": init}
    for s in tqdm(list(strengths), desc="img2img strengths", disable=not progress):
        out[f"strength={float(s):g}"] = _decode_batched(space.with_strength(float(s)), latents, init, batch_size, seed)
    return out
