"""Reference decoding accuracy of the simulated experiment (oracle linear decoder)."""

from __future__ import annotations

import numpy as np
import pytest

from brainrecon.sim import SimConfig, simulate_nsd
from brainrecon.sim.ceiling import averaged_betas, oracle_decoding

SMALL = SimConfig(n_train=80, n_test=20, image_size=32, n_voxels=300, trials_per_session=100, seed=1)


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    return simulate_nsd(tmp_path_factory.mktemp("sim") / "nsd", SMALL, progress=False)


def test_averaged_betas_plain_loop(truth):
    ids = truth.test_image_ids[::-1]
    expected = np.stack([truth.betas[truth.trial_image_ids == i].mean(axis=0) for i in ids])
    np.testing.assert_allclose(averaged_betas(truth, ids), expected, rtol=1e-5, atol=1e-5)


def test_oracle_matches_primal_formula(truth):
    out = oracle_decoding(truth)
    cfg = truth.config
    r = truth.responses[truth.train_image_ids].astype(np.float64)
    y = truth.features[truth.train_image_ids].astype(np.float64)
    rc, yc = r - r.mean(0), y - y.mean(0)
    n = len(r)
    noise = truth.noise_sd.astype(np.float64) ** 2 * (1 + cfg.drift_sd**2 + cfg.session_offset_sd**2) / cfg.n_repeats
    c_rr = rc.T @ rc / n + np.diag(noise)
    c_yr = yc.T @ rc / n
    x = averaged_betas(truth, truth.test_image_ids).astype(np.float64) - r.mean(0)
    pred = y.mean(0) + np.linalg.solve(c_rr, x.T).T @ c_yr.T
    np.testing.assert_allclose(out["prediction"], pred, rtol=1e-3, atol=1e-4)
    assert out["r"].shape == (truth.features.shape[1],)
    # the semantic features of the four floc categories are well decodable
    for cat in ("face", "body", "building", "word"):
        assert out["r"][truth.feature_names.index(f"semantic/{cat}")] > 0.5
