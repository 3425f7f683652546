"""Acceptance 1: the simulated NSD read through brainrecon.data.nsd gives the simulator's arrays.

A small simulation (70 images, 300 voxels, 5 sessions with a short last one) is written in the
real NSD layout by ``brainrecon.sim``; the NSD loader must return exactly its ground truth:
single-trial betas, the Brain-Diffuser split, voxel coordinates, ROI labels, stimuli,
captions and ncsnr. Averaging and z-scoring are checked against computations from the truth.
"""

from __future__ import annotations

import numpy as np
import pytest

from brainrecon.data import nsd

try:
    from brainrecon.sim import SimConfig, simulate_nsd  # public API once exported
except ImportError:
    try:
        from brainrecon.sim.truth import SimConfig
        from brainrecon.sim.writer import simulate_nsd
    except ImportError as exc:  # pragma: no cover - the simulator is part of the package
        pytest.skip(f"brainrecon.sim.simulate_nsd not available: {exc}", allow_module_level=True)

CONFIG = dict(n_train=60, n_test=10, n_voxels=300, image_size=32, trials_per_session=50, seed=3)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("simnsd") / "nsd"
    truth = simulate_nsd(root, SimConfig(**CONFIG), progress=False)
    return root, truth


@pytest.mark.parametrize("fmt", ["hdf5", "nifti"])
def test_single_trials_equal_simulator_betas(sim, fmt):
    root, truth = sim
    prep = nsd.prepare_subject(root, CONFIG.get("subject", 1), average_repeats=False,
                               zscore="none", beta_format=fmt, progress=False)
    is_test = truth.trial_image_index < truth.config.n_test  # masterordering <= n_shared
    np.testing.assert_array_equal(prep.voxel_ijk, truth.voxel_ijk)
    np.testing.assert_array_equal(prep.X_train, truth.betas[~is_test])
    np.testing.assert_array_equal(prep.X_test, truth.betas[is_test])
    np.testing.assert_array_equal(prep.train_ids, truth.trial_image_ids[~is_test])
    np.testing.assert_array_equal(prep.test_ids, truth.trial_image_ids[is_test])
    assert prep.info["n_constant_voxels_dropped"] == 0
    assert prep.volume_shape == tuple(truth.volume_shape)
    np.testing.assert_allclose(prep.affine, truth.affine)
    n_sessions = int(truth.trial_session.max())
    assert prep.info["sessions"] == list(range(1, n_sessions + 1))
    exp_counts = {str(s): int((truth.trial_session == s).sum()) for s in range(1, n_sessions + 1)}
    assert prep.info["trials_per_session"] == exp_counts


def test_split_averages_and_rois_equal_truth(sim):
    root, truth = sim
    prep = nsd.prepare_subject(root, 1, zscore="none", progress=False)
    np.testing.assert_array_equal(prep.train_ids, truth.train_image_ids)
    np.testing.assert_array_equal(prep.test_ids, truth.test_image_ids)
    assert set(prep.test_ids.tolist()) == set(truth.shared_ids.tolist())
    ids = truth.trial_image_ids
    for X, split_ids in ((prep.X_train, truth.train_image_ids), (prep.X_test, truth.test_image_ids)):
        expected = np.stack([truth.betas[ids == i].astype(np.float64).mean(0) for i in split_ids])
        np.testing.assert_allclose(X, expected, rtol=1e-6, atol=1e-6)
    assert sorted(prep.roi_labels) == sorted(truth.roi_labels)
    for name, lab in truth.roi_labels.items():
        np.testing.assert_array_equal(prep.roi_labels[name], lab, err_msg=name)
    np.testing.assert_array_equal(nsd.read_ncsnr(root, 1, prep.voxel_ijk), truth.ncsnr)


def test_zscore_modes_from_truth(sim):
    root, truth = sim
    prep = nsd.prepare_subject(root, 1, zscore="train", progress=False)
    ids = truth.trial_image_ids
    tr = np.stack([truth.betas[ids == i].astype(np.float64).mean(0) for i in truth.train_image_ids])
    te = np.stack([truth.betas[ids == i].astype(np.float64).mean(0) for i in truth.test_image_ids])
    mu, sd = tr.mean(0), tr.std(0, ddof=1)
    np.testing.assert_allclose(prep.X_train, (tr - mu) / sd, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(prep.X_test, (te - mu) / sd, rtol=1e-4, atol=1e-5)
    ses = nsd.prepare_subject(root, 1, zscore="session", average_repeats=False, progress=False)
    z = truth.betas.astype(np.float64).copy()
    for s in np.unique(truth.trial_session):
        m = truth.trial_session == s
        z[m] = (z[m] - z[m].mean(0)) / z[m].std(0, ddof=1)
    is_test = truth.trial_image_index < truth.config.n_test
    np.testing.assert_allclose(ses.X_train, z[~is_test], rtol=1e-4, atol=1e-5)


def test_stimuli_and_captions_equal_truth(sim):
    root, truth = sim
    ids = np.concatenate([truth.test_image_ids, truth.train_image_ids[:7]])
    np.testing.assert_array_equal(nsd.read_stimuli(root, ids), truth.stimuli(ids))
    caps = nsd.read_captions(root, ids)
    assert caps == [[c for c in truth.captions[i] if c.strip()] for i in ids]
    assert all(len(c) > 0 for c in caps)
