"""The stage contract, the artifact store and the runner.

A *stage* turns upstream artifacts into a new artifact: a folder of ``.npy``,
``.json``, ``.png`` (never pickle) plus a ``manifest.json``. The folder lives at::

    {artifacts}/{scope}/{stage}/{key}/

where ``key`` is a short hash of the stage name, its version, its *resolved
parameters without paths* and the keys of its upstream artifacts. Moving the
data does not invalidate a cache; changing a parameter does, and so does any
change upstream, because upstream keys are part of the hash.

Atomic commit
-------------
A stage writes into ``{key}.tmp/``. When it returns, the runner writes
``manifest.json`` into that folder *last* and renames the folder to ``{key}``.
A folder with a manifest is complete and is skipped on the next run; a folder
without one is never read (:meth:`ArtifactStore.open` refuses it). A ``.tmp``
left by a killed run is removed before the stage runs again, unless the stage
is *resumable*, in which case it keeps the items it committed one by one
(:meth:`RunContext.save_array` writes each file atomically) and skips them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from brainrecon.errors import StageError

log = logging.getLogger("brainrecon")

MANIFEST = "manifest.json"
_TMP_SUFFIX = ".tmp"
_OLD_SUFFIX = ".old"
KEY_LENGTH = 12

# Parameter names that are locations or execution details, not scientific
# choices: they are recorded in the manifest but kept out of the cache key, so
# moving data or switching device does not invalidate results.
_UNHASHED_EXACT = {"device", "progress", "num_workers", "root", "path", "dir", "cache_dir"}
_UNHASHED_SUFFIXES = ("_path", "_dir", "_root", "_file")


def _is_unhashed(name: str) -> bool:
    return name in _UNHASHED_EXACT or name.endswith(_UNHASHED_SUFFIXES)


def hashable_params(params: Any) -> Any:
    """Return ``params`` with every path-like or execution-only entry removed, recursively.

    Keys named ``device``, ``progress``, ``num_workers``, ``root``, ``path``,
    ``dir``, ``cache_dir`` or ending in ``_path``, ``_dir``, ``_root``, ``_file``
    are dropped.
    """
    if isinstance(params, Mapping):
        return {str(k): hashable_params(v) for k, v in params.items() if not _is_unhashed(str(k))}
    if isinstance(params, (list, tuple)):
        return [hashable_params(v) for v in params]
    return params


def _canonical(obj: Any) -> Any:
    """Turn ``obj`` into plain JSON types with a stable representation."""
    if isinstance(obj, Mapping):
        return {str(k): _canonical(obj[k]) for k in sorted(obj, key=str)}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        # repr keeps every bit of a float; non-finite values have no JSON form.
        return f if math.isfinite(f) else repr(f)
    if isinstance(obj, np.ndarray):
        return _canonical(obj.tolist())
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    raise TypeError(f"stage parameter of type {type(obj).__name__} cannot be hashed: {obj!r}")


def compute_key(stage: str, version: int, params: Mapping[str, Any], upstream: Mapping[str, str]) -> str:
    """Cache key of a stage run: a short SHA-256 of its identity and inputs."""
    payload = {
        "stage": stage,
        "version": int(version),
        "params": _canonical(hashable_params(params)),
        "upstream": _canonical(dict(upstream)),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:KEY_LENGTH]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default, allow_nan=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_array_atomic(path: Path, array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` at ``path`` through a temporary file and a rename."""
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------- artifacts


