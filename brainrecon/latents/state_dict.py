"""Strict reading, checking and loading of model state dicts, shared by the weight loaders.

The loaders of VDVAE, BigBiGAN and IC-GAN all follow one recipe, kept here so that the
safety and strictness rules are written once:

1. :func:`read_state_dict`: ``.safetensors`` or ``torch.load(weights_only=True)``, never
   plain unpickling, because weight files come from the internet and a pickle can run
   code; a missing file is a :class:`~brainrecon.errors.MissingWeightsError` that says
   where to get it, anything but a flat mapping of names to tensors a
   :class:`~brainrecon.errors.DataFormatError`.
2. :func:`check_state_dict`: every key of the model present with its shape and nothing
   else (minus declared exceptions), with every mismatch named. brainrecon never runs a
   model on partly loaded or random weights.
3. :func:`assign_state_dict`: the file's tensors become the parameters of a model built
   on the ``meta`` device, so a large model is never allocated twice.

The models the project trains itself are written by :func:`save_safetensors_with_config` and
read back by :func:`load_safetensors_with_config`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from brainrecon.errors import DataFormatError, MissingWeightsError

__all__ = [
    "StateDictMismatch",
    "assign_state_dict",
    "check_state_dict",
    "compare_state_dict",
    "read_state_dict",
    "load_safetensors_with_config",
    "save_safetensors_with_config",
]

Shape = tuple[int, ...]
ModelT = TypeVar("ModelT", bound=nn.Module)


def read_state_dict(
    path: str | os.PathLike,
    what: str,
    hint: str = "",
    *,
    strip_prefix: str | None = None,
    unwrap_key: str | None = None,
) -> dict[str, torch.Tensor]:
    """Load a flat mapping of names to tensors from ``.safetensors`` or a torch file.

    Parameters
    ----------
    path : path-like
        ``.safetensors``, or anything else as a ``torch.save`` archive.
    what : str
        What the file holds (e.g. ``"VDVAE"``), for the messages.
    hint : str
        Where to get the file, appended to the :class:`MissingWeightsError` message.
    strip_prefix : str, optional
        Removed from the start of every key that has it, e.g. ``"module."`` for files
        saved from a ``DistributedDataParallel`` wrapper.
    unwrap_key : str, optional
        If the file is a mapping holding a mapping under this key (a training checkpoint,
        ``{"state_dict": ..., "epoch": ...}``), that inner mapping is the state dict.

    Returns
    -------
    dict of str to torch.Tensor
        On the CPU, in the file's dtypes.

    Raises
    ------
    MissingWeightsError
        ``path`` is not a file; the message names it and ``hint``.
    DataFormatError
        The file is unreadable, holds pickled objects other than tensors and containers,
        or is not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(path, what, hint)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise DataFormatError(f"{path}: not a readable safetensors file ({exc})") from exc
    else:
        try:
            # weights_only=True: tensors and plain containers only; a pickled object is refused, not run.
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for corrupt files or pickled objects
            raise DataFormatError(f"{path}: not a plain torch state dict ({type(exc).__name__}: {exc})") from exc
    if unwrap_key is not None and isinstance(obj, Mapping) and isinstance(obj.get(unwrap_key), Mapping):
        obj = obj[unwrap_key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataFormatError(f"{path}: expected a mapping of parameter names to tensors ({what})")
    return {(k.removeprefix(strip_prefix) if strip_prefix else k): v for k, v in obj.items()}


@dataclass(frozen=True)
class StateDictMismatch:
    """How a state dict differs from a model's, key by key.

    Attributes
    ----------
    missing : tuple of (key, expected shape)
        Keys of the model absent from the file, in the model's order.
    unexpected : tuple of (key, shape in the file)
        Keys of the file the model does not have, in the file's order.
    other_shape : tuple of (key, expected shape, shape in the file)
        Keys of both with different shapes, in the model's order.
    """

    missing: tuple[tuple[str, Shape], ...] = ()
    unexpected: tuple[tuple[str, Shape], ...] = ()
    other_shape: tuple[tuple[str, Shape, Shape], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.other_shape)

    def describe(self, limit: int = 5) -> str:
        """The mismatches as text: counts, then up to ``limit`` keys of each kind with expected vs got."""
        problems = []
        if self.missing:
            named = ", ".join(f"{k} (expected {w})" for k, w in self.missing[:limit])
            problems.append(f"{len(self.missing)} missing: {named}")
        if self.unexpected:
            named = ", ".join(f"{k} (got {g})" for k, g in self.unexpected[:limit])
            problems.append(f"{len(self.unexpected)} unexpected: {named}")
        if self.other_shape:
            named = ", ".join(f"{k}: expected {w}, got {g}" for k, w, g in self.other_shape[:limit])
            problems.append(f"{len(self.other_shape)} with another shape: {named}")
        return "; ".join(problems)


def compare_state_dict(
    sd: Mapping[str, torch.Tensor],
    model: nn.Module,
    *,
    ignorable: Collection[str] = frozenset(),
    optional: Collection[str] = frozenset(),
) -> StateDictMismatch:
    """Compare the names and shapes of ``sd`` with those of ``model.state_dict()``.

    Parameters
    ----------
    sd : mapping
        The file's tensors.
    model : nn.Module
        The network the file must fit (may live on the meta device: only shapes are read).
    ignorable : collection of str
        Keys the file may hold although the model has none (e.g. training-only logs).
    optional : collection of str
        Keys of the model the file may lack (e.g. training-only counters).

    Returns
    -------
    StateDictMismatch
        False when the file fits.
    """
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    return StateDictMismatch(
        missing=tuple((k, s) for k, s in want.items() if k not in got and k not in optional),
        unexpected=tuple((k, s) for k, s in got.items() if k not in want and k not in ignorable),
        other_shape=tuple((k, s, got[k]) for k, s in want.items() if k in got and got[k] != s),
    )


def check_state_dict(
    sd: Mapping[str, torch.Tensor],
    model: nn.Module,
    source: str,
    what: str,
    *,
    hint: str = "",
    ignorable: Collection[str] = frozenset(),
    optional: Collection[str] = frozenset(),
) -> None:
    """Raise :class:`DataFormatError` naming every missing, unexpected or mis-shaped key.

    Parameters
    ----------
    sd, model, ignorable, optional
        As :func:`compare_state_dict`.
    source : str
        The file, named first in the message.
    what : str
        What the file should hold, e.g. ``"IC-GAN generator"``.
    hint : str
        What to check, appended in parentheses (the likely cause for this kind of model).
    """
    mismatch = compare_state_dict(sd, model, ignorable=ignorable, optional=optional)
    if mismatch:
        raise DataFormatError(
            f"{source}: does not fit the configured {what}: {mismatch.describe()}" + (f" ({hint})" if hint else "")
        )


def assign_state_dict(
    model: ModelT,
    sd: Mapping[str, torch.Tensor],
    device: str | torch.device = "cpu",
    *,
    optional: Collection[str] = frozenset(),
) -> ModelT:
    """Make ``sd``'s tensors the parameters and buffers of ``model``, then freeze it on ``device``.

    Meant for a model built under ``torch.device("meta")``: with ``assign=True`` the file's
    tensors replace the meta ones instead of being copied into allocated memory, so the
    weights exist once. Call :func:`check_state_dict` first; keys of ``sd`` the model does
    not have are skipped (those the check allowed), and a missing key not in ``optional``
    makes ``load_state_dict`` raise.

    Parameters
    ----------
    model : nn.Module
        Built on the meta device; its non-persistent buffers must already hold real values.
    sd : mapping
        Checked state dict.
    device : str or torch.device
        Where the model lives afterwards.
    optional : collection of str
        Keys the file may lack; they are set to zeros (only training-only counters are
        declared optional, for which any value serves).

    Returns
    -------
    nn.Module
        ``model``, float32, in evaluation mode, gradients off.
    """
    full = {}
    for k, ref in model.state_dict().items():
        if k in sd:
            v = sd[k]
            # Floating weights become float32 (files may be half precision); integer counters keep their dtype.
            full[k] = v.float() if v.is_floating_point() or ref.is_floating_point() else v
        elif k in optional:
            full[k] = torch.zeros(ref.shape, dtype=ref.dtype)
    model.load_state_dict(full, strict=True, assign=True)
    model = model.to(device)
    model.eval().requires_grad_(False)
    return model


def save_safetensors_with_config(model: nn.Module, path: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """Write ``model``'s state dict as ``.safetensors`` and ``config`` as ``.json`` beside it.

    Both go through a temporary file and a rename, the weights first, so a reader never sees a
    config without its weights. The weights file is made world-readable (safetensors writes
    owner-only files; bundled weights are meant to be shared).
    """
    from safetensors.torch import save_file

    from brainrecon.errors import ConfigError

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"weights path: expected a .safetensors file, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.chmod(0o644)
    cfg_tmp = path.with_suffix(".json.partial")
    cfg_tmp.write_text(json.dumps(dict(config), indent=2) + "\n")
    os.replace(tmp, path)
    os.replace(cfg_tmp, path.with_suffix(".json"))
    return path


def load_safetensors_with_config(
    path: str | os.PathLike,
    what: str,
    from_config: Callable[[dict[str, Any]], nn.Module],
    *,
    hint: str = "",
    device: str = "cpu",
) -> nn.Module:
    """Read weights written by :func:`save_safetensors_with_config` into the model their config describes.

    Parameters
    ----------
    path : path-like
        The ``.safetensors`` file (``bundled:<name>`` allowed); its config is the ``.json`` beside it.
    what : str
        What the file holds, for the messages (``"scene segmenter"``).
    from_config : callable
        Config mapping -> freshly built model (it may raise ``ConfigError`` for a bad config).
    hint : str
        How to obtain the weights, appended to :class:`MissingWeightsError` messages.

    Returns
    -------
    nn.Module
        In evaluation mode on ``device``, gradients off.

    Raises
    ------
    MissingWeightsError
        The weights or their config are absent (the message names the path).
    DataFormatError
        The config is not JSON or not a config of this model, the file is not safetensors, or its
        tensors do not match the model (every key, every shape: ``strict`` loading).
    """
    from safetensors.torch import load_file

    from brainrecon.paths import resolve_weights_path

    path = resolve_weights_path(path)
    if not path.is_file():
        raise MissingWeightsError(path, f"{what} weights", hint=hint)
    cfg_path = path.with_suffix(".json")
    if not cfg_path.is_file():
        raise MissingWeightsError(cfg_path, f"{what} architecture config (.json beside the weights)", hint=hint)
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{cfg_path}: not valid JSON ({exc})") from exc
    try:
        model = from_config(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataFormatError(f"{cfg_path}: not a {what} config ({type(exc).__name__}: {exc})") from exc
    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        raise DataFormatError(f"{path}: cannot read as safetensors ({type(exc).__name__}: {exc})") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise DataFormatError(f"{path}: tensors do not match the {what} of config {config} ({exc})") from exc
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval()
