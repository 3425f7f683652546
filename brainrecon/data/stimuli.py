"""Stimulus images and captions stored as NSD stores them, read lazily by index.

* Images: an HDF5 file holding a dataset (NSD: ``imgBrick``) of uint8 ``(n_images, H, W, 3)``
  (NSD: 73,000 x 425 x 425 x 3, ~40 GB). :class:`StimulusBrick` opens it once and reads only
  the rows asked for, so memory scales with the request, never with the file.
* Captions: a ``.npy`` array of unicode strings ``(n_images, n_captions)`` (NSD's
  ``COCO_73k_annots_curated.npy``, 5 per image), empty strings meaning "no caption". It is
  opened memory-mapped with ``allow_pickle=False``; the object-dtype variant of that file that
  circulates on the web is refused with instructions to convert it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brainrecon.errors import ConfigError, DataFormatError, MissingDataError, ShapeMismatchError

__all__ = ["StimulusBrick", "read_image_rows", "read_caption_rows", "resize_images"]


def _as_index_array(ids, n_total: int, source: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1:
        raise ShapeMismatchError(f"{source}: stimulus ids dimensions", "1-D", arr.shape)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ConfigError(f"{source}: stimulus ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= n_total)
    if bad.any():
        raise ConfigError(
            f"{source}: stimulus ids out of range: expected 0-based ids in [0, {n_total - 1}], got "
            f"{arr[bad][:5].tolist()} ({int(bad.sum())} bad)"
        )
    return arr


class StimulusBrick:
    """Lazy reader of an HDF5 image brick, by 0-based image index.

    Parameters
    ----------
    path : path
        HDF5 file (NSD: ``nsd_stimuli.hdf5``).
    dataset : str, default "imgBrick"
        Dataset name inside the file.

    Examples
    --------
    >>> with StimulusBrick(path) as brick:          # doctest: +SKIP
    ...     imgs = brick.read([5, 2, 5], size=224)  # (3, 224, 224, 3) uint8
    """

    def __init__(self, path: str | Path, dataset: str = "imgBrick") -> None:
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise MissingDataError(self.path, "stimulus file (HDF5 image brick)")
        try:
            self._file = h5py.File(self.path, "r")
        except Exception as exc:  # h5py raises OSError for truncated or non-HDF5 files
            raise DataFormatError(
                f"{self.path}: cannot open as HDF5 ({type(exc).__name__}: {exc}); "
                "the file may be truncated or corrupt"
            ) from exc
        if dataset not in self._file:
            keys = list(self._file.keys())
            self._file.close()
            raise DataFormatError(f"{self.path}: expected a dataset {dataset!r}, found keys {keys}")
        self._ds = self._file[dataset]
        shape = self._ds.shape
        if len(shape) != 4 or shape[3] != 3 or self._ds.dtype != np.uint8:
            self._file.close()
            raise DataFormatError(
                f"{self.path}: dataset {dataset!r} must be uint8 (n_images, H, W, 3), "
                f"got {self._ds.dtype} {shape}"
            )
        self.shape: tuple[int, int, int, int] = tuple(int(s) for s in shape)  # type: ignore[assignment]

    def __len__(self) -> int:
        return self.shape[0]

    def __enter__(self) -> StimulusBrick:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the HDF5 file."""
        if getattr(self, "_file", None) is not None and self._file.id.valid:
            self._file.close()

    def read(self, ids, *, size: int | None = None, batch: int = 64) -> np.ndarray:
        """Images at 0-based ``ids`` (any order, repeats allowed), uint8 ``(n, H, W, 3)``.

        Parameters
        ----------
        ids : int or sequence of int
            0-based indices into the brick (NSD: the "73k" id minus one).
        size : int, optional
            Resize every image to ``size x size`` (bicubic, PIL) while reading, so that the
            full-resolution images of a large request are never all in memory.
        batch : int
            Most consecutive rows read per HDF5 request.
        """
        idx = _as_index_array(ids, len(self), str(self.path))
        h, w = (self.shape[1], self.shape[2]) if size is None else (int(size), int(size))
        out = np.empty((idx.size, h, w, 3), dtype=np.uint8)
        if idx.size == 0:
            return out
        # Read sorted unique rows as runs of consecutive indices (one slice each): h5py's
        # list indexing is ~50x slower than slices on chunked, compressed bricks. Each row
        # read is then copied to every output position that asked for it.
        uniq, inverse = np.unique(idx, return_inverse=True)
        run_starts = np.r_[0, np.flatnonzero(np.diff(uniq) != 1) + 1, uniq.size]
        for a, b in zip(run_starts[:-1], run_starts[1:]):
            for c in range(a, b, batch):
                d = min(c + batch, b)
                try:
                    block = self._ds[int(uniq[c]) : int(uniq[d - 1]) + 1]
                except Exception as exc:
                    raise DataFormatError(
                        f"{self.path}: failed reading images {int(uniq[c])}..{int(uniq[d - 1])} "
                        f"({type(exc).__name__}: {exc}); the file may be truncated or corrupt"
                    ) from exc
                if size is not None:
                    block = resize_images(block, size)
                for r, img in zip(range(c, d), block):
                    out[inverse == r] = img
        return out


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 ``(n, H, W, 3)`` images to ``(n, size, size, 3)`` with PIL bicubic."""
    from PIL import Image

    if size <= 0:
        raise ConfigError(f"size must be a positive integer, got {size}")
    if images.shape[1:3] == (size, size):
        return np.asarray(images, dtype=np.uint8)
    return np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images]
    ).astype(np.uint8)


def read_image_rows(
    path: str | Path, ids, *, size: int | None = None, dataset: str = "imgBrick"
) -> np.ndarray:
    """Open ``path``, read images at 0-based ``ids`` (see :meth:`StimulusBrick.read`), close."""
    with StimulusBrick(path, dataset) as brick:
        return brick.read(ids, size=size)


_CONVERT_HINT = (
    "this looks like the object-dtype captions file; brainrecon never unpickles. Convert it "
    "once in a trusted Python session: a = np.load(p, allow_pickle=True); "
    "np.save(p_new, np.array(a.tolist(), dtype=str)) (a fixed-width unicode array)"
)


def read_caption_rows(path: str | Path, ids) -> list[list[str]]:
    """Captions of the images at 0-based ``ids`` from a unicode ``.npy`` file.

    Returns
    -------
    list of list of str
        Per id, its non-empty captions (whitespace-only strings are dropped too), in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(path, "captions file (.npy of unicode strings)")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        msg = str(exc)
        if "allow_pickle" in msg or "Object arrays" in msg or "Python objects" in msg:
            raise DataFormatError(f"{path}: {_CONVERT_HINT}") from exc
        raise DataFormatError(f"{path}: cannot read as .npy ({exc})") from exc
    except Exception as exc:
        raise DataFormatError(
            f"{path}: cannot read as .npy ({type(exc).__name__}: {exc}); file truncated or corrupt?"
        ) from exc
    if arr.dtype.kind not in ("U", "S"):
        raise DataFormatError(
            f"{path}: expected a unicode string array (dtype '<U...'), got dtype {arr.dtype}"
        )
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DataFormatError(f"{path}: expected shape (n_images, n_captions), got {arr.shape}")
    idx = _as_index_array(ids, arr.shape[0], str(path))
    out: list[list[str]] = []
    for i in idx.tolist():
        row = arr[i]
        caps = [c.decode() if isinstance(c, bytes) else str(c) for c in row.tolist()]
        out.append([c for c in caps if c.strip()])
    return out

