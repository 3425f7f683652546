"""VDVAE as a :class:`~brainrecon.latents.base.LatentSpace`: target ``vdvae.z``.

The target is the concatenation of the top ``n_groups`` latent groups, each flattened in
``(channel, row, column)`` order, top of the hierarchy first. For the published ImageNet-64
model and ``n_groups=31`` (Brain-Diffuser's choice) that is
``2*16*1*1 + 4*16*4*4 + 8*16*8*8 + 16*16*16*16 + 1*16*32*32 = 91,168`` values.

Randomness (posterior samples at encoding, prior samples and mixture samples at decoding)
is drawn per image from a generator seeded with ``(seed, index of the image)`` on the CPU,
so an image's result does not depend on the batch size, the other images or the device.
The reference implementation samples without a seed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError, ShapeMismatchError
from brainrecon.latents.base import Stimuli, TargetSpec, unflatten
from brainrecon.latents.vdvae.config import IMAGENET64_FILE, VDVAEConfig, as_config

_POSTERIOR = ("mean", "sample")
_OUTPUT = ("mean", "sample")


def resize_images(images: np.ndarray, size: int):
    """uint8 ``(n, H, W, 3)`` -> float tensor ``(n, 3, size, size)`` of integer values 0..255.

    Bilinear with antialiasing (like PIL's resize used by Brain-Diffuser), then rounded:
    the published model was trained on 8-bit images. Non-square images are stretched.
    """
    import torch
    import torch.nn.functional as F

    arr = np.ascontiguousarray(images)
    if not arr.flags.writeable:  # e.g. a memory-mapped .npy; torch wants writable memory
        arr = arr.copy()
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
    if tuple(x.shape[2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255)
    return x


class _PerImageNoise:
    """Standard-normal / uniform noise with one seeded CPU generator per image."""

    def __init__(self, seed: int, indices: range, device: Any, dtype: Any) -> None:
        import torch

        self._torch = torch
        self.device, self.dtype = device, dtype
        self.gens = []
        for i in indices:
            s = int(np.random.SeedSequence([int(seed), int(i)]).generate_state(1, dtype=np.uint64)[0] >> 1)
            self.gens.append(torch.Generator().manual_seed(s))

    def _draw(self, shape: tuple[int, ...], fn: str):
        torch = self._torch
        if shape[0] != len(self.gens):
            raise ShapeMismatchError("noise batch", len(self.gens), shape[0])
        draw = getattr(torch, fn)
        parts = [draw(shape[1:], generator=g, dtype=torch.float32) for g in self.gens]
        return torch.stack(parts).to(device=self.device, dtype=self.dtype)

    def normal(self, shape: tuple[int, ...]):
        return self._draw(shape, "randn")

    def uniform(self, shape: tuple[int, ...]):
        return self._draw(shape, "rand")


class VDVAESpace:
    """Latent space of a (published or project-trained) VDVAE.

    Parameters
    ----------
    model : VDVAE
        A loaded model (see :func:`~brainrecon.latents.vdvae.load_vdvae`).
    n_groups : int, optional
        Top latent groups forming the target; default ``model.cfg.target_groups``
        (31 for the published model).
    posterior : {"mean", "sample"}
        Encode with the posterior mean (deterministic, default) or a seeded posterior sample
        (what Brain-Diffuser does, without a seed).
    temperature : float
        Prior temperature for the groups below ``n_groups`` at decoding (Brain-Diffuser: 1).
    output : {"mean", "sample"}
        Decoded pixels: the mixture mean (default) or a seeded sample from the discretised
        logistic mixture (Brain-Diffuser).
    batch_size : int
        Images per forward pass.
    device : str, optional
        ``"cpu"``, ``"cuda"``, ...; default: where the model is.
    encode_seed : int
        Seed of posterior sampling (``posterior="sample"``).
    progress : bool or None
        tqdm progress bars; ``None`` shows them only on a terminal.
    """

    name = "vdvae"

    def __init__(
        self,
        model: Any,
        *,
        n_groups: int | None = None,
        posterior: str = "mean",
        temperature: float = 1.0,
        output: str = "mean",
        batch_size: int = 16,
        device: str | None = None,
        encode_seed: int = 0,
        progress: bool | None = None,
    ) -> None:
        cfg: VDVAEConfig = model.cfg
        n_groups = cfg.target_groups if n_groups is None else int(n_groups)
        if not 1 <= n_groups <= cfg.n_groups():
            raise ConfigError(f"vdvae n_groups must be in [1, {cfg.n_groups()}], got {n_groups}")
        if posterior not in _POSTERIOR:
            raise ConfigError(f"vdvae posterior must be one of {_POSTERIOR}, got {posterior!r}")
        if output not in _OUTPUT:
            raise ConfigError(f"vdvae output must be one of {_OUTPUT}, got {output!r}")
        if temperature < 0:
            raise ConfigError(f"vdvae temperature must be >= 0, got {temperature}")
        if batch_size < 1:
            raise ConfigError(f"vdvae batch_size must be >= 1, got {batch_size}")
        self.model = model if device is None else model.to(device)
        self.cfg = cfg
        self.n_groups = n_groups
        self.posterior = posterior
        self.temperature = float(temperature)
        self.output = output
        self.batch_size = int(batch_size)
        self.encode_seed = int(encode_seed)
        self.progress = progress
        self.group_shapes = cfg.group_shapes()[:n_groups]
        size = sum(int(np.prod(s)) for s in self.group_shapes)
        self.targets = {
            "z": TargetSpec(
                (size,), f"top {n_groups} VDVAE latent groups ({cfg.image_size}px, zdim {cfg.zdim}), flattened"
            )
        }

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> VDVAESpace:
        """Build from a configuration mapping (the path a Hydra config takes).

        Keys: ``weights`` (path; ``.th`` or ``.safetensors``), ``model`` (preset name, mapping
        of :class:`VDVAEConfig` fields, or a ``.json`` path; default: the ``.json`` beside the
        weights, else ``"imagenet64"``), and the keyword arguments of :class:`VDVAESpace`.
        """
        from brainrecon.latents.vdvae.checkpoint import load_vdvae

        cfg = dict(cfg)
        if "weights" not in cfg:
            raise ConfigError("vdvae config needs 'weights' (path of the checkpoint)")
        weights = Path(os.fspath(cfg.pop("weights"))).expanduser()
        model_cfg = cfg.pop("model", None)
        if model_cfg is None:
            sibling = weights.with_suffix(".json")
            model_cfg = VDVAEConfig.from_json(sibling) if sibling.is_file() else "imagenet64"
        elif isinstance(model_cfg, (str, os.PathLike)) and str(model_cfg).endswith(".json"):
            model_cfg = VDVAEConfig.from_json(model_cfg)
        device = cfg.get("device") or "cpu"
        known = {"n_groups", "posterior", "temperature", "output", "batch_size", "device", "encode_seed", "progress"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"unknown vdvae config keys {unknown}; known: {sorted(known | {'weights', 'model'})}")
        model = load_vdvae(weights, as_config(model_cfg), device=device)
        space = cls(model, **cfg)
        from brainrecon.fingerprint import file_fingerprint

        space.weights_digest = file_fingerprint(weights)
        return space

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the loaded weights (content digest, not path) for stage cache keys."""
        return {"weights": getattr(self, "weights_digest", None)}

    # ------------------------------------------------------------------ helpers
    @property
    def image_size(self) -> int:
        """Side of the images the model reads and writes."""
        return self.cfg.image_size

    def _device(self):
        return self.model.decoder.gain.device

    def _batches(self, n: int, desc: str):
        from tqdm.auto import tqdm

        disable = None if self.progress is None else not self.progress
        starts = range(0, n, self.batch_size)
        return tqdm(starts, desc=desc, total=len(starts), disable=disable, leave=False)

    def _pixels(self, images: np.ndarray):
        return resize_images(images, self.image_size).to(self._device())

    def split_groups(self, z: np.ndarray) -> list[np.ndarray]:
        """Flattened target ``(n, size)`` -> list of ``(n, zdim, res, res)`` arrays."""
        out, start = [], 0
        for shape in self.group_shapes:
            k = int(np.prod(shape))
            out.append(z[:, start : start + k].reshape(len(z), *shape))
            start += k
        return out

    # ------------------------------------------------------------------ protocol
    def encode(self, stimuli: Stimuli) -> dict[str, np.ndarray]:
        """Posterior latents of the top ``n_groups`` groups, ``{"z": (n, size) float32}``."""
        import torch

        images = stimuli.images
        if images.dtype != np.uint8:
            raise ShapeMismatchError("vdvae stimulus dtype", "uint8", images.dtype)
        n = len(images)
        size = self.targets["z"].size
        Z = np.empty((n, size), dtype=np.float32)
        sample = self.posterior == "sample"
        with torch.inference_mode():
            for start in self._batches(n, "vdvae encode"):
                stop = min(start + self.batch_size, n)
                x_in, _ = self.model.normalise(self._pixels(images[start:stop]))
                acts = self.model.encoder(x_in)
                noise = None
                if sample:
                    src = _PerImageNoise(self.encode_seed, range(start, stop), x_in.device, x_in.dtype)
                    noise = src.normal
                res = self.model.decoder.top_down(
                    stop - start,
                    activations=acts,
                    n_blocks=self.n_groups,
                    posterior_mean=not sample,
                    noise=noise,
                )
                flat = torch.cat([z.reshape(stop - start, -1) for z in res.z], dim=1)
                Z[start:stop] = flat.float().cpu().numpy()
        return {"z": Z}

    def decode(
        self, latents: Mapping[str, np.ndarray], *, init: np.ndarray | None = None, seed: int = 0
    ) -> np.ndarray:
        """Images ``(n, 3, S, S)`` float32 in [0, 1] from (predicted) top groups.

        Groups below ``n_groups`` are drawn from the prior at ``temperature``; ``seed``
        fixes them and the mixture sample (``output="sample"``).
        """
        import torch

        from brainrecon.latents.vdvae import dmol

        if init is not None:
            raise ConfigError("vdvae decode takes no init image (it is the first stage); pass init=None")
        if "z" not in latents:
            raise ConfigError(f"vdvae decode needs latents['z'], got keys {sorted(latents)}")
        spec = self.targets["z"]
        Z = np.asarray(latents["z"], dtype=np.float32)
        if Z.ndim != 2:
            Z = Z.reshape(len(Z), -1)
        Z = unflatten(Z, spec)
        n = len(Z)
        s = self.image_size
        out = np.empty((n, 3, s, s), dtype=np.float32)
        dev = self._device()
        with torch.inference_mode():
            for start in self._batches(n, "vdvae decode"):
                stop = min(start + self.batch_size, n)
                b = stop - start
                groups = [torch.from_numpy(g).to(dev) for g in self.split_groups(Z[start:stop])]
                src = _PerImageNoise(seed, range(start, stop), dev, torch.float32)
                res = self.model.decoder.top_down(b, fixed=groups, temperature=self.temperature, noise=src.normal)
                if self.output == "mean":
                    x = dmol.mean(res.out, self.cfg.num_mixtures)
                else:
                    u = src.uniform((b, self.cfg.num_mixtures + 3, s, s))
                    x = dmol.sample(res.out, self.cfg.num_mixtures, u)
                out[start:stop] = ((x + 1.0) / 2.0).clamp(0.0, 1.0).float().cpu().numpy()
        return out


def default_imagenet64_path() -> Path:
    """Where the published checkpoint is looked for by default: ``<weights root>/vdvae/<file>``."""
    from brainrecon.paths import weights_root

    return weights_root() / "vdvae" / IMAGENET64_FILE


def build_vdvae_space(weights_path: str | os.PathLike, model: Any = None, **kwargs: Any) -> VDVAESpace:
    """Keyword form of :meth:`VDVAESpace.from_config`, for configuration files.

    ``weights_path`` may be ``"bundled:<file>"`` for a model shipped in
    ``brainrecon/weights/`` (trained by the project, see ``scripts/``).
    """
    from brainrecon.paths import resolve_weights_path

    cfg: dict[str, Any] = {"weights": str(resolve_weights_path(weights_path)), **kwargs}
    if model is not None:
        cfg["model"] = model
    return VDVAESpace.from_config(cfg)
