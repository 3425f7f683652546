"""Noise model and NSD's ncsnr / noise ceiling."""

from __future__ import annotations

import numpy as np
import pytest

from brainrecon.sim.noise import (
    estimate_ncsnr,
    ncsnr_for_ceiling,
    noise_ceiling,
    ramp,
    session_bounds,
    simulate_trials,
)


def test_noise_ceiling_hand_values():
    np.testing.assert_allclose(noise_ceiling(np.array([0.0, 1.0, np.sqrt(1 / 3)]), 3), [0.0, 75.0, 50.0], rtol=1e-6)
    np.testing.assert_allclose(noise_ceiling(np.array([1.0]), 1), [50.0])
    assert ncsnr_for_ceiling(75.0, 3) == pytest.approx(1.0)
    assert ncsnr_for_ceiling(50.0, 3) == pytest.approx(np.sqrt(1 / 3))


def test_ramp_and_sessions():
    r = ramp(750)
    assert abs(r.mean()) < 1e-12 and r.var() == pytest.approx(1.0, rel=1e-5)
    assert session_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]


def test_estimate_ncsnr_hand_worked():
    trial_image = np.array([0, 0, 1, 1])
    betas = np.array([[1.0, 1.0], [3.0, 1.2], [2.0, 3.0], [4.0, 3.2]])
    est = estimate_ncsnr(betas, trial_image, [(0, 4)])
    # voxel 0: within-image variance of the z-scores is 1.2 > 1 -> no signal
    assert est[0] == 0.0
    # voxel 1: z-score s.d. sqrt(4.04 / 3); within-image variance (0.2 / sd)^2 / 2 = 0.12 / 8.08
    nv = 0.12 / 8.08
    assert est[1] == pytest.approx(np.sqrt((1 - nv) / nv), rel=1e-5)


def test_estimate_ncsnr_recovers_known_snr_despite_session_effects():
    rng = np.random.default_rng(0)
    n_img, n_rep, n_vox = 1500, 3, 6
    snr = np.array([0.1, 0.2, 0.4, 0.6, 1.0, 2.0])
    resp = rng.normal(size=(n_img, n_vox)) * snr  # signal s.d. = snr, noise s.d. = 1
    trial_image = rng.permutation(np.repeat(np.arange(n_img), n_rep))
    bounds = session_bounds(len(trial_image), 750)
    betas, offsets, slopes = simulate_trials(resp, trial_image, bounds, np.ones(n_vox), 2.0, 0.0, rng)
    assert offsets.shape == slopes.shape == (len(bounds), n_vox)
    assert np.all(slopes == 0)
    est = estimate_ncsnr(betas, trial_image, bounds)
    true = resp.std(axis=0)
    # the sampling error of the estimate is about 0.03 in absolute terms plus a few percent
    np.testing.assert_allclose(est[1:], true[1:], rtol=0.08, atol=0.05)
    assert est[0] < 0.2
    # without per-session z-scoring, the large offsets would inflate the noise estimate; check
    # that the estimate is insensitive to them by comparing with an offset-free copy
    clean = betas.copy()
    for s, (a, b) in enumerate(bounds):
        clean[a:b] -= offsets[s]
    np.testing.assert_allclose(estimate_ncsnr(clean, trial_image, bounds), est, rtol=0.05, atol=0.02)
