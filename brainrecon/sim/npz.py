"""Byte-reproducible ``.npz`` writing.

``np.savez`` stamps every member with the current time, so two identical simulations would
give different bytes. This writer fixes the timestamp so that the same seed gives the same
files; the result is an ordinary ``.npz`` read by ``np.load(..., allow_pickle=False)``.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from brainrecon.errors import DataFormatError

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` uncompressed to ``path`` with fixed member timestamps (no pickled objects)."""
    path = Path(path)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in sorted(arrays):
            arr = np.asarray(arrays[name])
            if arr.dtype.hasobject:
                raise DataFormatError(f"{path}: array {name!r} has dtype object, which would need pickle")
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
