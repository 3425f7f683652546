"""Regions of interest: reading label volumes, validating masks, and masking helpers.

Shared by the NSD, GOD and bring-your-own loaders.

Conventions
-----------
* A *label volume* is a 3-D integer array (NSD: ``-1`` outside the brain, ``0`` not in
  the ROI, ``>0`` a label); :data:`NSD_ROI_LABELS` holds NSD's label names.
* A *mask* is a boolean array, either 3-D (a volume) or 1-D (one flag per voxel column of
  a betas matrix ``X``).
* Voxels selected from a volume are ordered as NumPy's C order over the NIfTI array
  ``(X, Y, Z)``, i.e. ``np.nonzero(mask)``: ``i`` slowest, ``k`` fastest. That is the order of
  Brain-Diffuser's ``beta[mask > 0]`` on NSD's NIfTI betas (``prepare_nsddata.py``), so
  prepared matrices line up column for column with theirs. :func:`mask_to_ijk` returns
  ``(i, j, k)`` per voxel in that order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from brainrecon.errors import DataFormatError, MissingDataError, ShapeMismatchError

__all__ = [
    "NSD_ROI_LABELS",
    "read_roi_volume",
    "validate_mask",
    "roi_mask",
    "mask_to_ijk",
    "labels_at",
    "masks_from_labels",
    "apply_mask",
]

#: Label value -> name for NSD's ROI files (func1pt8mm ``roi/<name>.nii.gz``).
NSD_ROI_LABELS: dict[str, dict[int, str]] = {
    "nsdgeneral": {1: "nsdgeneral"},
    "prf-visualrois": {1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"},
    "prf-eccrois": {1: "ecc0pt5", 2: "ecc1", 3: "ecc2", 4: "ecc4", 5: "ecc4+"},
    "floc-faces": {1: "OFA", 2: "FFA-1", 3: "FFA-2", 4: "mTL-faces", 5: "aTL-faces"},
    "floc-places": {1: "OPA", 2: "PPA", 3: "RSC"},
    "floc-bodies": {1: "EBA", 2: "FBA-1", 3: "FBA-2", 4: "mTL-bodies"},
    "floc-words": {1: "OWFA", 2: "VWFA-1", 3: "VWFA-2", 4: "mfs-words", 5: "mTL-words"},
}


def read_roi_volume(
    path: str | Path,
    *,
    expected_shape: tuple[int, ...] | None = None,
    expected_affine: np.ndarray | None = None,
    atol: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3-D ROI label volume (NIfTI) and check it against the betas' grid.

    Parameters
    ----------
    path : path
        ``.nii`` or ``.nii.gz`` file.
    expected_shape : tuple of 3 ints, optional
        The betas' volume shape ``(X, Y, Z)``; a different shape raises
        :class:`~brainrecon.errors.ShapeMismatchError` naming the file.
    expected_affine : (4, 4) array, optional
        The betas' affine; a different one raises (the ROI would select the wrong voxels).
    atol : float
        Tolerance on the affine, in millimetres.

    Returns
    -------
    labels : ndarray of int32, shape (X, Y, Z)
    affine : ndarray of float64, shape (4, 4)
    """
    import nibabel as nib  # neuroimaging I/O only when a volume is read

    path = Path(path)
    if not path.is_file():
        raise MissingDataError(path, "ROI volume")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for truncated/corrupt files
        raise DataFormatError(
            f"{path}: cannot read ROI volume ({type(exc).__name__}: {exc}); expected a readable "
            "3-D NIfTI label volume (the file may be truncated or corrupt)"
        ) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ShapeMismatchError(f"{path}: ROI volume dimensions", "3-D (X, Y, Z)", data.shape)
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
            raise DataFormatError(
                f"{path}: ROI volume must hold integer labels (-1 outside brain, 0 outside ROI, "
                ">0 label); found non-integer values"
            )
    labels = data.astype(np.int32)
    if expected_shape is not None and tuple(labels.shape) != tuple(expected_shape):
        raise ShapeMismatchError(
            f"{path}: ROI volume shape vs betas volume shape", tuple(expected_shape), labels.shape,
            hint="the ROI must be in the same space and resolution as the betas (func1pt8mm)",
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    if expected_affine is not None and not np.allclose(affine, expected_affine, atol=atol):
        raise ShapeMismatchError(
            f"{path}: ROI affine vs betas affine", np.round(expected_affine, 3).tolist(),
            np.round(affine, 3).tolist(), hint="the ROI must be on the betas' voxel grid",
        )
    return labels, affine


def validate_mask(
    mask: np.ndarray, *, shape: tuple[int, ...] | None = None, source: str = "mask"
) -> np.ndarray:
    """Check that a mask is boolean-like, of the right shape, and not empty.

    Parameters
    ----------
    mask : array
        Boolean or 0/1 array (values other than 0/1 raise; use :func:`roi_mask` for labels).
    shape : tuple, optional
        Expected shape (a volume shape, or ``(n_voxels,)``).
    source : str
        Named in error messages (file name or parameter).

    Returns
    -------
    ndarray of bool
    """
    mask = np.asarray(mask)
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise ShapeMismatchError(f"{source}: mask shape", tuple(shape), mask.shape)
    if mask.dtype != bool:
        vals = np.unique(mask)
        if not np.isin(vals, (0, 1)).all():
            raise DataFormatError(
                f"{source}: a mask must be boolean or 0/1, found values {vals[:6].tolist()}"
            )
        mask = mask.astype(bool)
    if not mask.any():
        raise DataFormatError(f"{source}: the mask is empty (expected at least one selected voxel)")
    return mask


def roi_mask(
    labels: np.ndarray, values: Iterable[int] | None = None, *, source: str = "ROI"
) -> np.ndarray:
    """Boolean mask of voxels whose label is > 0 (or in ``values``); empty masks raise.

    Parameters
    ----------
    labels : ndarray of int
        Label volume or per-voxel labels.
    values : iterable of int, optional
        Keep only these labels (e.g. ``[1, 2]`` for V1 in ``prf-visualrois``).
    source : str
        Named in the error when nothing is selected.
    """
    labels = np.asarray(labels)
    mask = labels > 0 if values is None else np.isin(labels, list(values))
    if not mask.any():
        what = "label > 0" if values is None else f"labels {sorted(values)}"
        found = np.unique(labels)
        raise DataFormatError(
            f"{source}: empty ROI, no voxel has {what} (values present: {found[:8].tolist()})"
        )
    return mask


def mask_to_ijk(mask: np.ndarray) -> np.ndarray:
    """``(i, j, k)`` indices of the True voxels of a 3-D mask, in Brain-Diffuser order.

    The order is ``np.nonzero(mask)`` on the ``(X, Y, Z)`` array (``i`` slowest, ``k``
    fastest), the order of ``beta[mask > 0]`` on NSD's NIfTI betas in Brain-Diffuser.

    Returns
    -------
    ndarray of int64, shape (n_voxels, 3)
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ShapeMismatchError("mask dimensions", "3-D (X, Y, Z)", mask.shape)
    i, j, k = np.nonzero(mask)
    return np.stack([i, j, k], axis=1).astype(np.int64)


def labels_at(labels: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Label of each voxel ``ijk`` (shape ``(n, 3)``) in a 3-D label volume."""
    ijk = np.asarray(ijk)
    if ijk.ndim != 2 or ijk.shape[1] != 3:
        raise ShapeMismatchError("voxel coordinates", "(n_voxels, 3)", ijk.shape)
    if (ijk < 0).any() or (ijk >= np.asarray(labels.shape)).any():
        raise ShapeMismatchError("voxel coordinates range", f"within {labels.shape}", "out of range")
    return np.asarray(labels)[ijk[:, 0], ijk[:, 1], ijk[:, 2]]


def masks_from_labels(
    labels: np.ndarray, names: Mapping[int, str]
) -> dict[str, np.ndarray]:
    """One boolean per-voxel mask per named label (labels absent from the data give empty masks).

    Parameters
    ----------
    labels : ndarray of int, shape (n_voxels,)
        Per-voxel labels, e.g. ``PreparedNSD.roi_labels["prf-visualrois"]``.
    names : mapping int -> str
        E.g. ``NSD_ROI_LABELS["prf-visualrois"]``.
    """
    labels = np.asarray(labels)
    return {name: labels == value for value, name in names.items()}


def apply_mask(X: np.ndarray, mask: np.ndarray, *, source: str = "mask") -> np.ndarray:
    """Columns of a betas matrix ``X`` (n_samples, n_voxels) selected by a 1-D voxel mask."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise ShapeMismatchError("X dimensions", "(n_samples, n_voxels)", X.shape)
    mask = validate_mask(mask, shape=(X.shape[1],), source=source)
    return X[:, mask]
