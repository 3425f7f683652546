"""Acceptance of the ROI exploration on the default (simulated) experiment: closed loop and eccentricity.

For each configuration of the roi stage (the reference one, other decoding seeds, a
non-transductive VDVAE scaling, the synthetic patterns, IC-GAN, another simulated experiment, the
scene segmenter as the truth model's semantic reader), prints, per image set (latent space) and encoding model:

* per category ROI (faces, words, places, bodies): the ROI's mean z-scored response to its own
  ROI-optimal image, the strongest other category ROI on that image, whether the target wins
  (``selective``), and the percentile of the drive among the natural test stimuli (with the
  estimated category areas of the semantic estimator, and with the true ones);
* acceptance 1: every category ROI selective and at or above the 90th percentile;
* acceptance 2: the preferred eccentricity of the eccentricity-band images (energy density
  weighted, degrees), its Spearman correlation with the band order, and whether it is strictly
  centre to periphery; how alike neighbouring bands' training responses are (r of their means);
  the correlation of each early visual ROI image's energy map with the ROI's pRF coverage;
* the semantic estimator's held-out accuracy and its accuracy on each generator's ceiling
  images (can the generator show the category at all?);
* a check of the loop itself on natural test stimuli: each category ROI's drive by stimuli with
  and without its category, and how many of its 10 strongest stimuli contain the category.

It reuses the run of ``make demo`` (same configuration, same stage keys) and runs only the roi
stage for each configuration (about 1 minute each on 2 CPU cores).

Usage::

    python benchmarks/roi_closed_loop.py [--artifacts artifacts] [--data data]   # mask and partial, 8 draws each
    python benchmarks/roi_closed_loop.py --configs seed1_segmenter partial_seed1_segmenter   # another simulated experiment
    python benchmarks/roi_closed_loop.py --configs reference seeds4to7 vdvae_train_norm   # the CLIP readout (session 5)
    python benchmarks/roi_closed_loop.py --configs gans_sim          # IC-GAN and BigBiGAN
    python benchmarks/roi_closed_loop.py --overrides latents.versatile.weights_path=artifacts/training/vd_other
    python benchmarks/roi_closed_loop.py --configs contrast0.5 contrast1 gans_sim_contrast0.25 \
        gans_sim_contrast0.5 gans_sim_contrast0.75 gans_sim_contrast1   # the category contrast (roi.contrast)
    python benchmarks/roi_closed_loop.py --configs reference conditional partial gans_sim gans_sim_conditional \
        gans_sim_partial --figure docs/figures/roi_patterns_icgan.png   # the synthetic patterns (roi.pattern)
    python benchmarks/roi_closed_loop.py --configs gans_sim_seed1 gans_sim_partial_seed1 segmenter partial_segmenter \
        gans_sim_segmenter gans_sim_partial_segmenter gans_sim_partial_seed1_segmenter   # another seed; the segmenter
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

# The configurations of the logs up to session 6 read images with the CLIP readout, the default until then; the
# segmenter configurations use the scene segmenter (the default since).
CLIP = ["roi.semantic_estimator=clip"]

#: roi-stage configurations: Hydra overrides on top of conf/roi_explore.yaml.
CONFIGS: dict[str, list[str]] = {
    "reference": CLIP,  # roi.samples (4) draws per ROI, seeds 0-3
    "seeds4to7": ["roi.decode_seed=4", *CLIP],  # four other draws of the same latents
    "vdvae_train_norm": ["+roi.scaling.vdvae.z.method=train_norm", *CLIP],
    # IC-GAN and BigBiGAN (experiment=gans_sim); not run by default: its first run also extracts IC-GAN's
    # latents (an inversion of every stimulus, about 4-6 minutes) unless `python -m pipelines.run experiment=gans_sim`
    # ran before
    "gans_sim": ["experiment=gans_sim", *CLIP],
    # localiser-style contrast of the category ROIs' patterns (roi.contrast, docs/roi.md)
    "contrast0.5": ["roi.contrast=0.5", *CLIP],
    "contrast1": ["roi.contrast=1.0", *CLIP],
    "gans_sim_contrast0.25": ["experiment=gans_sim", "roi.contrast=0.25", *CLIP],
    "gans_sim_contrast0.5": ["experiment=gans_sim", "roi.contrast=0.5", *CLIP],
    "gans_sim_contrast0.75": ["experiment=gans_sim", "roi.contrast=0.75", *CLIP],
    "gans_sim_contrast1": ["experiment=gans_sim", "roi.contrast=1.0", *CLIP],
    # data-driven patterns (roi.pattern, docs/roi.md)
    "conditional": ["roi.pattern=conditional", *CLIP],
    "partial": ["roi.pattern=partial", *CLIP],
    "gans_sim_conditional": ["experiment=gans_sim", "roi.pattern=conditional", *CLIP],
    "gans_sim_partial": ["experiment=gans_sim", "roi.pattern=partial", *CLIP],
    # another simulated experiment (seed 1: other stimuli, brain and noise); its first run simulates the data and
    # extracts every latent (about 10 minutes)
    "gans_sim_seed1": ["experiment=gans_sim", "seed=1", *CLIP],
    "gans_sim_partial_seed1": ["experiment=gans_sim", "seed=1", "roi.pattern=partial", *CLIP],
    # the truth model with the scene segmenter reading the images (roi.semantic_estimator, docs/roi.md)
    "segmenter": ["roi.semantic_estimator=segmenter"],
    "partial_segmenter": ["roi.pattern=partial", "roi.semantic_estimator=segmenter"],
    "gans_sim_segmenter": ["experiment=gans_sim", "roi.semantic_estimator=segmenter"],
    "gans_sim_partial_segmenter": ["experiment=gans_sim", "roi.pattern=partial", "roi.semantic_estimator=segmenter"],
    "gans_sim_partial_seed1_segmenter": ["experiment=gans_sim", "seed=1", "roi.pattern=partial",
                                         "roi.semantic_estimator=segmenter"],
    # session 7 (solid bodies, models retrained on them): other draws and another simulated experiment, segmenter
    "seeds4to7_segmenter": ["roi.decode_seed=4", "roi.semantic_estimator=segmenter"],
    "partial_seeds4to7_segmenter": ["roi.pattern=partial", "roi.decode_seed=4", "roi.semantic_estimator=segmenter"],
    "seed1_segmenter": ["seed=1", "roi.semantic_estimator=segmenter"],
    "partial_seed1_segmenter": ["seed=1", "roi.pattern=partial", "roi.semantic_estimator=segmenter"],
    # session 8: the text weight of Versatile Diffusion's dual conditioning (latents.versatile.mix, default 0.4)
    # twenty draws per ROI (session 11): the same latents, a closer estimate of the expected image
    "draws20_segmenter": ["roi.samples=20", "roi.semantic_estimator=segmenter"],
    "seed1_draws20_segmenter": ["seed=1", "roi.samples=20", "roi.semantic_estimator=segmenter"],
    # encoder guidance of the diffusion for V1-V4 and the eccentricity bands (session 11; docs/roi.md)
    "guided_segmenter": ["roi.guidance.scale=1.0", "roi.semantic_estimator=segmenter"],
    "guided_seeds4to7_segmenter": ["roi.guidance.scale=1.0", "roi.decode_seed=4", "roi.semantic_estimator=segmenter"],
    "guided_seed1_segmenter": ["seed=1", "roi.guidance.scale=1.0", "roi.semantic_estimator=segmenter"],
    "guided_scale0.5_segmenter": ["roi.guidance.scale=0.5", "roi.semantic_estimator=segmenter"],
    "guided_scale2_segmenter": ["roi.guidance.scale=2.0", "roi.semantic_estimator=segmenter"],
    "guided_roi_objective_segmenter": ["roi.guidance.scale=1.0", "roi.guidance.objective=roi",
                                       "roi.semantic_estimator=segmenter"],
    # conf/roi/recommended.yaml: partial for the category ROIs, guidance for the early visual ones
    "recommended": ["roi=recommended"],
    "recommended_seeds4to7": ["roi=recommended", "roi.decode_seed=4"],
    "recommended_seed1": ["roi=recommended", "seed=1"],
    "mix0.7_segmenter": ["latents.versatile.mix=0.7", "roi.semantic_estimator=segmenter"],
    "mix1_segmenter": ["latents.versatile.mix=1.0", "roi.semantic_estimator=segmenter"],
}
DEFAULT_CONFIGS = ["segmenter", "partial_segmenter", "seeds4to7_segmenter", "partial_seeds4to7_segmenter"]


def run_config(overrides: list[str], artifacts: Path, data: Path):
    """Run the roi stage of the default experiment with ``overrides``; return (exploration, seconds)."""
    from hydra import compose, initialize_config_dir

    from brainrecon.roi import RoiExploration
    from brainrecon.stages.base import ArtifactStore, Runner
    from brainrecon.stages.pipeline import build_stages
    from pipelines.config import build_spaces, to_plain

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="roi_explore", overrides=[
            f"paths.artifacts_root={artifacts}", f"paths.data_root={data}", "progress=false", *overrides])
    plain = to_plain(cfg)
    stages = build_stages(plain, build_spaces(cfg))
    runner = Runner(ArtifactStore(artifacts), progress=False)
    t0 = time.perf_counter()
    art = runner.run(stages["roi"])
    ran = [e.label for e in runner.executions]
    if any(r != "roi" for r in ran):
        print(f"  (also ran upstream stages: {ran})")
    return RoiExploration.load(art.path), time.perf_counter() - t0, art.key


def report(name: str, ex, seconds: float, key: str) -> dict:
    from brainrecon.roi.energy import neighbours_text

    """Print one configuration's numbers; return the pass/fail flags."""
    print(f"\n=== {name}  (roi/{key}, {seconds:.1f} s)")
    for k, sc in ex.scalings.items():
        print(f"  scaling {k:<22} {sc.method:<12} scale {sc.scale:.3g}" + ("" if sc.norm is None else f" norm {sc.norm:.3g}"))
    flags = {}
    for model, res in ex.closed_loop.items():
        print(f"  -- closed loop, {model} model: {res.model}")
        est = res.extra.get("semantic_estimator_heldout")
        if est:
            print("     semantic estimator held-out r: " + ", ".join(
                f"{c} {r:.2f}" for c, r in zip(est["categories"], est["r"]) if r is not None))
        for sp, per in (res.extra.get("generator_ceiling_semantics_r") or {}).items():
            print(f"     estimator r on {sp} ceiling images: " + ", ".join(
                f"{c} {r:.2f}" for c, r in per.items() if r is not None))
        for roi, row in (res.extra.get("natural_check") or {}).items():
            e, t = row.get("est"), row.get("true")
            print(f"     natural test stimuli, {roi} ROI: drive with/without {row['category']} "
                  f"{e['drive_with']:+.2f}/{e['drive_without']:+.2f} (true areas {t['drive_with']:+.2f}/{t['drive_without']:+.2f}); "
                  f"top-10 contain it {e['top10_with_category']}/10 ({t['top10_with_category']}/10)")
        for sp, rows in (res.extra.get("roi_latent_semantics") or {}).items():
            print(f"     {sp} ROI latents before generation (the CLIP image embedding they hold): " + ", ".join(
                f"{roi} {r['category']} {r['latent_area']:.3f} ({r['percentile_vs_test']:.0f}th pct)" for roi, r in rows.items()))
        enc = res.extra.get("encoding_model_heldout")
        if enc:
            print(f"     encoding model held-out median voxel r: {enc['median_r']:.3f}")
        for sp in ex.spaces:
            rows = [r for r in res.table(sp) if r["group"] == "category"]
            acc = res.acceptance(sp)
            flags[(model, sp)] = acc["passed"]
            print(f"     {sp:<10} acceptance 1: {'PASS' if acc['passed'] else 'FAIL'}")
            for r in rows:
                true_pct = r.get("percentile_true_semantics")
                draws = "" if "samples" not in r else (f"  draws: selective {r['samples_selective']:.2f}, "
                                                        f"lowest pct {r['samples_percentile_min']:.0f}")
                print(f"       {r['roi']:<7} drive {r['response']:+.2f}  best other {r['best_other_roi']:<7} "
                      f"{r['best_other_response']:+.2f}  selective {'yes' if r['selective'] else 'no ':<3}  "
                      f"pct {r['percentile']:5.1f}" + ("" if true_pct is None else f"  (true sem. {true_pct:5.1f})")
                      + draws)
    for sp in ex.spaces:
        order = ex.eccentricity_ordering(sp)
        e = ex.energy[sp]
        if order is not None:
            measures = [(f"{sp:<10} acceptance 2:", order), (f"{'':<10} contrast added:", order.get("contrast"))]
            for lead, o in measures:
                if o is None:
                    continue
                vals = "  ".join(f"{r} {v:.2f}" for r, v in zip(order["rois"], o["values"]))
                print(f"  {lead} preferred ecc (deg) {vals} | Spearman {o['spearman']:.2f}, "
                      f"strictly increasing {o['strictly_increasing']}")
                if "neighbours" in o:
                    print(f"  {'':<10} over draws, outer/inner [95% CI]: {neighbours_text({**o, 'rois': order['rois']})}")
            if "reference_values" in order:
                ref = "  ".join(f"{r} {v:.2f}" for r, v in zip(order["rois"], order["reference_values"]))
                print(f"  {'':<10} the bands' effective receptive fields (deg) {ref}")
            if "neighbour_response_r" in order:
                nr = "  ".join(f"{a}/{b} {v:.2f}" for a, b, v in
                               zip(order["rois"][:-1], order["rois"][1:], order["neighbour_response_r"]))
                print(f"  {'':<10} r of neighbouring bands' mean training responses {nr}")
        if e.coverage_r is not None:
            cov = "  ".join(f"{r} {c:+.2f}" for r, c in zip(e.rois, e.coverage_r) if np.isfinite(c))
            print(f"  {sp:<10} r(energy map, pRF coverage): {cov}")
        if e.effective_r is not None:
            cov = "  ".join(f"{r} {c:+.2f}" for r, c in zip(e.rois, e.effective_r) if np.isfinite(c))
            print(f"  {sp:<10} r(energy map, effective receptive fields): {cov}")
    return flags


