"""Encoder-guided ROI images (NeuroGen-style search), checked in closed loop: an exploratory measurement.

The reference ROI-optimal images (Brain-Diffuser, IC-GAN) decode ``mask . W``, the decoder's
backward weights. Gu et al.'s NeuroGen asks the question the other way round: among images a
generator can draw, which does an *encoding* model predict to drive the region most? This script
measures that alternative on the simulated data, without touching the roi stage:

1. candidates: the generator draws ``--candidates`` images from the instance features of randomly
   chosen training stimuli with fresh noise (seeded);
2. search: a voxel-wise ridge encoding model fitted on the *training* split (low-level + CLIP-small
   features, as the roi stage's ``fitted`` model) predicts every candidate's voxel responses,
   z-scored against its predictions for the training stimuli; per category ROI the winner is the
   candidate with the largest margin over the strongest other category ROI;
3. check: the winners go through the simulator's *true* model (category areas estimated from the
   image), exactly as the roi stage scores its images: selective among the category ROIs, and the
   percentile of the drive among the natural test stimuli (acceptance: >= 90th).

The true model plays no part in the search, and the test stimuli only in the check. It reads the
artifacts of a roi run on ``experiment=gans_sim`` (``python -m pipelines.explore_roi experiment=gans_sim``)::

    python benchmarks/roi_search.py --roi-key <key of artifacts/subj01/roi/...> [--candidates 1000]
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


def build_space(params: dict, decode: dict | None = None):
    """The latent space an extract artifact was made with, from its recorded configuration.

    Decode-only settings are not in the extract key, so its manifest keeps those of the run that first
    encoded; ``decode`` (the roi stage's record of the space's settings) takes precedence.
    """
    from hydra.utils import instantiate  # as pipelines.config.build_spaces builds every space

    return instantiate({**params["space"], **(decode or {}), "progress": False})


def main(argv: list[str] | None = None) -> None:
    """Search, check, print."""
    from brainrecon.images import to_uint8_hwc
    from brainrecon.roi.closed_loop import (
        ClipEmbeddingFeatures,
        KernelRidgeReadout,
        LowLevelFeatures,
        SemanticEstimator,
        SimulatedResponses,
        VoxelwiseEncodingModel,
        closed_loop,
        response_scale,
        roi_means,
    )
    from brainrecon.roi.explore import data_labels
    from brainrecon.roi.masks import resolve_rois
    from brainrecon.sim.truth import load_truth
    from brainrecon.stages.base import ArtifactStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    ap.add_argument("--scope", default="subj01")
    ap.add_argument("--roi-key", required=True)
    ap.add_argument("--space", default="icgan")
    ap.add_argument("--candidates", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    store = ArtifactStore(args.artifacts)
    roi = store.open(args.scope, "roi", args.roi_key)
    inputs = roi.manifest["inputs"]
    data = store.open(args.scope, "data", inputs["data"]["key"])
    extract = store.open(args.scope, "extract", inputs[f"extract/{args.space}"]["key"])
    space = build_space(extract.manifest["params"], (roi.manifest["params"].get("decode") or {}).get(args.space))
    info = data.json("info")
    labels = data_labels(data)
    voxel_ijk = np.asarray(data.array("voxel_ijk"))
    restrict = labels["nsdgeneral"] > 0 if "nsdgeneral" in labels else None
    specs, masks = resolve_rois(["floc"], labels, voxel_ijk=voxel_ijk, restrict=restrict)
    names = [s.name for s in specs]
    groups = {s.name: s.group for s in specs}
    stim_tr, stim_te = np.asarray(data.array("stimuli_train")), np.asarray(data.array("stimuli_test"))

    # 1. candidates: training instances, fresh noise
    rng = np.random.default_rng(args.seed)
    rows = np.sort(rng.choice(len(stim_tr), size=min(args.candidates, len(stim_tr)), replace=False))
    lat = {t: np.asarray(extract.array(f"train/{t}")[rows]) for t in space.targets}
    if "noise" in lat:
        lat["noise"] = rng.standard_normal(lat["noise"].shape).astype(np.float32)
    cands = []
    for start in range(0, len(rows), 100):
        batch = {t: v[start:start + 100] for t, v in lat.items()}
        cands.append(to_uint8_hwc(space.decode(batch, seed=args.seed + start)))
    cands = np.concatenate(cands)
    t_draw = time.perf_counter() - t0

    # 2. search with the encoding model fitted on the training split
    clip = ClipEmbeddingFeatures("bundled:clip_small")
    enc = VoxelwiseEncodingModel([LowLevelFeatures(), clip]).fit(stim_tr, np.asarray(data.array("X_train")))
    mu, sd = response_scale(enc, stim_tr)  # the closed loop's z-scoring
    R = roi_means((enc.predict(cands) - mu) / sd, masks)  # (n_candidates, n_rois)
    winners, margins = [], []
    for i, n in enumerate(names):
        peers = [j for j, m in enumerate(names) if groups[m] == groups[n] and j != i]
        margin = R[:, i] - (R[:, peers].max(1) if peers else 0.0)
        winners.append(int(np.argmax(margin)))
        margins.append(float(margin.max()))
    chosen = cands[winners][None]  # (1 draw, n_rois, H, W, 3)

    # 3. check with the simulator's true model
    truth = load_truth(Path(info["sim_root"]))
    tr_ids, te_ids = np.asarray(data.array("train_ids")), np.asarray(data.array("test_ids"))
    estimator = SemanticEstimator([clip], KernelRidgeReadout(kernel="rbf"), categories=truth.categories).fit(
        stim_tr, truth.semantics[tr_ids])
    model = SimulatedResponses.from_sim_root(info["sim_root"], voxel_ijk, estimator)
    label = f"{args.space}_search"
    res = closed_loop(model, {label: chosen}, masks, groups, natural_train=stim_tr, natural_test=stim_te,
                      natural_test_semantics=truth.semantics[te_ids])
    est = estimator(chosen[0])
    print(f"roi/{args.roi_key}: {args.space}, {len(cands)} candidates drawn in {t_draw:.0f} s "
          f"(instances of random training stimuli, fresh noise, seed {args.seed}); total {time.perf_counter() - t0:.0f} s")
    print("search (fitted encoding model, training split): winner per ROI, its predicted margin, and the "
          "estimated category areas of the winning image")
    for i, n in enumerate(names):
        areas = ", ".join(f"{c} {a:.2f}" for c, a in zip(truth.categories, est[i]) if a >= 0.01)
        print(f"  {n:<7} candidate {rows[winners[i]]:>5} (training row)  predicted margin {margins[i]:+.2f}  "
              f"areas: {areas or 'none >= 0.01'}")
    print(f"\nclosed loop, {label} images, {res.model}:")
    print(res.format_table(label))
    acc = res.acceptance(label)
    print(f"acceptance 1 (category ROIs selective and >= 90th percentile): {'PASS' if acc['passed'] else 'FAIL'} "
          f"{acc['per_roi']}")


if __name__ == "__main__":
    main()
