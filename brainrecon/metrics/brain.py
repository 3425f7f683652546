"""Brain-space evaluation: do reconstructions evoke the measured responses?

As MindEye2's "brain correlation", but with the *true* encoding model where
the data are simulated: each image is passed through the encoding model, the
predicted voxel pattern is z-scored per voxel with the statistics of the
predictions for the training stimuli (the measured betas are z-scored with the
training statistics too), and correlated across the voxels of an ROI with the
measured (repeat-averaged) test pattern of the image it reconstructs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from brainrecon.errors import ShapeMismatchError

#: ROIs of the NSD label files, as (file, labels); labels None = any label > 0.
NSD_BRAIN_ROIS: dict[str, tuple[str, tuple[int, ...] | None]] = {
    "nsdgeneral": ("nsdgeneral", None),
    "V1": ("prf-visualrois", (1, 2)),
    "V2": ("prf-visualrois", (3, 4)),
    "V3": ("prf-visualrois", (5, 6)),
    "hV4": ("prf-visualrois", (7,)),
    "faces": ("floc-faces", None),
    "places": ("floc-places", None),
    "bodies": ("floc-bodies", None),
    "words": ("floc-words", None),
}


def roi_masks_from_labels(labels: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Boolean voxel masks of :data:`NSD_BRAIN_ROIS` from per-voxel label arrays (absent files skipped)."""
    out = {}
    for name, (file, values) in NSD_BRAIN_ROIS.items():
        if file not in labels:
            continue
        lab = np.asarray(labels[file])
        mask = lab > 0 if values is None else np.isin(lab, values)
        if mask.any():
            out[name] = mask
    return out


def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    if a.shape != b.shape:
        raise ShapeMismatchError("predicted vs measured responses", a.shape, b.shape)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(1) / den, np.nan)


def brain_correlation(
    predicted: np.ndarray, measured: np.ndarray, rois: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Per-image correlation across each ROI's voxels of predicted and measured patterns.

    Parameters
    ----------
    predicted, measured : ndarray (n_images, n_voxels)
        Both in the same (z-scored) voxel space.
    rois : mapping of name to boolean mask (n_voxels,)

    Returns
    -------
    dict of name to ndarray (n_images,)
    """
    if predicted.shape != measured.shape:
        raise ShapeMismatchError("predicted vs measured responses", measured.shape, predicted.shape)
    out = {}
    for name, mask in rois.items():
        if mask.shape != (predicted.shape[1],):
            raise ShapeMismatchError(f"ROI {name!r} mask", (predicted.shape[1],), mask.shape)
        out[name] = rowwise_pearson(predicted[:, mask], measured[:, mask])
    return out
