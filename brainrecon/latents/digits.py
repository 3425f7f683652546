"""A learned generative latent space of handwritten digits (a small convolutional VAE).

The space's regression target ``digits.z`` is the posterior mean of a small VAE trained by
the project on handwritten sixes and nines (``scripts/train_digit_vae.py``: the 90 training
stimuli of van Gerven et al.'s digits69 experiment with random shifts, rotations and elastic
deformations, plus the sixes and nines of scikit-learn's bundled 8x8 digits, upsampled; the 10
test stimuli are never used). Decoding maps (predicted) latents through the VAE's decoder to
28x28 grey images, repeated over three channels.

Why a VAE and not pixels only: ridge regression into pixels averages over the plausible
digits and gives blurred blobs; the decoder turns a predicted point of a low-dimensional
latent into clean strokes. Because a wrong latent gives a sharp but wrong digit, the space can
also use the pixel-space reconstruction handed to ``decode`` as ``init`` (configure
``generate.init_from.<this space>: pixels``):

``mode="latent"``
    the decoder's image of the predicted ``z`` (``init`` ignored);
``mode="blend"``
    ``blend * decoder(z) + (1 - blend) * init``;
``mode="prior"``
    the decoder as a prior: ``z* = argmin ||decoder(z) - init||^2 + prior_weight ||z - z_pred||^2``
    by a fixed number of Adam steps from ``z_pred`` (deterministic), then
    ``blend * decoder(z*) + (1 - blend) * init``.

The knobs (``mode``, ``blend``, ``prior_weight``) are to be chosen on training trials only
(``benchmarks/digits69.py`` does it by K-fold cross-validation over the 90 training trials).

Weights: ``.safetensors`` with a ``.json`` architecture config beside it; the bundled file is
``brainrecon/weights/digit_vae.safetensors`` (``weights_path="bundled:digit_vae.safetensors"``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError, ShapeMismatchError
from brainrecon.latents.base import Stimuli, TargetSpec

__all__ = [
    "DigitVAEConfig",
    "DigitSpace",
    "build_digit_vae",
    "build_digit_space",
    "save_digit_vae",
    "load_digit_vae",
    "to_gray28",
    "DEFAULT_WEIGHTS",
]

#: The bundled weights, trained by ``scripts/train_digit_vae.py``.
DEFAULT_WEIGHTS = "bundled:digit_vae.safetensors"
_MODES = ("latent", "blend", "prior")
IMAGE_SIZE = 28


@dataclass(frozen=True)
class DigitVAEConfig:
    """Architecture of the digit VAE (stored as ``.json`` beside the weights).

    Attributes
    ----------
    latent_dim : int
        Size of ``z`` (the regression target).
    channels : tuple of int
        Channels of the two stride-2 convolutions (28 -> 14 -> 7).
    hidden : int
        Width of the fully connected layer between the convolutions and ``z``.
    """

    latent_dim: int = 16
    channels: tuple[int, int] = (16, 32)
    hidden: int = 128

    def __post_init__(self) -> None:
        if self.latent_dim < 1 or self.hidden < 1 or len(self.channels) != 2 or min(self.channels) < 1:
            raise ConfigError(f"digit VAE config: positive latent_dim, hidden and two channels expected, got {self}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DigitVAEConfig:
        """From a JSON mapping; unknown keys are refused (a typo must not pass silently)."""
        known = {"latent_dim", "channels", "hidden"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"digit VAE config: unknown keys {unknown}; known {sorted(known)}")
        kw = dict(d)
        if "channels" in kw:
            kw["channels"] = tuple(int(c) for c in kw["channels"])
        return cls(**kw)


def build_digit_vae(cfg: DigitVAEConfig):  # noqa: ANN201 (torch is imported lazily)
    """The VAE as a ``torch.nn.Module`` with ``encode(x) -> (mu, logvar)`` and ``decode(z) -> x``.

    Encoder: two 4x4 stride-2 convolutions (28 -> 14 -> 7), a hidden layer, then mean and
    log-variance. Decoder: the mirror image, ending in a sigmoid (pixel intensities in [0, 1],
    trained with a Bernoulli likelihood as digit strokes are nearly binary).
    """
    import torch
    from torch import nn

    c1, c2 = cfg.channels

    class DigitVAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cfg = cfg
            self.enc = nn.Sequential(
                nn.Conv2d(1, c1, 4, 2, 1), nn.LeakyReLU(0.2),
                nn.Conv2d(c1, c2, 4, 2, 1), nn.LeakyReLU(0.2),
                nn.Flatten(), nn.Linear(c2 * 49, cfg.hidden), nn.LeakyReLU(0.2),
            )
            self.mu = nn.Linear(cfg.hidden, cfg.latent_dim)
            self.logvar = nn.Linear(cfg.hidden, cfg.latent_dim)
            self.dec_fc = nn.Sequential(
                nn.Linear(cfg.latent_dim, cfg.hidden), nn.LeakyReLU(0.2),
                nn.Linear(cfg.hidden, c2 * 49), nn.LeakyReLU(0.2),
            )
            self.dec = nn.Sequential(
                nn.ConvTranspose2d(c2, c1, 4, 2, 1), nn.LeakyReLU(0.2),
                nn.ConvTranspose2d(c1, 1, 4, 2, 1),
            )

        def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.enc(x)
            return self.mu(h), self.logvar(h)

        def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
            return self.dec(self.dec_fc(z).view(-1, c2, 7, 7))

        def decode(self, z: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.decode_logits(z))

    return DigitVAE()


def save_digit_vae(model, path: str | os.PathLike) -> Path:  # noqa: ANN001
    """Write ``model``'s weights as ``.safetensors`` and its config as ``.json`` beside them (atomically)."""
    from brainrecon.latents.state_dict import save_safetensors_with_config

    return save_safetensors_with_config(model, path, {**asdict(model.cfg), "channels": list(model.cfg.channels)})


