"""Which CLIP-small features let the closed loop's semantic estimator read bodies best?

The closed loop estimates the category areas of a generated image from its CLIP-small image
embedding (``SemanticEstimator``, RBF kernel ridge). Bodies are read worst. This script fits the
same readout, with leave-one-out hyper-parameters on the training stimuli, on four CLIP-small
feature sets and two kernels, and prints the held-out correlation with the true areas of the
test stimuli per category. It reads the default experiment's data artifact (after ``make demo``)::

    python benchmarks/roi_estimator_features.py [--artifacts artifacts] [--data-key KEY]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> None:
    """Fit and score every feature set and kernel; print one line each."""
    from brainrecon.latents.versatile.clip import load_clip
    from brainrecon.roi.closed_loop import ClipEmbeddingFeatures, KernelRidgeReadout, column_scores
    from brainrecon.sim.truth import load_truth
    from brainrecon.stages.base import ArtifactStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    ap.add_argument("--scope", default="subj01")
    ap.add_argument("--data-key", default=None, help="data artifact (default: the newest simulated one)")
    args = ap.parse_args(argv)

    store = ArtifactStore(args.artifacts)
    sims = [a for a in store.list(args.scope, "data") if a.json("info").get("source") == "sim"]
    if args.data_key:
        sims = [a for a in sims if a.key == args.data_key]
    if not sims:
        raise SystemExit(f"no simulated data artifact under {args.artifacts}/{args.scope}/data: run `make demo` first")
    data = sorted(sims, key=lambda a: a.manifest["timing"]["started"])[-1]
    truth = load_truth(Path(data.json("info")["sim_root"]))
    tr, te = np.asarray(data.array("train_ids")), np.asarray(data.array("test_ids"))
    s_tr, s_te = np.asarray(data.array("stimuli_train")), np.asarray(data.array("stimuli_test"))
    clip = load_clip("bundled:clip_small")

    t_tr, t_te = clip.encode_images(s_tr), clip.encode_images(s_te)  # (n, 65, 64): the versatile.clip_vision targets
    emb = ClipEmbeddingFeatures()
    e_tr, e_te = emb(s_tr), emb(s_te)
    feature_sets = {
        "image embedding (the estimator's)": (e_tr, e_te),
        "mean of patch tokens": (t_tr[:, 1:].mean(1), t_te[:, 1:].mean(1)),
        "embedding + max-pooled patch tokens": (np.concatenate([e_tr, t_tr[:, 1:].max(1)], 1),
                                                np.concatenate([e_te, t_te[:, 1:].max(1)], 1)),
        "all 65 tokens": (t_tr.reshape(len(t_tr), -1), t_te.reshape(len(t_te), -1)),
    }
    print(f"data/{data.key}: held-out r of estimated vs true category areas ({len(te)} test stimuli)")
    for name, (a, b) in feature_sets.items():
        for kernel in ("rbf", "linear"):
            pred = KernelRidgeReadout(kernel=kernel).fit(a, truth.semantics[tr]).predict(b)
            r = column_scores(pred.astype(np.float64), truth.semantics[te])[0]
            print(f"  {name:<36} {kernel:<6} " + "  ".join(f"{c} {v:.2f}" for c, v in zip(truth.categories, r)))


if __name__ == "__main__":
    main()
