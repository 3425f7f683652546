"""Which category does a category ROI's latent direction hold, read before any image is made?

The ROI-optimal latents of Brain-Diffuser and IC-GAN come from the *decoder*: ``mask . W``
(a backward model). Backward weights are not activation patterns (Haufe et al. 2014), so this
check compares them with the *forward* view, the covariance of the ROI's mean training response
with the training latents (``sum_i r_i (y_i - mean y)``, r standardised). Both directions are read
by the closed loop's semantic estimator (simulated data: trained on the training stimuli's CLIP-small
embeddings and true category areas), in a space whose target is a CLIP-small image embedding:
IC-GAN's ``instance`` or token 0 of Versatile Diffusion's ``clip_vision``. It also prints how the
ROI's mean training response correlates with each category's true area, to tell a simulator
property from a representation property. With ``--contrast`` it also reads the backward
direction of the category-contrast patterns (``roi.contrast``: the other category ROIs set below
their mean).

It reads the artifacts of a roi run (``python -m pipelines.explore_roi``, or with
``experiment=gans_sim`` for IC-GAN) and fits nothing but the estimator (seconds)::

    python benchmarks/roi_directions.py --roi-key <key of artifacts/subj01/roi/...> --space icgan --target instance
    python benchmarks/roi_directions.py --roi-key <key> --space versatile --target clip_vision
    python benchmarks/roi_directions.py --roi-key <key> --space icgan --target instance --contrast 0.5 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CATEGORY_ROIS = {"faces": "face", "words": "word", "places": "building", "bodies": "body"}


def main(argv: list[str] | None = None) -> None:
    """Print, per category ROI, the estimator's reading of the backward and forward directions."""
    from brainrecon.decoding.ridge import RidgeDecoder
    from brainrecon.roi.closed_loop import ClipEmbeddingFeatures, KernelRidgeReadout, SemanticEstimator, percentile_of
    from brainrecon.roi.masks import synthetic_patterns
    from brainrecon.sim.truth import load_truth
    from brainrecon.stages.base import ArtifactStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    ap.add_argument("--scope", default="subj01")
    ap.add_argument("--roi-key", required=True, help="key of a complete roi artifact (its inputs name the run)")
    ap.add_argument("--space", required=True, help="latent space, e.g. icgan or versatile")
    ap.add_argument("--target", required=True, help="target holding a CLIP-small image embedding: instance or clip_vision")
    ap.add_argument("--contrast", type=float, nargs="*", default=[0.5, 1.0],
                    help="also read the backward direction of the category-contrast patterns (roi.contrast)")
    args = ap.parse_args(argv)

    store = ArtifactStore(args.artifacts)
    roi = store.open(args.scope, "roi", args.roi_key)
    inputs = roi.manifest["inputs"]
    if f"fit/{args.space}" not in inputs:
        raise SystemExit(f"roi/{args.roi_key} has no space {args.space!r}; its inputs are {sorted(inputs)}")
    data = store.open(args.scope, "data", inputs["data"]["key"])
    extract = store.open(args.scope, "extract", inputs[f"extract/{args.space}"]["key"])
    fit = store.open(args.scope, "fit", inputs[f"fit/{args.space}"]["key"])
    truth = load_truth(Path(data.json("info")["sim_root"]))
    tr_ids = np.asarray(data.array("train_ids"))
    estimator = SemanticEstimator([ClipEmbeddingFeatures("bundled:clip_small")], KernelRidgeReadout(kernel="rbf"),
                                  categories=truth.categories).fit(np.asarray(data.array("stimuli_train")),
                                                                   truth.semantics[tr_ids])
    natural = estimator(np.asarray(data.array("stimuli_test")))
    X = np.asarray(data.array("X_train"), dtype=np.float64)
    Y = np.asarray(extract.array(f"train/{args.target}"), dtype=np.float64)
    Yc = Y.reshape(len(Y), -1) - Y.reshape(len(Y), -1).mean(0)
    decoder = RidgeDecoder.load(fit.path / args.target)

    def reading(direction: np.ndarray) -> np.ndarray:
        v = direction.reshape(Y.shape[1:])
        emb = v[0] if v.ndim == 2 else v  # token 0 of clip_vision is the image embedding
        return estimator.readout.predict((emb / np.linalg.norm(emb))[None])[0]

    print(f"roi/{args.roi_key}, {args.space}.{args.target}; estimator readings (area of the category, its percentile "
          "among the natural test stimuli; the category read highest)")
    masks = {name: np.asarray(data.array(f"roi_floc-{name}")) > 0 for name in CATEGORY_ROIS}
    contrasts = {c: synthetic_patterns(masks, contrast=c, groups=["category"] * len(masks)) for c in args.contrast}
    for i, (name, cat) in enumerate(CATEGORY_ROIS.items()):
        mask = masks[name]
        r = X[:, mask].mean(1)
        r = (r - r.mean()) / r.std()
        directions = {"backward (mask . W)": np.asarray(decoder.project(mask[None].astype(np.float32))[0], np.float64),
                      "forward (cov(r, y))": Yc.T @ r / len(r)}
        for c, Q in contrasts.items():
            directions[f"backward, contrast {c:g}"] = np.asarray(decoder.project(Q[i:i + 1])[0], np.float64)
        j = truth.categories.index(cat)
        parts = []
        for label, d in directions.items():
            e = reading(d)
            top = truth.categories[int(np.argmax(e))]
            second = "" if top != cat else (lambda k: f", next {truth.categories[k]} {e[k]:.3f}")(
                int(np.argsort(e)[-2]))
            parts.append(f"{label}: {cat} {e[j]:.3f} ({percentile_of(e[j], natural[:, j]):.0f}th), top {top} {e.max():.3f}"
                         + second)
        corr = {c: np.corrcoef(r, truth.semantics[tr_ids, k])[0, 1] for k, c in enumerate(truth.categories)}
        print(f"  {name:<7} " + "\n          ".join(parts))
        print(f"  {'':<7} ROI mean training response vs true areas: "
              + ", ".join(f"{c} {v:+.2f}" for c, v in corr.items()))


if __name__ == "__main__":
    main()
