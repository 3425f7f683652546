"""Content fingerprints of data files, so caches follow the data, not its location.

Neither paths nor modification times enter a fingerprint: moving or copying a
dataset keeps every cache valid, while two datasets of equal shapes but
different values get different fingerprints.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def file_fingerprint(path: str | Path, n_samples: int = 16, block: int = 4096) -> str:
    """Size plus a hash of the whole file (small files) or of evenly spaced blocks (large ones)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= n_samples * block * 4:
            h.update(f.read())
        else:
            for i in range(n_samples):
                f.seek((size - block) * i // (n_samples - 1))
                h.update(f.read(block))
    return h.hexdigest()[:16]


def files_fingerprint(paths: Iterable[str | Path], base: str | Path | None = None) -> str:
    """One fingerprint of several files, named relative to ``base`` (or by file name)."""
    h = hashlib.sha256()
    for p in sorted(Path(q) for q in paths):
        name = str(p.relative_to(base)) if base is not None else p.name
        h.update(name.encode() + b"\0" + file_fingerprint(p).encode() + b"\n")
    return h.hexdigest()[:16]


def path_fingerprint(path: str | Path, ignore: tuple[str, ...] = ()) -> str:
    """Fingerprint of a file, or of every file below a folder; ``"missing"`` if absent.

    A missing path still gets a (constant) fingerprint so that the stage that
    reads it runs and raises its own, precise error. Files of a folder whose
    name matches a glob pattern in ``ignore`` are left out (e.g. a training
    record beside weights, which describes them but is never read to compute).
    """
    p = Path(path).expanduser()
    if p.is_file():
        return file_fingerprint(p)
    if p.is_dir():
        files = (q for q in p.rglob("*") if q.is_file() and not any(q.match(g) for g in ignore))
        return files_fingerprint(files, base=p)
    return "missing"
