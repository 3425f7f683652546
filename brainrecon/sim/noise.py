"""Trial-to-trial noise, session effects and the noise ceiling (NSD's ncsnr).

Model of the beta of trial ``t`` (session ``s``, position ``p`` of ``T_s`` trials) at voxel ``v``,
in percent signal change::

    beta = response[image(t), v] + offset[s, v] + slope[s, v] * ramp(p) + noise_sd[v] * eps

with ``eps ~ N(0, 1)`` independent over trials and voxels, ``offset ~ N(0, (session_offset_sd *
noise_sd)^2)``, ``slope ~ N(0, (drift_sd * noise_sd)^2)`` and ``ramp(p) = sqrt(3) * (2 (p + 0.5) /
T_s - 1)`` (a linear drift of unit variance over the session).

True ncsnr (``true_ncsnr``): ``signal_sd / (noise_sd * sqrt(1 + drift_sd^2))`` where
``signal_sd`` is the s.d. of the noise-free response over the subject's images; session offsets
are excluded because the NSD procedure z-scores each session, and the drift is counted as
noise because within-session z-scoring does not remove it.

Estimated ncsnr (:func:`estimate_ncsnr`, the value written to ``ncsnr.nii.gz``), as NSD computes
it: z-score each voxel within each session, take for each image with >= 2 trials the variance
over its trials (ddof=1), average over images -> noise variance; signal variance =
max(1 - noise variance, 0); ncsnr = sqrt(signal variance / noise variance).

Noise ceiling of an average of ``n`` trials, in percent: ``100 * ncsnr^2 / (ncsnr^2 + 1/n)``.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse


def noise_ceiling(ncsnr: np.ndarray, n_trials: int = 3) -> np.ndarray:
    """NSD noise ceiling (percent of variance) of ``n_trials``-trial averages."""
    s2 = np.asarray(ncsnr, dtype=np.float64) ** 2
    return (100.0 * s2 / (s2 + 1.0 / n_trials)).astype(np.float32)


def ncsnr_for_ceiling(nc_percent: float, n_trials: int = 3) -> float:
    """Inverse of :func:`noise_ceiling`: the ncsnr whose ``n_trials`` ceiling is ``nc_percent``."""
    f = nc_percent / 100.0
    return float(np.sqrt(f / ((1.0 - f) * n_trials)))


def ramp(n: int) -> np.ndarray:
    """Linear drift profile of unit variance and zero mean over ``n`` trials."""
    return (np.sqrt(3.0) * (2.0 * (np.arange(n) + 0.5) / n - 1.0)).astype(np.float64)


def session_bounds(n_trials: int, trials_per_session: int) -> list[tuple[int, int]]:
    """[start, stop) trial ranges of consecutive sessions (the last may be shorter)."""
    return [(s, min(s + trials_per_session, n_trials)) for s in range(0, n_trials, trials_per_session)]


def simulate_trials(
    responses: np.ndarray,
    trial_image: np.ndarray,
    bounds: list[tuple[int, int]],
    noise_sd: np.ndarray,
    session_offset_sd: float,
    drift_sd: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Betas (n_trials, n_voxels) float64 in percent, plus the session offsets and drift slopes.

    ``responses`` is (n_images, n_voxels) noise-free, indexed by ``trial_image``.
    """
    n_vox = responses.shape[1]
    betas = np.empty((len(trial_image), n_vox), dtype=np.float64)
    offsets = np.empty((len(bounds), n_vox))
    slopes = np.empty((len(bounds), n_vox))
    for s, (a, b) in enumerate(bounds):
        offsets[s] = rng.normal(0.0, 1.0, n_vox) * session_offset_sd * noise_sd
        slopes[s] = rng.normal(0.0, 1.0, n_vox) * drift_sd * noise_sd
        eps = rng.standard_normal((b - a, n_vox))
        betas[a:b] = (
            responses[trial_image[a:b]]
            + offsets[s][None, :]
            + ramp(b - a)[:, None] * slopes[s][None, :]
            + eps * noise_sd[None, :]
        )
    return betas, offsets, slopes


def estimate_ncsnr(betas: np.ndarray, trial_image: np.ndarray, bounds: list[tuple[int, int]]) -> np.ndarray:
    """NSD-style ncsnr per voxel from single-trial betas (see the module docstring)."""
    z = np.empty(betas.shape, dtype=np.float64)
    for a, b in bounds:
        x = betas[a:b].astype(np.float64)
        sd = x.std(axis=0, ddof=1) if b - a > 1 else np.ones(x.shape[1])
        z[a:b] = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    counts = np.bincount(trial_image)
    keep = counts[trial_image] >= 2
    img = trial_image[keep]
    zk = z[keep]
    n_img = counts.size
    # per-image sums through a sparse indicator matrix (much faster than np.add.at)
    ind = sparse.csr_matrix((np.ones(len(img)), (img, np.arange(len(img)))), shape=(n_img, len(img)))
    sums = np.asarray(ind @ zk)
    sq = np.asarray(ind @ zk**2)
    c = counts[:, None].astype(np.float64)
    ok = counts >= 2
    var = (sq[ok] - sums[ok] ** 2 / c[ok]) / (c[ok] - 1.0)  # per-image variance over repeats, ddof=1
    noise_var = var.mean(axis=0)
    signal_var = np.maximum(1.0 - noise_var, 0.0)
    return np.sqrt(signal_var / np.maximum(noise_var, 1e-12)).astype(np.float32)
