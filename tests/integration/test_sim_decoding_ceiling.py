"""The simulated ground truth is usable for checking decoders (issue 3, acceptance 4).

Ridge from the voxels (as the pipeline prepares them: the real NSD loader, repeats averaged,
z-scored with training statistics, alpha chosen by leave-one-out on training data only) to the
simulator's true features must approach the best linear decoder under the known model
(:func:`brainrecon.sim.ceiling.oracle_decoding`) from below: the median test correlation of
ridge must lie between 85 % and 101 % of the oracle's.
"""

from __future__ import annotations

import numpy as np
import pytest

from brainrecon.data.nsd import prepare_subject
from brainrecon.decoding.ridge import RidgeDecoder
from brainrecon.sim import SimConfig, load_truth, simulate_nsd
from brainrecon.sim.ceiling import oracle_decoding

MARGIN = 0.85  # ridge reaches at least this fraction of the oracle's median correlation


def _pearson_cols(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1), np.nan)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim") / "nsd"
    cfg = SimConfig(n_train=500, n_test=80, n_voxels=1000, image_size=64, seed=3)
    simulate_nsd(root, cfg, progress=False)
    return root, load_truth(root)


def test_ridge_reaches_the_known_decoding_ceiling(sim):
    root, truth = sim
    prep = prepare_subject(root, 1, progress=False)
    np.testing.assert_array_equal(prep.train_ids, truth.train_image_ids)
    np.testing.assert_array_equal(prep.test_ids, truth.test_image_ids)
    Y_train = truth.features[prep.train_ids].astype(np.float32)
    Y_test = truth.features[prep.test_ids].astype(np.float32)
    dec = RidgeDecoder(alphas=np.logspace(0, 6, 13), cv="loo").fit(np.asarray(prep.X_train), Y_train)
    r_ridge = _pearson_cols(Y_test, dec.predict(np.asarray(prep.X_test)))
    r_oracle = oracle_decoding(truth)["r"]
    ok = np.isfinite(r_ridge) & np.isfinite(r_oracle)
    med_ridge, med_oracle = float(np.median(r_ridge[ok])), float(np.median(r_oracle[ok]))
    print(f"median test r: ridge {med_ridge:.3f}, oracle {med_oracle:.3f}, ratio {med_ridge / med_oracle:.3f}")
    assert med_oracle > 0.2, "the simulated features should be decodable at all"
    assert MARGIN * med_oracle <= med_ridge <= 1.01 * med_oracle


def test_decoding_with_shuffled_betas_is_at_chance(sim):
    """The same check fails when the betas no longer match the images (the test can fail)."""
    root, truth = sim
    prep = prepare_subject(root, 1, progress=False)
    rng = np.random.default_rng(0)
    X_train = np.asarray(prep.X_train)[rng.permutation(len(prep.train_ids))]
    dec = RidgeDecoder(alphas=np.logspace(0, 6, 13), cv="loo").fit(X_train, truth.features[prep.train_ids])
    r = _pearson_cols(truth.features[prep.test_ids], dec.predict(np.asarray(prep.X_test)))
    assert abs(float(np.nanmedian(r))) < 0.15
