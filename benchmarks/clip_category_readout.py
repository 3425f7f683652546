"""How much of each scene category do a small CLIP's vision features hold?

The small Versatile Diffusion draws what its CLIP conditioning encodes: a category the CLIP-vision
tokens barely hold cannot be drawn back from them, neither from a stimulus's true features nor
from an ROI-optimal latent. This measures it directly. It draws the scenes the small models are
trained on (``scripts/sim_training_images.py``'s defaults: seed 1000, 128 px, solid bodies, the last
600 held out, as in training), encodes them with each CLIP given, fits a ridge regression from the
vision features to the scenes' true category areas on the training scenes (alpha by generalised
cross-validation on them) and prints the Pearson r per category on the held-out scenes.

Three feature sets: the class token (token 0, the one trained to align with the captions), all
tokens flattened, and the mean of the patch tokens. No fMRI and no generator are involved. About
1 minute per CLIP on 2 CPU cores.

Usage::

    python benchmarks/clip_category_readout.py                       # the bundled small CLIPs
    python benchmarks/clip_category_readout.py --clip bundled:clip_small_solid /tmp/other_clip
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    """Print and return, per CLIP and feature set, the held-out r of each category."""
    from brainrecon.decoding.ridge import RidgeDecoder
    from brainrecon.latents.versatile.clip import load_clip
    from brainrecon.roi.closed_loop import column_scores
    from brainrecon.sim.stimuli import CATEGORIES, procedural_stimuli

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", nargs="+", default=["bundled:clip_small_solid", "bundled:clip_small"])
    ap.add_argument("--n", type=int, default=6000, help="scenes drawn (the training scenes' count)")
    ap.add_argument("--n-heldout", type=int, default=600)
    ap.add_argument("--seed", type=int, default=1000, help="scene seed (1000: the small models' training scenes)")
    ap.add_argument("--body-shape", default="solid")
    args = ap.parse_args(argv)
    if not 0 < args.n_heldout < args.n - 1:
        raise SystemExit(f"--n-heldout: expected between 1 and {args.n - 2}, got {args.n_heldout}")

    stim = procedural_stimuli(args.n, 128, np.random.default_rng(args.seed), progress=True,
                              body_shape=args.body_shape)
    train, test = slice(0, args.n - args.n_heldout), slice(args.n - args.n_heldout, args.n)
    areas = stim.semantics.astype(np.float64)
    print(f"{args.n} scenes (seed {args.seed}, {args.body_shape} bodies); ridge on the first "
          f"{args.n - args.n_heldout}, Pearson r of the category areas on the last {args.n_heldout}")
    out: dict[str, dict[str, list[float]]] = {}
    for name in args.clip:
        t0 = time.perf_counter()
        enc = load_clip(name)
        tokens = enc.encode_images(stim.images)  # float32, the ridge's working precision
        feature_sets = {
            "class token": tokens[:, 0],
            "all tokens": tokens.reshape(len(tokens), -1),
            "patch mean": tokens[:, 1:].mean(1),
        }
        print(f"\n{name} ({enc.vision_tokens} vision tokens x {enc.dim})")
        out[name] = {}
        for label, X in feature_sets.items():
            ridge = RidgeDecoder(alphas=np.logspace(-2, 5, 15)).fit(X[train], areas[train])
            r, _ = column_scores(ridge.predict(X[test]), areas[test])
            out[name][label] = r
            print(f"  {label:12s} " + "  ".join(f"{c} {v:+.2f}" for c, v in zip(CATEGORIES, r)))
        print(f"  ({time.perf_counter() - t0:.0f} s)")
    return out


if __name__ == "__main__":
    main()
