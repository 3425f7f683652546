"""Reading the published IC-GAN generator and SwAV encoder weights, strictly.

Both files are plain ``torch.save`` archives of a state dict and are read with
``torch.load(weights_only=True)``, which refuses to run code stored in a file. Generators the
project trains itself (``scripts/train_icgan_small.py``) are written by :func:`save_generator`
as ``.safetensors`` with the same keys, and the architecture as ``.json`` beside them.

* Generator: ``icgan_biggan_imagenet_res256/G_ema_best0.pth`` from the IC-GAN release, the
  EMA generator's state dict. Every key must be present with the expected shape and no other
  key may appear.
* Encoder: ``swav_800ep_pretrain.pth.tar`` from the SwAV release, saved from a
  ``DistributedDataParallel`` wrapper (every key starts with ``module.``) and holding, besides
  the ResNet-50 trunk, SwAV's training-only heads: ``projection_head.*`` (2048 -> 2048 -> BN
  -> 128 MLP) and ``prototypes.weight`` (3000 x 128). Those heads are dropped explicitly; any
  other unknown key is an error. BatchNorm ``num_batches_tracked`` counters are only used
  in training; if a file lacks them they are set to zero rather than refused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brainrecon.errors import DataFormatError
from brainrecon.latents import state_dict as shared
from brainrecon.latents.icgan.config import (
    IMAGENET256_DIR,
    IMAGENET256_FILE,
    IMAGENET256_URL,
    SWAV_FILE,
    SWAV_URL,
    ICGANConfig,
    SwAVConfig,
    as_encoder_config,
    as_generator_config,
)
from brainrecon.latents.icgan.encoder import SwAVEncoder
from brainrecon.latents.icgan.model import ICGANGenerator

_DDP_PREFIX = "module."
_CHECKPOINT_KEY = "state_dict"
#: Keys of the SwAV file that belong to its training heads, not to the feature extractor.
SWAV_HEAD_PREFIXES = ("projection_head.", "prototypes.")
_OPTIONAL_SUFFIX = "num_batches_tracked"

GENERATOR_HINT = (
    f"download {IMAGENET256_URL}, extract it and use {IMAGENET256_DIR}/{IMAGENET256_FILE} "
    "(the EMA generator; see docs/icgan.md)"
)
ENCODER_HINT = f"download {SWAV_URL} ({SWAV_FILE}, SwAV ResNet-50; see docs/icgan.md)"
_MISMATCH_HINT = "is the file the one the configuration describes?"


def read_state_dict(path: str | os.PathLike, what: str, hint: str) -> dict[str, torch.Tensor]:
    """Load a state dict (``torch.load(weights_only=True)``, or ``.safetensors``); strip a ``module.`` prefix.

    A checkpoint dict holding the weights under ``"state_dict"`` is unwrapped.

    Raises
    ------
    MissingWeightsError
        ``path`` is not a file (the message names ``hint``: the file to get).
    DataFormatError
        The file is not a mapping of names to tensors.
    """
    # The SwAV release is DDP-saved (module.*); IC-GAN-style training checkpoints nest under "state_dict".
    return shared.read_state_dict(
        Path(path).expanduser(), what, hint, strip_prefix=_DDP_PREFIX, unwrap_key=_CHECKPOINT_KEY
    )


def check_state_dict(
    sd: Mapping[str, torch.Tensor],
    model: nn.Module,
    source: str,
    what: str,
    *,
    optional_suffixes: tuple[str, ...] = (),
) -> None:
    """Raise :class:`DataFormatError` naming every missing, unexpected or mis-shaped key.

    Parameters
    ----------
    sd : mapping
        The file's tensors (after prefix stripping and explicit exclusions).
    model : nn.Module
        The network the file must fit (may live on the meta device).
    source : str
        File name for the message.
    what : str
        What the file holds, e.g. ``"IC-GAN generator"``.
    optional_suffixes : tuple of str
        Keys ending so may be absent from the file.
    """
    optional = {k for k in model.state_dict() if k.endswith(optional_suffixes)}
    shared.check_state_dict(sd, model, source, what, hint=_MISMATCH_HINT, optional=optional)


def load_generator(
    path: str | os.PathLike,
    config: ICGANConfig | Mapping[str, Any] | str = "imagenet256",
    device: str | torch.device = "cpu",
) -> ICGANGenerator:
    """Build the generator for ``config`` and load ``path`` strictly.

    Parameters
    ----------
    path : path-like
        ``G_ema_best0.pth`` (published) or any ``torch.save`` of an :class:`ICGANGenerator` state dict.
    config : ICGANConfig, mapping or preset name
        Architecture the weights belong to (``"imagenet256"`` for the published file).
    device : str or torch.device

    Returns
    -------
    ICGANGenerator
        Float32, evaluation mode, gradients off.

    Raises
    ------
    MissingWeightsError
        No file at ``path``.
    DataFormatError
        Unreadable file, or keys/shapes that do not fit ``config`` (each named).
    """
    cfg = as_generator_config(config)
    sd = read_state_dict(path, "IC-GAN generator", GENERATOR_HINT)
    with torch.device("meta"):
        model = ICGANGenerator(cfg)  # no memory until the file's tensors are assigned
    check_state_dict(sd, model, str(path), "IC-GAN generator")
    return shared.assign_state_dict(model, sd, device)


def load_encoder(
    path: str | os.PathLike,
    config: SwAVConfig | Mapping[str, Any] | str = "swav_resnet50",
    device: str | torch.device = "cpu",
) -> SwAVEncoder:
    """Build the SwAV ResNet trunk for ``config`` and load ``path`` strictly (heads dropped).

    Parameters
    ----------
    path : path-like
        ``swav_800ep_pretrain.pth.tar`` (published) or a state dict of a :class:`SwAVEncoder`.
    config : SwAVConfig, mapping or preset name
    device : str or torch.device

    Raises
    ------
    MissingWeightsError, DataFormatError
        As :func:`load_generator`.
    """
    cfg = as_encoder_config(config)
    sd = read_state_dict(path, "SwAV ResNet-50 instance encoder", ENCODER_HINT)
    trunk = {k: v for k, v in sd.items() if not k.startswith(SWAV_HEAD_PREFIXES)}
    with torch.device("meta"):
        model = SwAVEncoder(cfg)
    # BatchNorm counters only serve training: a file may lack them, and they then start at zero.
    counters = {k for k in model.state_dict() if k.endswith(_OPTIONAL_SUFFIX)}
    shared.check_state_dict(
        trunk, model, str(path), "SwAV ResNet instance encoder", hint=_MISMATCH_HINT, optional=counters
    )
    # The normalisation constants are not in the file: give them real values before moving.
    model._mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    model._std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return shared.assign_state_dict(model, trunk, device, optional=counters)


def save_generator(model: ICGANGenerator, path: str | os.PathLike) -> Path:
    """Write the generator's state dict as ``.safetensors`` and its config as ``.json`` beside it.

    The keys are those of the published ``G_ema`` file, so :func:`load_generator` reads the result
    strictly (with ``config`` = the ``.json`` path, or ``model: null`` in the space's config).

    Raises
    ------
    DataFormatError
        ``path`` does not end in ``.safetensors``.
    """
    import json

    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise DataFormatError(f"IC-GAN weights are written as .safetensors, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path))
    path.chmod(0o644)  # safetensors creates owner-only files; weights are meant to be shared
    path.with_suffix(".json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    return path