class Artifact:
    """A complete stage output: a folder with a manifest.

    Only :class:`ArtifactStore` creates these, and only for folders that hold a
    manifest, so reading through an ``Artifact`` never sees half-written output.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest

    @property
    def key(self) -> str:
        return str(self.manifest["key"])

    @property
    def stage(self) -> str:
        return str(self.manifest["stage"])

    def file(self, name: str) -> Path:
        """Path of a file inside the artifact; raises if it does not exist."""
        p = self.path / name
        if not p.exists():
            raise StageError(f"artifact {self.stage}/{self.key} has no file {name!r} (folder {self.path})")
        return p

    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    def array(self, name: str, *, mmap: bool = True) -> np.ndarray:
        """Load ``name.npy`` (memory-mapped, read-only, by default)."""
        fname = name if name.endswith(".npy") else name + ".npy"
        return np.load(self.file(fname), mmap_mode="r" if mmap else None, allow_pickle=False)

    def json(self, name: str) -> Any:
        fname = name if name.endswith(".json") else name + ".json"
        with open(self.file(fname)) as f:
            return json.load(f)

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.manifest.get("summary") or {})

    def __repr__(self) -> str:
        return f"Artifact({self.stage}/{self.key} at {self.path})"


class ArtifactStore:
    """Folders of stage outputs under one root, addressed by (scope, stage, key)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def folder(self, scope: str, stage: str, key: str) -> Path:
        return self.root / scope / stage / key

    def is_complete(self, scope: str, stage: str, key: str) -> bool:
        return (self.folder(scope, stage, key) / MANIFEST).is_file()

    def open(self, scope: str, stage: str, key: str) -> Artifact:
        """Open a complete artifact; raise :class:`StageError` if it has no manifest."""
        folder = self.folder(scope, stage, key)
        mpath = folder / MANIFEST
        if not mpath.is_file():
            raise StageError(f"no complete artifact at {folder} (manifest.json missing): run the stage first")
        with open(mpath) as f:
            manifest = json.load(f)
        return Artifact(folder, manifest)

    def list(self, scope: str | None = None, stage: str | None = None) -> list[Artifact]:
        """Every complete artifact, optionally filtered."""
        pattern = f"{scope or '*'}/{stage or '*'}/*/{MANIFEST}"
        out = []
        for m in sorted(self.root.glob(pattern)):
            with open(m) as f:
                out.append(Artifact(m.parent, json.load(f)))
        return out

    @contextlib.contextmanager
    def lock(self, scope: str, stage: str, key: str) -> Iterator[None]:
        """Exclusive lock on one key, so parallel runs (multirun) never build it twice."""
        parent = self.root / scope / stage
        parent.mkdir(parents=True, exist_ok=True)
        with open(parent / f"{key}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- stages


@dataclass
class RunContext:
    """What a running stage may use besides its inputs.

    Attributes
    ----------
    out : Path
        The ``.tmp`` folder the stage writes into.
    resources : dict
        Unhashed run-time objects and settings (data roots, device, built
        latent spaces). They must not change results.
    progress : bool
        Whether long loops show progress bars.
    """

    out: Path
    resources: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def save_array(self, name: str, array: np.ndarray) -> Path:
        """Save ``name.npy`` atomically (safe for item-by-item resumable stages)."""
        fname = name if name.endswith(".npy") else name + ".npy"
        path = self.out / fname
        path.parent.mkdir(parents=True, exist_ok=True)
        save_array_atomic(path, array)
        return path

    def save_json(self, name: str, obj: Any) -> Path:
        fname = name if name.endswith(".json") else name + ".json"
        path = self.out / fname
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, obj)
        return path


class Stage(ABC):
    """One step of a pipeline.

    Subclasses set ``name`` and ``version`` and implement :meth:`run`. Bump
    ``version`` whenever a change of code changes the stage's output: it is part
    of the cache key.

    Parameters
    ----------
    params : Mapping
        Scientific parameters. Hashed into the key, except path-like and
        execution-only entries (see :func:`hashable_params`).
    upstream : Mapping[str, Stage]
        Stages whose artifacts this one reads, by the name :meth:`run` sees them under.
    scope : str
        Folder grouping artifacts (a subject such as ``"subj01"``, or
        ``"shared"`` for stimulus features that subjects share).
    resources : Mapping
        Unhashed run-time objects (e.g. a data root, a device).
    label : str, optional
        Display name (default: the stage name).
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    #: Resumable stages keep their ``.tmp`` folder after a crash and skip finished items.
    resumable: ClassVar[bool] = False

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        upstream: Mapping[str, Stage] | None = None,
        *,
        scope: str = "default",
        resources: Mapping[str, Any] | None = None,
        label: str | None = None,
    ) -> None:
        self.params = dict(params or {})
        self.upstream = dict(upstream or {})
        self.scope = scope
        self.resources = dict(resources or {})
        #: Display name in logs and run summaries (e.g. ``extract/vdvae``); never hashed.
        self.label = label or self.name

    def fingerprint(self) -> dict[str, Any]:
        """Identity of code or files the stage depends on beyond ``params`` (hashed into the key).

        Override to tie the cache to, e.g., a simulator's format version or a
        weights file's digest. Empty by default.
        """
        return {}

    def key(self) -> str:
        """Cache key (recursively includes upstream keys)."""
        params = dict(self.params)
        fp = self.fingerprint()
        if fp:
            params["__fingerprint__"] = fp
        return compute_key(self.name, self.version, params, {k: s.key() for k, s in self.upstream.items()})

    @abstractmethod
    def run(self, inputs: Mapping[str, Artifact], ctx: RunContext) -> Mapping[str, Any] | None:
        """Compute the artifact into ``ctx.out``; return a JSON-able summary for the manifest."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scope={self.scope!r}, key={self.key()})"


