"""A scene segmenter for the simulated stimuli: the category areas of any image, read from its pixels.

The simulator's true encoding model drives the category ROIs with the fraction of the image each
object category covers. For the simulated stimuli that fraction is known; for a generated image
(an ROI-optimal image, a reconstruction) it has to be estimated. The closed loop's default
estimator reads it from the image's CLIP-small embedding (:class:`~brainrecon.roi.closed_loop.SemanticEstimator`,
held-out r 0.70 for bodies on the default experiment). This module is the more direct instrument:
a small fully convolutional network that labels every pixel with a category (or background),
trained on fresh procedural scenes whose label maps the scene generator knows exactly. The
estimated area of a category is the mean over pixels of its probability.

It is trained by ``scripts/train_scene_segmenter.py`` on scenes drawn with a seed of its own
(never the experiment's stimuli) and shipped as ``brainrecon/weights/scene_segmenter.safetensors``
with its ``.json`` config and ``.training.json`` provenance.

Architecture (:class:`SceneSegmenter`): a two-level U-Net at 64 x 64 input: two 3x3 conv blocks
(GroupNorm, SiLU) at full resolution, a stride-2 level, a stride-4 level with dilated blocks
(dilation 1, 2, 4: a receptive field covering the largest objects), nearest upsampling with skip
connections, and a 1x1 head with ``n_categories + 1`` logits (class 0: background).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError, DataFormatError, ShapeMismatchError

#: Input side of the segmenter; images of any other size are area-resampled to it.
SEGMENTER_SIZE = 64

_HINT = "train it with scripts/train_scene_segmenter.py (about 10 minutes on 2 CPU cores)"


@dataclass(frozen=True)
class SegmenterConfig:
    """Architecture of :class:`SceneSegmenter`.

    Parameters
    ----------
    width : int
        Channels at full resolution (doubled at the two coarser levels); a multiple of 8.
    categories : tuple of str
        Category names, in the order of the simulator's ``semantics`` columns.
    """

    width: int = 32
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.width < 8 or self.width % 8:
            raise ConfigError(f"segmenter width: expected a multiple of 8 >= 8, got {self.width!r}")
        if not self.categories:
            raise ConfigError("segmenter categories: expected at least one category name, got none")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegmenterConfig:
        return cls(width=int(d["width"]), categories=tuple(str(c) for c in d["categories"]))


def _network(cfg: SegmenterConfig):  # noqa: ANN202
    """Build the torch module (torch is imported only here)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def block(i: int, o: int, d: int = 1) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=d, dilation=d), nn.GroupNorm(8, o), nn.SiLU())

    class SceneSegmenter(nn.Module):
        """Per-pixel category logits ``(n, n_categories + 1, H, W)`` of images ``(n, 3, H, W)`` in [0, 1]."""

        def __init__(self) -> None:
            super().__init__()
            w = cfg.width
            self.cfg = cfg
            self.enc1 = nn.Sequential(block(3, w), block(w, w))
            self.enc2 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, 2, 1), nn.SiLU(), block(2 * w, 2 * w))
            self.enc3 = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, 2, 1), nn.SiLU(),
                                      block(2 * w, 2 * w, 1), block(2 * w, 2 * w, 2), block(2 * w, 2 * w, 4))
            self.dec2 = block(4 * w, 2 * w)
            self.dec1 = block(3 * w, w)
            self.head = nn.Conv2d(w, len(cfg.categories) + 1, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.enc1(x)
            b = self.enc2(a)
            c = self.enc3(b)
            u = self.dec2(torch.cat([F.interpolate(c, scale_factor=2.0), b], 1))
            v = self.dec1(torch.cat([F.interpolate(u, scale_factor=2.0), a], 1))
            return self.head(v)

    return SceneSegmenter()


def build_segmenter(cfg: SegmenterConfig):  # noqa: ANN201
    """A randomly initialised :class:`SceneSegmenter` (a torch module)."""
    return _network(cfg)


def to_segmenter_input(images: np.ndarray):  # noqa: ANN201
    """``(n, H, W, 3)`` uint8 -> ``(n, 3, 64, 64)`` float tensor in [0, 1] (area resampling)."""
    import torch
    from torch.nn import functional as F

    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ShapeMismatchError("images", "(n, H, W, 3) uint8", f"{arr.shape} {arr.dtype}")
    # astype copies: artifacts are memory-mapped read-only, and torch wants writable arrays
    x = torch.from_numpy(arr.astype(np.float32) / np.float32(255.0)).permute(0, 3, 1, 2)
    if x.shape[-2:] != (SEGMENTER_SIZE, SEGMENTER_SIZE):
        x = F.interpolate(x, size=(SEGMENTER_SIZE, SEGMENTER_SIZE), mode="area")
    return x


def label_fractions(labels: np.ndarray, n_categories: int, out: int = SEGMENTER_SIZE) -> np.ndarray:
    """Soft targets: per output pixel, the fraction of the label map's pixels of each class.

    ``labels`` ``(H, W)`` int with -1 for background (class 0) and category ``c`` as class ``c + 1``;
    ``H`` and ``W`` must be multiples of ``out``. Returns ``(n_categories + 1, out, out)`` float32.
    """
    h, w = labels.shape
    if h % out or w % out:
        raise ShapeMismatchError("label map", f"sides that are multiples of {out}", labels.shape)
    onehot = np.eye(n_categories + 1, dtype=np.float32)[np.asarray(labels, dtype=np.int64) + 1]
    return onehot.reshape(out, h // out, out, w // out, -1).mean((1, 3)).transpose(2, 0, 1)


def segmentation_set(
    n: int, seed: int, size: int = 128, progress: bool = False, body_shapes: tuple[str, ...] = ("solid", "stick")
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` fresh procedural scenes: images ``(n, size, size, 3)`` uint8, soft label maps and true areas.

    Scene ``i`` draws its bodies as ``body_shapes[i % len(body_shapes)]``: by default both shapes of
    :data:`brainrecon.sim.stimuli.BODY_SHAPES`, so that one segmenter reads every experiment's scenes.

    Returns ``(images, targets (n, n_categories + 1, 64, 64) float32, semantics (n, n_categories) float32)``.
    """
    from tqdm.auto import tqdm

    from brainrecon.sim.stimuli import CATEGORIES, procedural_scene

    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    targets = np.empty((n, len(CATEGORIES) + 1, SEGMENTER_SIZE, SEGMENTER_SIZE), np.float32)
    semantics = np.empty((n, len(CATEGORIES)), np.float32)
    for i in tqdm(range(n), desc="segmenter scenes", disable=not progress):
        shape = body_shapes[i % len(body_shapes)]
        images[i], semantics[i], _, labels = procedural_scene(rng, size, return_labels=True, body_shape=shape)
        targets[i] = label_fractions(labels, len(CATEGORIES))
    return images, targets, semantics


def train_segmenter(
    images: np.ndarray,
    targets: np.ndarray,
    cfg: SegmenterConfig,
    *,
    steps: int = 1500,
    batch: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = False,
):  # noqa: ANN201
    """Train a segmenter with soft cross-entropy (one-cycle schedule, horizontal flips); returns (model, loss trace)."""
    import torch
    from torch.nn import functional as F
    from tqdm.auto import tqdm

    if len(images) != len(targets):
        raise ShapeMismatchError("targets", f"{len(images)} label maps (one per image)", len(targets))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_segmenter(cfg)
    x_all, y_all = to_segmenter_input(images), torch.from_numpy(np.asarray(targets, np.float32))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    trace: list[dict[str, float]] = []
    bar = tqdm(range(steps), desc="segmenter", disable=not progress)
    for step in bar:
        idx = torch.randint(0, len(x_all), (batch,), generator=gen)
        x, y = x_all[idx], y_all[idx]
        if torch.rand(1, generator=gen).item() < 0.5:  # scenes have no left/right asymmetry
            x, y = x.flip(-1), y.flip(-1)
        loss = -(y * F.log_softmax(model(x), 1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            trace.append({"step": step, "loss": float(loss.detach())})
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    model.eval()
    return model, trace


def save_segmenter(model, path: str | os.PathLike) -> Path:  # noqa: ANN001
    """Write weights (``.safetensors``) and config (``.json`` beside them), atomically."""
    from brainrecon.latents.state_dict import save_safetensors_with_config

    return save_safetensors_with_config(model, path, {**asdict(model.cfg), "categories": list(model.cfg.categories)})


def load_segmenter(path: str | os.PathLike = "bundled:scene_segmenter.safetensors", device: str = "cpu"):  # noqa: ANN201
    """Load weights written by :func:`save_segmenter`.

    Raises
    ------
    MissingWeightsError
        The weights or their ``.json`` config are absent (the message names the path).
    DataFormatError
        Unreadable config, or tensors that do not match it.
    """
    from brainrecon.latents.state_dict import load_safetensors_with_config

    return load_safetensors_with_config(path, "scene segmenter",
                                        lambda cfg: build_segmenter(SegmenterConfig.from_dict(cfg)),
                                        hint=_HINT, device=device)


class SegmenterSemantics:
    """Images -> estimated category areas ``(n, n_categories)``: the mean per-pixel probability of each category.

    A drop-in for the closed loop's semantic estimator (:class:`~brainrecon.roi.closed_loop.SimulatedResponses`
    takes any such callable). Weights are loaded on first use.

    Parameters
    ----------
    path : str
        Weights (``bundled:scene_segmenter.safetensors`` by default).
    categories : sequence of str, optional
        Expected category order (the simulator's); a mismatch with the weights' config is an error.
    """

    name = "scene_segmenter"

    def __init__(self, path: str = "bundled:scene_segmenter.safetensors", device: str = "cpu",
                 categories: Sequence[str] | None = None, batch_size: int = 64) -> None:
        self.path, self.device, self.batch_size = path, device, int(batch_size)
        self.categories = list(categories) if categories is not None else None
        self._model = None
        self.heldout_: dict[str, Any] | None = None

    @property
    def model(self):  # noqa: ANN201
        if self._model is None:
            self._model = load_segmenter(self.path, self.device)
            got = list(self._model.cfg.categories)
            if self.categories is not None and got != self.categories:
                raise DataFormatError(f"{self.path}: segmenter categories {got}, expected the simulator's {self.categories}")
        return self._model

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                x = to_segmenter_input(np.asarray(images[i:i + self.batch_size])).to(self.device)
                out.append(torch.softmax(self.model(x), 1).mean((2, 3))[:, 1:].cpu().numpy())
        n_cat = len(self.model.cfg.categories)
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, n_cat), np.float32)

    def score(self, images: np.ndarray, semantics: np.ndarray) -> dict[str, Any]:
        """Held-out accuracy per category (Pearson r and R^2); stored in ``heldout_``."""
        from brainrecon.roi.closed_loop import column_scores

        r, r2 = column_scores(self(images).astype(np.float64), np.asarray(semantics, dtype=np.float64))
        self.heldout_ = {"categories": list(self.model.cfg.categories), "r": r, "r2": r2, "n": int(len(images)),
                         "features": ["pixels"], "estimator": self.name, "weights": str(self.path)}
        return self.heldout_
