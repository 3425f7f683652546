"""Pixel space: the simplest latent space, and the baseline of every experiment.

Images are resized to ``image_size`` and optionally low-pass filtered by keeping
the ``n_coefficients`` x ``n_coefficients`` lowest spatial frequencies of an
orthonormal 2-D DCT per channel. With ``n_coefficients=None`` the target is the
raw pixels. Decoding is the exact inverse (zero high frequencies), so it is
linear, deterministic and needs no weights: the right baseline for a linear
decoder and a fast latent space for tests.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.fft import dctn, idctn

from brainrecon.errors import ConfigError, ShapeMismatchError
from brainrecon.images import resize, to_float_chw
from brainrecon.latents.base import Stimuli, TargetSpec


class PixelSpace:
    """Pixels, or their lowest DCT frequencies, as the regression target.

    Parameters
    ----------
    image_size : int
        Side of the square working resolution.
    n_coefficients : int or None
        Keep this many DCT frequencies per axis (``None``: raw pixels).
    grayscale : bool
        Use one luminance channel (decoded as gray RGB), e.g. for digit stimuli.
    """

    name = "pixels"

    def __init__(self, image_size: int = 32, n_coefficients: int | None = None, grayscale: bool = False) -> None:
        if image_size < 1:
            raise ConfigError(f"latents.pixels.image_size: expected a positive int, got {image_size}")
        if n_coefficients is not None and not 1 <= n_coefficients <= image_size:
            raise ConfigError(
                f"latents.pixels.n_coefficients: expected 1..image_size={image_size} or None, got {n_coefficients}"
            )
        self.image_size = int(image_size)
        self.n_coefficients = n_coefficients
        self.grayscale = bool(grayscale)
        k = self.image_size if n_coefficients is None else int(n_coefficients)
        c = 1 if grayscale else 3
        self.targets: Mapping[str, TargetSpec] = {
            "z": TargetSpec((c, k, k), "pixels" if n_coefficients is None else f"{k}x{k} lowest DCT frequencies")
        }

    def _prepare(self, images: np.ndarray) -> np.ndarray:
        x = resize(to_float_chw(images), self.image_size)
        if self.grayscale:  # ITU-R 601 luma, the weights skimage's rgb2gray also uses
            x = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).astype(np.float32)
        return x

    def encode(self, stimuli: Stimuli) -> dict[str, np.ndarray]:
        """Images -> ``{"z": (n, c, k, k)}`` float32."""
        x = self._prepare(stimuli.images)
        if self.n_coefficients is None:
            return {"z": x.astype(np.float32)}
        k = self.n_coefficients
        coef = dctn(x, axes=(-2, -1), norm="ortho")[..., :k, :k]
        return {"z": np.ascontiguousarray(coef, dtype=np.float32)}

    def decode(
        self, latents: Mapping[str, np.ndarray], *, init: np.ndarray | None = None, seed: int = 0
    ) -> np.ndarray:
        """``{"z": ...}`` -> ``(n, 3, image_size, image_size)`` float32 in [0, 1] (``init``, ``seed`` unused)."""
        z = np.asarray(latents["z"], dtype=np.float32)
        spec = self.targets["z"]
        if z.shape[1:] != spec.shape:
            raise ShapeMismatchError("pixels latent", f"(n, {spec.shape})", z.shape)
        if self.n_coefficients is None:
            x = z
        else:
            full = np.zeros((len(z), spec.shape[0], self.image_size, self.image_size), dtype=np.float32)
            full[..., : self.n_coefficients, : self.n_coefficients] = z
            x = idctn(full, axes=(-2, -1), norm="ortho")
        if self.grayscale:
            x = np.repeat(x, 3, axis=1)
        return np.clip(x, 0.0, 1.0).astype(np.float32)
