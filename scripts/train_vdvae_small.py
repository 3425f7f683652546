"""Train the small VDVAE (``VDVAEConfig.small()``) on CPU from an ``.npy`` of stimuli.

Usage::

    python scripts/train_vdvae_small.py --images stimuli.npy [--max-minutes 30] [--seed 0]

``stimuli.npy`` holds ``(n, H, W, 3)`` uint8 images (read without pickle). They are resized to
64x64 the same way :class:`~brainrecon.latents.vdvae.VDVAESpace` resizes at encoding time.
A held-out fraction (``--val-frac``) is never trained on; the run ends with its ELBO and the
PixCorr of encode-then-decode reconstructions of it, both from the EMA weights that are saved.

Objective and safeguards follow the reference VDVAE training: negative ELBO in nats per
sub-pixel (discretised-logistic-mixture NLL + sum of per-group Gaussian KLs), AdamW with
betas (0.9, 0.9) and linear warm-up, gradient-norm clipping, and skipping of updates whose
loss is NaN or whose gradient norm exceeds a threshold; the saved weights are an
exponential moving average.

Outputs (default ``brainrecon/weights/``): ``vdvae_small.safetensors``, ``vdvae_small.json``
(the model config, input normalisation included) and ``vdvae_small.training.json`` (settings,
data checksum, loss trace, timings, held-out metrics).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from brainrecon.errors import DataFormatError, MissingDataError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help=".npy of (n, H, W, 3) uint8 training images")
    p.add_argument("--out", default=str(REPO / "brainrecon" / "weights" / "vdvae_small.safetensors"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=100_000, help="upper bound on optimiser steps")
    p.add_argument("--max-minutes", type=float, default=30.0, help="stop (and save) after this wall time")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-iters", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema-rate", type=float, default=0.998)
    p.add_argument("--grad-clip", type=float, default=None, help="default: the config's grad_clip")
    p.add_argument("--skip-threshold", type=float, default=None, help="default: the config's (-1 = never skip)")
    p.add_argument("--val-frac", type=float, default=0.1)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed for reproducibility)")
    p.add_argument("--flip", action="store_true", help="random horizontal flips (data augmentation)")
    return p.parse_args(argv)


def load_images(path: Path) -> np.ndarray:
    if not path.is_file():
        raise MissingDataError(path, "training images (.npy)")
    arr = np.load(path, allow_pickle=False, mmap_mode="r")
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise DataFormatError(f"{path}: expected (n, H, W, 3) uint8, got {arr.shape} {arr.dtype}")
    if len(arr) < 4:
        raise DataFormatError(f"{path}: need at least 4 images, got {len(arr)}")
    return np.asarray(arr)


def pixcorr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of the flattened images, one value per pair."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    from brainrecon.latents.base import Stimuli
    from brainrecon.latents.vdvae import VDVAE, VDVAEConfig, VDVAESpace, save_vdvae
    from brainrecon.latents.vdvae.space import resize_images

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    images_path = Path(args.images)
    raw = load_images(images_path)
    digest = hashlib.sha256(memoryview(np.ascontiguousarray(raw)).cast("B")).hexdigest()
    order = rng.permutation(len(raw))
    n_val = max(1, int(round(args.val_frac * len(raw))))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])

    base = VDVAEConfig.small()
    # Resize in chunks (large stimuli in float would not fit in memory at once); keep 8-bit values.
    pixels = torch.cat(
        [resize_images(raw[i : i + 256], base.image_size).to(torch.uint8) for i in range(0, len(raw), 256)]
    )
    train_px = pixels[torch.from_numpy(train_idx)]
    val_px = pixels[torch.from_numpy(val_idx)]
    # Encoder input normalisation from the training images only (the reference used dataset statistics).
    mean, std = float(train_px.double().mean()), float(train_px.double().std(correction=0))
    cfg = dataclasses.replace(base, shift=-mean, scale=1.0 / max(std, 1e-3))
    grad_clip = cfg.grad_clip if args.grad_clip is None else args.grad_clip
    skip_threshold = cfg.skip_threshold if args.skip_threshold is None else args.skip_threshold

    model = VDVAE(cfg)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.9), weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: min(1.0, (it + 1) / max(1, args.warmup_iters)))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"small VDVAE: {n_params:,} parameters; {len(train_idx)} train / {len(val_idx)} held-out images", flush=True)

    trace: list[dict] = []
    window: list[dict] = []
    skipped = 0
    n_updates = 0
    t_start = time.perf_counter()
    deadline = t_start + 60.0 * args.max_minutes
    bar = tqdm(range(args.iters), desc="train vdvae-small", mininterval=2.0)
    it = 0
    for it in bar:
        t0 = time.perf_counter()
        batch = train_px[torch.from_numpy(rng.integers(0, len(train_px), args.batch_size))]
        if args.flip:
            flip = torch.from_numpy(rng.random(args.batch_size) < 0.5)
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        model.train()
        opt.zero_grad(set_to_none=True)
        stats = model.elbo(batch)
        stats["elbo"].backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
        stats = {k: v.detach() for k, v in stats.items()}
        finite = math.isfinite(float(stats["distortion"])) and math.isfinite(float(stats["rate"]))
        if finite and math.isfinite(gnorm) and (skip_threshold == -1 or gnorm < skip_threshold):
            opt.step()
            n_updates += 1
            # Short runs: ramp the EMA rate up so the average does not stay near the random init.
            rate = min(args.ema_rate, (1.0 + n_updates) / (10.0 + n_updates))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.mul_(rate).add_(pm, alpha=1.0 - rate)
        else:
            skipped += 1
        sched.step()
        window.append(
            {k: float(v) for k, v in stats.items()} | {"grad_norm": gnorm, "sec": time.perf_counter() - t0}
        )
        if (it + 1) % args.log_every == 0:
            row = {"iter": it + 1, **{k: float(np.mean([w[k] for w in window])) for k in window[0]}}
            row["skipped_total"] = skipped
            trace.append(row)
            window = []
            bar.set_postfix(elbo=f"{row['elbo']:.3f}", rate=f"{row['rate']:.3f}", s_it=f"{row['sec']:.2f}")
            if not sys.stderr.isatty():  # keep a readable log when tqdm is not drawing
                print(json.dumps(row), flush=True)
        if time.perf_counter() > deadline:
            break
    n_iters = it + 1
    train_seconds = time.perf_counter() - t_start

    # Held-out evaluation with the EMA weights (those that are saved).
    ema.eval()
    with torch.no_grad():
        val_stats = [ema.elbo(val_px[i : i + 32]) for i in range(0, len(val_px), 32)]
    w = [len(val_px[i : i + 32]) for i in range(0, len(val_px), 32)]
    val = {k: float(np.average([float(s[k]) for s in val_stats], weights=w)) for k in val_stats[0]}
    space = VDVAESpace(ema, batch_size=32, progress=False)
    val_images = raw[val_idx]
    Z = space.encode(Stimuli(val_images))["z"]
    recon = space.decode({"z": Z}, seed=args.seed)
    target = (val_px.double() / 255.0).numpy()
    pc = pixcorr(recon, target)
    shuffled = pixcorr(recon, target[np.roll(np.arange(len(target)), 1)]) if len(target) > 1 else np.array([np.nan])
    prior_only = VDVAESpace(ema, batch_size=32, progress=False, n_groups=1)
    recon_g1 = prior_only.decode({"z": prior_only.encode(Stimuli(val_images))["z"]}, seed=args.seed)
    report = {
        "config": cfg.to_dict(),
        "args": vars(args),
        "data": {"path": str(images_path), "sha256": digest, "n_train": len(train_idx), "n_val": len(val_idx),
                 "val_index": val_idx.tolist()},
        "n_params": n_params,
        "iters": n_iters,
        "skipped_updates": skipped,
        "train_seconds": train_seconds,
        "seconds_per_iter": train_seconds / n_iters,
        "trace": trace,
        "heldout": {
            **val,
            "pixcorr_recon_mean": float(np.mean(pc)),
            "pixcorr_recon_vs_shuffled_mean": float(np.mean(shuffled)),
            "pixcorr_recon_top1_group_mean": float(np.mean(pixcorr(recon_g1, target))),
            "target_groups": cfg.target_groups,
            "target_size": space.targets["z"].size,
        },
    }
    out = Path(args.out)
    save_vdvae(ema, out)
    out.with_suffix(".training.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("iters", "skipped_updates", "seconds_per_iter", "heldout")}, indent=2))
    print(f"saved {out} and {out.with_suffix('.json').name}, {out.with_suffix('.training.json').name}")
    return report


if __name__ == "__main__":
    main()
