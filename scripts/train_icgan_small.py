"""Train the small IC-GAN generator on CPU from simulated scenes, conditioned on CLIP-small instance features.

Usage::

    python scripts/train_icgan_small.py --images /tmp/vd_train/images.npy [--minutes 35] [--threads 1] [--seed 0]

``images.npy`` holds ``(n, H, W, 3)`` uint8 scenes (``scripts/sim_training_images.py``); the last
``--n-heldout`` (600) are never trained on. The generator is the library's
:class:`~brainrecon.latents.icgan.ICGANGenerator`, the code path of the published model, in a
small configuration: 64 px, channel unit ``--ch`` 8 (128-128-64-32-16 channels over four
up-sampling blocks from 4x4), self-attention at 32 px, hierarchical noise of ``--dim-z`` 40
(five chunks of 8), a 64-d instance embedding; the "dense" vector (first linear layer's output)
has 128 x 4 x 4 = 2,048 values.

Instance encoder: a documented substitute
-----------------------------------------
IC-GAN conditions on SwAV ResNet-50 features (self-supervised on ImageNet, 2048-d). Here the
instance feature is the L2-normalised pooled image embedding (64-d) of the project's small CLIP
(``bundled:clip_small``, trained contrastively on captions of the same kind of scenes, held-out
scenes excluded): available offline, small, and semantic (object categories, colours, positions).
:class:`~brainrecon.latents.icgan.ClipInstanceEncoder` computes it, and the space uses the same
class at encoding time (``instance_encoder: clip`` in ``conf/latents/icgan_small.yaml``), so
training and decoding see identical features. The CLIP folder's fingerprint is recorded.

Objective, and how it departs from the paper
--------------------------------------------
IC-GAN (Casanova et al. 2021) trains purely adversarially: for an anchor ``x_i`` with instance
feature ``h_i``, real pairs are ``(x_j, h_i)`` with ``x_j`` one of the anchor's ``k`` nearest
neighbours in feature space, fake pairs ``(G(h_i, z), h_i)``; the discriminator is a projection
discriminator conditioned on ``h_i``; hinge losses. That needs far more steps than ~35 CPU-minutes
allow, so the generator's loss here is a documented hybrid:

* IC-GAN's instance-conditioned adversarial term on neighbourhoods (``--k`` 10 neighbours among
  the 5,400 training scenes, anchor included; projection discriminator; hinge loss), weight
  ``--adv-weight``, ramped in after ``--adv-start`` steps;
* an instance-consistency term, ``1 - cos(phi(G(h_i, z)), h_i)`` with ``phi`` the same CLIP
  encoder (frozen): every image generated from ``h_i``, whatever its noise, must have ``h_i`` as
  its instance feature (``--feat-weight``). This makes the conditioning carry the scene's
  semantics without tying the noise down. The generated image is shifted at random by up to
  ``--feat-shift`` pixels first, so that patterns that fool CLIP at one exact alignment do not pay;
* a coarse reconstruction term: L1 between ``G(h_i, z)`` and the anchor ``x_i``, both
  average-pooled to ``--pix-size`` (16) pixels, for noise drawn from the prior (``--pix-weight``):
  the instance fixes the layout and colours, the noise and the adversarial term the details.

Training-time mechanics are BigGAN's: batch statistics in the generator's batch norms while
training (the library layers' opt-in ``train_momentum``), standing statistics of the saved EMA
weights, one power iteration of the spectral-norm vectors per step.

Held-out evaluation (from the saved file loaded by
:func:`~brainrecon.latents.icgan.build_icgan_space`, the pipeline's loader):

* generation from the held-out scenes' instance features with prior noise: PixCorr, MSE and
  2-way identification (pixels; CLIP-small embeddings, biased upwards by the consistency term)
  against the scenes, shuffled pairs as a floor, and the instance consistency;
* inversion (acceptance point 3 of issue 8): on ``--invert-n`` (50) held-out scenes, PixCorr and
  MSE of the rendering before inversion (instance + the space's starting noise), after the noise
  inversion and after the dense inversion, with the settings of ``conf/latents/icgan_small.yaml``
  (``--invert-steps``, ``--invert-dense-steps``, ``--invert-lr``), its time per image (and the
  implied time for the default experiment's 1,300 stimuli), and again with ``--invert-long-steps``.

Outputs (``--out``, default ``brainrecon/weights/icgan_small/``, written to a temporary folder and
renamed): ``generator.safetensors`` (the published ``G_ema`` key layout) with ``generator.json``
(the :class:`~brainrecon.latents.icgan.ICGANConfig`) and ``icgan_small.training.json``
(arguments, SHA-256 of the scenes, CLIP fingerprint, loss trace, timings, held-out figures).
``--preview PNG`` writes held-out scenes, generations from their instance, and the inverted
renderings as one image.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))
SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:  # the GAN-training helpers live beside, in train_bigbigan_small.py
    sys.path.insert(0, str(SCRIPTS))

from train_bigbigan_small import (  # noqa: E402
    ema_rate,
    ema_update,
    hinge_d,
    identification_figures,
    image_grid,
    image_trunk,
    load_scenes,
    sha256_array,
    spectral,
    standing_statistics,
    update_singular_vectors,
    use_batch_statistics,
)
from brainrecon.paths import replace_directory  # noqa: E402

#: The extract-stage inversion of conf/latents/icgan_small.yaml, evaluated by default (a unit test keeps them equal).
DEFAULT_INVERSION = {"steps": 10, "dense_steps": 20, "lr": 0.1, "batch_size": 50}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help=".npy of (n, H, W, 3) uint8 training scenes")
    p.add_argument("--out", default=str(REPO / "brainrecon" / "weights" / "icgan_small"))
    p.add_argument("--clip", default="bundled:clip_small", help="CLIP folder: the instance encoder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=35.0, help="training wall time; then save and evaluate")
    p.add_argument("--iters", type=int, default=1_000_000, help="upper bound on steps (fix it for reruns)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for reproducibility)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-heldout", type=int, default=600, help="the last scenes, never trained on")
    # architecture
    p.add_argument("--resolution", type=int, default=64, choices=(32, 64))
    p.add_argument("--ch", type=int, default=8, help="channel unit (published: 96)")
    p.add_argument("--dim-z", type=int, default=40, help="noise size (published: 120 -> 119)")
    p.add_argument("--shared-dim-feat", type=int, default=64, help="instance embedding size (published: 512)")
    p.add_argument("--attention", default="32", help="attention resolutions joined by '_' ('' for none)")
    p.add_argument("--disc-ch", type=int, default=16, help="discriminator channels at full resolution")
    # optimisation
    p.add_argument("--lr", type=float, default=5e-4, help="generator (Adam, betas 0.5, 0.999)")
    p.add_argument("--lr-d", type=float, default=3e-4, help="discriminator (Adam, betas 0.0, 0.999)")
    p.add_argument("--bn-momentum", type=float, default=0.1)
    p.add_argument("--ema-rate", type=float, default=0.999)
    p.add_argument("--grad-clip", type=float, default=10.0)
    # objective
    p.add_argument("--k", type=int, default=10, help="neighbourhood size (anchor included)")
    p.add_argument("--adv-weight", type=float, default=0.1, help="IC-GAN's instance-conditioned adversarial term")
    p.add_argument("--adv-start", type=int, default=300, help="steps before the adversarial term (then ramped)")
    p.add_argument("--adv-ramp", type=int, default=500)
    p.add_argument("--feat-weight", type=float, default=0.5, help="instance consistency 1 - cos(phi(G(h, z)), h)")
    p.add_argument("--feat-shift", type=int, default=3,
                   help="random translation (pixels, reflect padding) of G(h, z) before phi in the consistency term")
    p.add_argument("--pix-weight", type=float, default=2.0, help="coarse L1 to the anchor")
    p.add_argument("--pix-size", type=int, default=16, help="side the coarse L1 pools both images to")
    # evaluation
    p.add_argument("--eval-n", type=int, default=600, help="held-out scenes for the generation figures")
    p.add_argument("--invert-n", type=int, default=50, help="held-out scenes inverted")
    p.add_argument("--invert-steps", type=int, default=DEFAULT_INVERSION["steps"])
    p.add_argument("--invert-dense-steps", type=int, default=DEFAULT_INVERSION["dense_steps"])
    p.add_argument("--invert-lr", type=float, default=DEFAULT_INVERSION["lr"])
    p.add_argument("--invert-long-steps", type=int, default=150, help="a longer inversion for reference (0: skip)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--standing-batches", type=int, default=20, help="batches averaged for the saved BN statistics")
    p.add_argument("--preview", default=None, help="write a PNG of held-out scenes, generations, inversions")
    args = p.parse_args(argv)
    if args.batch_size < 2 or args.iters < 1:
        p.error("--batch-size must be >= 2 (batch statistics) and --iters >= 1")
    if not 1 <= args.k:
        p.error("--k must be >= 1")
    if args.resolution % args.pix_size:
        p.error(f"--pix-size {args.pix_size} must divide --resolution {args.resolution}")
    return args


def projection_discriminator(resolution: int, ch: int, feature_dim: int) -> Any:
    """IC-GAN's (BigGAN's) projection discriminator conditioned on the instance feature.

    ``D(x, h) = w . phi(x) + <phi(x), V h>`` with ``phi`` the convolutional trunk (Miyato &
    Koyama 2018; IC-GAN replaces the class embedding by a linear map of the instance feature).
    """
    from torch import nn

    trunk, c = image_trunk(resolution, ch)

    class ProjectionDiscriminator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.phi = trunk
            self.out = spectral(nn.Linear(c, 1))
            self.embed = spectral(nn.Linear(feature_dim, c, bias=False))

        def forward(self, x: Any, h: Any) -> Any:
            f = self.phi(x)
            return self.out(f).squeeze(1) + (f * self.embed(h)).sum(1)

    return ProjectionDiscriminator()


def random_shift(x: Any, shift: int, rng: np.random.Generator) -> Any:
    """Translate a batch by a random offset of up to ``shift`` pixels (reflect padding); 0: unchanged.

    Applied before the frozen CLIP in the consistency term: a pattern that only fools CLIP at one
    exact pixel alignment no longer lowers the loss (CLIP-small was trained with the same shifts).
    """
    import torch.nn.functional as F

    if shift <= 0:
        return x
    size = x.shape[-1]
    dy, dx = rng.integers(0, 2 * shift + 1, 2)
    padded = F.pad(x, (shift, shift, shift, shift), mode="reflect")
    return padded[:, :, dy : dy + size, dx : dx + size]


def nearest_neighbours(feats: Any, k: int, chunk: int = 1000) -> Any:
    """Indices ``(n, k)`` of each row's ``k`` most cosine-similar rows (itself first), in chunks."""
    import torch

    idx = []
    for start in range(0, len(feats), chunk):
        sims = feats[start : start + chunk] @ feats.T
        idx.append(sims.topk(k, dim=1).indices)
    return torch.cat(idx)


