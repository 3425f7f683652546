"""The generate stage: latents -> images, resumable batch by batch.

Three kinds of images are decoded for every latent space, so that every number
in the report stands beside its references from the same run:

``reconstruction``
    from the predicted latents;
``ceiling``
    from the true latents of the test stimuli (what a perfect decoder would give);
``chance``
    from the true latents of the test stimuli in a shuffled order (a
    reconstruction with the right statistics but of the wrong image).

Each batch is committed as ``<kind>/part_<start>.npy`` (uint8, ``(n, H, W, 3)``)
atomically; a killed run resumes at the first missing batch. When all batches
exist they are joined into ``<kind>.npy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from brainrecon.errors import ConfigError
from brainrecon.images import to_float_chw, to_uint8_hwc
from brainrecon.stages.base import Artifact, RunContext, Stage
from brainrecon.stages.extract import space_from
from brainrecon.stages.fit import target_names

KINDS = ("reconstruction", "ceiling", "chance")


def chance_permutation(n: int, seed: int) -> np.ndarray:
    """A derangement-free-of-fixed-points permutation (no image keeps its own latent)."""
    rng = np.random.default_rng(seed)
    if n < 2:
        return np.arange(n)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


class GenerateStage(Stage):
    """Decode predicted (and reference) latents into images.

    Parameters (``params``)
    -----------------------
    seed : int
        Seed of the decoder's sampling and of the chance permutation.
    batch_size : int
        Images per ``decode`` call and per committed part.
    kinds : list of str
        Subset of :data:`KINDS`.
    """

    name = "generate"
    version = 1
    resumable = True

    def run(self, inputs: Mapping[str, Artifact], ctx: RunContext) -> dict[str, Any]:
        space = space_from(ctx.resources, self.name)
        extract, predict = inputs["extract"], inputs["predict"]
        init_art = inputs.get("init")
        seed = int(self.params.get("seed", 0))
        batch = int(self.params.get("batch_size", 32))
        kinds = list(self.params.get("kinds", KINDS))
        bad = sorted(set(kinds) - set(KINDS))
        if bad:
            raise ConfigError(f"generate.kinds: expected a subset of {list(KINDS)}, got unknown {bad}")
        targets = target_names(extract)
        n = len(extract.array(f"test/{targets[0]}"))
        perm = chance_permutation(n, seed)
        summary: dict[str, Any] = {"n": n, "kinds": kinds}
        for kind in kinds:
            final = ctx.out / f"{kind}.npy"
            if final.exists():  # finished before an interruption
                continue
            part_dir = ctx.out / kind
            part_dir.mkdir(exist_ok=True)
            bar = tqdm(total=n, desc=f"generate {space.name} {kind}", unit="img", disable=not ctx.progress)
            for start in range(0, n, batch):
                stop = min(start + batch, n)
                part = part_dir / f"part_{start:06d}.npy"
                if not part.exists():
                    rows = np.arange(start, stop)
                    if kind == "reconstruction":
                        lat = {t: np.asarray(predict.array(f"test/{t}")[rows]) for t in targets}
                    elif kind == "ceiling":
                        lat = {t: np.asarray(extract.array(f"test/{t}")[rows]) for t in targets}
                    else:
                        lat = {t: np.asarray(extract.array(f"test/{t}")[perm[rows]]) for t in targets}
                    init = None
                    if init_art is not None:
                        init = to_float_chw(np.asarray(init_art.array(kind)[rows]))
                    imgs = space.decode(lat, init=init, seed=seed + start)
                    ctx.save_array(f"{kind}/{part.name}", to_uint8_hwc(imgs))
                bar.update(stop - start)
            bar.close()
            parts = [np.load(part_dir / f"part_{s:06d}.npy", allow_pickle=False) for s in range(0, n, batch)]
            ctx.save_array(kind, np.concatenate(parts))
            for s in range(0, n, batch):
                (part_dir / f"part_{s:06d}.npy").unlink()
            part_dir.rmdir()
        ctx.save_array("chance_permutation", perm)
        return summary
