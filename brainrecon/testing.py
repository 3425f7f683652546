"""Tiny synthetic experiments for tests and quick demos.

:func:`make_toy_experiment` draws procedural stimuli (coloured ellipses and
rectangles over smooth backgrounds) and betas that are a noisy random linear
function of the stimuli's low spatial frequencies. The ground truth is linear
by construction, so a linear decoder must recover it: a small, fast, fully
known problem. The realistic default experiment is :mod:`brainrecon.sim`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.fft import dctn

_SHAPES = ("ellipse", "rectangle")
_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
}


@dataclass
class ToyExperiment:
    """Arrays of a toy experiment (all float32 / uint8, row-aligned)."""

    stimuli_train: np.ndarray  # (n_train, S, S, 3) uint8
    stimuli_test: np.ndarray  # (n_test, S, S, 3) uint8
    captions_train: list[list[str]]
    captions_test: list[list[str]]
    X_train: np.ndarray  # (n_train, n_voxels) float32
    X_test: np.ndarray  # (n_test, n_voxels) float32 (average of n_repeats noisy trials)
    weights: np.ndarray  # (n_features, n_voxels) true encoding weights
    features_train: np.ndarray  # (n_train, n_features) true features
    features_test: np.ndarray


def draw_toy_stimuli(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[list[str]]]:
    """Procedural images: one shape of a named colour over a smooth two-colour gradient.

    Returns
    -------
    images : ndarray (n, size, size, 3) uint8
    captions : list of list of str
        Two captions per image naming colour, shape and position.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    names = list(_COLOURS)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    captions: list[list[str]] = []
    for i in range(n):
        c0, c1 = rng.uniform(40, 200, size=(2, 3))
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * xx + np.sin(angle) * yy
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
        img = c0[None, None, :] * (1 - ramp[..., None]) + c1[None, None, :] * ramp[..., None]
        shape = _SHAPES[rng.integers(len(_SHAPES))]
        colour = names[rng.integers(len(names))]
        cx, cy = rng.uniform(0.25, 0.75, size=2)
        rx, ry = rng.uniform(0.1, 0.3, size=2)
        if shape == "ellipse":
            mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
        else:
            mask = (np.abs(xx - cx) <= rx) & (np.abs(yy - cy) <= ry)
        img[mask] = _COLOURS[colour]
        images[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        horiz = "left" if cx < 0.45 else "right" if cx > 0.55 else "centre"
        vert = "top" if cy < 0.45 else "bottom" if cy > 0.55 else "middle"
        captions.append([f"a {colour} {shape} on the {horiz}", f"a {colour} {shape} at the {vert} {horiz}"])
    return images, captions


def _features(images: np.ndarray, k: int) -> np.ndarray:
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    coef = dctn(x, axes=(-2, -1), norm="ortho")[..., :k, :k]
    return coef.reshape(len(images), -1).astype(np.float32)


def make_toy_experiment(
    n_train: int = 200,
    n_test: int = 20,
    n_voxels: int = 500,
    image_size: int = 32,
    n_repeats: int = 3,
    snr: float = 1.0,
    n_frequencies: int = 6,
    seed: int = 0,
) -> ToyExperiment:
    """Draw a toy experiment.

    Parameters
    ----------
    n_train, n_test : int
        Numbers of training and test images (training images are seen once,
        test images ``n_repeats`` times and averaged, as in GOD).
    n_voxels : int
        Number of voxels.
    image_size : int
        Side of the square stimuli.
    snr : float
        Ratio of signal to noise standard deviation for a single trial.
    n_frequencies : int
        The voxels see the ``n_frequencies`` x ``n_frequencies`` lowest DCT
        frequencies of each colour channel.
    seed : int
        Seed of every random draw.
    """
    rng = np.random.default_rng(seed)
    stim_tr, cap_tr = draw_toy_stimuli(n_train, image_size, rng)
    stim_te, cap_te = draw_toy_stimuli(n_test, image_size, rng)
    f_tr = _features(stim_tr, n_frequencies)
    f_te = _features(stim_te, n_frequencies)
    mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-6
    W = rng.standard_normal((f_tr.shape[1], n_voxels)).astype(np.float32) / np.sqrt(f_tr.shape[1])
    s_tr = ((f_tr - mu) / sd) @ W
    s_te = ((f_te - mu) / sd) @ W
    noise_sd = float(s_tr.std()) / snr
    X_tr = s_tr + noise_sd * rng.standard_normal(s_tr.shape).astype(np.float32)
    reps = np.stack([s_te + noise_sd * rng.standard_normal(s_te.shape).astype(np.float32) for _ in range(n_repeats)])
    return ToyExperiment(
        stimuli_train=stim_tr,
        stimuli_test=stim_te,
        captions_train=cap_tr,
        captions_test=cap_te,
        X_train=X_tr.astype(np.float32),
        X_test=reps.mean(0).astype(np.float32),
        weights=W,
        features_train=f_tr,
        features_test=f_te,
    )