def configs_figure(runs: dict[str, object], space: str, path: Path, model: str = "truth") -> Path:
    """Category-ROI images of ``space`` for every configuration that has it, one row each, titled with the closed loop.

    Each tile gives the ROI's drive by its image and the percentile among the natural test stimuli; the title is
    green when the ROI passes acceptance 1 (selective within the category ROIs and at or above the 90th percentile).
    """
    from matplotlib.figure import Figure

    from brainrecon.roi.figures import save_figure

    rows = [(name, ex) for name, ex in runs.items() if space in ex.images and model in ex.closed_loop]
    if not rows:
        raise SystemExit(f"--figure: no configuration has space {space!r} with the {model} model")
    cats = [r["roi"] for r in rows[0][1].closed_loop[model].table(space) if r["group"] == "category"]
    fig = Figure(figsize=(1.75 * len(cats) + 1.2, 1.95 * len(rows) + 0.6))
    axes = fig.subplots(len(rows), len(cats), squeeze=False)
    for i, (name, ex) in enumerate(rows):
        table = {r["roi"]: r for r in ex.closed_loop[model].table(space)}
        for j, roi in enumerate(cats):
            r, ax = table[roi], axes[i, j]
            ax.imshow(ex.images[space][ex.rois.index(roi)])
            ax.set_xticks([])
            ax.set_yticks([])
            ok = bool(r["selective"]) and r["percentile"] >= 90
            ax.set_title(f"{roi}: {r['response']:+.2f}, {r['percentile']:.0f}th" + ("" if r["selective"] else "\nnot selective"),
                         fontsize=8, color="#1e8449" if ok else "#c0392b")
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(f"{space} ROI images per configuration ({model} model: drive, percentile of natural test stimuli)",
                 fontsize=9, y=1.0 + 0.12 / len(rows))
    fig.subplots_adjust(wspace=0.08, hspace=0.45)
    return save_figure(fig, path)


