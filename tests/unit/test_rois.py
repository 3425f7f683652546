"""Tests of brainrecon.data.rois on tiny NIfTI volumes written here."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from brainrecon.data.rois import (
    NSD_ROI_LABELS,
    apply_mask,
    labels_at,
    mask_to_ijk,
    masks_from_labels,
    read_roi_volume,
    roi_mask,
    validate_mask,
)
from brainrecon.errors import DataFormatError, MissingDataError, ShapeMismatchError

AFF = np.diag([1.8, 1.8, 1.8, 1.0])


def _write(path, arr, affine=AFF):
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def test_read_roi_volume_and_checks(tmp_path):
    vol = -np.ones((4, 3, 2), dtype=np.int16)
    vol[1, 1, 0] = 1
    vol[2, 0, 1] = 1
    vol[0, 2, 1] = 0
    p = _write(tmp_path / "nsdgeneral.nii.gz", vol)
    labels, aff = read_roi_volume(p, expected_shape=(4, 3, 2), expected_affine=AFF)
    np.testing.assert_array_equal(labels, vol)
    np.testing.assert_allclose(aff, AFF)
    with pytest.raises(ShapeMismatchError, match="nsdgeneral.nii.gz"):
        read_roi_volume(p, expected_shape=(4, 3, 3))
    with pytest.raises(ShapeMismatchError, match="affine"):
        read_roi_volume(p, expected_affine=np.diag([2.0, 2, 2, 1]))
    with pytest.raises(MissingDataError, match="missing.nii.gz"):
        read_roi_volume(tmp_path / "missing.nii.gz")


def test_corrupt_and_truncated_roi(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti at all" * 10))
    with pytest.raises(DataFormatError, match="bad.nii.gz"):
        read_roi_volume(bad)
    good = _write(tmp_path / "good.nii.gz", np.ones((20, 20, 20), np.int16))
    data = good.read_bytes()
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="trunc.nii.gz"):
        read_roi_volume(trunc)
    frac = _write(tmp_path / "frac.nii.gz", np.full((2, 2, 2), 0.5, np.float32))
    with pytest.raises(DataFormatError, match="integer"):
        read_roi_volume(frac)


def test_roi_mask_and_order():
    vol = np.zeros((3, 2, 2), dtype=np.int32)
    vol[2, 0, 0] = 1  # k=0, j=0, i=2
    vol[0, 1, 0] = 3  # k=0, j=1, i=0
    vol[1, 0, 1] = 2  # k=1, j=0, i=1
    m = roi_mask(vol)
    ijk = mask_to_ijk(m)
    # Brain-Diffuser order (beta[mask > 0] on the (X, Y, Z) NIfTI array): i slowest, then j, k
    np.testing.assert_array_equal(ijk, [[0, 1, 0], [1, 0, 1], [2, 0, 0]])
    # same as boolean indexing of an (X, Y, Z, T) array
    xyz = np.arange(vol.size).reshape(vol.shape)
    np.testing.assert_array_equal(xyz[m], xyz[ijk[:, 0], ijk[:, 1], ijk[:, 2]])
    np.testing.assert_array_equal(labels_at(vol, ijk), [3, 2, 1])
    np.testing.assert_array_equal(roi_mask(vol, [2, 3]).sum(), 2)
    with pytest.raises(DataFormatError, match="empty ROI"):
        roi_mask(np.zeros((2, 2, 2)) - 1, source="nsdgeneral.nii.gz")
    with pytest.raises(DataFormatError, match="empty ROI"):
        roi_mask(vol, [7])


def test_validate_and_apply_mask():
    X = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(apply_mask(X, np.array([1, 0, 1, 0])), X[:, [0, 2]])
    with pytest.raises(ShapeMismatchError):
        apply_mask(X, np.array([1, 0, 1]))
    with pytest.raises(DataFormatError, match="empty"):
        validate_mask(np.zeros(4), source="roi_V1")
    with pytest.raises(DataFormatError, match="boolean"):
        validate_mask(np.array([0, 2, 1]))
    masks = masks_from_labels(np.array([1, 2, 7, 0]), NSD_ROI_LABELS["prf-visualrois"])
    assert masks["V1v"].tolist() == [True, False, False, False]
    assert masks["hV4"].tolist() == [False, False, True, False]
    assert masks["V3d"].sum() == 0
