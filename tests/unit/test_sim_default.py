"""The default simulated experiment at full size (about 20 s of CPU; marked slow).

Run with ``pytest -m slow tests/unit/test_sim_default.py``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.linear_model import RidgeCV

from brainrecon.sim import FLOC_CATEGORY, SimConfig, simulate_nsd
from brainrecon.sim.ceiling import averaged_betas, oracle_decoding

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    t0 = time.perf_counter()
    truth = simulate_nsd(tmp_path_factory.mktemp("sim") / "nsd", SimConfig(), progress=False)
    return truth, time.perf_counter() - t0


def test_default_size_and_time(default):
    truth, seconds = default
    cfg = SimConfig()
    assert truth.betas.shape == (3900, cfg.n_voxels)
    assert len(truth.train_image_ids) == 1200 and len(truth.test_image_ids) == 100
    assert seconds < 120.0, f"default simulation took {seconds:.1f} s (issue 3: under 2 minutes)"


def test_default_noise_ceiling_is_nsd_like(default):
    truth, _ = default
    inside = truth.roi_mask("nsdgeneral")
    assert 20.0 <= np.median(truth.noise_ceiling_3trial[inside]) <= 40.0
    assert 20.0 <= np.median(truth.true_noise_ceiling_3trial[inside]) <= 40.0
    # the NSD-style estimate written to ncsnr.nii.gz is close to the known value
    assert np.corrcoef(truth.ncsnr, truth.true_ncsnr)[0, 1] > 0.97
    m = truth.true_ncsnr > 0.2
    rel = np.abs(truth.ncsnr[m] - truth.true_ncsnr[m]) / truth.true_ncsnr[m]
    assert np.median(rel) < 0.1


def test_default_category_rois_and_decodability(default):
    truth, _ = default
    for roi, cat in FLOC_CATEGORY.items():
        has = truth.semantics[:, truth.categories.index(cat)] > 0
        r = truth.responses[:, truth.roi_mask(roi)].mean(axis=1)
        assert r[has].mean() > r[~has].mean() + r.std(), roi
    oracle = oracle_decoding(truth)["r"]
    assert np.nanmedian(oracle[: -len(truth.categories)]) > 0.3


def test_default_coarse_colour_images_are_decodable(default):
    """Acceptance of the luminance/colour block: ridge from voxels to 8x8 RGB test images."""
    truth, _ = default
    tr, te = truth.train_image_ids, truth.test_image_ids
    x_tr, x_te = averaged_betas(truth, tr).astype(np.float64), averaged_betas(truth, te).astype(np.float64)
    mu, sd = x_tr.mean(axis=0), x_tr.std(axis=0)

    def tiny(ids):
        im = truth.stimuli(ids).astype(np.float64) / 255.0
        n, s = im.shape[:2]
        return im.reshape(n, 8, s // 8, 8, s // 8, 3).mean(axis=(2, 4)).reshape(n, -1)

    ridge = RidgeCV(alphas=np.logspace(0, 7, 8), alpha_per_target=True).fit((x_tr - mu) / sd, tiny(tr))
    pred, true = ridge.predict((x_te - mu) / sd), tiny(te)
    r = np.corrcoef(pred, true)[: len(te), len(te) :]  # r[i, j]: decoded i vs true j
    pixcorr = np.diag(r).mean()
    two_way = np.mean([(r[i, i] > np.delete(r[i], i)).mean() for i in range(len(te))])
    assert pixcorr >= 0.3 and two_way >= 0.9, (pixcorr, two_way)
