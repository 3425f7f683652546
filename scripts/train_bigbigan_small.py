"""Train the small BigBiGAN (generator + encoder) on CPU from simulated scenes.

Usage::

    python scripts/train_bigbigan_small.py --images /tmp/vd_train/images.npy [--minutes 35] [--threads 1] [--seed 0]

``images.npy`` holds ``(n, H, W, 3)`` uint8 scenes (``scripts/sim_training_images.py``); the last
``--n-heldout`` (600) are never trained on. The networks are the library's own classes,
:class:`~brainrecon.latents.bigbigan.BigBiGANGenerator` and
:class:`~brainrecon.latents.bigbigan.BigBiGANEncoder`, the code path of the published model, in a
small configuration: generator of channel unit ``--ch`` 8 (128-128-64-32-16 channels, four
up-sampling blocks from 4x4 to 64x64, self-attention at 32 px, 120-d hierarchical latent in five
chunks of 24, a 16-d learned embedding), encoder a pre-activation ResNet with one bottleneck
unit per stage (inner widths 16-32-64-128, 512-d pooled features) reading 64 px, then an MLP
(256, 256) to the mean and scale of ``z``.

Objective, and how it departs from the paper
--------------------------------------------
BigBiGAN (Donahue & Simonyan 2019) is trained purely adversarially: a joint discriminator
scores (image, latent) pairs, real ``(x, E(x))`` against generated ``(G(z), z)``, with three
heads (``s_x`` on the image alone, ``s_z`` on the latent alone, ``s_xz`` on both) and hinge
losses; encoder and generator minimise ``y * (s_x + s_z + s_xz)`` (``y`` = +1 real, -1 fake).
Encoder and generator become inverses of each other only at the optimum, after hundreds of
thousands of large-batch steps on accelerators. On the budget of this script (~35 minutes of
one CPU thread, a few thousand small-batch steps) that does not converge, so the loss of the
encoder and generator adds, to BigBiGAN's own adversarial term (weight ``--adv-weight``, ramped
in after ``--adv-start`` steps):

* a reconstruction term on ``G(E(x))`` with ``z`` sampled from the encoder's posterior
  (reparameterised, as BigBiGAN samples ``z_sample``): pixel L1 + L2 (``--l1-weight``,
  ``--l2-weight``) plus a feature loss, the squared distance of the token features of the
  project's small CLIP vision tower (``bundled:clip_small``, frozen; ``--feat-weight``);
* a prior-matching term: the KL divergence of the encoder's Gaussian posterior to N(0, I), per
  latent dimension (``--kl-weight``), so that encoded scenes and the generator's prior live in
  the same region (the adversarial ``s_z`` head pushes the same way).

This is a VAE-GAN with BigBiGAN's joint discriminator: the encoder/generator pair is usable (a
scene's ``z`` regenerates it) after minutes instead of days, at the price of smoother images
than a converged adversarial model. The CLIP feature loss also makes the CLIP-based
identification figures of the evaluation optimistic; pixel figures do not share that bias.
Training-time mechanics are BigGAN's: batch norms use batch statistics while training
(the library layers' opt-in ``train_momentum``) and the saved statistics are "standing"
statistics of the saved (EMA) weights; the spectral-norm singular vectors ``u0`` are updated by
one power iteration per step; the saved weights are an exponential moving average.

Held-out evaluation (600 scenes, from the saved files loaded by
:func:`~brainrecon.latents.bigbigan.build_bigbigan_space`, the loader the pipeline uses):
PixCorr, MSE and 2-way identification (pixels; CLIP-small embeddings) of ``G(E(x))`` against the
scenes, with shuffled pairs as a floor; the same after replacing ``E(x)`` by a noisy copy
correlated ``r`` with it (what a brain decoder's rescaled predictions look like); statistics of
the encoded latents (against the N(0, 1) prior).

Outputs (``--out``, default ``brainrecon/weights/bigbigan_small/``, written to a temporary
folder and renamed): ``generator.safetensors`` / ``encoder.safetensors`` in the converted
checkpoint layout of ``docs/bigbigan.md`` with their architectures as ``.json`` beside them,
and ``bigbigan_small.training.json`` (arguments, SHA-256 of the scenes, loss trace, timings,
held-out figures). ``--preview PNG`` writes held-out scenes, their reconstructions and prior
samples as one image.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from brainrecon.errors import DataFormatError, MissingDataError  # noqa: E402
from brainrecon.paths import replace_directory  # noqa: E402

# Channel multipliers per output resolution, BigGAN's architecture table (BigGAN-PyTorch ``G_arch``).
G_CHANNELS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    32: ((4, 4, 4), (4, 4, 4)),
    64: ((16, 16, 8, 4), (16, 8, 4, 2)),
    128: ((16, 16, 8, 4, 2), (16, 8, 4, 2, 1)),
}


# =========================================================================== helpers shared with train_icgan_small.py
def int_list(text: str) -> tuple[int, ...]:
    """``"16,32"`` -> ``(16, 32)``; ``""`` -> ``()`` (argparse type)."""
    return tuple(int(t) for t in text.split(",") if t.strip())


def sha256_array(a: np.ndarray) -> str:
    """SHA-256 of an array's bytes (C order)."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


