"""Turn a composed Hydra configuration into the plain objects the library takes.

Kept apart from the ``@hydra.main`` functions so that tests can compose every
experiment and instantiate it without running it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from brainrecon.errors import BrainreconError, ConfigError
from brainrecon.latents.base import LatentSpace


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """Resolve every interpolation and return plain dicts/lists (no Hydra node is hashed)."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return container


def build_spaces(cfg: DictConfig) -> dict[str, LatentSpace]:
    """Instantiate every ``latents.<name>`` (``_target_`` + keyword arguments).

    Raises
    ------
    ConfigError
        Naming the ``latents.<name>`` key whose arguments are wrong.
    """
    spaces: dict[str, LatentSpace] = {}
    for name, node in (cfg.get("latents") or {}).items():
        if "_target_" not in node:
            raise ConfigError(f"latents.{name}: missing _target_ (the class of the latent space)")
        try:
            space = instantiate(node)
        except InstantiationException as exc:
            # The library's own errors (missing weights, bad value) are already clear: surface them.
            cause = exc.__cause__
            if isinstance(cause, BrainreconError):
                raise cause from None
            raise ConfigError(f"latents.{name}: could not build {node['_target_']}: {cause or exc}") from None
        if not isinstance(space, LatentSpace):
            raise ConfigError(f"latents.{name}: {node['_target_']} does not implement the LatentSpace protocol")
        spaces[name] = space
    return spaces


def run_reporting_errors(execute: Callable[[DictConfig], Any], cfg: DictConfig) -> None:
    """Run ``execute(cfg)``; errors raised on purpose print as one short line and exit with status 2.

    The ``@hydra.main`` entry points share this so that a missing file, a wrong parameter or a
    mandatory value left unset reads the same everywhere; ``HYDRA_FULL_ERROR=1`` re-raises.
    """
    try:
        execute(cfg)
    except (BrainreconError, OmegaConfBaseException) as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if isinstance(exc, OmegaConfBaseException):  # e.g. a mandatory value (???) left unset
            key = getattr(exc, "full_key", None)
            msg = f"config key {key}: {exc.msg}" if key else str(exc).splitlines()[0]
        else:
            msg = str(exc)
        print(f"brainrecon: error: {msg}", file=sys.stderr)
        print("(set HYDRA_FULL_ERROR=1 for the full traceback)", file=sys.stderr)
        sys.exit(2)
