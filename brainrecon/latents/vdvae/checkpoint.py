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

from brainrecon.errors import DataFormatError, MissingWeightsError
from brainrecon.latents.vdvae.config import IMAGENET64_FILE, IMAGENET64_URL, VDVAEConfig, as_config
from brainrecon.latents.vdvae.model import VDVAE

_DDP_PREFIX = "module."


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.th``/``.pt``/``.pth`` (torch, no pickle code) or ``.safetensors``."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            path,
            "VDVAE",
            f"get {IMAGENET64_FILE} from {IMAGENET64_URL} for the published ImageNet-64 model, "
            "or train the small model with scripts/train_vdvae_small.py",
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Any = load_file(str(path), device="cpu")
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt or pickled-object files
            raise DataFormatError(f"{path}: not a plain torch state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DataFormatError(f"{path}: expected a mapping of parameter names to tensors")
    return {(k[len(_DDP_PREFIX) :] if k.startswith(_DDP_PREFIX) else k): v for k, v in sd.items()}


def check_state_dict(sd: Mapping[str, torch.Tensor], model: torch.nn.Module, source: str) -> None:
    """Raise :class:`DataFormatError` naming missing, unexpected and mis-shaped parameters."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    wrong = [f"{k}: expected {want[k]}, got {got[k]}" for k in sorted(set(want) & set(got)) if want[k] != got[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    if wrong:
        problems.append(f"{len(wrong)} with other shapes (e.g. {wrong[:3]})")
    if problems:
        raise DataFormatError(
            f"{source}: parameters do not match the VDVAE config: " + "; ".join(problems)
            + " (is the config, e.g. width/zdim/block strings, the one the weights were trained with?)"
        )


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
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    model = model.to(device)
    model.eval().requires_grad_(False)
    return model


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
