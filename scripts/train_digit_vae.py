"""Train the small digit VAE shipped as ``brainrecon/weights/digit_vae.safetensors``.

Training images (the 10 test stimuli of digits69 are never read into the training set):

* the 90 **training** stimuli of van Gerven et al.'s digits69 experiment
  (``../shared/data/vangerven2010-digits69/digit69_28x28.mat``, key ``stimTrn``, column-major);
* the sixes and nines of scikit-learn's bundled 8x8 digits (``sklearn.datasets.load_digits``,
  shipped inside the package, no download), upsampled to 20x20 and centred in 28x28 like
  MNIST-style digits.

Every batch is drawn half from each source, then randomly rotated (+-12 deg), scaled
(0.9-1.1), shifted (+-2 px) and elastically deformed (a smooth random displacement field), so
the 90 images do not get memorised. Loss: Bernoulli negative log-likelihood (strokes are
nearly binary) plus ``beta`` x KL to N(0, I).

The script needs ``../shared`` (the digits69 stimuli live only there); the bundled weights are
its product. Writes, atomically: ``<out>.safetensors``, ``<out>.json`` (architecture) and
``<out>.training.json`` (provenance: SHA-256 of the training data, arguments, loss trace,
wall time, library versions).

Usage::

    python scripts/train_digit_vae.py [--steps 4000] [--latent-dim 16] [--seed 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from brainrecon.errors import DataFormatError, MissingDataError  # noqa: E402
from brainrecon.paths import bundled_weights_dir, shared_dataset_file  # noqa: E402


def read_digits69_train(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 90 training stimuli ``(90, 28, 28)`` float32 in [0, 1] and labels (1 = six, 2 = nine)."""
    from scipy.io import loadmat

    if not path.is_file():
        raise MissingDataError(path, "digits69 .mat file", hint="the script needs ../shared/data (or --data)")
    # variable_names: only the training stimuli and labels are read, never stimTest
    mat = loadmat(str(path), variable_names=["stimTrn", "labelTrn"])
    for key in ("stimTrn", "labelTrn"):
        if key not in mat:
            raise DataFormatError(f"{path}: missing key {key!r}")
    stim = mat["stimTrn"]
    if stim.ndim != 2 or stim.shape[1] != 784:
        raise DataFormatError(f"{path}: stimTrn has shape {stim.shape}, expected (n, 784)")
    # MATLAB stores the 28x28 images column-major: order="F" gives upright digits
    imgs = stim.reshape(-1, 28, 28, order="F").astype(np.float32) / 255.0
    return imgs, mat["labelTrn"].ravel().astype(np.int64)


def sklearn_sixes_nines() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 sixes and nines as ``(n, 28, 28)`` in [0, 1] (20x20 box, centred)."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.isin(d.target, (6, 9))
    x = torch.from_numpy(d.images[keep].astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
    x = F.pad(x, (4, 4, 4, 4))
    labels = np.where(d.target[keep] == 6, 1, 2)
    return x[:, 0].numpy(), labels


def augment(x, gen, *, rot_deg: float = 12.0, shift_px: float = 2.0, scale: float = 0.1, elastic_px: float = 1.5):  # noqa: ANN001, ANN201
    """Random affine + elastic deformation of a batch ``(b, 1, 28, 28)`` (torch, seeded generator)."""
    import math

    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    ang = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(rot_deg)
    sc = 1 + (torch.rand(b, generator=gen) * 2 - 1) * scale
    sh = (torch.rand(b, 2, generator=gen) * 2 - 1) * shift_px * 2 / 28  # grid units span 2 over 28 px
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos, -sin, sh[:, 0]], 1), torch.stack([sin, cos, sh[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # elastic: coarse 4x4 random displacements upsampled to a smooth field
    disp = torch.randn(b, 2, 4, 4, generator=gen) * elastic_px * 2 / 28
    disp = F.interpolate(disp, size=(28, 28), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    return F.grid_sample(x, grid + disp, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)


def sha256_array(a: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train(
    images_a: np.ndarray,
    images_b: np.ndarray,
    *,
    latent_dim: int = 16,
    steps: int = 4000,
    batch: int = 128,
    lr: float = 2e-3,
    beta: float = 1.0,
    seed: int = 0,
    log_every: int = 100,
):  # noqa: ANN201
    """Train a VAE on two image sources (half of each batch from each); returns (model, loss trace)."""
    import torch
    import torch.nn.functional as F

    from brainrecon.latents.digits import DigitVAEConfig, build_digit_vae

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_digit_vae(DigitVAEConfig(latent_dim=latent_dim))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    A = torch.from_numpy(images_a)[:, None]
    B = torch.from_numpy(images_b)[:, None] if len(images_b) else A
    trace = []
    run_rec = run_kl = 0.0
    for step in range(1, steps + 1):
        ia = torch.randint(len(A), (batch // 2,), generator=gen)
        ib = torch.randint(len(B), (batch - batch // 2,), generator=gen)
        x = augment(torch.cat([A[ia], B[ib]]), gen)
        mu, logvar = model.encode(x)
        z = mu + torch.randn(mu.shape, generator=gen) * torch.exp(0.5 * logvar)
        logits = model.decode_logits(z)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
        kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)).mean()
        loss = rec + beta * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        run_rec += float(rec.detach())
        run_kl += float(kl.detach())
        if step % log_every == 0:
            trace.append({"step": step, "bce": round(run_rec / log_every, 3), "kl": round(run_kl / log_every, 3)})
            run_rec = run_kl = 0.0
    model.eval()
    return model, trace


def main(argv: list[str] | None = None) -> None:
    """Train and write the weights, config and provenance."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="digit69_28x28.mat (default: ../shared/data/...)")
    ap.add_argument("--out", type=Path, default=bundled_weights_dir() / "digit_vae.safetensors")
    ap.add_argument("--latent-dim", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--no-sklearn", action="store_true", help="train on the 90 digits69 stimuli only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is fastest for this small model on a shared CPU)")
    args = ap.parse_args(argv)

    import torch

    from brainrecon.latents.digits import save_digit_vae
    from brainrecon.provenance import training_provenance, write_training_provenance

    torch.set_num_threads(args.threads)
    path = shared_dataset_file("vangerven2010-digits69/digit69_28x28.mat", args.data)
    imgs, labels = read_digits69_train(path)
    extra = np.zeros((0, 28, 28), np.float32) if args.no_sklearn else sklearn_sixes_nines()[0]
    t0 = time.perf_counter()
    model, trace = train(imgs, extra, latent_dim=args.latent_dim, steps=args.steps, batch=args.batch,
                         lr=args.lr, beta=args.beta, seed=args.seed)
    wall = time.perf_counter() - t0
    out = save_digit_vae(model, args.out)
    prov = training_provenance(
        "scripts/train_digit_vae.py", vars(args), model, out, trace, wall,
        training_data={
            "digits69_file": str(path),
            "digits69_file_sha256": sha256_file(path),
            "digits69_train_stimuli_sha256": sha256_array(imgs),
            "digits69_train_images": int(len(imgs)),
            "digits69_test_images_used": 0,
            "sklearn_digits_6_9_sha256": None if args.no_sklearn else sha256_array(extra),
            "sklearn_digits_6_9_images": int(len(extra)),
        },
    )
    write_training_provenance(out, prov)
    print(f"wrote {out} ({prov['weights_bytes'] / 1e6:.2f} MB, {prov['n_parameters']} parameters) in {wall:.1f} s; "
          f"final {prov['final']}")


if __name__ == "__main__":
    main()
