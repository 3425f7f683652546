"""The one small interface every latent space implements.

A latent space turns stimuli into regression targets (``encode``) and predicted
targets back into images (``decode``). Decoders (ridge) only ever see 2-D arrays:
:func:`flatten` and :func:`unflatten` convert between a target's natural shape
and one row per sample, so a single multi-target ridge serves every space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from brainrecon.errors import ShapeMismatchError


@dataclass(frozen=True)
class TargetSpec:
    """Shape and meaning of one regression target of a latent space.

    Parameters
    ----------
    shape : tuple of int
        Shape of one sample's target, e.g. ``(257, 768)`` for CLIP-vision tokens.
    description : str
        One line for reports.
    """

    shape: tuple[int, ...]
    description: str = ""

    @property
    def size(self) -> int:
        """Number of values per sample once flattened."""
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class Stimuli:
    """Stimuli handed to :meth:`LatentSpace.encode`.

    Parameters
    ----------
    images : ndarray, shape (n, H, W, 3), uint8
        RGB images (the layout of NSD's ``imgBrick``).
    captions : list of list of str, optional
        Captions per image (several per image in NSD/COCO); ``None`` when absent.
    """

    images: np.ndarray
    captions: Sequence[Sequence[str]] | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ShapeMismatchError("stimulus images", "(n, H, W, 3)", self.images.shape)
        if self.captions is not None and len(self.captions) != len(self.images):
            raise ShapeMismatchError("captions per image", len(self.images), len(self.captions))

    def __len__(self) -> int:
        return len(self.images)


@runtime_checkable
class LatentSpace(Protocol):
    """Protocol of a generator's latent space.

    Attributes
    ----------
    name : str
        Short name used in target keys (``<name>.<target>``).
    targets : Mapping[str, TargetSpec]
        The regression targets this space produces and consumes.

    Spaces that load weights may also define ``fingerprint() -> dict`` (e.g. a
    digest of the weights file); the extract stage hashes it into its cache key,
    so retrained weights never reuse stale latents.
    """

    name: str
    targets: Mapping[str, TargetSpec]

    def encode(self, stimuli: Stimuli) -> dict[str, np.ndarray]:
        """Map stimuli to one float32 array ``(n, *spec.shape)`` per target."""
        ...

    def decode(
        self, latents: Mapping[str, np.ndarray], *, init: np.ndarray | None = None, seed: int = 0
    ) -> np.ndarray:
        """Map (predicted) latents to images ``(n, 3, H, W)`` float32 in [0, 1]."""
        ...


def flatten(Z: np.ndarray, spec: TargetSpec) -> np.ndarray:
    """Reshape ``(n, *spec.shape)`` to ``(n, spec.size)`` without copying when possible."""
    if tuple(Z.shape[1:]) != tuple(spec.shape):
        raise ShapeMismatchError("latent array", f"(n, {', '.join(map(str, spec.shape))})", Z.shape)
    return Z.reshape(len(Z), spec.size)


def unflatten(Z2: np.ndarray, spec: TargetSpec) -> np.ndarray:
    """Inverse of :func:`flatten`."""
    if Z2.ndim != 2 or Z2.shape[1] != spec.size:
        raise ShapeMismatchError("flattened latent array", f"(n, {spec.size})", Z2.shape)
    return Z2.reshape(len(Z2), *spec.shape)


def check_latent_space(space: LatentSpace, stimuli: Stimuli) -> None:
    """Assert that ``space`` honours the :class:`LatentSpace` contract.

    In the spirit of scikit-learn's estimator checks: encode returns exactly the
    declared targets with the declared shapes as float32 and finite values; decode
    returns float32 images in [0, 1] with one image per sample; decoding is
    deterministic for a fixed seed.

    Raises
    ------
    AssertionError
        Naming the first violated rule.
    """
    assert isinstance(space.name, str) and space.name, "space.name must be a non-empty str"
    Z = space.encode(stimuli)
    assert set(Z) == set(space.targets), f"encode returned {sorted(Z)}, targets are {sorted(space.targets)}"
    n = len(stimuli)
    for key, spec in space.targets.items():
        arr = Z[key]
        assert arr.dtype == np.float32, f"{key}: dtype {arr.dtype}, expected float32"
        assert arr.shape == (n, *spec.shape), f"{key}: shape {arr.shape}, expected {(n, *spec.shape)}"
        assert np.isfinite(arr).all(), f"{key}: non-finite values"
    img1 = space.decode(Z, seed=0)
    img2 = space.decode(Z, seed=0)
    assert img1.dtype == np.float32, f"decode dtype {img1.dtype}, expected float32"
    assert img1.ndim == 4 and img1.shape[0] == n and img1.shape[1] == 3, (
        f"decode shape {img1.shape}, expected (n={n}, 3, H, W)"
    )
    assert float(img1.min()) >= 0.0 and float(img1.max()) <= 1.0, "decoded images outside [0, 1]"
    assert np.array_equal(img1, img2), "decode is not deterministic for a fixed seed"
