"""IC-GAN as a :class:`~brainrecon.latents.base.LatentSpace`: ``icgan.instance``, ``icgan.noise``, ``icgan.dense``.

Targets (Ozcelik et al. 2022, on the published 256-px ImageNet IC-GAN):

``instance`` (2048,)
    L2-normalised SwAV ResNet-50 feature of the stimulus (the generator's conditioning).
``noise`` (119,)
    Noise that makes the generator, conditioned on that instance, reproduce the stimulus:
    found by optimisation (GAN inversion), since the generator has no encoder.
``dense`` (24,576,)
    Output of the generator's first linear layer that, together with the noise above,
    reproduces the stimulus: found by a second optimisation started from the first linear
    layer's output for that noise.

The paper's inversion code was never released (only its results); ours minimises the pixel
(and optionally SwAV-feature) error with Adam through :func:`brainrecon.latents.inversion.invert`.
Its starting noise is drawn from a generator seeded with ``encode_seed`` and a digest of the
image's pixels, so an image's targets depend neither on its batch nor on its position.

Decoding follows the paper: with ``decode_from="dense"`` the predicted dense vector replaces
the first linear layer's output and the predicted noise conditions the blocks;
``"instance_noise"`` runs the whole generator from (instance, noise). The paper used no
truncation; ``truncation=t`` clamps the noise to ``[-2t, 2t]`` as IC-GAN's sampling helper does.
When no noise is given, it is drawn per image from ``(seed, index)``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError, ShapeMismatchError
from brainrecon.latents.base import Stimuli, TargetSpec

TARGETS: tuple[str, ...] = ("instance", "noise", "dense")
DECODE_FROM: tuple[str, ...] = ("instance_noise", "dense")
_PERCEPTUAL = ("none", "swav", "encoder")
INSTANCE_ENCODERS: tuple[str, ...] = ("swav", "clip")
_NOISE_INIT = ("normal", "zeros")


@dataclass(frozen=True)
class InversionSettings:
    """How the noise and dense targets are found.

    Parameters
    ----------
    steps : int
        Adam steps of the noise inversion (instance fixed, whole generator).
    lr : float
        Its learning rate.
    dense_steps : int, optional
        Adam steps of the dense inversion (instance and inverted noise fixed, first linear
        layer bypassed); default ``steps``.
    dense_lr : float, optional
        Its learning rate; default ``lr``.
    batch_size : int
        Images optimised together (each image's result does not depend on it).
    noise_reg : float
        Weight of ``mean(noise ** 2)``, a pull towards the standard-normal prior the generator
        was trained with; 0 disables it.
    perceptual : {"none", "swav", "encoder"}
        Add the squared distance of the instance encoder's pooled features (before L2
        normalisation) to the pixel error. ``"swav"`` and ``"encoder"`` are the same: the
        instance encoder is SwAV for the published model, CLIP for the small one.
    perceptual_weight : float
        Weight of that term.
    noise_init : {"normal", "zeros"}
        Starting noise: a seeded standard-normal draw per image, or zeros (the prior's mode).
    """

    steps: int = 200
    lr: float = 0.05
    dense_steps: int | None = None
    dense_lr: float | None = None
    batch_size: int = 8
    noise_reg: float = 0.0
    perceptual: str = "none"
    perceptual_weight: float = 1.0
    noise_init: str = "normal"

    def __post_init__(self) -> None:
        for name in ("steps", "dense_steps"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or int(v) != v or v < 0):
                raise ConfigError(f"icgan inversion.{name}: expected an integer >= 0, got {v!r}")
        for name in ("lr", "dense_lr"):
            v = getattr(self, name)
            if v is not None and not float(v) > 0:
                raise ConfigError(f"icgan inversion.{name}: expected > 0, got {v!r}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise ConfigError(f"icgan inversion.batch_size: expected an integer >= 1, got {self.batch_size!r}")
        if not float(self.noise_reg) >= 0 or not float(self.perceptual_weight) >= 0:
            raise ConfigError(
                "icgan inversion: noise_reg and perceptual_weight must be >= 0, "
                f"got {self.noise_reg}, {self.perceptual_weight}"
            )
        if self.perceptual not in _PERCEPTUAL:
            raise ConfigError(f"icgan inversion.perceptual: expected one of {_PERCEPTUAL}, got {self.perceptual!r}")
        if self.noise_init not in _NOISE_INIT:
            raise ConfigError(f"icgan inversion.noise_init: expected one of {_NOISE_INIT}, got {self.noise_init!r}")

    @classmethod
    def from_value(cls, value: InversionSettings | Mapping[str, Any] | None) -> InversionSettings:
        if value is None:
            return cls()
        if isinstance(value, InversionSettings):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"icgan inversion: expected a mapping of settings, got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"icgan inversion: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**dict(value))


def _seed_from(*parts: int) -> int:
    """A 63-bit torch seed from integers (numpy's SeedSequence mixes them well)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def image_digest(image: np.ndarray) -> int:
    """64-bit digest of an image's pixels and shape: a per-image seed that ignores its batch."""
    h = hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=8)
    h.update(str(image.shape).encode())
    return int.from_bytes(h.digest(), "little") >> 1


def stimuli_to_tensor(images: np.ndarray, size: int):
    """uint8 ``(n, H, W, 3)`` -> float tensor ``(n, 3, size, size)`` in [0, 1].

    The central square (side = the shorter edge) is cut out and resized with antialiased
    bilinear interpolation (IC-GAN crops the long edge and resizes with PIL).
    """
    import torch
    import torch.nn.functional as F

    if images.ndim != 4 or images.shape[-1] != 3:
        raise ShapeMismatchError("icgan stimulus images", "(n, H, W, 3)", images.shape)
    if images.dtype != np.uint8:
        raise ShapeMismatchError("icgan stimulus dtype", "uint8", images.dtype)
    arr = np.ascontiguousarray(images)
    if not arr.flags.writeable:  # e.g. a memory-mapped .npy; torch wants writable memory
        arr = arr.copy()
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, :, top : top + side, left : left + side]
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0.0, 1.0)
    return x.contiguous()


