"""How well can *any* image set order the simulated eccentricity bands? An oracle for acceptance 2.

The roi stage measures where each eccentricity band's ROI image puts its energy and asks whether the
bands' preferred eccentricities increase from centre to periphery. This script asks the same question
of the ground truth, with no decoder and no generator: the simulator's **noise-free** responses of the
true encoding model to the subject's natural images. Per band (voxels of ``prf-eccrois``, responses
z-scored per voxel, averaged over the band's voxels) it forms two images, and measures their energy
exactly as the roi stage measures an ROI image's (``brainrecon.roi.energy``, against the mean image):

* the **response-weighted average** image, ``sum_i (r_i - mean r) x_i / n`` (a spike-triggered average);
* the mean of the band's **top-k** natural images (largest ``r_i``).

Each is measured twice, as the roi stage measures an ROI image (``brainrecon.roi.energy``): the
**energy** of the deviation image (squared difference from the mean image), and the **contrast added**
(the positive part of the difference between the band's local contrast-energy map and the mean
contrast-energy map of all images: the response-weighted average of the contrast maps, or the mean
contrast map of the top-k images). The simulated early visual voxels respond to local contrast energy
and only weakly, with a sign that varies from voxel to voxel, to local luminance: a measure of where
the bands' receptive fields are should recover their order from their own preferred images.

If the bands' own preferred natural images do not order strictly, no ROI image made from data of that
simulated brain can be expected to. It reads the simulated datasets under ``data/sim_nsd`` (written by
``python -m pipelines.run``, one per ``seed``) and takes a few seconds each::

    python benchmarks/roi_eccentricity_oracle.py [--data data/sim_nsd] [--top 20 100]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Eccentricity bands of ``prf-eccrois`` (labels 1..5).
BANDS = ("ecc0pt5", "ecc1", "ecc2", "ecc4", "ecc4plus")


def preferred_maps(stack: np.ndarray, responses: np.ndarray, labels: np.ndarray, tops: list[int]) -> dict[str, np.ndarray]:
    """Per band, the response-weighted average of ``stack`` and the mean of its ``top`` preferred entries.

    Parameters
    ----------
    stack : (n, ...) one entry per natural image: the images (n, 3, H, W) or their contrast maps (n, S, S)
    responses : (n, n_voxels) noise-free responses
    labels : (n_voxels,) ``prf-eccrois`` labels (0: outside every band)
    tops : sizes of the preferred sets

    Returns
    -------
    dict with ``"weighted"`` and ``"top<k>"`` per k, each (n_bands, ...) deviations from the mean entry
    """
    z = (responses - responses.mean(0)) / (responses.std(0) + 1e-12)
    centred = stack - stack.mean(0, keepdims=True)
    out: dict[str, list[np.ndarray]] = {"weighted": [], **{f"top{k}": [] for k in tops}}
    for b in range(1, len(BANDS) + 1):
        if not (labels == b).any():
            raise SystemExit(f"prf-eccrois: no voxel with label {b} ({BANDS[b - 1]})")
        r = z[:, labels == b].mean(1)
        out["weighted"].append(np.tensordot(r - r.mean(), centred, axes=(0, 0)) / len(r))
        order = np.argsort(-r)
        for k in tops:
            out[f"top{k}"].append(centred[order[:k]].mean(0))
    return {name: np.stack(v) for name, v in out.items()}


def preferred(maps: np.ndarray) -> np.ndarray:
    """Preferred eccentricity (deg) of each (S, S) map, as the roi stage computes it."""
    from brainrecon.roi.energy import preferred_eccentricity, ring_profile

    return preferred_eccentricity(ring_profile(maps))


def main(argv: list[str] | None = None) -> None:
    """Print, per simulated dataset, the bands' preferred eccentricity of each oracle image and its ordering."""
    from brainrecon.images import to_float_chw
    from brainrecon.roi.energy import contrast_energy, ordering
    from brainrecon.roi.explore import ENERGY_SIZE
    from brainrecon.sim.truth import load_truth

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO / "data" / "sim_nsd")
    ap.add_argument("--top", type=int, nargs="+", default=[20, 100], help="sizes of the top-k image sets")
    args = ap.parse_args(argv)
    roots = sorted(p for p in args.data.iterdir() if p.is_dir()) if args.data.is_dir() else []
    if not roots:
        raise SystemExit(f"--data {args.data}: no simulated dataset (run `python -m pipelines.run` first)")

    for root in roots:
        truth = load_truth(root)
        responses = np.asarray(truth.responses, dtype=np.float64)
        images = to_float_chw(truth.stimuli(np.arange(responses.shape[0])))
        labels = np.asarray(truth.roi_labels["prf-eccrois"])
        print(f"{root.name} (simulation seed {truth.config.seed}): {len(images)} natural images, noise-free responses")
        # energy: squared deviation of the images; contrast added: positive part of the contrast maps' deviation
        measures = {
            "energy": lambda m: (m.astype(np.float64) ** 2).sum(1),
            "contrast added": lambda m: np.clip(m, 0.0, None),
        }
        stacks = {"energy": images, "contrast added": contrast_energy(images, ENERGY_SIZE)}
        for name, to_maps in measures.items():
            print(f"  {name}: preferred eccentricity (deg)".ljust(39) + "  ".join(f"{b:>8}" for b in BANDS))
            rows = preferred_maps(stacks[name], responses, labels, args.top)
            show(" response-weighted average", preferred(to_maps(rows["weighted"])), ordering)
            for top in args.top:
                show(f" mean of the top-{top} images", preferred(to_maps(rows[f"top{top}"])), ordering)

def show(name: str, values: np.ndarray, ordering) -> None:  # noqa: ANN001
    o = ordering(values)
    print(f"  {name:<36} " + "  ".join(f"{v:8.2f}" for v in values)
          + f"   Spearman {o['spearman']:.2f}, strictly increasing {o['strictly_increasing']}")


if __name__ == "__main__":
    main()