# --------------------------------------------------------------------------- provenance


_VERSIONED_PACKAGES = ("numpy", "scipy", "scikit-learn", "torch", "torchvision", "h5py", "nibabel", "himalaya")


def package_versions() -> dict[str, str | None]:
    """Versions of brainrecon and the libraries whose numerics shape the results."""
    from importlib import metadata

    import brainrecon

    out: dict[str, str | None] = {"brainrecon": brainrecon.__version__, "python": sys.version.split()[0]}
    for name in _VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> dict[str, Any] | None:
    """The source checkout's commit and whether it has uncommitted changes, if run from one."""
    from brainrecon.paths import repo_root

    root = repo_root()
    if root is None or not (root / ".git").exists():
        return None
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha or None, "dirty": bool(dirty)}


# --------------------------------------------------------------------------- runner


@dataclass
class Execution:
    """Record of one stage that actually ran (not skipped)."""

    stage: str
    scope: str
    key: str
    seconds: float
    label: str = ""


class Runner:
    """Runs stages and their upstream stages, skipping complete ones.

    Parameters
    ----------
    store : ArtifactStore
        Where artifacts live.
    force : sequence of str
        Stage names to rerun even when complete. Their descendants rerun too,
        since a rerun may change what they read. ``["*"]`` reruns everything.
    progress : bool
        Show progress bars inside stages.
    """

    def __init__(self, store: ArtifactStore, *, force: Sequence[str] = (), progress: bool = True) -> None:
        self.store = store
        self.force = set(force)
        self.progress = progress
        self.executions: list[Execution] = []
        self._done: dict[tuple[str, str, str], Artifact] = {}
        self._rerun: set[tuple[str, str, str]] = set()  # forced in this run: descendants follow
        self._git = git_revision()

    def _forced(self, stage: Stage) -> bool:
        return "*" in self.force or stage.name in self.force

    def run(self, stage: Stage) -> Artifact:
        """Make sure ``stage``'s artifact exists and return it."""
        inputs = {name: self.run(up) for name, up in stage.upstream.items()}
        key = stage.key()
        ident = (stage.scope, stage.name, key)
        if ident in self._done:
            return self._done[ident]
        upstream_rerun = any((a.manifest["scope"], a.stage, a.key) in self._rerun for a in inputs.values())
        forced = self._forced(stage) or upstream_rerun
        with self.store.lock(*ident):
            if self.store.is_complete(*ident) and not forced:
                log.info("skip %s/%s/%s (complete)", *ident)
                art = self.store.open(*ident)
            else:
                art = self._execute(stage, key, inputs, forced=forced)
                if forced:
                    self._rerun.add(ident)
        self._done[ident] = art
        return art

    def _execute(self, stage: Stage, key: str, inputs: Mapping[str, Artifact], *, forced: bool) -> Artifact:
        final = self.store.folder(stage.scope, stage.name, key)
        tmp = final.with_name(key + _TMP_SUFFIX)
        old = final.with_name(key + _OLD_SUFFIX)
        if old.exists():  # a crash between the two renames of a forced rerun
            shutil.rmtree(old)
        if tmp.exists() and not (stage.resumable and not forced):
            log.info("removing incomplete output %s left by an interrupted run", tmp)
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        log.info("run  %s/%s/%s (%s)", stage.scope, stage.name, key, stage.label)
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        ctx = RunContext(out=tmp, resources=stage.resources, progress=self.progress)
        summary = stage.run(inputs, ctx) or {}
        seconds = time.perf_counter() - t0
        manifest = {
            "stage": stage.name,
            "version": stage.version,
            "key": key,
            "scope": stage.scope,
            "params": _canonical(stage.params),
            "hashed_params": _canonical(hashable_params(stage.params)),
            "inputs": {name: {"stage": a.stage, "key": a.key} for name, a in inputs.items()},
            "summary": summary,
            "versions": package_versions(),
            "git": self._git,
            "timing": {"started": started.isoformat(), "seconds": round(seconds, 3)},
            "files": sorted(
                str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file() and not p.name.endswith(".partial")
            ),
        }
        for p in tmp.rglob("*.partial"):  # leftovers of an item interrupted before a resume
            p.unlink()
        # The manifest is written last: its presence is what marks the folder complete.
        write_json_atomic(tmp / MANIFEST, manifest)
        if final.exists():  # forced rerun: swap in the new folder, then drop the old one
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        self.executions.append(Execution(stage.name, stage.scope, key, seconds, stage.label))
        return self.store.open(stage.scope, stage.name, key)
