"""Encoder guidance (brainrecon.roi.guidance): differentiable features, per-row objectives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brainrecon.errors import ConfigError, ShapeMismatchError
from brainrecon.images import to_float_chw
from brainrecon.roi.closed_loop import LowLevelFeatures, VoxelwiseEncodingModel, response_scale, roi_means
from brainrecon.roi.guidance import EncoderGuide, LowLevelTorchFeatures
from brainrecon.sim.encoding import FeatureSpec, lowlevel_features


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, size // 8, size // 8, 3)).astype(np.uint8)  # blocky: structure at every scale
    noise = rng.integers(-40, 41, (n, size, size, 3))
    return np.clip(np.kron(base, np.ones((1, 8, 8, 1), dtype=np.uint8)).astype(int) + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size", [64, 128])
def test_torch_features_equal_the_numpy_features(size):
    imgs = _images(5, size)
    spec = FeatureSpec()
    ref = lowlevel_features(imgs, spec)
    got = LowLevelTorchFeatures(spec)(torch.from_numpy(to_float_chw(imgs))).numpy()
    assert got.shape == ref.shape == (5, spec.n_lowlevel)
    np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max())
    with pytest.raises(ShapeMismatchError):
        LowLevelTorchFeatures(spec)(torch.zeros(2, 1, size, size))


@pytest.fixture(scope="module")
def toy_brain():
    """Voxels that respond to the luminance of the left or right half of the image, plus noise."""
    rng = np.random.default_rng(3)
    imgs = _images(80, 64, seed=1)
    lum = to_float_chw(imgs).mean(1)
    left, right = lum[:, :, :32].mean((1, 2)), lum[:, :, 32:].mean((1, 2))
    n_vox = 30
    X = np.concatenate([left[:, None] * np.ones(10), right[:, None] * np.ones(10),
                        rng.normal(size=(80, 10))], axis=1) + 0.05 * rng.normal(size=(80, n_vox))
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    masks = {"L": np.arange(n_vox) < 10, "R": (np.arange(n_vox) >= 10) & (np.arange(n_vox) < 20),
             "C": np.arange(n_vox) >= 20}
    groups = {"L": "visual", "R": "visual", "C": "category"}
    return imgs, X, masks, groups


def test_roi_objective_is_the_encoders_z_scored_roi_response(toy_brain):
    imgs, X, masks, groups = toy_brain
    guide = EncoderGuide.fit(imgs, X, masks, groups, ["L", "R", "C", None], objective="roi")
    assert guide.guided_rows().tolist() == [True, True, False, False]  # category ROIs and the baseline: no guidance
    enc = VoxelwiseEncodingModel([LowLevelFeatures()]).fit(imgs, X)
    mu, sd = response_scale(enc, imgs)
    probe = _images(6, 64, seed=9)
    z = roi_means((enc.predict(probe) - mu) / sd, masks)  # (6, 3): L, R, C
    for row, col in ((0, 0), (1, 1)):
        obj = guide.objective_numpy(probe, [row] * len(probe))
        # equal up to a constant (the intercepts): compare differences between images
        np.testing.assert_allclose(obj - obj[0], z[:, col] - z[0, col], rtol=1e-3, atol=1e-3)
    assert np.all(guide.objective_numpy(probe, [2] * 6) == 0) and np.all(guide.objective_numpy(probe, [3] * 6) == 0)
    # the L objective prefers a bright left half
    bright_left = np.full((2, 64, 64, 3), 60, np.uint8)
    bright_left[0, :, :32] = 220
    bright_left[1, :, 32:] = 220
    o = guide.objective_numpy(bright_left, [0, 0])
    assert o[0] > o[1]


def test_selective_objective_subtracts_the_group_peers_and_has_a_gradient(toy_brain):
    imgs, X, masks, groups = toy_brain
    roi = EncoderGuide.fit(imgs, X, masks, groups, ["L", "R"], objective="roi")
    sel = EncoderGuide.fit(imgs, X, masks, groups, ["L", "R"], objective="selective")
    np.testing.assert_allclose(sel.weights[0], roi.weights[0] - roi.weights[1], rtol=1e-5, atol=1e-8)
    x = torch.from_numpy(to_float_chw(_images(2, 64, seed=4))).requires_grad_(True)
    sel(x, np.array([0, 1])).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_guide_rejects_bad_settings(toy_brain):
    imgs, X, masks, groups = toy_brain
    with pytest.raises(ConfigError, match="objective"):
        EncoderGuide.fit(imgs, X, masks, groups, ["L"], objective="max")
    with pytest.raises(ConfigError, match="without a mask"):
        EncoderGuide.fit(imgs, X, masks, groups, ["V9"])
    with pytest.raises(ShapeMismatchError):
        EncoderGuide(np.zeros((2, 5)))
