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
            parts = []
            for start in range(0, n, self.batch_size):
                sl = slice(start, min(start + self.batch_size, n))
                init = None if previous is None else previous[sl]
                parts.append(space.decode({k: v[sl] for k, v in lat.items()}, init=init, seed=seed + start))
            previous = np.concatenate(parts).astype(np.float32, copy=False)
            out[name] = previous
        return out


def brain_diffuser(vdvae: LatentSpace, versatile: LatentSpace, batch_size: int = 32) -> Reconstructor:
    """Brain-Diffuser's chain: VDVAE image, then Versatile Diffusion img2img from it."""
    return Reconstructor([("vdvae", vdvae), ("versatile", versatile)], batch_size=batch_size)
