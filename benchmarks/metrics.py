"""Acceptance check: time the evaluation of 1000 image pairs with every offline-available metric.

Ground truth: the 1000 photographs of ``../shared/data/imagenet-samples-256``.
Reconstructions: degraded copies (downsampled to 32 px and back, plus Gaussian
noise sd 0.1). Latents: synthetic 768-d "true" embeddings and noisy predictions.
Metrics: PixCorr, SSIM, MSE (at 425 px, preset ``brain_diffuser``), EffNet-Lite0
2-way and distance (224 px), latent 2-way identification and top-1 retrieval, each
with a bootstrap CI and a permutation p-value. Backbones without local weights are
listed as unavailable and cost nothing.

Usage::

    python benchmarks/metrics.py [--n 1000] [--n-perm 1000] [--threads 2]
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

from brainrecon.metrics import evaluate, resize_images  # noqa: E402
from brainrecon.paths import shared_data_dir  # noqa: E402


def load_photos(folder: Path, n: int) -> np.ndarray:
    """The first ``n`` photos (sorted by name) as ``(n, 3, 256, 256)`` float32 in [0, 1]."""
    from PIL import Image

    files = sorted(folder.glob("*.jpg"))[:n]
    if len(files) < n:
        raise SystemExit(f"{folder}: {len(files)} photos, {n} requested")
    out = np.empty((n, 3, 256, 256), dtype=np.float32)
    for k, f in enumerate(files):
        out[k] = np.asarray(Image.open(f).convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the timing and print per-stage seconds and the metric table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-perm", type=int, default=1000)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--preset", default="brain_diffuser")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    root = shared_data_dir()
    if root is None:
        raise SystemExit("../shared/data not found")
    t0 = time.perf_counter()
    gt = load_photos(root / "imagenet-samples-256", args.n)
    rng = np.random.default_rng(0)
    recon = resize_images(resize_images(gt, 32), 256)
    recon = np.clip(recon + 0.1 * rng.standard_normal(recon.shape, dtype=np.float32), 0, 1)
    Z = rng.standard_normal((args.n, 768)).astype(np.float32)
    Z_hat = Z + 12.0 * rng.standard_normal(Z.shape).astype(np.float32)  # r ~ 0.08 per pair
    t_load = time.perf_counter() - t0

    t1 = time.perf_counter()
    res = evaluate(gt, recon, preset=args.preset, latents={"clip": (Z_hat, Z)}, n_perm=args.n_perm,
                   n_boot=args.n_boot, seed=0, progress=False)
    t_eval = time.perf_counter() - t1
    print(f"{args.n} pairs, preset {args.preset}, n_perm {args.n_perm}, n_boot {args.n_boot}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"load + degrade (not timed as evaluation): {t_load:.1f} s")
    print(f"evaluation wall time: {t_eval:.1f} s  (stages: {res.settings['timings_s']})")
    for name, v in res.metrics.items():
        if v.available:
            print(f"  {name:28s} {v.mean:8.4f}  CI [{v.ci[0]:.4f}, {v.ci[1]:.4f}]  p={v.p_value:.3g}  "
                  f"({v.p_method})")
        else:
            print(f"  {name:28s} {v.unavailable}")


if __name__ == "__main__":
    main()
