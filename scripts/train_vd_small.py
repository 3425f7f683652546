"""Train the small dual-guided latent diffusion (``bundled:vd_small``) on simulated scenes, on CPU.

Usage::

    python scripts/train_vd_small.py --images /tmp/vd_train/images.npy [--clip bundled:clip_small] [--threads 2]

``images.npy`` holds ``(n, H, W, 3)`` uint8 scenes and ``images_captions.npy`` beside it (or
``--captions``) ``(n, k)`` unicode captions (``scripts/sim_training_images.py``). The last
``--n-heldout`` scenes are never trained on.

Two stages, both with diffusers classes in the published Versatile Diffusion layout:

1. ``AutoencoderKL`` (64 x 64 x 3 -> 16 x 16 x 4): L1 + L2 reconstruction plus a small KL
   (weight relative to the summed reconstruction error, LDM's convention), posterior
   sampled during training. Its ``scaling_factor`` is set to 1 / std of the training
   latents (LDM's rule; the published 0.18215 came from the same rule).
   ``--vae-from`` takes a trained model's VAE and scaling factor instead.
2. Dual-guided latent diffusion: a small ``UNet2DConditionModel`` (image UNet) and a
   ``UNetFlatConditionModel`` (text UNet) of the same block layout, paired by
   :class:`~brainrecon.latents.versatile.dual_guided.DualGuidedUNet`, trained with the
   epsilon objective on VAE latents under the reference noise schedule (1000 steps,
   ``scaled_linear`` 0.00085 -> 0.012), conditioned on the small CLIP's token features
   (vision tokens of the image; text tokens of one caption or of the caption average, the
   form Brain-Diffuser regresses). Each batch draws the text weight ``mix`` as 0 (vision
   path only), 1 (text path only) or uniform per sample, so both transformer paths and
   their mixture are trained; each context is replaced by its unconditional version
   (CLIP of "" / of mid-grey) with probability ``--p-uncond`` so classifier-free guidance
   works. AdamW with warm-up, gradient clipping; the saved weights are an EMA.

Only the text UNet's transformer blocks take part in dual-guided image generation; its other
layers process Versatile Diffusion's text latents (text generation, which this project does
not do). They are not trained and are stored as zeros, so the folder loads strictly with
diffusers while carrying no made-up values.

CLIP features are computed once per training image and cached (``--cache-dir``). Without
the trained CLIP (``--clip stand-in``), random features of the small CLIP's shapes stand in:
for testing the script only, the result is not shippable (the script refuses to write to
the bundled folder then).

Outputs (default ``brainrecon/weights/vd_small/``, written to a temporary folder, checked by
loading it with :func:`~brainrecon.latents.versatile.dual_guided.load_dual_guided`, then
renamed): ``image_unet/``, ``text_unet/``, ``vae/`` (``config.json`` +
``diffusion_pytorch_model.safetensors``), ``scheduler/scheduler_config.json`` and
``vd_small.training.json`` (arguments, SHA-256 of the training arrays, loss traces, timings,
held-out figures from the saved weights).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from brainrecon.sim.stimuli import load_scene_arrays  # noqa: E402
from brainrecon.errors import ConfigError  # noqa: E402
from brainrecon.paths import replace_directory  # noqa: E402

STAND_IN = "stand-in"
#: Shapes of the small CLIP's features (text tokens, vision tokens, width), for the stand-in only.
STAND_IN_SHAPES = (32, 65, 64)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help=".npy of (n, H, W, 3) uint8 training scenes")
    p.add_argument("--captions", default=None, help=".npy of (n, k) captions (default: <images>_captions.npy)")
    p.add_argument("--clip", default="bundled:clip_small",
                   help=f"CLIP folder for the conditioning features, or '{STAND_IN}' (random features, tests only)")
    p.add_argument("--out", default=str(REPO / "brainrecon" / "weights" / "vd_small"))
    p.add_argument("--cache-dir", default="/tmp/vd_small_cache", help="where CLIP features of the scenes are cached")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed for reproducibility)")
    p.add_argument("--n-scenes", type=int, default=None, help="use only the first n scenes (quick tests)")
    p.add_argument("--n-heldout", type=int, default=600, help="the last n scenes are held out")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--save-dtype", choices=("float16", "float32"), default="float16",
                   help="dtype of the stored weights (loaded as the pipeline's dtype)")
    # VAE
    p.add_argument("--vae-from", default=None,
                   help="reuse the VAE (and its scaling factor) of a trained model folder, e.g. bundled:vd_small, "
                        "instead of training one: the VAE does not depend on the CLIP conditioning")
    p.add_argument("--vae-channels", default="32,64,64", help="AutoencoderKL block_out_channels")
    p.add_argument("--vae-iters", type=int, default=None, help="VAE steps (default: until --vae-minutes)")
    p.add_argument("--vae-minutes", type=float, default=None,
                   help="wall-time budget of the VAE (default: none with --vae-iters, else 7)")
    p.add_argument("--vae-batch-size", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--kl-weight", type=float, default=1e-6,
                   help="KL weight relative to the summed reconstruction error")
    # diffusion
    p.add_argument("--init-from", default=None,
                   help="continue training the UNets of a trained model folder (its VAE, scaling factor and "
                        "architecture are kept; it must have been trained on the same CLIP)")
    p.add_argument("--unet-channels", default="32,64,64", help="UNet block_out_channels (both UNets)")
    p.add_argument("--unet-iters", type=int, default=None,
                   help="diffusion steps (default: until --unet-minutes); 0 with --init-from re-evaluates that model")
    p.add_argument("--unet-minutes", type=float, default=None,
                   help="wall-time budget of the diffusion training (default: none with --unet-iters, else 25)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-iters", type=int, default=200)
    p.add_argument("--lr-decay", choices=("none", "cosine"), default="none",
                   help="diffusion learning rate after warm-up: constant, or cosine to 0 at --unet-iters (needs it)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema-rate", type=float, default=0.999)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--loss-weighting", choices=("none", "min_snr"), default="none",
                   help="per-timestep weight of the epsilon MSE: none (LDM), or min(SNR, gamma) / SNR (Min-SNR)")
    p.add_argument("--min-snr-gamma", type=float, default=5.0, help="gamma of --loss-weighting min_snr")
    p.add_argument("--p-uncond", type=float, default=0.15, help="per-context probability of the unconditional context")
    p.add_argument("--p-mix", default="0.35,0.35,0.3",
                   help="probabilities of a batch with mix = 0, mix = 1, mix ~ U(0,1) per sample")
    # evaluation
    p.add_argument("--eval-n", type=int, default=200, help="held-out scenes refined by img2img in the evaluation")
    p.add_argument("--eval-steps", type=int, default=50)
    p.add_argument("--eval-blur", type=int, default=16, help="the blurred start image is downsampled to this size")
    p.add_argument("--log-every", type=int, default=50)
    args = p.parse_args(argv)
    if args.lr_decay == "cosine" and args.unet_iters is None:
        p.error("--lr-decay cosine needs --unet-iters (the step the cosine reaches 0)")
    if args.unet_iters is not None and (args.unet_iters < 0 or (args.unet_iters == 0 and args.init_from is None)):
        p.error(f"--unet-iters: expected >= 1 (0 only with --init-from: re-evaluate a model), got {args.unet_iters}")
    if args.min_snr_gamma <= 0:
        p.error(f"--min-snr-gamma: expected > 0, got {args.min_snr_gamma}")
    return args


# ------------------------------------------------------------------------------------ data
def sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(arr)).cast("B")).hexdigest()


def clip_features(args: argparse.Namespace, images: np.ndarray, captions: np.ndarray, data_digest: str) -> dict:
    """Per-caption text tokens, caption-averaged text tokens, vision tokens (float16) and the
    unconditional pair (float32), cached per (data, CLIP weights)."""
    n, k = captions.shape
    if args.clip == STAND_IN:
        lt, lv, d = STAND_IN_SHAPES
        rng = np.random.default_rng(12345)
        per_caption = rng.standard_normal((n, k, lt, d), dtype=np.float32).astype(np.float16)
        return {
            "text_captions": per_caption,
            "text_mean": per_caption.astype(np.float32).mean(1).astype(np.float16),
            "vision": rng.standard_normal((n, lv, d), dtype=np.float32).astype(np.float16),
            "uncond_text": np.zeros((1, lt, d), np.float32),
            "uncond_vision": np.zeros((1, lv, d), np.float32),
            "clip": {"kind": STAND_IN},
            "embed": None,
        }
    from brainrecon.latents.versatile.clip import load_clip

    enc = load_clip(args.clip, progress=True)
    fp = enc.fingerprint()
    key = hashlib.sha256(json.dumps([data_digest, fp], sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(args.cache_dir) / f"clip_{key}"
    names = ("text_captions", "text_mean", "vision", "uncond_text", "uncond_vision")
    if all((cache / f"{name}.npy").is_file() for name in names):
        print(f"CLIP features from cache {cache}", flush=True)
        out: dict[str, Any] = {name: np.load(cache / f"{name}.npy", allow_pickle=False) for name in names}
    else:
        t0 = time.perf_counter()
        flat = [str(c) for row in captions for c in row]
        per_caption = enc.encode_texts(flat).reshape(n, k, enc.text_tokens, enc.dim)
        vision = enc.encode_images(images)
        tu, vu = enc.unconditional()
        out = {
            "text_captions": per_caption.astype(np.float16),
            # encode_captions' average over an image's captions, from the same per-caption features
            "text_mean": per_caption.mean(1).astype(np.float16),
            "vision": vision.astype(np.float16),
            "uncond_text": tu.astype(np.float32),
            "uncond_vision": vu.astype(np.float32),
        }
        tmp = cache.with_name(cache.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in names:
            np.save(tmp / f"{name}.npy", out[name])
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)
        print(f"CLIP features of {n} scenes and {len(flat)} captions in {time.perf_counter() - t0:.0f} s -> {cache}",
              flush=True)
    out["clip"] = {"path": str(enc.root), **fp}
    out["embed"] = enc.embed_images
    return out


# ------------------------------------------------------------------------------------ models
def channels(spec: str) -> tuple[int, ...]:
    try:
        out = tuple(int(c) for c in spec.split(","))
    except ValueError as exc:
        raise ConfigError(f"channels: expected comma-separated integers, got {spec!r}") from exc
    if len(out) < 2 or any(c < 8 for c in out):
        raise ConfigError(f"channels: expected at least two levels of >= 8 channels, got {spec!r}")
    return out


def vae_config(args: argparse.Namespace) -> dict:
    boc = channels(args.vae_channels)
    return {
        "sample_size": args.image_size, "in_channels": 3, "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * len(boc), "up_block_types": ("UpDecoderBlock2D",) * len(boc),
        "block_out_channels": boc, "latent_channels": 4, "layers_per_block": 1,
        "norm_num_groups": min(32, min(boc)),
    }


def unet_configs(args: argparse.Namespace, latent_size: int, dim: int) -> tuple[dict, dict]:
    """Image-UNet and text-UNet configs with transformer blocks at the same positions.

    Cross-attention in every level but the lowest-resolution one, as the published
    (CrossAttn x3 + plain) layout; ``attention_head_dim`` is diffusers' (mis)name for the
    number of heads.
    """
    boc = channels(args.unet_channels)
    n = len(boc)
    common = {
        "sample_size": latent_size, "block_out_channels": boc, "layers_per_block": 1,
        "cross_attention_dim": dim, "attention_head_dim": 4, "norm_num_groups": min(32, min(boc)),
    }
    image = common | {
        "in_channels": 4, "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
    }
    # The text flow's own input/output (text latents) is unused here: kept minimal.
    text = common | {
        "in_channels": (8, 1, 1), "out_channels": (8, 1, 1),
        "down_block_types": ("CrossAttnDownBlockFlat",) * (n - 1) + ("DownBlockFlat",),
        "up_block_types": ("UpBlockFlat",) + ("CrossAttnUpBlockFlat",) * (n - 1),
    }
    return image, text


def ema_update(ema: Any, model: Any, rate: float) -> None:
    import torch

    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.mul_(rate).add_(pm.detach(), alpha=1.0 - rate)


def steps(n: int | None) -> Any:
    """``range(n)``, or an endless count when training is bounded by wall time only."""
    return range(n) if n is not None else itertools.count()


def budget_minutes(iters: int | None, minutes: float | None, default: float) -> float:
    """Wall-time budget of a training phase: as given; unbounded when only a step count is given (so that a
    step count repeats a run on any machine; a default budget once cut such a run short); else ``default``."""
    if minutes is not None:
        return float(minutes)
    return float("inf") if iters is not None else default


def lr_factor(it: int, warmup: int, total: int | None, decay: str) -> float:
    """Learning-rate multiplier at step ``it``: linear warm-up, then constant or a cosine to 0 at ``total``."""
    warm = min(1.0, (it + 1) / max(1, warmup))
    if decay == "none":
        return warm
    if total is None:
        raise ConfigError("--lr-decay cosine needs --unet-iters (the step the cosine reaches 0)")
    frac = min(1.0, max(0.0, (it - warmup) / max(1, total - warmup)))
    return warm * 0.5 * (1.0 + math.cos(math.pi * frac))


def timestep_weights(alphas_cumprod: Any, t: Any, weighting: str, gamma: float) -> Any:
    """Per-sample weights of the epsilon MSE at timesteps ``t``.

    ``none``: 1 (LDM, the published recipe). ``min_snr``: ``min(SNR, gamma) / SNR`` with
    ``SNR = abar / (1 - abar)`` (Hang et al. 2023, "Min-SNR weighting", for epsilon prediction):
    the nearly clean steps, whose noise prediction is about fine texture, count less, and the
    steps where shapes are decided count fully.
    """
    import torch

    if weighting == "none":
        return torch.ones(t.shape, dtype=torch.float32)
    if weighting != "min_snr":
        raise ConfigError(f"--loss-weighting: expected 'none' or 'min_snr', got {weighting!r}")
    abar = alphas_cumprod[t].to(torch.float64)
    snr = abar / (1.0 - abar)
    return (snr.clamp(max=gamma) / snr).to(torch.float32)


def mean_window(window: list[dict], step: int) -> dict:
    return {"iter": step, **{k: float(np.mean([w[k] for w in window])) for k in window[0]}}


# ------------------------------------------------------------------------------------ stages
def train_vae(args: argparse.Namespace, px_train: Any, rng: np.random.Generator) -> tuple[Any, dict]:
    import torch
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm

    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**vae_config(args))
    ema = copy.deepcopy(vae).requires_grad_(False)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    warm = max(1, args.warmup_iters // 2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: min(1.0, (it + 1) / warm))
    n_pix = 3 * args.image_size**2
    trace, window = [], []
    t_start = time.perf_counter()
    deadline = t_start + 60.0 * budget_minutes(args.vae_iters, args.vae_minutes, 7.0)
    it = 0
    bar = tqdm(steps(args.vae_iters), total=args.vae_iters, desc="train vae", mininterval=5.0)
    for it in bar:
        t0 = time.perf_counter()
        x = px_train[torch.from_numpy(rng.integers(0, len(px_train), args.vae_batch_size))].float() / 127.5 - 1.0
        vae.train()
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        l1 = (rec - x).abs().mean()
        l2 = ((rec - x) ** 2).mean()
        kl = post.kl().mean()  # summed over latent elements, mean over the batch
        # LDM weighs the KL against the reconstruction error summed over pixels; per pixel here.
        loss = l1 + l2 + args.kl_weight * kl / n_pix
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(vae.parameters(), 10.0))
        opt.step()
        sched.step()
        ema_update(ema, vae, min(args.ema_rate, (1.0 + it) / (10.0 + it)))
        window.append({"loss": loss.item(), "l1": l1.item(), "l2": l2.item(), "kl": kl.item(), "grad_norm": gnorm,
                       "sec": time.perf_counter() - t0})
        if (it + 1) % args.log_every == 0:
            row = mean_window(window, it + 1)
            trace.append(row)
            window = []
            bar.set_postfix(l1=f"{row['l1']:.4f}", kl=f"{row['kl']:.0f}", s_it=f"{row['sec']:.2f}")
            if not sys.stderr.isatty():
                print(json.dumps({"vae": row}), flush=True)
        if time.perf_counter() > deadline:
            break
    seconds = time.perf_counter() - t_start
    return ema.eval(), {"iters": it + 1, "seconds": seconds, "seconds_per_iter": seconds / (it + 1), "trace": trace}


def reuse_vae(args: argparse.Namespace) -> tuple[Any, dict]:
    """The float32 VAE of the trained model folder ``--vae-from``, checked against ``--image-size``.

    Its training record (``<folder>/*.training.json``, when present) is carried into this
    run's report, so the saved folder still says how its VAE was trained.
    """
    import torch

    from brainrecon.latents.versatile.dual_guided import load_vae
    from brainrecon.paths import resolve_weights_path

    if args.vae_iters is not None or args.vae_minutes is not None:
        raise ConfigError("--vae-from reuses a trained VAE: drop --vae-iters / --vae-minutes, or drop --vae-from")
    root = resolve_weights_path(args.vae_from)
    vae = load_vae(root, dtype=torch.float32).requires_grad_(False)
    size = vae.config.sample_size
    if size != args.image_size:
        raise ConfigError(f"--vae-from {args.vae_from}: its VAE works at {size} px, --image-size is {args.image_size}")
    record: dict[str, Any] = {"from": str(args.vae_from), "path": str(root), "iters": 0, "seconds": 0.0}
    reports = sorted(root.glob("*.training.json"))
    if reports:
        previous = json.loads(reports[0].read_text())
        record["trained"] = {k: v for k, v in previous.get("vae", {}).items() if k != "trace"}
        record["trained"]["data"] = previous.get("data")
    return vae.eval(), record


def continued_model(args: argparse.Namespace, clip: dict) -> dict:
    """Check that ``--init-from`` can be continued here; its training record, for this run's report.

    The model must have a training record (``*.training.json``) naming the CLIP weights it was
    trained on, and they must be this run's: its UNets read that CLIP's features. Its VAE is
    reused (``--vae-from`` must be absent or the same folder, no VAE steps).
    """
    from brainrecon.paths import resolve_weights_path

    if args.vae_from is not None and args.vae_from != args.init_from:
        raise ConfigError(f"--init-from {args.init_from} keeps that model's VAE: drop --vae-from {args.vae_from}")
    root = resolve_weights_path(args.init_from)
    reports = sorted(root.glob("*.training.json"))
    if not reports:
        raise ConfigError(f"--init-from {root}: no *.training.json, so the CLIP it was trained on is unknown")
    previous = json.loads(reports[0].read_text())
    trained_on = (previous.get("clip") or {}).get("weights")
    if trained_on != clip.get("weights"):
        raise ConfigError(f"--init-from {root}: trained on CLIP weights {trained_on}, this run's CLIP "
                          f"{args.clip} has {clip.get('weights')}")
    unet = previous.get("unet", {})
    earlier = int(unet.get("iters", 0)) + int((unet.get("init") or {}).get("iters_before", 0))
    return {"from": str(args.init_from), "path": str(root), "iters_before": earlier, "report": reports[0].name,
            "args": previous.get("args"), "seconds": unet.get("seconds")}


def plain_config(model: Any) -> dict:
    """A diffusers model's constructor arguments (its config without the private keys)."""
    return {k: v for k, v in model.config.items() if not k.startswith("_")}


def encode_latents(vae: Any, px: Any, batch: int = 128) -> tuple[Any, Any]:
    """Posterior means and standard deviations of uint8 images (n, 3, H, W)."""
    import torch

    mus, sds = [], []
    with torch.inference_mode():
        for i in range(0, len(px), batch):
            dist = vae.encode(px[i : i + batch].float() / 127.5 - 1.0).latent_dist
            mus.append(dist.mean)
            sds.append(dist.std)
    return torch.cat(mus), torch.cat(sds)


def train_unet(args: argparse.Namespace, dual: Any, lat: tuple[Any, Any], feats: dict, train_idx: np.ndarray,
               scale: float, rng: np.random.Generator) -> tuple[Any, dict]:
    import torch
    from tqdm.auto import tqdm

    from brainrecon.latents.versatile.dual_guided import reference_scheduler

    noise_sched = reference_scheduler()
    mu, sd = lat
    text_caps = torch.from_numpy(feats["text_captions"][train_idx])
    text_mean = torch.from_numpy(feats["text_mean"][train_idx])
    vision = torch.from_numpy(feats["vision"][train_idx])
    tu = torch.from_numpy(feats["uncond_text"]).float()
    vu = torch.from_numpy(feats["uncond_vision"]).float()
    k = text_caps.shape[1]
    p_mix = np.asarray([float(v) for v in args.p_mix.split(",")])
    if p_mix.shape != (3,) or (p_mix < 0).any() or not math.isclose(p_mix.sum(), 1.0, abs_tol=1e-6):
        raise ConfigError(f"--p-mix: expected three probabilities summing to 1, got {args.p_mix!r}")

    params = list(dual.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: lr_factor(it, args.warmup_iters, args.unet_iters, args.lr_decay))
    ema = copy.deepcopy(dual).requires_grad_(False)
    gen = torch.Generator().manual_seed(args.seed + 1)
    trace, window = [], []
    t_start = time.perf_counter()
    deadline = t_start + 60.0 * budget_minutes(args.unet_iters, args.unet_minutes, 25.0)
    done = 0
    bar = tqdm(steps(args.unet_iters), total=args.unet_iters, desc="train dual-guided unet", mininterval=5.0)
    for it in bar:
        t0 = time.perf_counter()
        b = args.batch_size
        idx = torch.from_numpy(rng.integers(0, len(train_idx), b))
        z0 = (mu[idx] + sd[idx] * torch.randn(mu[idx].shape, generator=gen)) * scale
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (b,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        zt = noise_sched.add_noise(z0, noise, t)
        # one caption at random, or (index k) the caption average Brain-Diffuser regresses
        cap = torch.from_numpy(rng.integers(0, k + 1, b))
        text = torch.where((cap == k)[:, None, None], text_mean[idx].float(),
                           text_caps[idx, cap.clamp(max=k - 1)].float())
        vis = vision[idx].float()
        drop_t = torch.from_numpy(rng.random(b) < args.p_uncond)[:, None, None]
        drop_v = torch.from_numpy(rng.random(b) < args.p_uncond)[:, None, None]
        text = torch.where(drop_t, tu.expand_as(text), text)
        vis = torch.where(drop_v, vu.expand_as(vis), vis)
        mode = int(rng.choice(3, p=p_mix))
        mix: float | Any = (0.0, 1.0)[mode] if mode < 2 else torch.from_numpy(rng.random(b).astype(np.float32))
        dual.train()
        eps = dual(zt, t, text, vis, mix)
        per_sample = ((eps - noise) ** 2).mean(dim=tuple(range(1, eps.ndim)))
        loss = (timestep_weights(noise_sched.alphas_cumprod, t, args.loss_weighting, args.min_snr_gamma)
                * per_sample).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, args.grad_clip))
        opt.step()
        sched.step()
        ema_update(ema, dual, min(args.ema_rate, (1.0 + it) / (10.0 + it)))
        window.append({"loss": loss.item(), "mse": per_sample.mean().item(),
                       f"loss_mix{('0', '1', 'u')[mode]}": loss.item(), "grad_norm": gnorm,
                       "sec": time.perf_counter() - t0})
        if (it + 1) % args.log_every == 0:
            keys = {key for w in window for key in w}
            row = {"iter": it + 1,
                   **{key: float(np.mean([w[key] for w in window if key in w])) for key in sorted(keys)}}
            trace.append(row)
            window = []
            bar.set_postfix(loss=f"{row['loss']:.4f}", s_it=f"{row['sec']:.2f}")
            if not sys.stderr.isatty():
                print(json.dumps({"unet": row}), flush=True)
        done = it + 1
        if time.perf_counter() > deadline:
            break
    seconds = time.perf_counter() - t_start
    return ema.eval(), {"iters": done, "seconds": seconds, "seconds_per_iter": seconds / max(done, 1), "trace": trace}


# ------------------------------------------------------------------------------------ saving
def save_folder(folder: Path, dual: Any, text_unet: Any, vae: Any, dtype: Any) -> None:
    """The diffusers layout of the published model: image_unet/, text_unet/, vae/, scheduler/."""
    import torch

    from brainrecon.latents.versatile.dual_guided import reference_scheduler

    with dual.plain_image_unet() as image_unet:
        copy.deepcopy(image_unet).to(dtype).save_pretrained(folder / "image_unet", safe_serialization=True)
    text_out = copy.deepcopy(text_unet)
    with torch.no_grad():
        for p in text_out.parameters():  # the text flow's own layers: untrained, stored as zeros
            p.zero_()
        for name in dual.sites:
            trained = dual.image_unet.get_submodule(name).text_transformer
            text_out.get_submodule(name).load_state_dict(trained.state_dict())
    text_out.to(dtype).save_pretrained(folder / "text_unet", safe_serialization=True)
    copy.deepcopy(vae).to(dtype).save_pretrained(folder / "vae", safe_serialization=True)
    reference_scheduler().save_pretrained(folder / "scheduler")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------ evaluation
def evaluate(args: argparse.Namespace, folder: Path, images: np.ndarray, feats: dict, val_idx: np.ndarray,
             px_val: Any) -> dict:
    """Held-out figures from the saved folder, loaded as a user would."""
    import torch

    from brainrecon.images import resize, to_uint8_hwc
    from brainrecon.latents.versatile.dual_guided import load_dual_guided
    from brainrecon.metrics.identification import two_way_identification
    from brainrecon.metrics.lowlevel import pixcorr

    pipe = load_dual_guided(folder, progress=True, batch_size=50)
    truth = px_val.float().numpy() / 255.0
    # VAE: encode (posterior mean) -> decode on every held-out scene
    with torch.inference_mode():
        rec = np.concatenate([
            pipe.decode(pipe.vae.encode(px_val[i : i + 100].float() / 127.5 - 1.0).latent_dist.mean
                        * pipe.scaling_factor).numpy()
            for i in range(0, len(px_val), 100)
        ])
    shuffle = np.roll(np.arange(len(truth)), 1)
    out: dict[str, Any] = {
        "n_heldout": len(val_idx),
        "vae_pixcorr_mean": float(np.nanmean(pixcorr(truth, rec))),
        "vae_pixcorr_vs_shuffled_mean": float(np.nanmean(pixcorr(truth[shuffle], rec))),
    }
    # img2img from a blurred scene, conditioned on its own CLIP features or on another scene's
    n = min(args.eval_n, len(val_idx))
    sel = val_idx[:n]
    gt = truth[:n]
    blurred = resize(resize(gt, args.eval_blur), args.image_size)
    other = np.roll(np.arange(n), 1)
    text = feats["text_mean"][sel].astype(np.float32)
    vision = feats["vision"][sel].astype(np.float32)
    uncond = (feats["uncond_text"], feats["uncond_vision"])
    runs = {
        "true": (text, vision, 0.4),
        "other": (text[other], vision[other], 0.4),
        "true_vision_only": (text, vision, 0.0),
        "true_text_only": (text, vision, 1.0),
    }
    embed = feats["embed"]
    gt_embed = embed(images[sel]) if embed is not None else None
    out["img2img"] = {"n": n, "strength": 0.75, "guidance": 7.5, "steps": args.eval_steps,
                      "blur": f"{args.image_size}->{args.eval_blur}->{args.image_size} px bicubic",
                      "init_pixcorr_mean": float(np.nanmean(pixcorr(gt, blurred)))}
    if gt_embed is not None:
        init_embed = embed(to_uint8_hwc(blurred))
        out["img2img"]["init_clip_two_way"] = float(two_way_identification(gt_embed, init_embed).mean())
    for name, (t, v, mix) in runs.items():
        t0 = time.perf_counter()
        res = pipe(blurred, t, v, strength=0.75, guidance=7.5, mix=mix, steps=args.eval_steps, seed=0,
                   uncond=uncond)
        row = {"mix": mix, "seconds": time.perf_counter() - t0,
               "pixcorr_mean": float(np.nanmean(pixcorr(gt, res)))}
        if gt_embed is not None:
            e = embed(to_uint8_hwc(res))
            row["clip_two_way_vs_true_image"] = float(two_way_identification(gt_embed, e).mean())
            if name == "other":
                # whose CLIP features the output follows: the conditioning scene's
                row["clip_two_way_vs_conditioning_image"] = float(two_way_identification(gt_embed[other], e).mean())
        out["img2img"][name] = row
        print(json.dumps({"eval": {name: row}}), flush=True)
    return out


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from brainrecon.images import resize, to_float_chw
    from brainrecon.latents.versatile.dual_guided import DualGuidedUNet, load_dual_guided

    out = Path(args.out).resolve()
    bundled = (REPO / "brainrecon" / "weights").resolve()
    if args.clip == STAND_IN and out.parent == bundled:
        raise ConfigError(f"--clip {STAND_IN} is for testing: pass --out outside {bundled}")
    if args.image_size % 4:
        raise ConfigError(f"--image-size must be a multiple of 4, got {args.image_size}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # Flush float32 denormals to zero: they make CPU kernels very slow and change nothing here.
    torch.set_flush_denormal(True)
    rng = np.random.default_rng(args.seed)
    t_all = time.perf_counter()

    images_path = Path(args.images)
    captions_path = Path(args.captions) if args.captions else images_path.with_name(images_path.stem + "_captions.npy")
    images, captions = load_scene_arrays(images_path, captions_path)
    digest = {"images": sha256(images), "captions": sha256(captions)}  # of the files, before any --n-scenes cut
    if args.n_scenes is not None:
        images, captions = images[: args.n_scenes], captions[: args.n_scenes]
    n = len(images)
    if not 0 < args.n_heldout < n - 1:
        raise ConfigError(f"--n-heldout: expected between 1 and {n - 2}, got {args.n_heldout}")
    train_idx = np.arange(n - args.n_heldout)
    val_idx = np.arange(n - args.n_heldout, n)

    # 8-bit scenes at the working resolution (the resize the pipeline applies to its inputs)
    px = torch.cat([
        torch.from_numpy(np.rint(resize(to_float_chw(images[i : i + 256]), args.image_size) * 255.0)).to(torch.uint8)
        for i in range(0, n, 256)
    ])
    px_train, px_val = px[torch.from_numpy(train_idx)], px[torch.from_numpy(val_idx)]

    feats = clip_features(args, images, captions, f"{digest['images']}{digest['captions']}{n}")
    lt, dim = feats["text_captions"].shape[2:]
    lv = feats["vision"].shape[1]
    print(f"{len(train_idx)} training / {len(val_idx)} held-out scenes; CLIP text {lt}x{dim}, vision {lv}x{dim}",
          flush=True)

    # A continued model keeps the latent space (VAE) and conditioning (CLIP) it was trained in.
    init_log = None
    if args.init_from is not None:
        init_log = continued_model(args, feats["clip"])
        args.vae_from = args.init_from

    # 1. VAE: trained here, or taken with its scaling factor from a trained model
    vae, vae_log = reuse_vae(args) if args.vae_from is not None else train_vae(args, px_train, rng)
    mu, sd = encode_latents(vae, px_train)
    if args.vae_from is not None:
        scale = float(vae.config.scaling_factor)
        print(f"VAE from {vae_log['from']}; latent scale factor {scale:.4f}", flush=True)
    else:
        scale = float(1.0 / (mu + sd * torch.randn(mu.shape, generator=torch.Generator().manual_seed(args.seed))).std())
        vae.register_to_config(scaling_factor=scale)
        print(f"VAE: {vae_log['iters']} steps in {vae_log['seconds'] / 60:.1f} min; latent scale factor {scale:.4f}",
              flush=True)

    # 2. dual-guided latent diffusion
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import UNetFlatConditionModel

    latent_size = mu.shape[-1]
    if args.init_from is not None:
        from brainrecon.latents.versatile.dual_guided import load_unets

        image_unet, text_unet = load_unets(args.init_from, dtype=torch.float32)
        image_cfg, text_cfg = (plain_config(m) for m in (image_unet, text_unet))
        if image_cfg["cross_attention_dim"] != dim or image_cfg["sample_size"] != latent_size:
            raise ConfigError(f"--init-from {args.init_from}: its UNet takes {image_cfg['sample_size']} px latents and "
                              f"{image_cfg['cross_attention_dim']}-d context, this run has {latent_size} and {dim}")
    else:
        image_cfg, text_cfg = unet_configs(args, latent_size, dim)
        torch.manual_seed(args.seed + 2)
        image_unet = UNet2DConditionModel(**image_cfg)
        text_unet = UNetFlatConditionModel(**text_cfg)
    dual = DualGuidedUNet(image_unet, text_unet)
    n_params = {
        "vae": sum(p.numel() for p in vae.parameters()),
        "dual_guided_unet": sum(p.numel() for p in dual.parameters()),
        "text_unet_total": sum(p.numel() for p in text_unet.parameters()),
    }
    print(f"parameters: {n_params}", flush=True)
    ema, unet_log = train_unet(args, dual, (mu, sd), feats, train_idx, scale, rng)

    # 3. save (temporary folder), evaluate from the saved files, then rename into place
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_dtype = {"float16": torch.float16, "float32": torch.float32}[args.save_dtype]
    save_folder(tmp, ema, text_unet, vae, save_dtype)
    load_dual_guided(tmp, progress=False)  # strict load check before spending time on the evaluation
    heldout = evaluate(args, tmp, images, feats, val_idx, px_val)
    report = {
        "args": vars(args),
        "data": {"images": str(images_path), "captions": str(captions_path),
                 **{f"sha256_{k}": v for k, v in digest.items()},
                 "n_train": len(train_idx), "n_heldout": len(val_idx),
                 "heldout": f"the last {len(val_idx)} scenes (indices {val_idx[0]}..{val_idx[-1]})"},
        "clip": feats["clip"],
        "context_shapes": {"text": [int(lt), int(dim)], "vision": [int(lv), int(dim)]},
        "n_params": n_params,
        "vae": {"config": (plain_config(vae) if args.vae_from
                           else vae_config(args)), "scaling_factor": scale, **vae_log},
        "unet": {"image_unet_config": image_cfg, "text_unet_config": {**text_cfg}, **unet_log,
                 **({"init": init_log} if init_log else {})},
        "heldout": heldout,
        "weights_bytes": folder_bytes(tmp),
        "wall_seconds": time.perf_counter() - t_all,
    }
    (tmp / f"{out.name}.training.json").write_text(json.dumps(report, indent=2, default=list) + "\n")
    replace_directory(tmp, out)
    print(json.dumps({"vae_iters": vae_log["iters"], "unet_iters": unet_log["iters"], "heldout": heldout,
                      "weights_bytes": report["weights_bytes"], "wall_minutes": report["wall_seconds"] / 60}, indent=2))
    print(f"saved {out}")
    return report


if __name__ == "__main__":
    main()