def load_scenes(path: Path, n_heldout: int, min_train: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read ``(n, H, W, 3)`` uint8 scenes (no pickle); split off the last ``n_heldout``.

    Returns
    -------
    images, train, heldout : ndarray
        All scenes and the two (views of the) parts.

    Raises
    ------
    MissingDataError
        No file at ``path``.
    DataFormatError
        Wrong layout, or too few scenes for the split.
    """
    if not path.is_file():
        raise MissingDataError(path, "training scenes (.npy, written by scripts/sim_training_images.py)")
    images = np.load(path, allow_pickle=False)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataFormatError(f"{path}: expected (n, H, W, 3) uint8 scenes, got {images.shape} {images.dtype}")
    n = len(images)
    if not 0 < n_heldout <= n - min_train:
        raise DataFormatError(
            f"{path}: {n} scenes; --n-heldout {n_heldout} must leave at least {min_train} for training (one batch)"
        )
    return images, images[: n - n_heldout], images[n - n_heldout :]


def update_singular_vectors(model: Any, iterations: int = 1) -> None:
    """One (or more) power iterations on every spectrally normalised layer's ``u0`` buffer.

    The library's layers estimate a weight's largest singular value from the stored ``u0`` and
    never update it (inference only). While training, BigGAN refines ``u0`` by one power
    iteration per step so that the estimate tracks the changing weight; this does the same,
    after each optimiser step. Layers with an ``sv0`` buffer (IC-GAN's) get the estimate logged
    there, as the reference does.
    """
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        for m in model.modules():
            u0 = m._buffers.get("u0") if hasattr(m, "_buffers") else None
            w = m._parameters.get("weight") if hasattr(m, "_parameters") else None
            if u0 is None or w is None or tuple(u0.shape) != (1, w.shape[0]):
                continue
            W = w.reshape(w.shape[0], -1)
            u = u0
            for _ in range(iterations):
                v = F.normalize(u @ W, dim=1)
                u = F.normalize(v @ W.t(), dim=1)
            u0.copy_(u)
            sv0 = m._buffers.get("sv0")
            if sv0 is not None:
                sv0.copy_((v @ W.t() @ u.t()).reshape(sv0.shape))


def batch_norms(model: Any) -> list[Any]:
    """The library batch norms that can train with batch statistics (they have ``train_momentum``)."""
    return [m for m in model.modules() if hasattr(type(m), "train_momentum")]


def use_batch_statistics(model: Any, momentum: float | None) -> None:
    """Opt the model's batch norms in (a momentum) or out (``None``) of batch statistics in training mode."""
    for m in batch_norms(model):
        m.train_momentum = momentum


def standing_statistics(model: Any, batches: Iterable[Callable[[], Any]]) -> int:
    """Replace the stored batch-norm statistics by their average over ``batches`` (BigGAN's "standing stats").

    The saved weights are an average of the trained ones; the running statistics gathered during
    training belong to the latter. Each item of ``batches`` runs one forward pass of ``model``;
    with momentum ``1 / (k + 1)`` at the ``k``-th pass the stored values become the plain mean
    of the per-batch statistics.

    Returns
    -------
    int
        Number of batches averaged.
    """
    import torch

    norms = batch_norms(model)
    for m in norms:
        for name in ("stored_mean", "running_mean"):
            if name in m._buffers:
                m._buffers[name].zero_()
        for name in ("stored_var", "running_var"):
            if name in m._buffers:
                m._buffers[name].fill_(1.0)
    model.train()
    k = 0
    with torch.no_grad():
        for k, run in enumerate(batches):
            use_batch_statistics(model, 1.0 / (k + 1))
            run()
    use_batch_statistics(model, None)
    model.eval()
    return k + 1


def ema_update(ema: Any, model: Any, rate: float) -> None:
    """``ema <- rate * ema + (1 - rate) * model`` for parameters; buffers (``u0``) are copied."""
    import torch

    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.mul_(rate).add_(pm, alpha=1.0 - rate)
        for (name, be), bm in zip(ema.named_buffers(), model.buffers()):
            if name.endswith(("u0", "sv0")):
                be.copy_(bm)


def ema_rate(target: float, n_updates: int) -> float:
    """EMA rate ramped up from 0.1 so that short runs do not stay near the random initialisation."""
    return min(target, (1.0 + n_updates) / (10.0 + n_updates))


def clip_feature_fn(clip_path: str, device: str = "cpu") -> tuple[Any, Callable[[Any], Any]]:
    """Load the small CLIP (frozen) and return it with a differentiable token-feature function.

    The function maps images ``(n, 3, H, W)`` in [0, 1] to the vision tower's tokens after its
    final layer norm ``(n, tokens, width)``: spatial, semantic features for a perceptual loss.
    """
    from brainrecon.latents.versatile.clip import load_clip, preprocess_images

    clip = load_clip(clip_path, device=device)
    vm = clip.vision_model

    def tokens(images: Any) -> Any:
        out = vm.vision_model(pixel_values=preprocess_images(images, clip.image_size))
        return vm.vision_model.post_layernorm(out.last_hidden_state)

    return clip, tokens


def spectral(layer: Any) -> Any:
    """Spectral normalisation (torch's parametrisation) of a discriminator layer."""
    from torch.nn.utils.parametrizations import spectral_norm

    return spectral_norm(layer)


def image_trunk(resolution: int, ch: int) -> tuple[Any, int]:
    """Convolutional trunk of the discriminators: ``(n, 3, R, R)`` -> ``(n, C)`` summed features.

    A 3x3 convolution, then per halving of the resolution down to 4x4 a strided 4x4 and a 3x3
    convolution (LeakyReLU 0.2, spectral norm; channels double at each level), then a sum over
    positions. The discriminators are not part of the released models: they only train them.
    """
    from torch import nn

    levels = int(round(math.log2(resolution / 4)))
    if 4 * 2**levels != resolution or levels < 1:
        raise DataFormatError(f"discriminator: resolution {resolution} must be 4 times a power of 2 (>= 8)")
    layers: list[nn.Module] = [spectral(nn.Conv2d(3, ch, 3, padding=1))]
    c = ch
    for _ in range(levels):
        layers += [
            nn.LeakyReLU(0.2),
            spectral(nn.Conv2d(c, 2 * c, 4, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
            spectral(nn.Conv2d(2 * c, 2 * c, 3, padding=1)),
        ]
        c *= 2
    layers += [nn.LeakyReLU(0.2)]
    trunk = nn.Sequential(*layers)

    class SumPool(nn.Module):
        def __init__(self, body: nn.Module) -> None:
            super().__init__()
            self.body = body

        def forward(self, x: Any) -> Any:
            return self.body(x).sum(dim=(2, 3))

    return SumPool(trunk), c


def hinge_d(real: Any, fake: Any) -> Any:
    """Discriminator hinge loss ``mean(relu(1 - real)) + mean(relu(1 + fake))``."""
    import torch.nn.functional as F

    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def image_grid(rows: Sequence[np.ndarray], path: Path, per_row: int = 10) -> None:
    """Write rows of ``(k, 3, H, W)`` images in [0, 1] as one PNG (for a visual check only)."""
    from PIL import Image

    from brainrecon.images import resize, to_uint8_hwc

    size = max(r.shape[-1] for r in rows)
    strips = []
    for r in rows:
        r = resize(np.asarray(r[:per_row], dtype=np.float32), size)
        if len(r) < per_row:
            r = np.concatenate([r, np.ones((per_row - len(r), 3, size, size), np.float32)])
        strips.append(np.concatenate(list(to_uint8_hwc(r)), axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(strips, axis=0)).save(path)


def identification_figures(target: np.ndarray, images: np.ndarray, clip: Any | None) -> dict[str, float]:
    """PixCorr, MSE and 2-way identification (pixels; CLIP-small embeddings) of ``images`` vs ``target``.

    Both ``(n, 3, H, W)`` in [0, 1]. ``*_shuffled`` compares every image with another scene's
    target (the floor of an image that ignores its scene).
    """
    from brainrecon.images import to_uint8_hwc
    from brainrecon.metrics.identification import two_way_identification
    from brainrecon.metrics.lowlevel import mse, pixcorr

    n = len(target)
    out = {
        "pixcorr": float(np.nanmean(pixcorr(target, images))),
        "pixcorr_shuffled": float(np.nanmean(pixcorr(target, images[np.roll(np.arange(n), 1)]))) if n > 1 else math.nan,
        "mse": float(np.mean(mse(target, images))),
    }
    if n > 1:
        out["two_way_pixels"] = float(two_way_identification(target.reshape(n, -1), images.reshape(n, -1)).mean())
        if clip is not None:
            a = clip.embed_images(to_uint8_hwc(target))
            b = clip.embed_images(to_uint8_hwc(images))
            out["two_way_clip_small"] = float(two_way_identification(a, b).mean())
    return out


def noisy_copy(Z: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of latents whose every dimension correlates ``r`` with ``Z`` (same mean and spread).

    ``mu + sd * (r * z_std + sqrt(1 - r^2) * noise)``: what a brain decoder's predictions look
    like after rescaling to the training latents' statistics, at prediction accuracy ``r``.
    """
    mu, sd = Z.mean(0), Z.std(0) + 1e-8
    Zs = (Z - mu) / sd
    noise = rng.standard_normal(Z.shape).astype(np.float32)
    return (mu + sd * (r * Zs + math.sqrt(max(0.0, 1.0 - r * r)) * noise)).astype(np.float32)


# =========================================================================== BigBiGAN-specific
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help=".npy of (n, H, W, 3) uint8 training scenes")
    p.add_argument("--out", default=str(REPO / "brainrecon" / "weights" / "bigbigan_small"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=35.0, help="training wall time; then save and evaluate")
    p.add_argument("--iters", type=int, default=1_000_000, help="upper bound on steps (fix it for reruns)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for reproducibility)")
    p.add_argument("--batch-size", type=int, default=32, help="scenes per step")
    p.add_argument("--prior-batch", type=int, default=16,
                   help="prior samples G(z) per step (they only receive the adversarial gradient)")
    p.add_argument("--n-heldout", type=int, default=600, help="the last scenes, never trained on")
    # architecture
    p.add_argument("--resolution", type=int, default=64, choices=sorted(G_CHANNELS))
    p.add_argument("--ch", type=int, default=8, help="generator channel unit (published: 96)")
    p.add_argument("--dim-z", type=int, default=120)
    p.add_argument("--shared-dim", type=int, default=16, help="size of the learned embedding (published: 128)")
    p.add_argument("--attention", type=int_list, default=(32,), help="generator attention resolutions, e.g. 32")
    p.add_argument("--enc-stem", type=int, default=16)
    p.add_argument("--enc-widths", type=int_list, default=(16, 32, 64, 128))
    p.add_argument("--enc-blocks", type=int_list, default=(1, 1, 1, 1))
    p.add_argument("--enc-mlp", type=int_list, default=(256, 256))
    p.add_argument("--disc-ch", type=int, default=16, help="discriminator channels at full resolution")
    p.add_argument("--disc-hidden", type=int, default=256, help="width of the discriminator's latent and joint MLPs")
    # optimisation
    p.add_argument("--lr", type=float, default=5e-4, help="encoder and generator (Adam, betas 0.5, 0.999)")
    p.add_argument("--lr-d", type=float, default=3e-4, help="discriminator (Adam, betas 0.0, 0.999)")
    p.add_argument("--bn-momentum", type=float, default=0.1)
    p.add_argument("--ema-rate", type=float, default=0.999)
    p.add_argument("--grad-clip", type=float, default=10.0)
    # objective
    p.add_argument("--adv-weight", type=float, default=0.05, help="BigBiGAN's adversarial term")
    p.add_argument("--adv-start", type=int, default=300, help="steps before the adversarial term (then ramped)")
    p.add_argument("--adv-ramp", type=int, default=500, help="steps over which it ramps up linearly")
    p.add_argument("--l1-weight", type=float, default=1.0)
    p.add_argument("--l2-weight", type=float, default=1.0)
    p.add_argument("--feat-weight", type=float, default=0.1, help="CLIP-small token feature loss (0: off)")
    p.add_argument("--kl-weight", type=float, default=0.002,
                   help="KL(q(z|x) || N(0, I)), mean per dimension (0.002 ~ beta 0.2 against the summed pixel loss)")
    p.add_argument("--clip", default="bundled:clip_small", help="CLIP for the feature loss and the evaluation")
    # bookkeeping
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--standing-batches", type=int, default=20, help="batches averaged for the saved BN statistics")
    p.add_argument("--eval-n", type=int, default=600, help="held-out scenes evaluated (at most --n-heldout)")
    p.add_argument("--preview", default=None, help="write a PNG of held-out scenes, reconstructions, prior samples")
    args = p.parse_args(argv)
    if args.batch_size < 2 or args.prior_batch < 1 or args.iters < 1:
        p.error("--batch-size must be >= 2 (batch statistics), --prior-batch and --iters >= 1")
    return args


def build_configs(args: argparse.Namespace) -> tuple[Any, Any]:
    """The small generator and encoder configurations from the arguments."""
    from brainrecon.latents.bigbigan import EncoderConfig, GeneratorConfig

    in_mult, out_mult = G_CHANNELS[args.resolution]
    g_cfg = GeneratorConfig(
        ch=args.ch, in_mult=in_mult, out_mult=out_mult, bottom_width=4, attention=tuple(args.attention),
        dim_z=args.dim_z, shared_dim=args.shared_dim, n_classes=1,
    )
    e_cfg = EncoderConfig(
        image_size=args.resolution, stem_width=args.enc_stem, widths=tuple(args.enc_widths),
        blocks=tuple(args.enc_blocks), expansion=4, mlp=tuple(args.enc_mlp), dim_z=args.dim_z,
    )
    return g_cfg, e_cfg


def joint_discriminator(resolution: int, ch: int, dim_z: int, hidden: int) -> Any:
    """BigBiGAN's discriminator: scores ``(s_x, s_z, s_xz)`` of (image, latent) pairs.

    ``F`` (convolutional trunk) on the image, ``H`` (MLP) on the latent, ``J`` (MLP) on both
    feature vectors; each score is a linear read-out (paper, section 3).
    """
    from torch import nn

    trunk, c = image_trunk(resolution, ch)

    def mlp(a: int) -> nn.Module:
        return nn.Sequential(
            spectral(nn.Linear(a, hidden)), nn.LeakyReLU(0.2), spectral(nn.Linear(hidden, hidden)), nn.LeakyReLU(0.2)
        )

    class JointDiscriminator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.F = trunk
            self.H = mlp(dim_z)
            self.J = mlp(c + hidden)
            self.s_x = spectral(nn.Linear(c, 1))
            self.s_z = spectral(nn.Linear(hidden, 1))
            self.s_xz = spectral(nn.Linear(hidden, 1))

        def forward(self, x: Any, z: Any) -> tuple[Any, Any, Any]:
            import torch

            fx, hz = self.F(x), self.H(z)
            joint = self.J(torch.cat([fx, hz], dim=1))
            return self.s_x(fx).squeeze(1), self.s_z(hz).squeeze(1), self.s_xz(joint).squeeze(1)

    return JointDiscriminator()


def evaluate(space: Any, images: np.ndarray, clip: Any | None, seed: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Held-out figures of a loaded :class:`~brainrecon.latents.bigbigan.BigBiGANSpace` (see module docstring)."""
    from brainrecon.latents.base import Stimuli

    rng = np.random.default_rng(seed)
    target = space._pixels(images, space.image_size)
    t0 = time.perf_counter()
    Z = space.encode(Stimuli(images))["z"]
    encode_s = time.perf_counter() - t0
    recon = space.decode({"z": Z})
    out: dict[str, Any] = {"n": len(images), "encode_seconds_per_image": encode_s / len(images)}
    out["reconstruction"] = identification_figures(target, recon, clip)
    out["noisy_latents"] = {
        f"r={r}": identification_figures(target, space.decode({"z": noisy_copy(Z, r, rng)}), clip)
        for r in (0.75, 0.5, 0.25)
    }
    sd = Z.std(0)
    out["latents"] = {
        "mean_abs_mean": float(np.abs(Z.mean(0)).mean()),
        "mean_std": float(sd.mean()),
        "min_std": float(sd.min()),
        "max_std": float(sd.max()),
        "dims_std_above_0.1": int((sd > 0.1).sum()),
        "note": "statistics over held-out scenes of E(x) (z_mean), per dimension; the prior is N(0, 1)",
    }
    prior = space.decode({"z": rng.standard_normal((16, Z.shape[1])).astype(np.float32)})
    return out, {"target": target, "recon": recon, "prior": prior}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import safetensors
    import torch

    from brainrecon.latents.bigbigan import (
        BigBiGANEncoder,
        BigBiGANGenerator,
        BigBiGANSpace,
        build_bigbigan_space,
        save_encoder,
        save_generator,
    )

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # attention softmax tails hit float32 denormals, which are very slow on CPU
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t_all = time.perf_counter()

    images_path = Path(args.images)
    images, train, heldout = load_scenes(images_path, args.n_heldout, args.batch_size)
    g_cfg, e_cfg = build_configs(args)
    R = g_cfg.resolution
    if e_cfg.image_size != R:
        raise DataFormatError(f"encoder image size {e_cfg.image_size} != generator resolution {R}")
    # The space's own preprocessing (centre square, antialiased bicubic), once; [-1, 1] as both networks use.
    px = torch.cat([
        torch.from_numpy(BigBiGANSpace._pixels(train[i : i + 500], R)) for i in range(0, len(train), 500)
    ]).mul_(2.0).sub_(1.0)

    G, E = BigBiGANGenerator(g_cfg), BigBiGANEncoder(e_cfg)
    D = joint_discriminator(R, args.disc_ch, args.dim_z, args.disc_hidden)
    update_singular_vectors(G, iterations=20)  # start from good singular-value estimates
    for net in (G, E):
        use_batch_statistics(net, args.bn_momentum)
    ema_g, ema_e = copy.deepcopy(G).requires_grad_(False), copy.deepcopy(E).requires_grad_(False)
    opt_ge = torch.optim.Adam(list(G.parameters()) + list(E.parameters()), lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(0.0, 0.999))
    n_params = {name: sum(p.numel() for p in net.parameters()) for name, net in (("generator", G), ("encoder", E),
                                                                                   ("discriminator", D))}
    clip, clip_tokens = (None, None) if args.clip in ("", "none") else clip_feature_fn(args.clip)
    if args.feat_weight > 0 and clip is None:
        raise DataFormatError("--feat-weight > 0 needs --clip (the small CLIP gives the feature loss)")
    print(f"small BigBiGAN: {n_params}; {len(train)} train / {len(heldout)} held-out scenes; {R} px", flush=True)

    trace: list[dict] = []
    window: list[dict] = []
    t_start = time.perf_counter()
    deadline = t_start + 60.0 * args.minutes
    B = args.batch_size
    it = 0
    for it in range(args.iters):
        t0 = time.perf_counter()
        x = px[torch.from_numpy(rng.choice(len(px), B, replace=False))]
        z_prior = torch.randn(args.prior_batch, args.dim_z)
        G.train()
        E.train()
        mean, scale = E(x)
        z_enc = mean + scale * torch.randn_like(scale)
        both = G(torch.cat([z_prior, z_enc]))  # one pass: the batch statistics see prior and encoded latents
        x_fake, x_rec = both[: args.prior_batch], both[args.prior_batch :]
        ramp = min(1.0, max(0.0, (it - args.adv_start) / max(1, args.adv_ramp)))
        stats: dict[str, float] = {}

        if ramp > 0 and args.adv_weight > 0:
            # Discriminator step on detached pairs: real (x, E(x)), fake (G(z), z).
            D.requires_grad_(True)
            real = D(x, z_enc.detach())
            fake = D(x_fake.detach(), z_prior)
            loss_d = sum(hinge_d(r, f) for r, f in zip(real, fake))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            stats["loss_d"] = float(loss_d.detach())
            D.requires_grad_(False)
            real = D(x, z_enc)
            fake = D(x_fake, z_prior)
            # BigBiGAN's encoder-generator loss: y * (s_x + s_z + s_xz), y = +1 real, -1 fake.
            adv = sum(r.mean() for r in real) - sum(f.mean() for f in fake)
            stats["adv"] = float(adv.detach())
        else:
            adv = torch.zeros(())
        l1 = (x_rec - x).abs().mean()
        l2 = (x_rec - x).pow(2).mean()
        kl = 0.5 * (mean.pow(2) + scale.pow(2) - 1.0 - 2.0 * torch.log(scale + 1e-8)).mean()
        loss = args.adv_weight * ramp * adv + args.l1_weight * l1 + args.l2_weight * l2 + args.kl_weight * kl
        if args.feat_weight > 0:
            with torch.no_grad():
                t_feat = clip_tokens((x + 1.0) / 2.0)
            feat = (clip_tokens((x_rec + 1.0) / 2.0) - t_feat).pow(2).mean()
            loss = loss + args.feat_weight * feat
            stats["feat"] = float(feat.detach())
        opt_ge.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(list(G.parameters()) + list(E.parameters()), args.grad_clip))
        opt_ge.step()
        update_singular_vectors(G)
        rate = ema_rate(args.ema_rate, it)
        ema_update(ema_g, G, rate)
        ema_update(ema_e, E, rate)
        stats.update({
            "loss": float(loss.detach()), "l1": float(l1.detach()), "l2": float(l2.detach()), "kl": float(kl.detach()),
            "posterior_scale": float(scale.detach().mean()), "grad_norm": gnorm, "sec": time.perf_counter() - t0,
        })
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

    # Saved weights: EMA, with refined singular vectors and standing batch-norm statistics.
    update_singular_vectors(ema_g, iterations=20)
    srng = np.random.default_rng(args.seed + 1)

    def sample_x() -> Any:
        return px[torch.from_numpy(srng.choice(len(px), B, replace=False))]

    def e_batch() -> None:
        ema_e(sample_x())

    n_standing = standing_statistics(ema_e, [e_batch] * args.standing_batches)

    def g_batch() -> None:
        mean, scale = ema_e(sample_x())  # ema_e is in eval mode now: its standing statistics
        ema_g(torch.cat([torch.randn(args.prior_batch, args.dim_z), mean + scale * torch.randn_like(scale)]))

    standing_statistics(ema_g, [g_batch] * args.standing_batches)

    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_generator(ema_g, tmp / "generator.safetensors")
    save_encoder(ema_e, tmp / "encoder.safetensors")
    # Evaluate what was written, through the pipeline's loader (architectures from the .json files).
    space = build_bigbigan_space(
        tmp / "generator.safetensors", tmp / "encoder.safetensors", generator=None, encoder=None,
        batch_size=64, progress=False,
    )
    n_eval = min(args.eval_n, len(heldout))
    t_eval = time.perf_counter()
    heldout_figures, shown = evaluate(space, np.ascontiguousarray(heldout[:n_eval]), clip, args.seed)
    eval_seconds = time.perf_counter() - t_eval
    weight_bytes = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
    report = {
        "model": "BigBiGAN, small configuration (brainrecon.latents.bigbigan)",
        "objective": "VAE-GAN hybrid: BigBiGAN joint-discriminator hinge loss (weight adv_weight, ramped) + "
                     "pixel L1/L2 and CLIP-small token feature loss on G(z ~ q(z|x)) + KL(q(z|x) || N(0, I)); "
                     "see the script's docstring",
        "generator_config": json.loads((tmp / "generator.json").read_text()),
        "encoder_config": json.loads((tmp / "encoder.json").read_text()),
        "args": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items()},
        "data": {"images": str(images_path), "images_sha256": sha256_array(images), "n_train": len(train),
                 "n_heldout": len(heldout), "heldout": f"the last {len(heldout)} scenes", "n_evaluated": n_eval},
        "clip": None if clip is None else {"path": args.clip, "fingerprint": clip.fingerprint()},
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
        "heldout": heldout_figures,
    }
    (tmp / "bigbigan_small.training.json").write_text(json.dumps(report, indent=2) + "\n")
    replace_directory(tmp, out)
    if args.preview:
        image_grid([shown["target"], shown["recon"], shown["prior"][:10]], Path(args.preview))
    print(json.dumps({k: report[k] for k in ("iters", "seconds_per_iter", "weights_bytes", "heldout")}, indent=2))
    print(f"saved {out}")
    return report


if __name__ == "__main__":
    main()