def load_digit_vae(path: str | os.PathLike, device: str = "cpu"):  # noqa: ANN201
    """Load weights written by :func:`save_digit_vae` (config from the ``.json`` beside them).

    Raises
    ------
    MissingWeightsError
        The weights file or its ``.json`` config is absent.
    DataFormatError
        The file is unreadable or its tensors do not match the config.
    """
    from brainrecon.latents.state_dict import load_safetensors_with_config

    return load_safetensors_with_config(
        path, "digit VAE", lambda cfg: build_digit_vae(DigitVAEConfig.from_dict(cfg)), device=device,
        hint="train it with scripts/train_digit_vae.py (needs ../shared/data/vangerven2010-digits69)",
    )


def to_gray28(images: np.ndarray) -> np.ndarray:
    """uint8 ``(n, H, W, 3)`` (or ``(n, H, W)``) -> float32 ``(n, 1, 28, 28)`` grey in [0, 1].

    ITU-R 601 luma (the weights the pixel space and skimage use), then an antialiased
    bilinear resize when the images are not 28x28.
    """
    import torch
    import torch.nn.functional as F

    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[-1] == 3:
        x = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
        g = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    elif arr.ndim == 3:
        g = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    else:
        raise ShapeMismatchError("digit images", "(n, H, W, 3) or (n, H, W)", arr.shape)
    g = g[:, None]
    if g.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        t = F.interpolate(torch.from_numpy(np.ascontiguousarray(g)), size=(IMAGE_SIZE, IMAGE_SIZE),
                          mode="bilinear", antialias=True, align_corners=False)
        g = t.numpy()
    return np.clip(g, 0.0, 1.0).astype(np.float32)


