"""The extract stage: stimuli -> regression targets of one latent space.

Writes ``train/<target>.npy`` and ``test/<target>.npy``, one row per beta row of
the data artifact, in the target's natural shape ``(n, *spec.shape)``. Arrays
are filled batch by batch into memory-mapped files, so a large target
(CLIP-vision tokens of 9,000 images: 7 GB) never sits in RAM whole.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from brainrecon.errors import ConfigError, ShapeMismatchError
from brainrecon.latents.base import LatentSpace, Stimuli
from brainrecon.stages.base import Artifact, RunContext, Stage
from brainrecon.stages.data import read_captions


def space_from(resources: Mapping[str, Any], stage: str) -> LatentSpace:
    space = resources.get("space")
    if space is None:
        raise ConfigError(f"{stage} stage: resources['space'] must hold the built latent space")
    return space


class ExtractStage(Stage):
    """Encode the data artifact's stimuli into a latent space's targets.

    Parameters (``params``)
    -----------------------
    space : dict
        The latent space's configuration (hashed: it defines the targets).
    batch_size : int
        Images per ``encode`` call.
    """

    name = "extract"
    version = 1

    def key(self) -> str:
        """Cache key without the settings the space declares decode-only (``decode_params``).

        Changing how predicted latents become images (e.g. IC-GAN's ``decode_from``) must not
        redo an expensive encoding (IC-GAN inverts every stimulus); the generate stage hashes
        the full space configuration instead, so its images still follow those settings.
        """
        decode_only = set(getattr(self.resources.get("space"), "decode_params", ()) or ())
        space_cfg = self.params.get("space")
        if not decode_only or not isinstance(space_cfg, Mapping):
            return super().key()
        saved = self.params
        try:
            self.params = {**saved, "space": {k: v for k, v in space_cfg.items() if k not in decode_only}}
            return super().key()
        finally:
            self.params = saved

    def fingerprint(self) -> dict[str, Any]:
        """The space's own identity (e.g. a digest of its weights), when it offers one."""
        fp = getattr(self.resources.get("space"), "fingerprint", None)
        return {"space": fp()} if callable(fp) else {}

    def run(self, inputs: Mapping[str, Artifact], ctx: RunContext) -> dict[str, Any]:
        space = space_from(ctx.resources, self.name)
        data = inputs["data"]
        batch = int(self.params.get("batch_size", 64))
        if batch < 1:
            raise ConfigError(f"extract.batch_size: expected >= 1, got {batch}")
        shapes = {}
        for split in ("train", "test"):
            images = data.array(f"stimuli_{split}")
            captions = read_captions(data, split)
            n = len(images)
            outs: dict[str, np.ndarray] = {}
            (ctx.out / split).mkdir(exist_ok=True)
            bar = tqdm(total=n, desc=f"extract {space.name} {split}", unit="img", disable=not ctx.progress)
            for start in range(0, n, batch):
                stop = min(start + batch, n)
                stim = Stimuli(
                    np.asarray(images[start:stop]), None if captions is None else captions[start:stop]
                )
                Z = space.encode(stim)
                for key, spec in space.targets.items():
                    if key not in Z:
                        raise ShapeMismatchError(f"{space.name}.encode targets", sorted(space.targets), sorted(Z))
                    if key not in outs:
                        outs[key] = np.lib.format.open_memmap(
                            ctx.out / split / f"{key}.npy.partial", mode="w+", dtype=np.float32, shape=(n, *spec.shape)
                        )
                    outs[key][start:stop] = Z[key]
                bar.update(stop - start)
            bar.close()
            for key, arr in outs.items():
                arr.flush()
                del arr
                os.replace(ctx.out / split / f"{key}.npy.partial", ctx.out / split / f"{key}.npy")
                shapes[key] = list(space.targets[key].shape)
        return {"space": space.name, "targets": shapes}
