"""Preprocessing of betas shared by every dataset loader (NSD, GOD, bring-your-own).

All functions are pure numpy, take 2-D arrays ``X`` of shape ``(n_samples, n_voxels)`` and
return float32 unless stated otherwise. Statistics are accumulated in float64 so that the
float32 outputs do not depend on the order or the chunking of the data.

Published conventions kept as named defaults:

* NSD stores betas as int16 percent signal change times :data:`NSD_BETA_SCALE` (300);
  Brain-Diffuser divides by 300 (:func:`scale_betas`).
* Brain-Diffuser z-scores every voxel with the mean and the standard deviation of the
  *training* rows only (``ddof=1``) and applies them to train and test alike
  (:func:`fit_zscore`, :func:`apply_zscore`, :func:`zscore_train_test`).
* MindEye1 z-scores each session on its own trials (:func:`zscore_by_group`); IC-GAN's
  GOD code z-scores each run with ``sklearn.preprocessing.scale`` (``ddof=0``).
* Repeats of an image are averaged in the order in which images first appear
  (:func:`average_repeats`).

Voxels whose value never changes over the rows used for the statistics cannot be
z-scored. :func:`check_voxels` finds them (and NaN voxels), counts them and warns; the
loaders drop constant voxels with a warning and refuse NaN (see :class:`VoxelReport`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from brainrecon.errors import ConfigError, DataFormatError, ShapeMismatchError

__all__ = [
    "NSD_BETA_SCALE",
    "ZScoreStats",
    "VoxelReport",
    "RunningMoments",
    "scale_betas",
    "fit_zscore",
    "apply_zscore",
    "zscore_train_test",
    "zscore_by_group",
    "average_repeats",
    "first_appearance_order",
    "add_rows_at",
    "check_voxels",
    "drop_voxels",
]

#: NSD int16 betas hold percent signal change multiplied by this factor.
NSD_BETA_SCALE = 300.0

# Rows are processed in blocks of this many when an array may be a large memory map, so
# that a float64 temporary never holds more than a block.
_ROW_BLOCK = 2048


def _as_2d(X: np.ndarray, name: str) -> np.ndarray:
    if X.ndim != 2:
        raise ShapeMismatchError(f"{name} dimensions", "(n_samples, n_voxels)", X.shape)
    return X


def scale_betas(raw: np.ndarray, scale: float = NSD_BETA_SCALE) -> np.ndarray:
    """Convert stored betas to percent signal change.

    Parameters
    ----------
    raw : ndarray
        Betas as stored (NSD: int16 = percent signal change x 300), any shape.
    scale : float, default 300
        The storage factor; NSD's is :data:`NSD_BETA_SCALE`.

    Returns
    -------
    ndarray of float32
        ``raw / scale`` as one IEEE float32 division (int16 values and 300 are exact in
        float32, so the result is the correctly rounded quotient, with no double rounding
        through float64).
    """
    if not np.isfinite(scale) or scale == 0:
        raise ConfigError(f"beta scale must be a finite non-zero number, got {scale!r}")
    return np.asarray(raw).astype(np.float32) / np.float32(scale)


@dataclass
class ZScoreStats:
    """Per-voxel mean and standard deviation used to z-score.

    Attributes
    ----------
    mean, std : ndarray of float64, shape (n_voxels,)
    ddof : int
        Delta degrees of freedom used for ``std``.
    n_samples : int
        Number of rows the statistics were computed from.
    """

    mean: np.ndarray
    std: np.ndarray
    ddof: int = 1
    n_samples: int = 0

    @property
    def constant(self) -> np.ndarray:
        """Boolean mask of voxels with zero (or non-finite) standard deviation."""
        return ~(np.isfinite(self.std) & (self.std > 0))


class RunningMoments:
    """Per-voxel mean and variance accumulated block by block (Chan et al. merge, float64).

    Lets a loader compute training statistics while streaming sessions, without holding
    all rows at once.

    Examples
    --------
    >>> rm = RunningMoments(3)
    >>> rm.update(np.ones((2, 3))); rm.update(np.zeros((2, 3)))
    >>> rm.stats(ddof=1).mean
    array([0.5, 0.5, 0.5])
    """

    def __init__(self, n_voxels: int) -> None:
        self.n = 0
        self.mean = np.zeros(n_voxels, dtype=np.float64)
        self.m2 = np.zeros(n_voxels, dtype=np.float64)

    def update(self, X: np.ndarray) -> None:
        """Add the rows of ``X`` (shape ``(n_rows, n_voxels)``)."""
        X = _as_2d(np.asarray(X), "X")
        if X.shape[1] != self.mean.shape[0]:
            raise ShapeMismatchError("number of voxels", self.mean.shape[0], X.shape[1])
        for start in range(0, X.shape[0], _ROW_BLOCK):
            block = np.asarray(X[start : start + _ROW_BLOCK], dtype=np.float64)
            nb = block.shape[0]
            if nb == 0:
                continue
            mb = block.mean(axis=0)
            m2b = ((block - mb) ** 2).sum(axis=0)
            n = self.n + nb
            delta = mb - self.mean
            self.mean = self.mean + delta * (nb / n)
            self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
            self.n = n

    def stats(self, ddof: int = 1) -> ZScoreStats:
        """Mean and standard deviation of every row seen so far."""
        if self.n - ddof <= 0:
            raise ShapeMismatchError(
                "number of rows for z-scoring statistics", f"more than ddof={ddof}", self.n
            )
        std = np.sqrt(self.m2 / (self.n - ddof))
        return ZScoreStats(self.mean.copy(), std, ddof=ddof, n_samples=self.n)


def fit_zscore(X: np.ndarray, *, ddof: int = 1) -> ZScoreStats:
    """Per-voxel mean and standard deviation of ``X`` (float64, block-wise for memory maps).

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_voxels)
        Training rows only.
    ddof : int, default 1
        1 as Brain-Diffuser (``np.std(..., ddof=1)``); 0 as ``sklearn.preprocessing.scale``.
    """
    X = _as_2d(X if isinstance(X, np.ndarray) else np.asarray(X), "X")
    rm = RunningMoments(X.shape[1])
    rm.update(X)
    return rm.stats(ddof=ddof)


def apply_zscore(X: np.ndarray, stats: ZScoreStats, *, out: np.ndarray | None = None) -> np.ndarray:
    """``(X - mean) / std`` per voxel, as float32.

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_voxels)
    stats : ZScoreStats
        Usually fitted on training rows. Voxels with zero standard deviation raise: drop
        them first (:func:`check_voxels`, :func:`drop_voxels`), never divide by zero silently.
    out : ndarray of float32, optional
        Where to write (may be ``X`` itself, or a writable memory map), block by block.

    Returns
    -------
    ndarray of float32
    """
    X = _as_2d(X, "X")
    if X.shape[1] != stats.mean.shape[0]:
        raise ShapeMismatchError(
            "number of voxels of X vs z-scoring statistics", stats.mean.shape[0], X.shape[1]
        )
    bad = stats.constant
    if bad.any():
        raise DataFormatError(
            f"{int(bad.sum())} voxel(s) have zero standard deviation in the statistics "
            "(constant voxels); drop them before z-scoring (brainrecon.preprocessing.drop_voxels)"
        )
    if out is None:
        out = np.empty(X.shape, dtype=np.float32)
    elif out.shape != X.shape:
        raise ShapeMismatchError("shape of out", X.shape, out.shape)
    for start in range(0, X.shape[0], _ROW_BLOCK):
        sl = slice(start, start + _ROW_BLOCK)
        out[sl] = ((np.asarray(X[sl], dtype=np.float64) - stats.mean) / stats.std).astype(np.float32)
    return out


def zscore_train_test(
    X_train: np.ndarray, X_test: np.ndarray, *, ddof: int = 1
) -> tuple[np.ndarray, np.ndarray, ZScoreStats]:
    """Z-score train and test with statistics of the training rows only (Brain-Diffuser).

    Returns
    -------
    X_train_z, X_test_z : ndarray of float32
    stats : ZScoreStats
        The training statistics (keep them to z-score new data the same way).
    """
    stats = fit_zscore(X_train, ddof=ddof)
    return apply_zscore(X_train, stats), apply_zscore(X_test, stats), stats


def zscore_by_group(X: np.ndarray, groups: np.ndarray, *, ddof: int = 1) -> np.ndarray:
    """Z-score each group of rows (a session, a run) with its own per-voxel statistics.

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_voxels)
    groups : ndarray, shape (n_samples,)
        Group label per row (session number, run number).
    ddof : int, default 1
        Use 0 to match ``sklearn.preprocessing.scale`` (IC-GAN's GOD per-run z-scoring).

    Returns
    -------
    ndarray of float32
        Raises :class:`~brainrecon.errors.DataFormatError` when a voxel is constant within
        a group (cannot be z-scored there); drop such voxels first.
    """
    X = _as_2d(np.asarray(X), "X")
    groups = np.asarray(groups)
    if groups.shape != (X.shape[0],):
        raise ShapeMismatchError("groups length", (X.shape[0],), groups.shape)
    out = np.empty(X.shape, dtype=np.float32)
    for g in np.unique(groups):
        rows = groups == g
        stats = fit_zscore(X[rows], ddof=ddof)
        if stats.constant.any():
            raise DataFormatError(
                f"{int(stats.constant.sum())} voxel(s) are constant within group {g!r} "
                f"({int(rows.sum())} rows); they cannot be z-scored per group"
            )
        out[rows] = apply_zscore(X[rows], stats)
    return out


def first_appearance_order(ids: np.ndarray) -> np.ndarray:
    """Unique values of ``ids`` in the order of their first occurrence (not sorted)."""
    ids = np.asarray(ids)
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)]


def add_rows_at(acc: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """``acc[rows[n]] += values[n]`` for every ``n``, repeated rows included (in place).

    Equivalent to ``np.add.at(acc, rows, values)`` but vectorised: the additions are done in
    rounds, each round taking at most one occurrence of every row, so that plain fancy-index
    ``+=`` is correct. (``np.add.at`` on 2-D blocks is about 100x slower.)
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_rows)) + 1]
    lengths = np.diff(np.r_[starts, sorted_rows.size])
    rank = np.arange(sorted_rows.size) - np.repeat(starts, lengths)  # occurrence number
    for k in range(int(lengths.max())):
        sel = order[rank == k]
        acc[rows[sel]] += values[sel]


