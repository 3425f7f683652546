"""Image array conventions and conversions.

Two layouts travel through brainrecon:

* stimuli as stored by datasets: ``(n, H, W, 3)`` uint8 (NSD's ``imgBrick`` layout);
* model inputs/outputs: ``(n, 3, H, W)`` float32 in [0, 1].
"""

from __future__ import annotations

import numpy as np

from brainrecon.errors import ShapeMismatchError


def to_float_chw(images: np.ndarray) -> np.ndarray:
    """``(n, H, W, 3)`` uint8 (or float in [0, 1]) -> ``(n, 3, H, W)`` float32 in [0, 1]."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ShapeMismatchError("images", "(n, H, W, 3)", images.shape)
    arr = np.asarray(images)
    out = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def to_uint8_hwc(images: np.ndarray) -> np.ndarray:
    """``(n, 3, H, W)`` float in [0, 1] -> ``(n, H, W, 3)`` uint8 (rounded, clipped)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ShapeMismatchError("images", "(n, 3, H, W)", images.shape)
    arr = np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0) * 255.0
    return np.ascontiguousarray(np.rint(arr).astype(np.uint8).transpose(0, 2, 3, 1))


def resize(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize ``(n, 3, H, W)`` float images with antialiased bicubic interpolation.

    Uses torch (antialias=True, matching PIL's bicubic for downsampling) and
    clips to [0, 1], since bicubic overshoots at edges.
    """
    import torch
    import torch.nn.functional as F

    hw = (size, size) if isinstance(size, int) else tuple(size)
    if images.shape[-2:] == hw:
        return np.asarray(images, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    out = F.interpolate(t, size=hw, mode="bicubic", antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0).numpy()
