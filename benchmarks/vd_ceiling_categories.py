"""Can the small Versatile Diffusion draw each scene category, and under which decode settings?

The roi stage's closed loop can only find a category in an ROI image if the generator can draw that
category at all. This decodes the default experiment's 100 test stimuli from their *true* latents
(the ceiling: true CLIP-text and CLIP-vision features, img2img from the VDVAE ceiling images) under
several decode settings (strength, guidance, text weight ``mix``), reads every image's category areas
with the scene segmenter, and prints, per category, the Pearson r between the areas read on the
decoded images and on the stimuli themselves (the segmenter reads the stimuli at r 1.00 against the
true areas). It is a diagnostic of the generator, not of the decoders: no fMRI is involved.

It reuses the run of ``make demo`` (the newest evaluated run of the ``sim`` experiment). About 6
minutes on 2 CPU cores.

Usage::

    python benchmarks/vd_ceiling_categories.py [--artifacts artifacts] [--seed 0] \
        [--figure docs/figures/vd_ceiling_bodies.png]   # the stimuli with the most body area, decoded
    python benchmarks/vd_ceiling_categories.py --weights artifacts/training/vd_small_other   # another model
    python benchmarks/vd_ceiling_categories.py --weights ... --settings "run's settings" "strength 0.4"   # some rows
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

#: Decode settings compared, as overrides of the run's Versatile Diffusion settings.
SETTINGS: dict[str, dict[str, float]] = {
    "run's settings": {},
    "vision only (mix 0)": {"mix": 0.0},
    "text only (mix 1)": {"mix": 1.0},
    "guidance 3": {"guidance": 3.0},
    "guidance 15": {"guidance": 15.0},
    "strength 0.4": {"strength": 0.4},
    "strength 0.8": {"strength": 0.8},
    "strength 1 (no VDVAE image)": {"strength": 1.0},
}
#: Settings shown by --figure (rows under the stimuli and the VDVAE images).
FIGURE_ROWS = ("run's settings", "text only (mix 1)", "strength 0.4")


def main(argv: list[str] | None = None) -> None:
    """Decode the ceiling under each setting and print the segmenter's per-category r."""
    from brainrecon.images import to_float_chw, to_uint8_hwc
    from brainrecon.latents.versatile import VersatileSpace
    from brainrecon.roi.closed_loop import column_scores
    from brainrecon.roi.runs import find_run
    from brainrecon.sim.segmenter import SegmenterSemantics
    from brainrecon.sim.stimuli import CATEGORIES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    ap.add_argument("--seed", type=int, default=0, help="seed of the diffusion's noise")
    ap.add_argument("--figure", type=Path, help="also draw the test stimuli with the most body area, decoded (PNG)")
    ap.add_argument("--category", default="body", help="category of --figure (default body)")
    ap.add_argument("--weights", help="another diffusion model folder with the run's CLIP (default: the run's)")
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS), metavar="SETTING",
                    help=f"decode settings to run (default: all of {list(SETTINGS)})")
    args = ap.parse_args(argv)

    run = find_run(args.artifacts, experiment="sim")
    if "versatile" not in run.extract or "vdvae" not in run.generate:
        raise SystemExit(f"run {run.evaluate.key}: expected the Brain-Diffuser chain (versatile from vdvae)")
    space_cfg = {k: v for k, v in run.extract["versatile"].manifest["params"]["space"].items() if k != "_target_"}
    # Decode settings are not part of the extract key, so the extract manifest keeps those of the run that first
    # encoded the stimuli; the run's own are the generate stage's.
    space_cfg.update(run.generate["versatile"].manifest["params"].get("decode") or {})
    space_cfg.update(progress=False, device="cpu")
    if args.weights:
        space_cfg["weights_path"] = args.weights
    latents = {t: np.asarray(run.extract["versatile"].array(f"test/{t}")) for t in ("clip_text", "clip_vision")}
    init = to_float_chw(run.images("vdvae", "ceiling"))
    reader = SegmenterSemantics()
    reference = reader(run.stimuli("test")).astype(np.float64)

    if args.category not in CATEGORIES:
        raise SystemExit(f"--category: expected one of {list(CATEGORIES)}, got {args.category!r}")
    shown: dict[str, np.ndarray] = {"stimulus": run.stimuli("test"), "VDVAE ceiling": run.images("vdvae", "ceiling")}

    def line(name: str, images: np.ndarray, extra: str = "") -> None:
        r, _ = column_scores(reader(images).astype(np.float64), reference)
        print(f"{name:<30} " + "  ".join(f"{c} {v:+.2f}" for c, v in zip(CATEGORIES, r)) + extra, flush=True)
        if name in FIGURE_ROWS:
            shown[name] = images

    print(f"run {run.evaluate.key} ({run.experiment}); {len(reference)} test stimuli; Versatile Diffusion {space_cfg}")
    print("Pearson r of the segmenter's category areas, decoded image vs stimulus:")
    line("VDVAE ceiling (the init)", run.images("vdvae", "ceiling"))
    if not args.weights:  # the stage's images come from the run's own model
        line("generate stage's ceiling", run.images("versatile", "ceiling"))
    line("VAE round trip (no diffusion)", vae_round_trip(VersatileSpace(**space_cfg), run.stimuli("test")))
    for name in args.settings:
        overrides = SETTINGS[name]
        space = VersatileSpace(**{**space_cfg, **overrides})
        t0 = time.perf_counter()
        images = space.decode(latents, init=init, seed=args.seed)
        line(name, to_uint8_hwc(images), f"  ({time.perf_counter() - t0:.0f} s)")
    if args.figure is not None:
        k = CATEGORIES.index(args.category)
        print(f"figure: {category_figure(shown, reader, reference[:, k], k, args.category, args.figure)}")