def average_repeats(
    X: np.ndarray, ids: np.ndarray, *, order: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average the rows of ``X`` that share an image id.

    Parameters
    ----------
    X : ndarray, shape (n_trials, n_voxels)
    ids : ndarray, shape (n_trials,)
        Image id per row.
    order : ndarray, optional
        Order of the output rows; default: first appearance in ``ids`` (Brain-Diffuser).
        Must hold every id of ``ids`` exactly once.

    Returns
    -------
    X_avg : ndarray of float32, shape (n_images, n_voxels)
        Mean computed in float64.
    unique_ids : ndarray, shape (n_images,)
    counts : ndarray of int64, shape (n_images,)
        Number of repeats averaged per image.
    """
    X = _as_2d(np.asarray(X), "X")
    ids = np.asarray(ids)
    if ids.shape != (X.shape[0],):
        raise ShapeMismatchError("ids length (one image id per row of X)", (X.shape[0],), ids.shape)
    unique_ids = first_appearance_order(ids) if order is None else np.asarray(order)
    pos = {v: i for i, v in enumerate(unique_ids.tolist())}
    if len(pos) != len(unique_ids):
        raise ConfigError("order holds duplicate ids")
    try:
        row_to_img = np.fromiter((pos[v] for v in ids.tolist()), dtype=np.int64, count=len(ids))
    except KeyError as exc:
        raise ConfigError(f"id {exc.args[0]!r} of ids is missing from order") from None
    counts = np.bincount(row_to_img, minlength=len(unique_ids)).astype(np.int64)
    if (counts == 0).any():
        raise ConfigError(f"{int((counts == 0).sum())} id(s) of order never occur in ids")
    sums = np.zeros((len(unique_ids), X.shape[1]), dtype=np.float64)
    add_rows_at(sums, row_to_img, X.astype(np.float64, copy=False))
    return (sums / counts[:, None]).astype(np.float32), unique_ids, counts


@dataclass
class VoxelReport:
    """What :func:`check_voxels` found.

    Attributes
    ----------
    n_voxels : int
        Voxels checked.
    nan : ndarray of bool, shape (n_voxels,)
        Voxels holding at least one NaN or infinite value.
    constant : ndarray of bool, shape (n_voxels,)
        Finite voxels whose value is the same in every row (zero variance).
    """

    n_voxels: int
    nan: np.ndarray
    constant: np.ndarray
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_nan(self) -> int:
        return int(self.nan.sum())

    @property
    def n_constant(self) -> int:
        return int(self.constant.sum())

    @property
    def keep(self) -> np.ndarray:
        """Boolean mask of voxels that are finite and vary."""
        return ~(self.nan | self.constant)

    def as_dict(self) -> dict:
        """JSON-friendly counts (for ``info`` dictionaries and manifests)."""
        return {"n_voxels_checked": self.n_voxels, "n_nan_voxels": self.n_nan,
                "n_constant_voxels": self.n_constant}


def check_voxels(
    X: np.ndarray,
    *,
    source: str = "betas",
    nan: str = "error",
    constant: str = "warn",
) -> VoxelReport:
    """Find NaN/infinite and constant voxels, count them, and warn or raise.

    Parameters
    ----------
    X : ndarray, shape (n_samples, n_voxels)
        The rows the statistics will be computed from (usually the training rows).
    source : str
        Named in messages (file or split), so the user knows where to look.
    nan : {"error", "warn", "ignore"}, default "error"
        NaN voxels raise :class:`~brainrecon.errors.DataFormatError` by default: a NaN in
        betas means a broken file or a voxel outside the brain, and guessing a value would
        bias every later stage. "warn" reports them (the caller then drops them).
    constant : {"warn", "error", "ignore"}, default "warn"
        Constant voxels cannot be z-scored; the default warns with the count (the caller
        drops them with :func:`drop_voxels`). Never silent unless asked with "ignore".

    Returns
    -------
    VoxelReport
    """
    for name, val in (("nan", nan), ("constant", constant)):
        if val not in ("error", "warn", "ignore"):
            raise ConfigError(f"{name} must be 'error', 'warn' or 'ignore', got {val!r}")
    X = _as_2d(X, "X")
    n_vox = X.shape[1]
    nan_mask = np.zeros(n_vox, dtype=bool)
    vmin = np.full(n_vox, np.inf)
    vmax = np.full(n_vox, -np.inf)
    for start in range(0, X.shape[0], _ROW_BLOCK):
        block = np.asarray(X[start : start + _ROW_BLOCK])
        nan_mask |= ~np.isfinite(block).all(axis=0)
        with np.errstate(invalid="ignore"):
            vmin = np.fmin(vmin, block.min(axis=0))
            vmax = np.fmax(vmax, block.max(axis=0))
    const_mask = (vmin == vmax) & ~nan_mask
    if X.shape[0] <= 1:
        const_mask[:] = ~nan_mask  # one row has no variance anywhere
    report = VoxelReport(n_vox, nan_mask, const_mask, source=source)
    if report.n_nan:
        msg = (f"{source}: {report.n_nan} of {n_vox} voxel(s) hold NaN or infinite values "
               f"(first voxel indices: {np.flatnonzero(nan_mask)[:5].tolist()})")
        if nan == "error":
            raise DataFormatError(msg + "; expected finite betas")
        if nan == "warn":
            warnings.warn(msg + "; they will be dropped", RuntimeWarning, stacklevel=2)
    if report.n_constant:
        msg = (f"{source}: {report.n_constant} of {n_vox} voxel(s) are constant over "
               f"{X.shape[0]} row(s) and cannot be z-scored")
        if constant == "error":
            raise DataFormatError(msg)
        if constant == "warn":
            warnings.warn(msg + "; they will be dropped", RuntimeWarning, stacklevel=2)
    return report


def drop_voxels(X: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Columns of ``X`` where ``keep`` is True (a copy; block-wise for memory maps)."""
    X = _as_2d(X, "X")
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (X.shape[1],):
        raise ShapeMismatchError("keep mask length", (X.shape[1],), keep.shape)
    out = np.empty((X.shape[0], int(keep.sum())), dtype=X.dtype)
    for start in range(0, X.shape[0], _ROW_BLOCK):
        out[start : start + _ROW_BLOCK] = np.asarray(X[start : start + _ROW_BLOCK])[:, keep]
    return out
