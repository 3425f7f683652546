"""PixCorr, SSIM and MSE against independent implementations (numpy, scikit-image)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.color import rgb2gray
from skimage.metrics import structural_similarity

from brainrecon.errors import DataFormatError, ShapeMismatchError
from brainrecon.metrics import lowlevel


def _pair(n: int, h: int, w: int, seed: int = 0, noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # smooth-ish images so SSIM is far from 0 and from 1
    base = rng.random((n, 3, h // 4 + 1, w // 4 + 1))
    gt = np.kron(base, np.ones((1, 1, 4, 4)))[:, :, :h, :w]
    rec = np.clip(gt + noise * rng.standard_normal(gt.shape), 0, 1)
    return gt.astype(np.float32), rec.astype(np.float32)


def test_pixcorr_matches_numpy_corrcoef() -> None:
    gt, rec = _pair(5, 32, 40)
    got = lowlevel.pixcorr(gt, rec)
    want = [np.corrcoef(g.ravel(), r.ravel())[0, 1] for g, r in zip(gt, rec)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_pixcorr_identical_is_one() -> None:
    gt, _ = _pair(3, 16, 16)
    np.testing.assert_allclose(lowlevel.pixcorr(gt, gt), 1.0, rtol=1e-12)


@pytest.mark.parametrize("hw", [(28, 28), (37, 45), (64, 64)])
def test_ssim_matches_skimage(hw: tuple[int, int]) -> None:
    gt, rec = _pair(4, *hw, seed=hw[0])
    got = lowlevel.ssim(gt, rec)
    want = [
        structural_similarity(
            rgb2gray(g.transpose(1, 2, 0).astype(np.float64)),
            rgb2gray(r.transpose(1, 2, 0).astype(np.float64)),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
        )
        for g, r in zip(gt, rec)
    ]
    assert 0.05 < np.mean(want) < 0.95  # a non-trivial case
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_grayscale_matches_skimage() -> None:
    gt, _ = _pair(2, 8, 8)
    want = np.stack([rgb2gray(g.transpose(1, 2, 0).astype(np.float64)) for g in gt])
    np.testing.assert_allclose(lowlevel.to_grayscale(gt), want, rtol=0, atol=1e-6)


def test_mse_direct() -> None:
    gt, rec = _pair(3, 10, 12)
    want = [np.mean((g.astype(np.float64) - r) ** 2) for g, r in zip(gt, rec)]
    np.testing.assert_allclose(lowlevel.mse(gt, rec), want, rtol=1e-6)


def test_ssim_identical_is_one() -> None:
    gt, _ = _pair(2, 30, 30)
    np.testing.assert_allclose(lowlevel.ssim(gt, gt), 1.0, rtol=1e-6)


def test_shape_and_range_errors() -> None:
    gt, rec = _pair(2, 16, 16)
    with pytest.raises(ShapeMismatchError):
        lowlevel.pixcorr(gt, rec[:, :, :8])
    with pytest.raises(ShapeMismatchError):
        lowlevel.ssim(gt[:, 0], rec[:, 0])
    with pytest.raises(DataFormatError, match=r"\[0, 1\]"):
        lowlevel.mse(gt * 255, rec)
    with pytest.raises(DataFormatError, match="dtype"):
        lowlevel.mse((gt * 255).astype(np.uint8), rec)


def test_resize_keeps_range_and_constant_images() -> None:
    gt, _ = _pair(2, 28, 28)
    out = lowlevel.resize_images(gt, 425, mode="bicubic")
    assert out.shape == (2, 3, 425, 425) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    const = np.full((1, 3, 20, 30), 0.25, np.float32)
    np.testing.assert_allclose(lowlevel.resize_images(const, (7, 9)), 0.25, atol=1e-6)
