"""Reading and writing VDVAE weights.

Two formats are accepted:

* the published ``.th`` files: a plain ``torch.save`` of the model's state dict (read with
  ``torch.load(weights_only=True)``, which refuses anything but tensors and containers);
* ``.safetensors``: what the project writes for the models it trains.

Keys saved from a ``DistributedDataParallel`` wrapper (``module.`` prefix, the reference's
non-EMA files) are accepted too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from brainrecon.latents import state_dict as shared
from brainrecon.latents.vdvae.config import IMAGENET64_FILE, IMAGENET64_URL, VDVAEConfig, as_config
from brainrecon.latents.vdvae.model import VDVAE

_DDP_PREFIX = "module."
_WHAT = "VDVAE"
#: What to do when the weights file is missing.
_MISSING_HINT = (
    f"get {IMAGENET64_FILE} from {IMAGENET64_URL} for the published ImageNet-64 model, "
    "or train the small model with scripts/train_vdvae_small.py"
)
#: The usual cause of a mismatch: a config that is not the one the weights were trained with.
_MISMATCH_HINT = "is the config, e.g. width/zdim/block strings, the one the weights were trained with?"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.th``/``.pt``/``.pth`` (torch, no pickle code) or ``.safetensors``.

    A ``module.`` prefix (``DistributedDataParallel``) is removed from the keys.

    Raises
    ------
    MissingWeightsError
        ``path`` does not exist (the message says where to get the published file).
    DataFormatError
        The file is not a plain state dict.
    """
    return shared.read_state_dict(path, _WHAT, _MISSING_HINT, strip_prefix=_DDP_PREFIX)


def check_state_dict(sd: Mapping[str, torch.Tensor], model: torch.nn.Module, source: str) -> None:
    """Raise :class:`DataFormatError` naming missing, unexpected and mis-shaped parameters."""
    shared.check_state_dict(sd, model, source, _WHAT, hint=_MISMATCH_HINT)


def load_vdvae(
    path: str | os.PathLike,
    config: VDVAEConfig | Mapping[str, Any] | str,
    device: str | torch.device = "cpu",
) -> VDVAE:
    """Build a VDVAE for ``config`` and load the weights at ``path`` strictly.

    Parameters
    ----------
    path : path-like
        ``.th`` state dict (the published format) or ``.safetensors``.
    config : VDVAEConfig, mapping or preset name
        Architecture the weights belong to (``"imagenet64"`` for the published file).
    device : str or torch.device
        Where the model lives.

    Returns
    -------
    VDVAE
        In eval mode, float32, gradients off.

    Raises
    ------
    MissingWeightsError
        ``path`` does not exist.
    DataFormatError
        The file is not a state dict or its names/shapes do not fit ``config``.
    """
    cfg = as_config(config)
    sd = read_state_dict(path)
    with torch.device("meta"):
        model = VDVAE(cfg)  # no memory until real tensors are assigned
    check_state_dict(sd, model, str(path))
    return shared.assign_state_dict(model, sd, device)


def save_vdvae(model: VDVAE, path: str | os.PathLike) -> None:
    """Write the state dict as ``.safetensors`` and the config beside it as ``.json``."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_vdvae writes .safetensors, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path))
    path.chmod(0o644)  # safetensors creates the file owner-only; these weights are meant to be shared
    model.cfg.to_json(path.with_suffix(".json"))
