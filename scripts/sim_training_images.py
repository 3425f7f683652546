"""Write procedural scenes for training the project's small generative models.

The scenes come from the simulator's stimulus generator (:mod:`brainrecon.sim.stimuli`) with a
seed of their own (default 1000), so they are drawn independently of any simulated experiment's
training and test stimuli (which use the experiment's seed). Output: ``(n, size, size, 3)``
uint8 ``.npy`` (and captions as a unicode ``.npy`` beside it).

Example::

    python scripts/sim_training_images.py --n 6000 --size 128 --out /tmp/train_images.npy
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from brainrecon.sim.stimuli import procedural_stimuli


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--body-shape", default="solid", help="how bodies are drawn (brainrecon.sim.stimuli.BODY_SHAPES); "
                    "the bundled IC-GAN and BigBiGAN were trained on 'stick'")
    args = ap.parse_args(argv)
    stim = procedural_stimuli(args.n, args.size, np.random.default_rng(args.seed), progress=True, body_shape=args.body_shape)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, stim.images, allow_pickle=False)
    np.save(args.out.with_name(args.out.stem + "_captions.npy"), stim.captions, allow_pickle=False)
    print(f"wrote {args.out} {stim.images.shape}")
    return args.out


if __name__ == "__main__":
    main()