def evaluate_generation(space: Any, images: np.ndarray, clip: Any, seed: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Figures of images generated from held-out instance features with prior noise."""
    import torch

    from brainrecon.latents.base import Stimuli
    from brainrecon.latents.icgan.space import stimuli_to_tensor
    from brainrecon.metrics.identification import two_way_identification

    target = stimuli_to_tensor(images, space.image_size).numpy()
    Z = space.encode(Stimuli(images))
    gen = space.decode({"instance": Z["instance"]}, seed=seed)  # noise drawn per image from (seed, index)
    out: dict[str, Any] = {"n": len(images), **identification_figures(target, gen, clip)}
    with torch.no_grad():
        h_gen = space.encoder(torch.from_numpy(gen)).numpy()
    cos = h_gen @ Z["instance"].T
    n = len(cos)
    out["instance_consistency"] = {
        "cos_own": float(np.mean(np.diag(cos))),
        "cos_other": float((cos.sum() - np.trace(cos)) / max(1, n * (n - 1))),
        "two_way": float(two_way_identification(Z["instance"], h_gen).mean()) if n > 1 else float("nan"),
        "note": "instance feature of the generated image vs the conditioning one (CLIP-small, cosine)",
    }
    return out, {"target": target, "generated": gen}


def evaluate_inversion(space: Any, images: np.ndarray, n_stimuli: int = 1300) -> tuple[dict, dict[str, np.ndarray]]:
    """Reconstruction quality before and after the space's inversion (noise, then dense)."""
    from brainrecon.latents.base import Stimuli
    from brainrecon.latents.icgan.space import stimuli_to_tensor
    from brainrecon.metrics.lowlevel import mse, pixcorr

    target = stimuli_to_tensor(images, space.image_size).numpy()

    def figures(rendered: np.ndarray) -> dict[str, float]:
        return {"pixcorr": float(np.nanmean(pixcorr(target, rendered))), "mse": float(np.mean(mse(target, rendered))),
                "pixcorr_min": float(np.nanmin(pixcorr(target, rendered)))}

    t0 = time.perf_counter()
    Z = space.encode(Stimuli(images))
    seconds = time.perf_counter() - t0
    noise0 = space._initial_noise(images).numpy()
    decode_from = space.decode_from
    try:
        space.decode_from = "instance_noise"
        before = space.decode({"instance": Z["instance"], "noise": noise0})
        after_noise = space.decode(Z)
        space.decode_from = "dense"
        after_dense = space.decode(Z)
    finally:
        space.decode_from = decode_from
    s = space.inversion
    per_image = seconds / len(images)
    out = {
        "n": len(images),
        "settings": {"steps": s.steps, "dense_steps": s.dense_steps, "lr": s.lr, "dense_lr": s.dense_lr,
                     "batch_size": s.batch_size, "noise_reg": s.noise_reg, "perceptual": s.perceptual,
                     "noise_init": s.noise_init},
        "before": figures(before),
        "after_noise": figures(after_noise),
        "after_dense": figures(after_dense),
        "seconds_per_image": per_image,
        f"estimated_minutes_for_{n_stimuli}_stimuli": per_image * n_stimuli / 60.0,
        "note": "before: instance + the space's starting noise; after_noise: instance + inverted noise through "
                "the whole generator; after_dense: + inverted dense vector (decode_from=dense, the paper's path). "
                "Timing at this script's --threads.",
    }
    return out, {"before": before, "after_noise": after_noise, "after_dense": after_dense}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import safetensors
    import torch
    import torch.nn.functional as F

    from brainrecon.latents.icgan import (
        ClipInstanceEncoder,
        ICGANConfig,
        ICGANGenerator,
        build_icgan_space,
        save_generator,
    )
    from brainrecon.latents.icgan.space import stimuli_to_tensor
    from brainrecon.latents.versatile.clip import load_clip

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # attention softmax tails hit float32 denormals, which are very slow on CPU
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t_all = time.perf_counter()

    images_path = Path(args.images)
    images, train, heldout = load_scenes(images_path, args.n_heldout, max(args.batch_size, args.k))
    R = args.resolution
    clip = load_clip(args.clip)
    phi = ClipInstanceEncoder(clip.vision_model)
    cfg = ICGANConfig(
        resolution=R, ch=args.ch, dim_z=args.dim_z, hier=True, attention=args.attention, shared_dim=8, n_classes=1,
        shared_dim_feat=args.shared_dim_feat, feature_dim=phi.cfg.feature_dim,
    )
    # The space's own preprocessing (centre square, antialiased bilinear to R) and instance features, once.
    px01 = torch.cat([stimuli_to_tensor(train[i : i + 500], R) for i in range(0, len(train), 500)])
    with torch.no_grad():
        feats = torch.cat([phi(px01[i : i + 500]) for i in range(0, len(px01), 500)])
    px = px01.mul(2.0).sub(1.0)
    del px01
    nbrs = nearest_neighbours(feats, args.k)
    # How alike neighbourhoods are: mean cosine of each scene to its neighbours (column 0 is the scene itself).
    nn_sim = float((feats[:, None, :] * feats[nbrs[:, 1:]]).sum(-1).mean()) if args.k > 1 else float("nan")

    G = ICGANGenerator(cfg)
    D = projection_discriminator(R, args.disc_ch, cfg.feature_dim)
    update_singular_vectors(G, iterations=20)  # start from good singular-value estimates
    use_batch_statistics(G, args.bn_momentum)
    ema_g = copy.deepcopy(G).requires_grad_(False)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(0.0, 0.999))
    n_params = {name: sum(p.numel() for p in net.parameters()) for name, net in (("generator", G), ("discriminator", D))}
    print(f"small IC-GAN: {n_params}; {len(train)} train / {len(heldout)} held-out scenes; {R} px; noise "
          f"{cfg.noise_dim}, dense {cfg.dense_dim}, instance {cfg.feature_dim}; mean cosine to the {args.k - 1} "
          f"neighbours {nn_sim:.3f}", flush=True)

    trace: list[dict] = []
    window: list[dict] = []
    t_start = time.perf_counter()
    deadline = t_start + 60.0 * args.minutes
    B = args.batch_size
    it = 0
    for it in range(args.iters):
        t0 = time.perf_counter()
        anchor = torch.from_numpy(rng.choice(len(px), B, replace=False))
        neighbour = nbrs[anchor, torch.from_numpy(rng.integers(0, args.k, B))]
        h = feats[anchor]
        G.train()
        x_fake = G(h, torch.randn(B, cfg.noise_dim))
        ramp = min(1.0, max(0.0, (it - args.adv_start) / max(1, args.adv_ramp)))
        stats: dict[str, float] = {}
        if ramp > 0 and args.adv_weight > 0:
            # Real pairs: a neighbour of the anchor with the anchor's feature; fake: G(h_anchor, z).
            D.requires_grad_(True)
            loss_d = hinge_d(D(px[neighbour], h), D(x_fake.detach(), h))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            stats["loss_d"] = float(loss_d.detach())
            D.requires_grad_(False)
            adv = -D(x_fake, h).mean()
            stats["adv"] = float(adv.detach())
        else:
            adv = torch.zeros(())
        consistency = 1.0 - (phi(random_shift((x_fake + 1.0) / 2.0, args.feat_shift, rng)) * h).sum(1).mean()
        pool = R // args.pix_size
        coarse = (F.avg_pool2d(x_fake, pool) - F.avg_pool2d(px[anchor], pool)).abs().mean()
        loss = args.adv_weight * ramp * adv + args.feat_weight * consistency + args.pix_weight * coarse
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(G.parameters(), args.grad_clip))
        opt_g.step()
        update_singular_vectors(G)
        ema_update(ema_g, G, ema_rate(args.ema_rate, it))
        stats.update({"loss": float(loss.detach()), "consistency": float(consistency.detach()),
                      "coarse_l1": float(coarse.detach()), "grad_norm": gnorm, "sec": time.perf_counter() - t0})
        window.append(stats)
        if (it + 1) % args.log_every == 0:
            keys = sorted({k for w in window for k in w})
            row = {"iter": it + 1, "adv_ramp": ramp,
                   **{k: float(np.mean([w[k] for w in window if k in w])) for k in keys}}
            trace.append(row)
            window = []
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        if time.perf_counter() > deadline:
            print(f"stopping at step {it + 1}: --minutes {args.minutes} reached", flush=True)
            break
    n_iters = it + 1
    train_seconds = time.perf_counter() - t_start

    # Saved weights: EMA, refined singular vectors (logged in sv0), standing batch-norm statistics.
    update_singular_vectors(ema_g, iterations=20)
    srng = np.random.default_rng(args.seed + 1)

    def g_batch() -> None:
        idx = torch.from_numpy(srng.choice(len(px), B, replace=False))
        ema_g(feats[idx], torch.randn(B, cfg.noise_dim))

    n_standing = standing_statistics(ema_g, [g_batch] * args.standing_batches)

    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_generator(ema_g, tmp / "generator.safetensors")

    # Evaluate what was written, through the pipeline's loader (architecture from generator.json).
    def space(**kwargs: Any) -> Any:
        return build_icgan_space(tmp / "generator.safetensors", args.clip, model=None, instance_encoder="clip",
                                 batch_size=64, progress=False, **kwargs)

    t_eval = time.perf_counter()
    ho = np.ascontiguousarray(heldout[: min(args.eval_n, len(heldout))])
    generation, shown = evaluate_generation(
        space(targets=["instance"], decode_from="instance_noise"), ho, clip, args.seed
    )
    inv_imgs = np.ascontiguousarray(heldout[: min(args.invert_n, len(heldout))])
    settings = {"steps": args.invert_steps, "dense_steps": args.invert_dense_steps, "lr": args.invert_lr,
                "batch_size": DEFAULT_INVERSION["batch_size"]}
    inversion, inverted = evaluate_inversion(space(inversion=settings), inv_imgs)
    figures = {"generation_from_instance": generation, "inversion": inversion}
    if args.invert_long_steps > 0:
        long = {**settings, "steps": args.invert_long_steps, "dense_steps": args.invert_long_steps}
        figures["inversion_long"], _ = evaluate_inversion(space(inversion=long), inv_imgs)
    eval_seconds = time.perf_counter() - t_eval

    weight_bytes = (tmp / "generator.safetensors").stat().st_size
    report = {
        "model": "IC-GAN generator, small configuration (brainrecon.latents.icgan), CLIP-small instance features",
        "objective": "hybrid: IC-GAN neighbourhood adversarial hinge loss with a projection discriminator "
                     "(weight adv_weight, ramped) + instance consistency 1 - cos(phi(G(h, z)), h) + coarse "
                     "L1 to the anchor at pix_size px; see the script's docstring",
        "config": cfg.to_dict(),
        "args": vars(args),
        "data": {"images": str(images_path), "images_sha256": sha256_array(images), "n_train": len(train),
                 "n_heldout": len(heldout), "heldout": f"the last {len(heldout)} scenes",
                 "neighbours_mean_cosine": nn_sim},
        "instance_encoder": {"kind": "clip", "path": args.clip, "fingerprint": clip.fingerprint(),
                             "feature": "L2-normalised pooled image embedding (ClipInstanceEncoder)"},
        "n_params": n_params,
        "weights_bytes": weight_bytes,
        "versions": {"torch": torch.__version__, "safetensors": safetensors.__version__, "numpy": np.__version__},
        "iters": n_iters,
        "train_seconds": train_seconds,
        "seconds_per_iter": train_seconds / n_iters,
        "standing_statistics_batches": n_standing,
        "eval_seconds": eval_seconds,
        "total_seconds": time.perf_counter() - t_all,
        "trace": trace,
        "heldout": figures,
    }
    (tmp / "icgan_small.training.json").write_text(json.dumps(report, indent=2) + "\n")
    replace_directory(tmp, out)
    if args.preview:
        k = len(inv_imgs)
        image_grid([shown["target"][:k], shown["generated"][:k], inverted["before"], inverted["after_noise"],
                    inverted["after_dense"]], Path(args.preview))
    print(json.dumps({k: report[k] for k in ("iters", "seconds_per_iter", "weights_bytes", "heldout")}, indent=2))
    print(f"saved {out}")
    return report


if __name__ == "__main__":
    main()