class ICGANSpace:
    """Latent space of the IC-GAN generator with its instance encoder.

    Parameters
    ----------
    generator : ICGANGenerator
        Loaded generator (:func:`~brainrecon.latents.icgan.load_generator`).
    encoder : SwAVEncoder or ClipInstanceEncoder
        Loaded instance encoder (:func:`~brainrecon.latents.icgan.load_encoder`, SwAV, for the
        published model; a :class:`~brainrecon.latents.icgan.ClipInstanceEncoder` for the small one).
    decode_from : {"dense", "instance_noise"}
        ``"dense"`` (the paper's reconstructions): the dense target replaces the first linear
        layer's output; ``"instance_noise"``: the generator runs from instance and noise.
    truncation : float, optional
        ``None`` (the paper): noise as predicted. ``t``: noise clamped to ``[-2t, 2t]``.
    batch_size : int
        Images per forward pass of encoder and generator.
    device : str, optional
        Where the networks run; default: where the generator is.
    targets : sequence of str
        Targets to produce, a subset of ``("instance", "noise", "dense")`` holding
        ``"instance"`` (and ``"dense"`` when decoding from it). Leaving out noise and dense
        skips the inversion.
    inversion : mapping or InversionSettings, optional
        Settings of the inversion (see :class:`InversionSettings`).
    encode_seed : int
        Seed of the starting noise of the inversion.
    progress : bool, optional
        Progress bars; ``None`` shows none during inversion.
    invert_fn : callable, optional
        The optimiser, with the signature of :func:`brainrecon.latents.inversion.invert`
        (default); injectable so that tests can use a fast stand-in.
    """

    #: Settings used only by ``decode``: left out of the extract cache key (see ExtractStage.key).
    decode_params: tuple[str, ...] = ("decode_from", "truncation")


    name = "icgan"

    def __init__(
        self,
        generator: Any,
        encoder: Any,
        *,
        decode_from: str = "dense",
        truncation: float | None = None,
        batch_size: int = 8,
        device: str | None = None,
        targets: Sequence[str] = TARGETS,
        inversion: InversionSettings | Mapping[str, Any] | None = None,
        encode_seed: int = 0,
        progress: bool | None = None,
        invert_fn: Callable[..., Any] | None = None,
    ) -> None:
        if decode_from not in DECODE_FROM:
            raise ConfigError(f"icgan decode_from: expected one of {DECODE_FROM}, got {decode_from!r}")
        if truncation is not None and not float(truncation) > 0:
            raise ConfigError(f"icgan truncation: expected None or a value > 0, got {truncation!r}")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"icgan batch_size: expected an integer >= 1, got {batch_size!r}")
        targets = tuple(targets)
        bad = sorted(set(targets) - set(TARGETS))
        if bad or not targets or len(set(targets)) != len(targets):
            raise ConfigError(f"icgan targets: expected distinct names among {TARGETS}, got {list(targets)}")
        if "instance" not in targets:
            raise ConfigError(
                f"icgan targets: 'instance' is required (decoding is conditioned on it), got {list(targets)}"
            )
        if decode_from == "dense" and "dense" not in targets:
            raise ConfigError(
                "icgan targets: decode_from='dense' needs the 'dense' target; or use decode_from='instance_noise'"
            )
        if generator.cfg.feature_dim != encoder.cfg.feature_dim:
            raise ShapeMismatchError(
                "icgan instance feature size (generator vs encoder)", generator.cfg.feature_dim, encoder.cfg.feature_dim
            )
        if device is not None:
            generator = generator.to(device)
            encoder = encoder.to(device)
        self.generator = generator
        self.encoder = encoder
        self.cfg = generator.cfg
        self.decode_from = decode_from
        self.truncation = None if truncation is None else float(truncation)
        self.batch_size = int(batch_size)
        self.inversion = InversionSettings.from_value(inversion)
        self.encode_seed = int(encode_seed)
        self.progress = progress
        if invert_fn is None:
            from brainrecon.latents.inversion import invert as invert_fn
        self.invert_fn = invert_fn
        specs = {
            "instance": TargetSpec(
                (self.cfg.feature_dim,), getattr(encoder, "description", "L2-normalised instance feature")
            ),
            "noise": TargetSpec((self.cfg.noise_dim,), f"IC-GAN noise ({self.cfg.n_slots} chunks), by inversion"),
            "dense": TargetSpec(
                (self.cfg.dense_dim,), f"output of the first linear layer {self.cfg.dense_shape}, by inversion"
            ),
        }
        self.targets = {k: specs[k] for k in TARGETS if k in targets}
        self.weights_digest: dict[str, str] | None = None
        #: The CLIP folder of a CLIP instance encoder as configured (e.g. ``"bundled:clip_small"``), else None;
        #: the roi stage's ``clip_weights: auto`` reads ROI latents with it.
        self.clip_weights: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the loaded weights (content digests, not paths) for stage cache keys."""
        return {"weights": self.weights_digest}

    def clip_image_embedding(self, latents: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The instance features and the identity of their CLIP, when the instance encoder is a CLIP.

        With ``instance_encoder="clip"`` the instance feature is the L2-normalised CLIP image
        embedding, so diagnostics can read ROI latents with estimators trained on that CLIP's
        embeddings. None for SwAV instances or when the CLIP's identity is unknown.
        """
        ident = getattr(self.encoder, "clip_fingerprint", None)
        z = latents.get("instance")
        if ident is None or z is None:
            return None
        return np.asarray(z, dtype=np.float64), ident

    # ------------------------------------------------------------------ helpers
    @property
    def image_size(self) -> int:
        return self.cfg.resolution

    def _device(self):
        return self.generator.linear.weight.device

    def _render(self, latents: Mapping[str, Any]):
        """Images in [0, 1] from a batch of latents (differentiable; used by the inversion)."""
        out = self.generator(latents["instance"], latents["noise"], latents.get("dense"))
        return (out + 1.0) / 2.0

    def _perceptual(self) -> Callable[[Any], Any] | None:
        if self.inversion.perceptual == "none":
            return None
        enc = self.encoder
        return lambda images: enc.pooled(enc.preprocess(images))

    def _initial_noise(self, images: np.ndarray):
        import torch

        n, d = len(images), self.cfg.noise_dim
        if self.inversion.noise_init == "zeros":
            return torch.zeros(n, d)
        rows = [
            torch.randn(d, generator=torch.Generator().manual_seed(_seed_from(self.encode_seed, image_digest(img))))
            for img in images
        ]
        return torch.stack(rows)

    def _sample_noise(self, n: int, seed: int):
        """Per-image standard-normal noise seeded by ``(seed, index)``; truncated at ±2t if set."""
        import torch

        d = self.cfg.noise_dim
        rows = []
        for i in range(n):
            g = torch.Generator().manual_seed(_seed_from(seed, i))
            z = torch.randn(d, generator=g)
            if self.truncation is not None:
                bound = 2.0 * self.truncation
                out = z.abs() > bound
                while bool(out.any()):  # redraw values beyond the bound: a truncated normal
                    z[out] = torch.randn(int(out.sum()), generator=g)
                    out = z.abs() > bound
            rows.append(z)
        return torch.stack(rows)

    def _invert(self, render, init, targets, fixed, steps, lr, latent_reg):
        s = self.inversion
        res = self.invert_fn(
            render,
            init,
            targets,
            steps=int(steps),
            lr=float(lr),
            seed=self.encode_seed,
            batch_size=int(s.batch_size),
            perceptual=self._perceptual(),
            perceptual_weight=float(s.perceptual_weight),
            latent_reg=latent_reg,
            progress=bool(self.progress),
            fixed=fixed,
            device=self._device(),
        )
        return res.latents

    # ------------------------------------------------------------------ protocol
    def encode(self, stimuli: Stimuli) -> dict[str, np.ndarray]:
        """Instance features of the stimuli and, by inversion, their noise and dense vectors."""
        import torch

        images = stimuli.images
        x = stimuli_to_tensor(images, self.image_size)
        n = len(x)
        dev = self._device()
        instance = torch.empty(n, self.cfg.feature_dim)
        with torch.no_grad():  # not inference_mode: these tensors enter the inversion's graph
            for start in range(0, n, self.batch_size):
                stop = min(start + self.batch_size, n)
                instance[start:stop] = self.encoder(x[start:stop].to(dev)).float().cpu()
        out: dict[str, np.ndarray] = {"instance": instance.numpy().astype(np.float32)}
        if "noise" not in self.targets and "dense" not in self.targets:
            return out
        s = self.inversion
        reg = {"noise": float(s.noise_reg)} if s.noise_reg > 0 else None
        noise = self._invert(
            self._render, {"noise": self._initial_noise(images)}, x, {"instance": instance}, s.steps, s.lr, reg
        )["noise"]
        if "noise" in self.targets:
            out["noise"] = np.asarray(noise, dtype=np.float32)
        if "dense" in self.targets:
            noise_t = torch.from_numpy(np.asarray(noise, dtype=np.float32))
            dense0 = torch.empty(n, self.cfg.dense_dim)
            with torch.no_grad():
                for start in range(0, n, self.batch_size):
                    stop = min(start + self.batch_size, n)
                    dense0[start:stop] = self.generator.dense_from_noise(noise_t[start:stop].to(dev)).float().cpu()
            dense = self._invert(
                self._render,
                {"dense": dense0},
                x,
                {"instance": instance, "noise": noise_t},
                s.steps if s.dense_steps is None else s.dense_steps,
                s.lr if s.dense_lr is None else s.dense_lr,
                None,
            )["dense"]
            out["dense"] = np.asarray(dense, dtype=np.float32)
        return out

    def _latent(self, latents: Mapping[str, np.ndarray], key: str) -> np.ndarray:
        size = {"instance": self.cfg.feature_dim, "noise": self.cfg.noise_dim, "dense": self.cfg.dense_dim}[key]
        Z = np.array(latents[key], dtype=np.float32)  # a writable copy: torch refuses read-only memmaps
        Z = Z.reshape(len(Z), -1) if Z.ndim != 2 else Z
        if Z.shape[1] != size:
            raise ShapeMismatchError(f"icgan latents[{key!r}]", f"(n, {size})", Z.shape)
        return Z

    def decode(
        self, latents: Mapping[str, np.ndarray], *, init: np.ndarray | None = None, seed: int = 0
    ) -> np.ndarray:
        """Images ``(n, 3, R, R)`` float32 in [0, 1] from (predicted) targets.

        ``latents`` needs ``instance``, plus ``dense`` when ``decode_from="dense"``; missing
        ``noise`` is drawn per image from ``(seed, index)``.
        """
        import torch

        if init is not None:
            raise ConfigError("icgan decode takes no init image; pass init=None")
        if "instance" not in latents:
            raise ConfigError(f"icgan decode needs latents['instance'], got keys {sorted(latents)}")
        if self.decode_from == "dense" and "dense" not in latents:
            raise ConfigError(f"icgan decode_from='dense' needs latents['dense'], got keys {sorted(latents)}")
        inst = self._latent(latents, "instance")
        n = len(inst)
        if "noise" in latents:
            noise = torch.from_numpy(self._latent(latents, "noise"))
            if self.truncation is not None:
                noise = noise.clamp(-2.0 * self.truncation, 2.0 * self.truncation)
        else:
            noise = self._sample_noise(n, seed)
        dense = torch.from_numpy(self._latent(latents, "dense")) if self.decode_from == "dense" else None
        for key, arr in (("noise", noise), ("dense", dense)):
            if arr is not None and len(arr) != n:
                raise ShapeMismatchError(f"icgan latents[{key!r}] rows (one per instance)", n, len(arr))
        s = self.image_size
        out = np.empty((n, 3, s, s), dtype=np.float32)
        dev = self._device()
        inst_t = torch.from_numpy(inst)
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                stop = min(start + self.batch_size, n)
                batch = {"instance": inst_t[start:stop].to(dev), "noise": noise[start:stop].to(dev)}
                if dense is not None:
                    batch["dense"] = dense[start:stop].to(dev)
                img = self._render(batch)
                out[start:stop] = img.clamp(0.0, 1.0).float().cpu().numpy()
        return out


