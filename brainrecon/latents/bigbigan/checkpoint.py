"""Reading and writing BigBiGAN weights in the converted layouts (see ``docs/bigbigan.md``).

Accepted files:

* ``.pth`` / ``.pt`` / ``.th``: a plain ``torch.save`` of a state dict (the format of the public
  generator conversion ``BigBiGAN_x1.pth``), read with ``torch.load(weights_only=True)``,
  which refuses pickled objects other than tensors and containers;
* ``.safetensors``: what the converter script and :func:`save_generator` /
  :func:`save_encoder` write.

Loading is strict: every parameter and buffer of the model must be present with its exact
shape and nothing else may be in the file. One documented exception: BigGAN-PyTorch's
``<layer>.sv0`` buffers (a logged singular value, shape ``(1,)``, never read by the forward
pass) may be present or absent; the public converter does not write them and loads with
``strict=False`` for that reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from brainrecon.errors import DataFormatError
from brainrecon.latents import state_dict as shared
from brainrecon.latents.bigbigan.config import (
    ENCODER_FILE,
    GENERATOR_FILE,
    GENERATOR_URL,
    TFHUB_MODULE,
    EncoderConfig,
    GeneratorConfig,
    as_encoder_config,
    as_generator_config,
    config_to_json,
)
from brainrecon.latents.bigbigan.encoder import BigBiGANEncoder
from brainrecon.latents.bigbigan.generator import BigBiGANGenerator

__all__ = [
    "read_state_dict",
    "check_state_dict",
    "load_generator",
    "load_encoder",
    "save_generator",
    "save_encoder",
    "GENERATOR_HINT",
    "ENCODER_HINT",
]

#: What to do when the generator file is missing.
GENERATOR_HINT = (
    f"get {GENERATOR_FILE} (the public PyTorch conversion of {TFHUB_MODULE}) from {GENERATOR_URL}, "
    "or convert the TF-Hub module with scripts/convert_bigbigan_tfhub.py (docs/bigbigan.md)"
)
#: What to do when the encoder file is missing.
ENCODER_HINT = (
    f"write {ENCODER_FILE} from {TFHUB_MODULE} with scripts/convert_bigbigan_tfhub.py --part encoder "
    "(docs/bigbigan.md; no public PyTorch conversion of the encoder exists), or encode by GAN inversion "
    "(encode_method='inversion'), which needs the generator only"
)
_IGNORABLE_SUFFIX = ".sv0"


def read_state_dict(path: str | os.PathLike, what: str = "BigBiGAN", hint: str = "") -> dict[str, torch.Tensor]:
    """Load a flat mapping of names to tensors from a torch file or ``.safetensors``.

    Keys are kept as written: the converted layouts never carry a ``module.`` prefix.

    Raises
    ------
    MissingWeightsError
        ``path`` does not exist (the message names it and ``hint``).
    DataFormatError
        The file is not a plain state dict.
    """
    return shared.read_state_dict(path, what, hint)


def check_state_dict(
    sd: Mapping[str, torch.Tensor], model: torch.nn.Module, source: str, what: str
) -> dict[str, torch.Tensor]:
    """Return ``sd`` without ignorable keys, or raise naming every mismatch.

    Raises
    ------
    DataFormatError
        Missing keys, unexpected keys and keys of another shape, each with expected vs got.
    """
    want = model.state_dict()
    # sv0 is tolerated only where it can be BigGAN-PyTorch's log: shape (1,), beside an SN layer's u0.
    ignorable = {
        k for k, v in sd.items()
        if k.endswith(_IGNORABLE_SUFFIX) and tuple(v.shape) == (1,) and k[: -len(_IGNORABLE_SUFFIX)] + ".u0" in want
    }
    mismatch = shared.compare_state_dict(sd, model, ignorable=ignorable)
    if mismatch:
        raise DataFormatError(
            f"{source}: parameters do not match the {what} architecture: " + _describe(mismatch)
            + " (is the config the one these weights belong to? see docs/bigbigan.md for the layout)"
        )
    return {k: v for k, v in sd.items() if k not in ignorable}


def _describe(mismatch: shared.StateDictMismatch) -> str:
    """This module's message layout: sorted keys, three examples of each kind (tests quote it)."""
    kinds = [
        ("missing", [f"{k} {w}" for k, w in sorted(mismatch.missing)], ", "),
        ("unexpected", [f"{k} {g}" for k, g in sorted(mismatch.unexpected)], ", "),
        ("with other shapes", [f"{k}: expected {w}, got {g}" for k, w, g in sorted(mismatch.other_shape)], "; "),
    ]
    return "; ".join(f"{len(items)} {label} (e.g. {sep.join(items[:3])})" for label, items, sep in kinds if items)


def _load(model_cls: type, cfg: Any, path: str | os.PathLike, device: Any, what: str, hint: str) -> Any:
    sd = read_state_dict(path, what, hint)
    with torch.device("meta"):
        model = model_cls(cfg)  # no memory until the file's tensors are assigned
    sd = check_state_dict(sd, model, str(path), what)
    return shared.assign_state_dict(model, sd, device)


def load_generator(
    path: str | os.PathLike,
    config: GeneratorConfig | Mapping[str, Any] | str = "published",
    device: str | torch.device = "cpu",
) -> BigBiGANGenerator:
    """Build the generator for ``config`` and load ``path`` strictly (eval mode, float32, frozen).

    Raises
    ------
    MissingWeightsError
        ``path`` does not exist; the message says where to get the file.
    DataFormatError
        Not a state dict, or names/shapes do not fit ``config``.
    """
    return _load(BigBiGANGenerator, as_generator_config(config), path, device, "BigBiGAN generator", GENERATOR_HINT)


def load_encoder(
    path: str | os.PathLike,
    config: EncoderConfig | Mapping[str, Any] | str = "published",
    device: str | torch.device = "cpu",
) -> BigBiGANEncoder:
    """Build the encoder for ``config`` and load ``path`` strictly (eval mode, float32, frozen)."""
    return _load(BigBiGANEncoder, as_encoder_config(config), path, device, "BigBiGAN encoder", ENCODER_HINT)


def _save(model: torch.nn.Module, path: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise DataFormatError(f"BigBiGAN weights are written as .safetensors, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path))
    path.chmod(0o644)  # safetensors creates owner-only files; weights are meant to be shared
    config_to_json(model.cfg, path.with_suffix(".json"))
    return path


def save_generator(model: BigBiGANGenerator, path: str | os.PathLike) -> Path:
    """Write ``.safetensors`` (the converted layout) and the config as ``.json`` beside it."""
    return _save(model, path)


def save_encoder(model: BigBiGANEncoder, path: str | os.PathLike) -> Path:
    """Write ``.safetensors`` (the converted layout) and the config as ``.json`` beside it."""
    return _save(model, path)
