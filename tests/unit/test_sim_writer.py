"""The simulated NSD on disk: layout, consistency with the ground truth, determinism.

Files are read back here independently with h5py / nibabel / scipy.io (not through the NSD
loader), and expectations are recomputed from the raw files.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io

from brainrecon.errors import ConfigError, MissingDataError
from brainrecon.sim import SimConfig, load_truth, simulate_nsd

# 180 trials in sessions of 70: the last session is partial (40 trials)
SMALL = SimConfig(n_train=50, n_test=10, n_repeats=3, image_size=32, n_voxels=300, trials_per_session=70, seed=3)
SUB = "subj01"


def _betas_dir(root: Path) -> Path:
    return root / "nsddata_betas" / "ppdata" / SUB / "func1pt8mm" / "betas_fithrf_GLMdenoise_RR"


def _roi_dir(root: Path) -> Path:
    return root / "nsddata" / "ppdata" / SUB / "func1pt8mm" / "roi"


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim") / "nsd"
    truth = simulate_nsd(root, SMALL, progress=False)
    return root, truth


def test_layout_files_exist_and_open(sim):
    root, truth = sim
    n_sessions = int(np.ceil(SMALL.n_trials / SMALL.trials_per_session))
    assert (root / "nsddata/experiments/nsd/nsd_expdesign.mat").is_file()
    bdir = _betas_dir(root)
    names = sorted(p.name for p in bdir.iterdir())
    expected = sorted(
        [f"betas_session{s:02d}.{e}" for s in range(1, n_sessions + 1) for e in ("nii.gz", "hdf5")] + ["ncsnr.nii.gz"]
    )
    assert names == expected
    rois = sorted(p.name for p in _roi_dir(root).iterdir())
    assert rois == sorted(
        f"{n}.nii.gz"
        for n in ("nsdgeneral", "prf-visualrois", "prf-eccrois", "floc-faces", "floc-places", "floc-bodies", "floc-words")
    )
    assert (root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5").is_file()
    assert (root / "nsddata_stimuli/stimuli/nsd/annotations/COCO_73k_annots_curated.npy").is_file()
    # every volume shares one grid: same shape and a 2 mm, MNI-coded affine
    shapes, affines = set(), []
    for p in list(bdir.glob("*.nii.gz")) + list(_roi_dir(root).glob("*.nii.gz")):
        img = nib.load(p)
        shapes.add(img.shape[:3])
        affines.append(img.affine)
        assert int(img.header["sform_code"]) == 4
    assert len(shapes) == 1
    for a in affines:
        np.testing.assert_allclose(a, affines[0])
    np.testing.assert_allclose(np.abs(np.diag(affines[0])[:3]), [2.0, 2.0, 2.0])
    assert [p for p in root.parent.iterdir() if ".sim-tmp-" in p.name] == []


def test_betas_files_match_truth(sim):
    root, truth = sim
    bdir = _betas_dir(root)
    i, j, k = truth.voxel_ijk.T
    start = 0
    for s in range(1, int(truth.trial_session.max()) + 1):
        nii = nib.load(bdir / f"betas_session{s:02d}.nii.gz")
        assert nii.get_data_dtype() == np.int16
        vol = np.asarray(nii.dataobj)
        assert vol.dtype == np.int16 and vol.ndim == 4
        with h5py.File(bdir / f"betas_session{s:02d}.hdf5", "r") as f:
            h5 = f["betas"][()]
        assert h5.dtype == np.int16
        assert h5.shape == vol.shape[::-1]
        np.testing.assert_array_equal(h5, vol.transpose(3, 2, 1, 0))
        n = vol.shape[3]
        expected_n = min(SMALL.trials_per_session, SMALL.n_trials - start)
        assert n == expected_n
        np.testing.assert_array_equal(truth.trial_session[start : start + n], s)
        # truth.betas is exactly int16 / 300 at the voxel positions
        np.testing.assert_array_equal(vol[i, j, k, :].T.astype(np.float32) / np.float32(300.0), truth.betas[start : start + n])
        # voxels outside nsdgeneral are not simulated (0)
        outside = np.ones(vol.shape[:3], bool)
        outside[i, j, k] = False
        assert not vol[outside].any()
        start += n
    assert start == SMALL.n_trials == truth.betas.shape[0]
    assert truth.betas.dtype == np.float32 and truth.betas.shape == (SMALL.n_trials, SMALL.n_voxels)


def test_expdesign_and_split_match_truth(sim):
    root, truth = sim
    d = scipy.io.loadmat(root / "nsddata/experiments/nsd/nsd_expdesign.mat")
    mo = d["masterordering"].ravel().astype(int)
    subjectim = d["subjectim"].astype(int)
    sharedix = d["sharedix"].ravel().astype(int)
    assert subjectim.shape == (8, SMALL.n_images)
    assert mo.shape == (SMALL.n_trials,)
    assert mo.min() == 1 and mo.max() == SMALL.n_images
    np.testing.assert_array_equal(mo - 1, truth.trial_image_index)
    np.testing.assert_array_equal(subjectim[0] - 1, truth.subject_image_ids)
    np.testing.assert_array_equal(sharedix - 1, truth.shared_ids)
    assert np.all(np.diff(sharedix) > 0)
    # NSD convention: the first n_shared columns of every subject's list are the shared images
    for row in subjectim:
        assert set(row[: len(sharedix)]) == set(sharedix)
        assert len(set(row)) == SMALL.n_images
    # every image shown n_repeats times
    assert np.all(np.bincount(mo - 1) == SMALL.n_repeats)
    # Brain-Diffuser split, recomputed with its loop: test = masterordering <= n_shared
    train, test = {}, {}
    for t, m in enumerate(mo):
        nsd_id = subjectim[0, m - 1] - 1
        (test if m <= len(sharedix) else train).setdefault(nsd_id, []).append(t)
    np.testing.assert_array_equal(list(train), truth.train_image_ids)
    np.testing.assert_array_equal(list(test), truth.test_image_ids)
    assert len(train) == SMALL.n_train and len(test) == SMALL.n_test


def test_rois_and_ncsnr_volumes(sim):
    root, truth = sim
    i, j, k = truth.voxel_ijk.T
    gen = np.asarray(nib.load(_roi_dir(root) / "nsdgeneral.nii.gz").dataobj)
    assert gen.shape == truth.volume_shape
    # voxel order = np.nonzero order of the NIfTI array (what a loader gets with vol[mask])
    np.testing.assert_array_equal(np.stack(np.nonzero(gen > 0), axis=1), truth.voxel_ijk)
    assert set(np.unique(gen)) == {-1, 0, 1}
    for name, labels in truth.roi_labels.items():
        vol = np.asarray(nib.load(_roi_dir(root) / f"{name}.nii.gz").dataobj)
        assert np.issubdtype(vol.dtype, np.integer)
        # same -1 (outside brain) pattern in every ROI file
        np.testing.assert_array_equal(vol == -1, gen == -1)
        np.testing.assert_array_equal(vol[i, j, k], labels)
        # labelled voxels are exactly the simulated ones that carry the label
        assert int((vol > 0).sum()) == int((labels > 0).sum())
    ncs = nib.load(_betas_dir(root) / "ncsnr.nii.gz")
    assert ncs.get_data_dtype() == np.float32 and ncs.shape == truth.volume_shape
    np.testing.assert_array_equal(np.asarray(ncs.dataobj)[i, j, k], truth.ncsnr)
    # the brain mask of the ROI files is nilearn's MNI152 mask cropped with the affine
    from nilearn.datasets import load_mni152_brain_mask

    mni = load_mni152_brain_mask(resolution=2)
    aff = nib.load(_roi_dir(root) / "nsdgeneral.nii.gz").affine
    offset = np.linalg.solve(mni.affine, aff)[:3, 3].round().astype(int)
    np.testing.assert_allclose(np.linalg.solve(mni.affine, aff)[:3, :3], np.eye(3), atol=1e-9)
    sub = np.asarray(mni.dataobj)[tuple(slice(o, o + n) for o, n in zip(offset, gen.shape))] > 0
    np.testing.assert_array_equal(gen >= 0, sub)


def test_stimuli_and_captions_files(sim):
    root, truth = sim
    with h5py.File(root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5", "r") as f:
        brick = f["imgBrick"]
        assert brick.dtype == np.uint8
        assert brick.shape == (SMALL.n_images, SMALL.image_size, SMALL.image_size, 3)
        first = brick[3]
    np.testing.assert_array_equal(truth.stimuli([3])[0], first)
    # unordered and repeated ids are served in the requested order
    ids = [5, 1, 5]
    got = truth.stimuli(ids)
    np.testing.assert_array_equal(got[0], got[2])
    np.testing.assert_array_equal(got[1], truth.stimuli([1])[0])
    caps = np.load(root / "nsddata_stimuli/stimuli/nsd/annotations/COCO_73k_annots_curated.npy", allow_pickle=False)
    assert caps.dtype.kind == "U" and caps.shape == (SMALL.n_images, 5)
    np.testing.assert_array_equal(caps, truth.captions)
    assert all(len(c) > 0 for c in caps.ravel())


def test_truth_noise_ceiling_consistency(sim):
    root, truth = sim
    s2 = truth.ncsnr.astype(np.float64) ** 2
    np.testing.assert_allclose(truth.noise_ceiling_3trial, 100 * s2 / (s2 + 1 / 3), rtol=1e-5)
    # recompute NSD's ncsnr from the written betas with a plain loop
    z = np.empty_like(truth.betas, dtype=np.float64)
    for s in np.unique(truth.trial_session):
        m = truth.trial_session == s
        x = truth.betas[m].astype(np.float64)
        z[m] = (x - x.mean(0)) / x.std(0, ddof=1)
    ids = truth.trial_image_ids
    variances = [z[ids == u].var(0, ddof=1) for u in np.unique(ids)]
    noise_var = np.mean(variances, axis=0)
    expected = np.sqrt(np.maximum(1 - noise_var, 0) / noise_var)
    np.testing.assert_allclose(truth.ncsnr, expected, rtol=1e-4, atol=1e-5)
    # the true noise ceiling is calibrated to the configured median; the estimate is NSD-like
    assert abs(np.median(truth.true_noise_ceiling_3trial) - SMALL.median_noise_ceiling) < 0.5
    assert 20.0 <= np.median(truth.noise_ceiling_3trial) <= 40.0
    # with only 60 images the estimate is noisy, but it tracks the known value
    assert np.corrcoef(truth.ncsnr, truth.true_ncsnr)[0, 1] > 0.75
    assert np.median(np.abs(truth.ncsnr - truth.true_ncsnr)) < 0.2


def test_truth_responses_match_model_and_files(sim):
    root, truth = sim
    model = truth.model()
    images = truth.stimuli()
    pred = model.predict(images)
    np.testing.assert_allclose(pred, truth.responses, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model.features(images), truth.features, rtol=1e-5, atol=1e-6)
    # residual of the written betas around the noise-free response has the stated noise level
    resid = truth.betas - truth.responses[truth.trial_image_ids]
    # remove session offsets and drifts, known from the truth
    for s in np.unique(truth.trial_session):
        m = truth.trial_session == s
        n = int(m.sum())
        ramp = np.sqrt(3.0) * (2.0 * (np.arange(n) + 0.5) / n - 1.0)
        resid[m] -= truth.session_offsets[s - 1] + ramp[:, None] * truth.drift_slopes[s - 1]
    ratio = resid.std(0) / truth.noise_sd
    assert 0.85 < np.median(ratio) < 1.15
    # signal s.d. over the subject's images is the documented one
    np.testing.assert_allclose(truth.responses[truth.subject_image_ids].std(0), truth.signal_sd, rtol=1e-3)


def test_idempotent_and_refuses_other_content(sim, tmp_path):
    root, truth = sim
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = simulate_nsd(root, SMALL, progress=False)
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    assert before == after
    np.testing.assert_array_equal(again.betas, truth.betas)
    with pytest.raises(ConfigError, match="another configuration"):
        simulate_nsd(root, SimConfig(**{**SMALL.to_json(), "seed": 99}), progress=False)
    other = tmp_path / "not_a_sim"
    other.mkdir()
    (other / "something.txt").write_text("user data")
    with pytest.raises(ConfigError, match="new or empty folder"):
        simulate_nsd(other, SMALL, progress=False)
    assert (other / "something.txt").read_text() == "user data"
    with pytest.raises(MissingDataError):
        load_truth(tmp_path / "nothing_here")
    with pytest.raises(ConfigError, match="n_repeats"):
        simulate_nsd(tmp_path / "x", SimConfig(n_repeats=1), progress=False)


def test_determinism_same_seed_bytes_different_seed_differs(sim, tmp_path):
    root, truth = sim
    twin = simulate_nsd(tmp_path / "twin", SMALL, progress=False)
    a, b = _digest(root), _digest(tmp_path / "twin")
    assert a.keys() == b.keys()
    differing = [k for k in a if a[k] != b[k]]
    assert differing == []
    np.testing.assert_array_equal(twin.betas, truth.betas)
    other = simulate_nsd(tmp_path / "other", SimConfig(**{**SMALL.to_json(), "seed": 4}), progress=False)
    assert not np.array_equal(other.betas, truth.betas)
    assert not np.array_equal(other.stimuli([0]), truth.stimuli([0]))
    c = _digest(tmp_path / "other")
    assert a["nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"] != c["nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"]


def test_interrupted_run_leaves_no_root(tmp_path, monkeypatch):
    """A failure while writing leaves neither a partial root nor a temporary folder."""
    import brainrecon.sim.writer as w

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(w, "_write_mat", boom)
    root = tmp_path / "nsd"
    with pytest.raises(RuntimeError, match="disk full"):
        simulate_nsd(root, SMALL, progress=False)
    assert not root.exists()
    assert os.listdir(tmp_path) == []