def vae_round_trip(space, stimuli: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """Stimuli through the diffusion model's VAE alone (posterior mean, no noise, no diffusion): uint8 images.

    Tells whether the latent grid the diffusion works on can hold a category at all."""
    import torch
    from torch.nn import functional as F

    from brainrecon.images import to_float_chw, to_uint8_hwc

    pipe = space.pipeline()
    x = F.interpolate(torch.from_numpy(to_float_chw(stimuli)), size=(space.image_size,) * 2, mode="area")
    with torch.inference_mode():
        z = pipe.encode(x * 2.0 - 1.0, torch.zeros(1))  # zero noise: the posterior mean
        return to_uint8_hwc(pipe.decode(z).cpu().numpy())


def category_figure(shown: dict[str, np.ndarray], reader, stimulus_areas: np.ndarray, k: int, category: str,  # noqa: ANN001
                    path: Path, n: int = 8) -> Path:
    """The ``n`` test stimuli with the largest area of category ``k`` (``stimulus_areas``, as read; columns),
    decoded by each row's setting; each tile is titled with the segmenter's area of the category."""
    from matplotlib.figure import Figure

    from brainrecon.roi.figures import save_figure

    order = np.argsort(-stimulus_areas)[:n]
    fig = Figure(figsize=(1.3 * n + 1.0, 1.45 * len(shown) + 0.4))
    axes = fig.subplots(len(shown), n, squeeze=False)
    for i, (name, images) in enumerate(shown.items()):
        areas = reader(images[order])[:, k]
        for j, idx in enumerate(order):
            ax = axes[i, j]
            ax.imshow(images[idx])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{category} {areas[j]:.2f}", fontsize=7)
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(f"test stimuli with the most {category} area, decoded from their true latents "
                 f"(titles: the segmenter's {category} area)", fontsize=9)
    return save_figure(fig, path, dpi=80)  # 40 photographs: keep the PNG small


if __name__ == "__main__":
    main()