def default_weights_dir() -> Path:
    """Where the published files are looked for by default: ``<weights root>/icgan``."""
    from brainrecon.paths import weights_root

    return weights_root() / "icgan"


def build_icgan_space(
    weights_path: str | os.PathLike,
    encoder_path: str | os.PathLike,
    *,
    model: Any = "imagenet256",
    encoder: Any = "swav_resnet50",
    instance_encoder: str = "swav",
    device: str | None = None,
    inversion: Mapping[str, Any] | None = None,
    targets: Sequence[str] = TARGETS,
    **kwargs: Any,
) -> ICGANSpace:
    """Load the generator and the instance encoder and build an :class:`ICGANSpace` (Hydra ``_target_``).

    Parameters
    ----------
    weights_path : path-like
        The generator's ``G_ema`` state dict (``icgan_biggan_imagenet_res256/G_ema_best0.pth``)
        or a ``.safetensors`` with the same keys; ``"bundled:<file>"`` for a file shipped in
        ``brainrecon/weights/``.
    encoder_path : path-like
        SwAV weights (``swav_800ep_pretrain.pth.tar``), or with ``instance_encoder="clip"`` a
        CLIP folder (``"bundled:clip_small"``); ``"bundled:"`` allowed.
    model : str, mapping or None
        Generator architecture: preset ``"imagenet256"``, :class:`ICGANConfig` fields, a
        ``.json`` path, or ``None`` for the ``.json`` beside ``weights_path`` (written by
        :func:`~brainrecon.latents.icgan.save_generator`).
    encoder : str or mapping
        SwAV architecture: preset ``"swav_resnet50"`` or :class:`SwAVConfig` fields (not read
        with ``instance_encoder="clip"``).
    instance_encoder : {"swav", "clip"}
        ``"swav"``: the published SwAV ResNet (:func:`load_encoder`). ``"clip"``: the pooled
        embedding of a CLIP vision tower (:class:`ClipInstanceEncoder`), the small model's
        substitute; its feature size must equal the generator's ``feature_dim``.
    device : str, optional
        Where the networks run (default ``"cpu"``).
    inversion : mapping, optional
        :class:`InversionSettings` fields.
    targets : sequence of str
        Targets to produce.
    **kwargs
        Other keyword arguments of :class:`ICGANSpace` (``decode_from``, ``truncation``,
        ``batch_size``, ``encode_seed``, ``progress``, ``invert_fn``).

    Raises
    ------
    MissingWeightsError
        A weights file is absent; the message names the path and the file to download.
    DataFormatError
        A file does not fit the configured architecture (keys and shapes named).
    """
    from brainrecon.errors import MissingWeightsError
    from brainrecon.fingerprint import file_fingerprint, path_fingerprint
    from brainrecon.latents.icgan.checkpoint import GENERATOR_HINT, load_encoder, load_generator
    from brainrecon.paths import resolve_weights_path

    if instance_encoder not in INSTANCE_ENCODERS:
        raise ConfigError(f"icgan instance_encoder: expected one of {INSTANCE_ENCODERS}, got {instance_encoder!r}")
    gpath = resolve_weights_path(weights_path)
    epath = resolve_weights_path(encoder_path)
    dev = device or "cpu"
    if os.fspath(weights_path).startswith("bundled:") and not gpath.is_file():
        raise MissingWeightsError(
            gpath, "IC-GAN generator (the project's small model)",
            "train it with scripts/train_icgan_small.py (scripts/README.md)",
        )
    if model is None:
        # The architecture is the .json beside the weights; a missing weights file is named first.
        if not gpath.is_file():
            raise MissingWeightsError(gpath, "IC-GAN generator", GENERATOR_HINT)
        sibling = gpath.with_suffix(".json")
        if not sibling.is_file():
            raise ConfigError(
                f"icgan model: null reads the architecture from {sibling}, which does not exist; "
                "give it as a preset, ICGANConfig fields or a .json path"
            )
        model = str(sibling)
    if isinstance(model, Mapping):
        model = dict(model)  # a Hydra DictConfig becomes plain
    if isinstance(encoder, Mapping):
        encoder = dict(encoder)
    gen = load_generator(gpath, model, device=dev)
    if instance_encoder == "clip":
        from brainrecon.latents.icgan.encoder import ClipInstanceEncoder
        from brainrecon.latents.versatile.clip import load_clip

        clip = load_clip(str(epath), device=dev)
        enc: Any = ClipInstanceEncoder(clip.vision_model, clip_fingerprint=clip.fingerprint())
    else:
        enc = load_encoder(epath, encoder, device=dev)
    inv = dict(inversion) if isinstance(inversion, Mapping) else inversion
    space = ICGANSpace(gen, enc, device=dev, inversion=inv, targets=list(targets), **kwargs)
    space.weights_digest = {"generator": file_fingerprint(gpath), "encoder": path_fingerprint(epath)}
    if instance_encoder == "clip":
        space.clip_weights = os.fspath(encoder_path)
    return space


__all__ = [
    "DECODE_FROM",
    "INSTANCE_ENCODERS",
    "TARGETS",
    "ICGANSpace",
    "InversionSettings",
    "build_icgan_space",
    "default_weights_dir",
    "image_digest",
    "stimuli_to_tensor",
]
