"""Pixel-level metrics: PixCorr, SSIM and MSE, one value per image.

Definitions follow Brain-Diffuser's evaluation (methods guide §5):

* **PixCorr** — Pearson correlation of the flattened RGB arrays of a ground-truth
  image and its reconstruction.
* **SSIM** — scikit-image's ``structural_similarity`` on grayscale images
  (``rgb2gray`` luma weights 0.2125/0.7154/0.0721), Gaussian weights with
  sigma = 1.5 (window radius ``int(3.5 * 1.5 + 0.5) = 5``), population covariance,
  ``data_range = 1``, K1 = 0.01, K2 = 0.03, mean over the map after cropping the
  5-pixel border where the window leaves the image. Implemented here with a
  batched separable filter (float64) so 1000 pairs at 425 px take seconds; the
  unit tests compare it with scikit-image itself.
* **MSE** — mean squared error over all pixels and channels.

Images are float arrays ``(n, 3, H, W)`` in [0, 1]; the two sets must already
have the same size (resizing is the job of the evaluation preset, see
:func:`resize_images`).
"""

from __future__ import annotations

import numpy as np

from brainrecon.errors import DataFormatError, ShapeMismatchError

#: ITU-R BT.709 luma weights, as used by ``skimage.color.rgb2gray``.
LUMA_WEIGHTS = (0.2125, 0.7154, 0.0721)
#: Gaussian SSIM window of Brain-Diffuser / MindEye (skimage ``gaussian_weights=True``).
SSIM_SIGMA = 1.5
#: skimage's truncation of the Gaussian window, in standard deviations.
SSIM_TRUNCATE = 3.5


def check_images(images: np.ndarray, name: str = "images", *, atol: float = 1e-3) -> np.ndarray:
    """Validate an image batch ``(n, 3, H, W)`` with values in [0, 1].

    Parameters
    ----------
    images : ndarray
        The batch to check.
    name : str
        Name used in error messages.
    atol : float
        Tolerance on the [0, 1] range (interpolation overshoot).

    Returns
    -------
    ndarray
        ``images`` as float32, clipped to [0, 1].

    Raises
    ------
    ShapeMismatchError
        If the array is not 4-D with 3 channels.
    DataFormatError
        If values are outside [0, 1] (e.g. uint8 0..255 passed by mistake) or not finite.
    """
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ShapeMismatchError(name, "(n, 3, H, W)", arr.shape)
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataFormatError(f"{name}: expected float images in [0, 1], got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise DataFormatError(f"{name}: contains non-finite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -atol or hi > 1 + atol:
        raise DataFormatError(f"{name}: expected values in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    arr = arr.astype(np.float32, copy=False)
    # copy only when needed: evaluation batches can be gigabytes
    return np.clip(arr, 0.0, 1.0) if lo < 0 or hi > 1 else arr


def _check_pair(gt: np.ndarray, recon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = check_images(gt, "ground-truth images")
    recon = check_images(recon, "reconstructions")
    if gt.shape != recon.shape:
        raise ShapeMismatchError(
            "reconstructions", gt.shape, recon.shape, "resize both sets to one size first (resize_images)"
        )
    return gt, recon


def resize_images(
    images: np.ndarray, size: int | tuple[int, int], *, mode: str = "bilinear", batch_size: int = 64
) -> np.ndarray:
    """Resize ``(n, 3, H, W)`` images with antialiasing, as PIL/torchvision do.

    Parameters
    ----------
    images : ndarray, shape (n, 3, H, W), float in [0, 1]
    size : int or (int, int)
        Output side (square) or ``(height, width)``.
    mode : {"bilinear", "bicubic"}
        Interpolation; ``antialias=True`` so that downsampling matches PIL.
    batch_size : int
        Images resized at once (bounds memory).

    Returns
    -------
    ndarray, shape (n, 3, h, w), float32, clipped to [0, 1]
    """
    import torch
    import torch.nn.functional as F

    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"mode: expected 'bilinear' or 'bicubic', got {mode!r}")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    images = np.asarray(images, dtype=np.float32)
    if images.shape[2:] == hw:
        return images
    out = np.empty((len(images), images.shape[1], *hw), dtype=np.float32)
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[s : s + batch_size]))
        y = F.interpolate(x, size=hw, mode=mode, align_corners=False, antialias=True)
        # bicubic overshoots; keep the [0, 1] contract of every image array
        out[s : s + batch_size] = y.clamp_(0.0, 1.0).numpy()
    return out


