"""Train the scene segmenter shipped as ``brainrecon/weights/scene_segmenter.safetensors``.

The closed loop of the roi stage reads the category areas of generated images with it
(``roi.semantic_estimator=segmenter``; :mod:`brainrecon.sim.segmenter`). Training data: fresh
procedural scenes drawn by the simulator's scene generator with a seed of their own (default
20261122; the experiments draw their stimuli with the experiment's seed), with the exact label
map of every scene. Held-out check: fresh scenes of another seed, the Pearson r between estimated
and true category areas per category.

Writes, atomically: ``<out>.safetensors``, ``<out>.json`` (architecture) and
``<out>.training.json`` (arguments, loss trace, held-out accuracy, wall time, library versions).

Usage::

    python scripts/train_scene_segmenter.py [--scenes 6000] [--steps 1500] [--width 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> None:
    """Train, check on held-out scenes, and write the weights, config and provenance."""
    from brainrecon.paths import bundled_weights_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=bundled_weights_dir() / "scene_segmenter.safetensors")
    ap.add_argument("--scenes", type=int, default=6000, help="training scenes")
    ap.add_argument("--heldout", type=int, default=500, help="held-out scenes (another seed)")
    ap.add_argument("--size", type=int, default=128, help="side of the drawn scenes (the simulated stimuli's)")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=20261122, help="scene seed (held-out scenes: seed + 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--body-shapes", default="solid,stick",
                    help="comma-separated body shapes of the scenes, in turn (brainrecon.sim.stimuli.BODY_SHAPES)")
    args = ap.parse_args(argv)

    import torch

    from brainrecon.provenance import training_provenance, write_training_provenance
    from brainrecon.roi.closed_loop import column_scores
    from brainrecon.sim.segmenter import (
        SegmenterConfig,
        SegmenterSemantics,
        save_segmenter,
        segmentation_set,
        train_segmenter,
    )
    from brainrecon.sim.stimuli import CATEGORIES

    torch.set_num_threads(args.threads)
    shapes = tuple(args.body_shapes.split(","))
    t0 = time.perf_counter()
    images, targets, _ = segmentation_set(args.scenes, args.seed, args.size, progress=True, body_shapes=shapes)
    model, trace = train_segmenter(images, targets, SegmenterConfig(args.width, tuple(CATEGORIES)),
                                   steps=args.steps, batch=args.batch, lr=args.lr, seed=0, progress=True)
    wall = time.perf_counter() - t0
    out = save_segmenter(model, args.out)
    reader = SegmenterSemantics(str(out), categories=CATEGORIES)
    heldout_r = {}
    for shape in shapes:  # each body shape on its own, so that neither hides a failure of the other
        held_images, _, held_semantics = segmentation_set(args.heldout, args.seed + 1, args.size, body_shapes=(shape,))
        r, r2 = column_scores(reader(held_images).astype(np.float64), held_semantics.astype(np.float64))
        heldout_r[shape] = {"r": [round(float(v), 4) for v in r], "r2": [round(float(v), 4) for v in r2]}
    prov = training_provenance(
        "scripts/train_scene_segmenter.py", vars(args), model, out, trace, wall,
        training_data={"generator": "brainrecon.sim.stimuli.procedural_scene", "scenes": args.scenes,
                       "seed": args.seed, "size": args.size, "body_shapes": list(shapes)},
        heldout={"scenes": args.heldout, "seed": args.seed + 1, "categories": list(CATEGORIES), "by_body_shape": heldout_r},
    )
    write_training_provenance(out, prov)
    print(f"wrote {out} ({prov['weights_bytes'] / 1e6:.2f} MB, {prov['n_parameters']} parameters) in {wall:.1f} s; "
          "held-out r: " + "; ".join(f"{shape} bodies: " + ", ".join(f"{c} {v:.3f}" for c, v in zip(CATEGORIES, h["r"]))
                                     for shape, h in heldout_r.items()))


if __name__ == "__main__":
    main()