def early_figure(runs: dict[str, object], space: str, path: Path, model: str = "truth") -> Path:
    """Early visual ROI images (V1-V4, eccentricity bands) of ``space`` per configuration, one row each.

    Each band's tile gives the preferred eccentricity of the contrast its image adds (degrees; in brackets, where the
    band's effective receptive fields are) and every tile the ROI's drive by its image with its percentile among the
    natural test stimuli (``model``); the first column is the baseline.
    """
    from matplotlib.figure import Figure

    from brainrecon.roi.figures import save_figure

    rows = [(name, ex) for name, ex in runs.items() if space in ex.images]
    if not rows:
        raise SystemExit(f"--early-figure: no configuration has space {space!r}")
    first = rows[0][1]
    early = [s.name for s in first.specs if s.group in ("visual", "eccentricity")]
    fig = Figure(figsize=(1.45 * (len(early) + 1) + 1.2, 1.75 * len(rows) + 0.6))
    axes = fig.subplots(len(rows), len(early) + 1, squeeze=False)
    for i, (name, ex) in enumerate(rows):
        e = ex.energy[space]
        table = {r["roi"]: r for r in ex.closed_loop[model].table(space)} if model in ex.closed_loop else {}
        tiles = [("baseline", ex.baseline[space][0])] + [(r, ex.images[space][ex.rois.index(r)]) for r in early]
        for j, (roi, img) in enumerate(tiles):
            ax = axes[i, j]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            title = roi
            if roi in table:
                title += f"\n{table[roi]['response']:+.1f}, {table[roi]['percentile']:.0f}th"
            k = e.rois.index(roi) if roi in e.rois else None
            if k is not None and roi in e.reference_ecc and e.contrast_preferred_ecc is not None \
                    and roi.startswith("ecc"):
                title += f"\n{e.contrast_preferred_ecc[k]:.2f}° ({e.reference_ecc[roi]:.2f}°)"
            ax.set_title(title, fontsize=7)
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
    fig.suptitle(f"{space}: early visual ROI images per configuration (drive and percentile, {model} model; bands: "
                 "preferred eccentricity of the contrast added, and of the effective receptive fields)", fontsize=8,
                 y=1.0 + 0.15 / len(rows))
    fig.subplots_adjust(wspace=0.06, hspace=0.6)
    return save_figure(fig, path, dpi=90)