def to_grayscale(images: np.ndarray) -> np.ndarray:
    """``(n, 3, H, W)`` RGB to ``(n, H, W)`` float32 luma with skimage's ``rgb2gray`` weights."""
    x = np.asarray(images, dtype=np.float32)
    w = [np.float32(v) for v in LUMA_WEIGHTS]
    return x[:, 0] * w[0] + x[:, 1] * w[1] + x[:, 2] * w[2]


def pixcorr(gt: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Per-image Pearson correlation of the flattened RGB arrays.

    Parameters
    ----------
    gt, recon : ndarray, shape (n, 3, H, W), float in [0, 1]

    Returns
    -------
    ndarray, shape (n,), float64
        NaN for a constant image (correlation undefined).
    """
    return pixcorr_unchecked(*_check_pair(gt, recon))


def pixcorr_unchecked(gt: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """:func:`pixcorr` without input validation (for callers that validated already)."""
    a = gt.reshape(len(gt), -1)
    b = recon.reshape(len(recon), -1)
    # centre in float32 (halves memory traffic), accumulate the sums in float64
    a = a - a.mean(1, keepdims=True, dtype=np.float64).astype(a.dtype)
    b = b - b.mean(1, keepdims=True, dtype=np.float64).astype(b.dtype)
    num = (a * b).sum(1, dtype=np.float64)
    den = np.sqrt((a * a).sum(1, dtype=np.float64) * (b * b).sum(1, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def mse(gt: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Per-image mean squared error over pixels and channels, shape ``(n,)``."""
    return mse_unchecked(*_check_pair(gt, recon))


def mse_unchecked(gt: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """:func:`mse` without input validation."""
    d = (gt - recon).reshape(len(gt), -1)
    return (d * d).mean(1, dtype=np.float64)


def _gaussian_kernel(sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)  # scipy.ndimage's radius rule
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def ssim_gray(
    gt_gray: np.ndarray,
    recon_gray: np.ndarray,
    *,
    sigma: float = SSIM_SIGMA,
    data_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    """Per-image Gaussian SSIM of grayscale images ``(n, H, W)``.

    Same arithmetic as ``skimage.metrics.structural_similarity(gaussian_weights=True,
    sigma=sigma, use_sample_covariance=False, data_range=data_range)``: local statistics
    by separable Gaussian filtering, SSIM map averaged (float64) after cropping the
    window radius on every side. Only windows fully inside the image survive that crop,
    so the border mode of the filter does not change the result. The whole batch is
    filtered at once (scipy.ndimage along the two image axes, double precision inside,
    float32 storage: 2x faster than float64 storage and within 1e-8 of it).

    Returns
    -------
    ndarray, shape (n,), float64
    """
    from scipy.ndimage import correlate1d

    gt_gray = np.asarray(gt_gray)
    recon_gray = np.asarray(recon_gray)
    if gt_gray.shape != recon_gray.shape or gt_gray.ndim != 3:
        raise ShapeMismatchError("grayscale image pair", f"two (n, H, W) arrays of equal shape, gt {gt_gray.shape}",
                                 recon_gray.shape)
    k = _gaussian_kernel(sigma, SSIM_TRUNCATE)
    pad = (len(k) - 1) // 2
    if min(gt_gray.shape[1:]) < len(k):
        raise ShapeMismatchError("image size for SSIM", f">= {len(k)} pixels per side", gt_gray.shape[1:])
    c1, c2 = np.float32((k1 * data_range) ** 2), np.float32((k2 * data_range) ** 2)

    def filt(z: np.ndarray) -> np.ndarray:
        z = correlate1d(z, k, axis=1, output=np.float32, mode="reflect")
        z = correlate1d(z, k, axis=2, output=np.float32, mode="reflect")
        return z[:, pad:-pad, pad:-pad]

    x = gt_gray.astype(np.float32, copy=False)
    y = recon_gray.astype(np.float32, copy=False)
    ux, uy = filt(x), filt(y)
    vx = filt(x * x) - ux * ux
    vy = filt(y * y) - uy * uy
    vxy = filt(x * y) - ux * uy
    s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s_map.reshape(len(s_map), -1).mean(1, dtype=np.float64)


def ssim(gt: np.ndarray, recon: np.ndarray, *, sigma: float = SSIM_SIGMA, data_range: float = 1.0) -> np.ndarray:
    """Per-image grayscale Gaussian SSIM of RGB images ``(n, 3, H, W)`` (Brain-Diffuser's SSIM).

    Returns
    -------
    ndarray, shape (n,), float64
    """
    gt, recon = _check_pair(gt, recon)
    return ssim_gray(to_grayscale(gt), to_grayscale(recon), sigma=sigma, data_range=data_range)
