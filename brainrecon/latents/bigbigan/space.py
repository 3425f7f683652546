"""BigBiGAN as a :class:`~brainrecon.latents.base.LatentSpace`: one target, ``bigbigan.z`` (120,).

Mozafari, Reddy & VanRullen (2020) regress fMRI onto BigBiGAN's 120-d latent and generate
the reconstructions with BigBiGAN's generator. Encoding follows the TF-Hub module's
``encode`` signature (centre square crop, bicubic resize to 256x256, values in [-1, 1], the
encoder's posterior mean ``z_mean``); decoding is the ``generate`` signature (128x128,
[-1, 1], mapped here to [0, 1]).

``encode_method`` offers a path that does not need the encoder: GAN inversion of the
generator (:func:`brainrecon.latents.inversion.invert`), from ``z = 0`` or from the encoder's
mean (``"encoder+inversion"``, which trades the encoder's semantic code for a closer
pixel reconstruction).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError, ShapeMismatchError
from brainrecon.latents.base import Stimuli, TargetSpec, unflatten

__all__ = ["BigBiGANSpace", "build_bigbigan_space", "center_square", "ENCODE_METHODS", "TRUNCATION_MODES"]

ENCODE_METHODS: tuple[str, ...] = ("encoder", "inversion", "encoder+inversion")
TRUNCATION_MODES: tuple[str, ...] = ("clip", "resample")


def center_square(images: np.ndarray) -> np.ndarray:
    """Central square crop of ``(n, H, W, 3)`` images (the TF-Hub demo's preprocessing)."""
    h, w = images.shape[1:3]
    m = min(h, w)
    top, left = (h - m) // 2, (w - m) // 2
    return images[:, top : top + m, left : left + m]


def _image_seed(seed: int, index: int) -> int:
    """A per-image seed, so that an image's randomness does not depend on batching."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


class BigBiGANSpace:
    """Latent space of BigBiGAN (target ``z``, the generator's 120-d input).

    Parameters
    ----------
    generator : BigBiGANGenerator
        Loaded generator (:func:`~brainrecon.latents.bigbigan.load_generator`).
    encoder : BigBiGANEncoder, optional
        Loaded encoder; required by ``encode_method`` "encoder" and "encoder+inversion".
    encode_method : {"encoder", "inversion", "encoder+inversion"}
        How stimuli become latents (see module docstring).
    truncation : float, optional
        Bound on ``|z|`` applied before generating (BigGAN's truncation trick); ``None``
        (default, as the TF-Hub ``generate`` signature) leaves ``z`` unchanged.
    truncation_mode : {"clip", "resample"}
        ``"clip"``: clamp to ``[-truncation, truncation]`` (deterministic). ``"resample"``:
        redraw out-of-range values from N(0, 1) until inside, from a generator seeded by
        ``(seed, image index)``.
    output_size : int, optional
        Resize generated images (antialiased bicubic) to this side; ``None`` keeps 128.
    inversion_steps, inversion_lr, inversion_reg : int, float, float
        Adam steps, learning rate and L2 weight on ``z`` (``weight * mean(z ** 2)``: the
        Gaussian prior) of the inversion methods; the pixel loss is the MSE of [0, 1]
        images at the generator's resolution.
    batch_size : int
        Images per forward pass.
    device : str, optional
        Where the networks run; default: where the generator is.
    progress : bool or None
        tqdm bars; ``None`` shows them only on a terminal.
    """

    name = "bigbigan"

    def __init__(
        self,
        generator: Any,
        encoder: Any = None,
        *,
        encode_method: str = "encoder",
        truncation: float | None = None,
        truncation_mode: str = "clip",
        output_size: int | None = None,
        inversion_steps: int = 200,
        inversion_lr: float = 0.05,
        inversion_reg: float = 1e-3,
        batch_size: int = 16,
        device: str | None = None,
        progress: bool | None = None,
    ) -> None:
        if encode_method not in ENCODE_METHODS:
            raise ConfigError(f"bigbigan encode_method must be one of {ENCODE_METHODS}, got {encode_method!r}")
        if encode_method != "inversion" and encoder is None:
            raise ConfigError(
                f"bigbigan encode_method={encode_method!r} needs the encoder; pass encoder weights or use "
                "encode_method='inversion'"
            )
        if truncation is not None and not float(truncation) > 0:
            raise ConfigError(f"bigbigan truncation must be > 0 or None, got {truncation}")
        if truncation_mode not in TRUNCATION_MODES:
            raise ConfigError(f"bigbigan truncation_mode must be one of {TRUNCATION_MODES}, got {truncation_mode!r}")
        if output_size is not None and int(output_size) < 1:
            raise ConfigError(f"bigbigan output_size must be >= 1 or None, got {output_size}")
        if int(batch_size) < 1:
            raise ConfigError(f"bigbigan batch_size must be >= 1, got {batch_size}")
        if int(inversion_steps) < 0 or not float(inversion_lr) > 0 or float(inversion_reg) < 0:
            raise ConfigError("bigbigan inversion_steps >= 0, inversion_lr > 0 and inversion_reg >= 0 expected")
        self.generator = generator if device is None else generator.to(device)
        self.encoder = None if encoder is None else encoder.to(self._device())
        if self.encoder is not None and self.encoder.cfg.dim_z != generator.cfg.dim_z:
            raise ShapeMismatchError(
                "bigbigan encoder latent size", generator.cfg.dim_z, self.encoder.cfg.dim_z,
                "encoder and generator must come from the same model",
            )
        self.encode_method = encode_method
        self.truncation = None if truncation is None else float(truncation)
        self.truncation_mode = truncation_mode
        self.output_size = None if output_size is None else int(output_size)
        self.inversion_steps = int(inversion_steps)
        self.inversion_lr = float(inversion_lr)
        self.inversion_reg = float(inversion_reg)
        self.batch_size = int(batch_size)
        self.progress = progress
        self.weights_digest: dict[str, str | None] = {"generator": None, "encoder": None}
        k = generator.cfg.dim_z
        self.targets: Mapping[str, TargetSpec] = {
            "z": TargetSpec((k,), f"BigBiGAN latent ({k}-d, standard-normal prior; {encode_method})")
        }

    # ------------------------------------------------------------------ helpers
    def _device(self) -> Any:
        return self.generator.linear.weight.device

    @property
    def image_size(self) -> int:
        """Side of the generated images (before ``output_size``)."""
        return self.generator.cfg.resolution

    def fingerprint(self) -> dict[str, Any]:
        """Weights digests and the knobs that change latents or images, for stage cache keys."""
        return {
            "weights": dict(self.weights_digest),
            "encode_method": self.encode_method,
            "inversion": [self.inversion_steps, self.inversion_lr, self.inversion_reg],
            "truncation": [self.truncation, self.truncation_mode],
            "output_size": self.output_size,
        }

    def _batches(self, n: int, desc: str):
        from tqdm.auto import tqdm

        disable = None if self.progress is None else not self.progress
        starts = range(0, n, self.batch_size)
        return tqdm(starts, desc=desc, total=len(starts), disable=disable, leave=False)

    @staticmethod
    def _pixels(images: np.ndarray, size: int) -> np.ndarray:
        """uint8 ``(b, H, W, 3)`` -> ``(b, 3, size, size)`` float32 in [0, 1] (square crop, bicubic)."""
        from brainrecon.images import resize, to_float_chw

        return resize(to_float_chw(np.ascontiguousarray(center_square(images))), size)

    def _truncate(self, Z: np.ndarray, seed: int) -> np.ndarray:
        t = self.truncation
        if t is None:
            return Z
        if self.truncation_mode == "clip":
            return np.clip(Z, -t, t)
        out = Z.copy()
        for i in range(len(out)):
            rng = np.random.default_rng(_image_seed(seed, i))
            bad = np.abs(out[i]) > t
            while bad.any():  # each redraw lands inside with probability P(|N(0,1)| <= t) > 0
                out[i, bad] = rng.standard_normal(int(bad.sum())).astype(np.float32)
                bad = np.abs(out[i]) > t
        return out

    def generate(self, Z: np.ndarray) -> np.ndarray:
        """``(n, dim_z)`` -> images ``(n, 3, R, R)`` float32 in [0, 1] (no truncation, no resize)."""
        import torch

        Z = np.ascontiguousarray(Z, dtype=np.float32)
        r = self.image_size
        out = np.empty((len(Z), 3, r, r), dtype=np.float32)
        dev = self._device()
        with torch.inference_mode():
            for start in self._batches(len(Z), "bigbigan generate"):
                z = torch.from_numpy(Z[start : start + self.batch_size]).to(dev)
                x = self.generator(z)
                out[start : start + len(z)] = ((x + 1.0) / 2.0).clamp(0.0, 1.0).float().cpu().numpy()
        return out

    def _invert(self, images: np.ndarray, init: np.ndarray) -> np.ndarray:
        import torch

        from brainrecon.latents.inversion import invert

        dev = self._device()
        targets = torch.from_numpy(self._pixels(images, self.image_size)).to(dev)

        def render(latents: dict[str, torch.Tensor]) -> torch.Tensor:
            return (self.generator(latents["z"]) + 1.0) / 2.0

        res = invert(
            render,
            {"z": torch.from_numpy(init).to(dev)},
            targets,
            steps=self.inversion_steps,
            lr=self.inversion_lr,
            batch_size=self.batch_size,
            latent_reg={"z": self.inversion_reg} if self.inversion_reg > 0 else None,
            progress=bool(self.progress),
        )
        return res.latents["z"]

    # ------------------------------------------------------------------ protocol
    def encode(self, stimuli: Stimuli) -> dict[str, np.ndarray]:
        """Stimuli -> ``{"z": (n, dim_z) float32}`` by the configured ``encode_method``."""
        import torch

        images = stimuli.images
        if images.dtype != np.uint8:
            raise ShapeMismatchError("bigbigan stimulus dtype", "uint8", images.dtype)
        n, k = len(images), self.generator.cfg.dim_z
        Z = np.zeros((n, k), dtype=np.float32)
        if self.encode_method in ("encoder", "encoder+inversion"):
            size = self.encoder.cfg.image_size
            dev = self._device()
            with torch.inference_mode():
                for start in self._batches(n, "bigbigan encode"):
                    x = torch.from_numpy(self._pixels(images[start : start + self.batch_size], size)).to(dev)
                    mean, _ = self.encoder(x * 2.0 - 1.0)
                    Z[start : start + len(x)] = mean.float().cpu().numpy()
        if self.encode_method in ("inversion", "encoder+inversion"):
            Z = self._invert(images, Z)
        return {"z": np.ascontiguousarray(Z, dtype=np.float32)}

    def decode(
        self, latents: Mapping[str, np.ndarray], *, init: np.ndarray | None = None, seed: int = 0
    ) -> np.ndarray:
        """``{"z": (n, dim_z)}`` -> images ``(n, 3, S, S)`` float32 in [0, 1].

        ``seed`` only matters with ``truncation_mode="resample"``; otherwise decoding is
        deterministic.
        """
        if init is not None:
            raise ConfigError("bigbigan decode takes no init image; pass init=None")
        if "z" not in latents:
            raise ConfigError(f"bigbigan decode needs latents['z'], got keys {sorted(latents)}")
        Z = np.asarray(latents["z"], dtype=np.float32)
        if Z.ndim != 2:
            Z = Z.reshape(len(Z), -1)
        Z = unflatten(Z, self.targets["z"])
        images = self.generate(self._truncate(Z, seed))
        if self.output_size is not None and self.output_size != self.image_size:
            from brainrecon.images import resize

            images = resize(images, self.output_size)
        return np.ascontiguousarray(images, dtype=np.float32)


def default_generator_path() -> Path:
    """``<weights root>/bigbigan/BigBiGAN_x1.pth``."""
    from brainrecon.latents.bigbigan.config import GENERATOR_FILE
    from brainrecon.paths import weights_root

    return weights_root() / "bigbigan" / GENERATOR_FILE


def build_bigbigan_space(
    generator_path: str | os.PathLike,
    encoder_path: str | os.PathLike | None = None,
    *,
    generator: Any = "published",
    encoder: Any = "published",
    device: str | None = None,
    **kwargs: Any,
) -> BigBiGANSpace:
    """Load the weights and build a :class:`BigBiGANSpace` (the ``_target_`` of ``conf/latents/bigbigan.yaml``).

    Parameters
    ----------
    generator_path : path-like
        Converted generator (``BigBiGAN_x1.pth`` or a ``.safetensors``); ``"bundled:<file>"``
        for a file in ``brainrecon/weights``.
    encoder_path : path-like, optional
        Converted encoder; not read when ``encode_method="inversion"``.
    generator, encoder : "published", mapping or ``.json`` path
        Architectures; a ``.json`` beside a ``.safetensors`` file is used when the argument
        is ``None``.
    device : str, optional
        ``"cpu"``, ``"cuda"``...; default ``"cpu"``.
    **kwargs
        Keyword arguments of :class:`BigBiGANSpace`.

    Raises
    ------
    MissingWeightsError
        A needed file is absent; the message names the path and the file to get.
    """
    from brainrecon.errors import MissingWeightsError
    from brainrecon.fingerprint import file_fingerprint
    from brainrecon.latents.bigbigan.checkpoint import load_encoder, load_generator
    from brainrecon.paths import resolve_weights_path

    known = {
        "encode_method", "truncation", "truncation_mode", "output_size", "inversion_steps",
        "inversion_lr", "inversion_reg", "batch_size", "progress",
    }
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(
            f"unknown bigbigan config keys {unknown}; known: "
            f"{sorted(known | {'generator_path', 'encoder_path', 'generator', 'encoder', 'device'})}"
        )
    dev = device or "cpu"
    needs_encoder = kwargs.get("encode_method", "encoder") != "inversion"
    for path, what in ((generator_path, "generator"), (encoder_path if needs_encoder else None, "encoder")):
        if path is not None and os.fspath(path).startswith("bundled:") and not resolve_weights_path(path).is_file():
            raise MissingWeightsError(
                resolve_weights_path(path), f"BigBiGAN {what} (the project's small model)",
                "train it with scripts/train_bigbigan_small.py (scripts/README.md)",
            )
    g_path = resolve_weights_path(generator_path)
    g_cfg = generator if generator is not None else _sibling_json(g_path)
    gen = load_generator(g_path, g_cfg, device=dev)
    enc = None
    e_path = None
    if needs_encoder:
        if encoder_path is None:
            raise ConfigError("bigbigan encoder_path is required unless encode_method='inversion'")
        e_path = resolve_weights_path(encoder_path)
        e_cfg = encoder if encoder is not None else _sibling_json(e_path)
        enc = load_encoder(e_path, e_cfg, device=dev)
    space = BigBiGANSpace(gen, enc, device=dev, **kwargs)
    space.weights_digest = {
        "generator": file_fingerprint(g_path),
        "encoder": None if e_path is None else file_fingerprint(e_path),
    }
    return space


def _sibling_json(path: Path) -> Any:
    sibling = path.with_suffix(".json")
    return str(sibling) if sibling.is_file() else "published"
