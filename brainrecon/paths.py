"""Where data, weights and artifacts live.

Resolution order for every root: explicit argument > environment variable > default.
Nothing else in brainrecon hard-codes a path.

=====================  ===========================  ==============================
root                   environment variable         default
=====================  ===========================  ==============================
data                   ``BRAINRECON_DATA``          ``./data``
weights                ``BRAINRECON_WEIGHTS``       ``./weights``
artifacts              ``BRAINRECON_ARTIFACTS``     ``./artifacts``
=====================  ===========================  ==============================

Weights that the project trains itself ship inside the package
(:func:`bundled_weights_dir`).
"""

from __future__ import annotations

import os
from pathlib import Path

_ENV = {
    # the same defaults as conf/paths/default.yaml, relative to the working directory
    "data": ("BRAINRECON_DATA", Path("data")),
    "weights": ("BRAINRECON_WEIGHTS", Path("weights")),
    "artifacts": ("BRAINRECON_ARTIFACTS", Path("artifacts")),
}


def _root(kind: str, explicit: str | os.PathLike | None) -> Path:
    if explicit is not None:
        return Path(explicit).expanduser()
    var, default = _ENV[kind]
    value = os.environ.get(var)
    return Path(value).expanduser() if value else default


def data_root(path: str | os.PathLike | None = None) -> Path:
    """Root folder of datasets (NSD, GOD, bring-your-own)."""
    return _root("data", path)


def weights_root(path: str | os.PathLike | None = None) -> Path:
    """Root folder of published checkpoints the user downloaded."""
    return _root("weights", path)


def artifacts_root(path: str | os.PathLike | None = None) -> Path:
    """Root folder of stage outputs."""
    return _root("artifacts", path)


def bundled_weights_dir() -> Path:
    """Folder of the small models trained by the project and shipped in the package."""
    return Path(__file__).resolve().parent / "weights"


def resolve_weights_path(path: str | os.PathLike) -> Path:
    """``"bundled:<name>"`` -> ``bundled_weights_dir() / <name>``; any other path is expanded as given."""
    p = os.fspath(path)
    if p.startswith("bundled:"):
        return bundled_weights_dir() / p.removeprefix("bundled:")
    return Path(p).expanduser()


def repo_root() -> Path | None:
    """The source checkout's root when running from one (has ``pyproject.toml``), else None."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").exists() else None


def shared_data_dir() -> Path | None:
    """``../shared/data`` beside the checkout (development and CI only), or None if absent.

    ``BRAINRECON_SHARED_DATA`` overrides the location.
    """
    env = os.environ.get("BRAINRECON_SHARED_DATA")
    if env:
        p = Path(env)
        return p if p.is_dir() else None
    root = repo_root()
    if root is None:
        return None
    p = root.parent / "shared" / "data"
    return p if p.is_dir() else None


def shared_dataset_file(relative: str | os.PathLike, explicit: str | os.PathLike | None = None) -> Path:
    """A file of the development data beside the checkout (``../shared/data/<relative>``).

    ``explicit`` wins when given. Raises :class:`~brainrecon.errors.MissingDataError`
    naming the file (and how to pass it) when neither exists.
    """
    from brainrecon.errors import MissingDataError

    if explicit is not None:
        path = Path(explicit).expanduser()
    else:
        root = shared_data_dir()
        path = (root / relative) if root is not None else Path("../shared/data") / relative
    if not path.is_file():
        raise MissingDataError(path, "development data file", "pass its path explicitly (--data PATH)")
    return path



def replace_directory(finished: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Put the complete folder ``finished`` at ``target``, replacing what was there.

    Training scripts write their weights into a temporary sibling folder and call this last, so
    that a killed run leaves either the previous weights or the new ones, never a mixture. The
    previous folder is moved aside to ``.<name>.old`` before the rename and deleted after it.
    """
    import shutil

    finished, target = Path(finished), Path(target)
    if not finished.is_dir():
        raise FileNotFoundError(f"replace_directory: {finished} is not a folder")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    finished.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target