class DigitSpace:
    """The digit VAE as a :class:`~brainrecon.latents.base.LatentSpace` (target ``z``).

    Parameters
    ----------
    model : torch.nn.Module
        A VAE from :func:`build_digit_vae` / :func:`load_digit_vae`.
    mode : {"latent", "blend", "prior"}
        How ``decode`` uses the ``init`` images (see the module docstring).
    blend : float
        Weight of the decoder's image against ``init`` in modes "blend" and "prior".
    prior_weight : float
        Weight of ``||z - z_pred||^2`` (per latent dimension) against the pixel error (mean over
        the 784 pixels) in mode "prior".
    steps, lr : int, float
        Adam steps and step size of mode "prior".
    name : str
        The space's name (one config may hold several digit spaces, e.g. ``digits`` and ``digits_prior``).
    batch_size : int
        Images per forward pass.
    """

    def __init__(
        self,
        model,  # noqa: ANN001
        *,
        mode: str = "latent",
        blend: float = 1.0,
        prior_weight: float = 0.01,
        steps: int = 200,
        lr: float = 0.05,
        name: str = "digits",
        batch_size: int = 256,
    ) -> None:
        if mode not in _MODES:
            raise ConfigError(f"latents.{name}.mode: expected one of {_MODES}, got {mode!r}")
        if not 0.0 <= float(blend) <= 1.0:
            raise ConfigError(f"latents.{name}.blend: expected a number in [0, 1], got {blend}")
        if prior_weight < 0 or steps < 0 or lr <= 0:
            raise ConfigError(f"latents.{name}: prior_weight, steps >= 0 and lr > 0 expected")
        self.model = model
        self.mode, self.blend, self.prior_weight = mode, float(blend), float(prior_weight)
        self.steps, self.lr = int(steps), float(lr)
        self.name = name
        self.batch_size = int(batch_size)
        k = model.cfg.latent_dim
        self.targets: Mapping[str, TargetSpec] = {
            "z": TargetSpec((k,), f"posterior mean of the {k}-d digit VAE (28x28 grey)")
        }
        self.weights_digest: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the weights (content digest) and the decoding knobs, for stage cache keys."""
        return {"weights": self.weights_digest, "mode": self.mode, "blend": self.blend,
                "prior_weight": self.prior_weight, "steps": self.steps, "lr": self.lr}

    def encode(self, stimuli: Stimuli) -> dict[str, np.ndarray]:
        """RGB (or grey) stimuli -> ``{"z": (n, latent_dim)}`` float32, the VAE's posterior mean."""
        import torch

        x = to_gray28(stimuli.images)
        out = []
        with torch.no_grad():
            for s in range(0, len(x), self.batch_size):
                mu, _ = self.model.encode(torch.from_numpy(x[s:s + self.batch_size]))
                out.append(mu.numpy())
        z = np.concatenate(out) if out else np.zeros((0, self.model.cfg.latent_dim), np.float32)
        return {"z": np.ascontiguousarray(z, dtype=np.float32)}

    def decode_gray(self, z: np.ndarray) -> np.ndarray:
        """``(n, latent_dim)`` -> ``(n, 28, 28)`` float32 in [0, 1] through the decoder."""
        import torch

        z = np.asarray(z, dtype=np.float32)
        k = self.model.cfg.latent_dim
        if z.ndim != 2 or z.shape[1] != k:
            raise ShapeMismatchError(f"{self.name} latent", f"(n, {k})", z.shape)
        out = []
        with torch.no_grad():
            for s in range(0, len(z), self.batch_size):
                out.append(self.model.decode(torch.from_numpy(z[s:s + self.batch_size]))[:, 0].numpy())
        return np.concatenate(out) if out else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.float32)

    def project(self, z_pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        """The decoder as a prior: latents near ``z_pred`` whose images are near ``target`` (n, 28, 28).

        Minimises ``mean_pixels (decoder(z) - target)^2 + prior_weight * mean_dims (z - z_pred)^2``
        per image by ``steps`` Adam steps from ``z_pred``; no randomness, so the result is
        deterministic.
        """
        import torch

        z0 = torch.from_numpy(np.asarray(z_pred, dtype=np.float32))
        t = torch.from_numpy(np.asarray(target, dtype=np.float32))[:, None]
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=self.lr)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for _ in range(self.steps):
            opt.zero_grad()
            loss = ((self.model.decode(z) - t) ** 2).mean(dim=(1, 2, 3)) + self.prior_weight * ((z - z0) ** 2).mean(1)
            loss.sum().backward()
            opt.step()
        return z.detach().numpy()

    def decode(
        self, latents: Mapping[str, np.ndarray], *, init: np.ndarray | None = None, seed: int = 0
    ) -> np.ndarray:
        """``{"z": (n, k)}`` (+ ``init`` images in modes "blend"/"prior") -> ``(n, 3, 28, 28)`` float32 in [0, 1].

        ``seed`` is unused: every mode is deterministic.
        """
        z = np.asarray(latents["z"], dtype=np.float32)
        if self.mode == "latent":
            img = self.decode_gray(z)
        else:
            if init is None:
                raise ConfigError(
                    f"latents.{self.name}.mode={self.mode!r} combines with the pixel reconstruction: set "
                    f"generate.init_from.{self.name} to the pixel space"
                )
            pix = to_gray28(np.transpose(np.asarray(init, dtype=np.float32), (0, 2, 3, 1)))[:, 0]
            if len(pix) != len(z):
                raise ShapeMismatchError(f"{self.name} init images (one per latent)", len(z), len(pix))
            if self.mode == "prior":
                z = self.project(z, pix)
            img = self.blend * self.decode_gray(z) + (1.0 - self.blend) * pix
        img = np.clip(img, 0.0, 1.0).astype(np.float32)
        return np.ascontiguousarray(np.repeat(img[:, None], 3, axis=1))


def build_digit_space(weights_path: str | os.PathLike = DEFAULT_WEIGHTS, **kwargs: Any) -> DigitSpace:
    """Load the weights (``"bundled:<file>"`` for the shipped model) and build a :class:`DigitSpace`.

    Keyword arguments are those of :class:`DigitSpace`.
    """
    from brainrecon.fingerprint import file_fingerprint
    from brainrecon.paths import resolve_weights_path

    path = resolve_weights_path(weights_path)
    space = DigitSpace(load_digit_vae(path), **kwargs)
    space.weights_digest = file_fingerprint(path)
    return space
