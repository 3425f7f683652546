"""IC-GAN's two decoding paths on one run's predictions: dense vector (the paper's) vs (instance, noise).

Reads the predicted IC-GAN targets of an existing ``experiment=icgan_sim`` (or ``gans_sim``) run,
decodes them both ways with the small IC-GAN and scores both image sets against the test stimuli
with the metric suite (at the generator's resolution). CLIP-small figures are biased upward for
IC-GAN: its small generator was trained with a CLIP-small consistency term.

Usage::

    python benchmarks/icgan_decode_paths.py --data artifacts/subj01/data/<key> --predict artifacts/subj01/predict/<key>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="data stage folder (stimuli_test.npy)")
    ap.add_argument("--predict", required=True, help="predict/icgan stage folder (test/<target>.npy)")
    ap.add_argument("--config", default=str(REPO / "conf" / "latents" / "icgan_small.yaml"))
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from brainrecon.images import resize
    from brainrecon.metrics.suite import evaluate_methods

    pred = {t: np.load(Path(args.predict) / "test" / f"{t}.npy") for t in ("instance", "noise", "dense")}
    cfg = OmegaConf.load(args.config)["icgan"]
    cfg.device, cfg.progress = "cpu", False
    recs = {}
    for mode in ("dense", "instance_noise"):
        cfg.decode_from = mode
        recs[mode] = instantiate(cfg).decode(pred, seed=0)
    stim = np.load(Path(args.data) / "stimuli_test.npy").astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    stim = resize(stim, recs["dense"].shape[-1])
    res = evaluate_methods(stim, recs, weights_root=REPO / "weights", n_boot=args.n_boot, n_perm=args.n_boot)
    for mode, r in res.items():
        print(f"decode_from={mode}")
        for name, v in r.metrics.items():
            if v.mean is not None and v.ci is not None:
                print(f"  {name:24s} {v.mean:.3f}  [{v.ci[0]:.3f}, {v.ci[1]:.3f}]")


if __name__ == "__main__":
    main()
