"""Bring-your-own MATLAB files: variable names mapped by ``keys``, flattened column-major stimuli."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.io import savemat

from brainrecon.data.byo import load_byo
from brainrecon.errors import ConfigError, DataFormatError, ShapeMismatchError

KEYS = {"betas_train": "fmriTrn", "betas_test": "fmriTest", "stimuli_train": "stimTrn", "stimuli_test": "stimTest"}


def _write(path, rng):
    imgs = rng.integers(0, 256, (7, 4, 5), dtype=np.uint8)
    flat_f = np.stack([im.reshape(-1, order="F") for im in imgs])  # MATLAB's column-major layout
    savemat(path, {"fmriTrn": rng.normal(size=(5, 6)), "fmriTest": rng.normal(size=(2, 6)),
                   "stimTrn": flat_f[:5], "stimTest": flat_f[5:], "labelTrn": np.ones((5, 1))})
    return imgs


def test_mat_with_keys_and_column_major_stimuli(tmp_path):
    path = tmp_path / "exp.mat"
    imgs = _write(path, np.random.default_rng(0))
    d = load_byo(path, keys=KEYS, stimulus_shape=(4, 5), stimulus_order="F")
    assert d.X_train.shape == (5, 6) and d.X_test.shape == (2, 6)
    np.testing.assert_array_equal(d.stimuli_train[..., 0], imgs[:5])
    np.testing.assert_array_equal(d.stimuli_test[..., 1], imgs[5:])
    assert d.info["form"] == "mat" and d.info["stimuli_grayscale"]
    # row-major reading of column-major images gives other (transposed) images
    c = load_byo(path, keys=KEYS, stimulus_shape=(4, 5), stimulus_order="C")
    assert not np.array_equal(c.stimuli_train[..., 0], imgs[:5])


def test_mat_errors(tmp_path):
    path = tmp_path / "exp.mat"
    _write(path, np.random.default_rng(1))
    with pytest.raises(DataFormatError, match="fmriX"):
        load_byo(path, keys={**KEYS, "betas_test": "fmriX"}, stimulus_shape=(4, 5))
    with pytest.raises(ShapeMismatchError, match="unflatten"):
        load_byo(path, keys=KEYS, stimulus_shape=(3, 5))
    with pytest.raises(ConfigError, match="stimulus_order"):
        load_byo(path, keys=KEYS, stimulus_shape=(4, 5), stimulus_order="X")
    bad = tmp_path / "bad.mat"
    bad.write_bytes(b"not a mat file at all")
    with pytest.raises(DataFormatError, match="bad.mat"):
        load_byo(bad)