def main(argv: list[str] | None = None) -> None:
    """Run the configurations and print their numbers, then a pass/fail summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--figure", type=Path, help="also draw the category-ROI images of every configuration (PNG)")
    ap.add_argument("--figure-space", default="icgan", help="latent space of --figure and --early-figure (default icgan)")
    ap.add_argument("--early-figure", type=Path, help="also draw the early visual ROI images of every configuration")
    ap.add_argument("--overrides", nargs="+", default=[], metavar="KEY=VALUE",
                    help="Hydra overrides added to every configuration, e.g. another diffusion model: "
                         "latents.versatile.weights_path=artifacts/training/vd_other (after `python -m pipelines.run` "
                         "with the same override, or the first configuration also runs the upstream stages)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    summary, runs = {}, {}
    for name in args.configs:
        ex, secs, key = run_config([*CONFIGS[name], *args.overrides], args.artifacts.resolve(), args.data.resolve())
        summary[name] = report(name, ex, secs, key)
        runs[name] = ex
    if args.figure is not None:
        print(f"\nfigure: {configs_figure(runs, args.figure_space, args.figure)}")
    if args.early_figure is not None:
        print(f"\nfigure: {early_figure(runs, args.figure_space, args.early_figure)}")
    print("\n=== acceptance 1 (category ROIs selective and >= 90th percentile), per configuration")
    for name, flags in summary.items():
        print(f"  {name:<18} " + "  ".join(f"{m}/{s}: {'PASS' if ok else 'fail'}" for (m, s), ok in flags.items()))


if __name__ == "__main__":
    main()
