"""brainrecon.data.nsd on tiny files written here in the real NSD layout.

The fixture: a 6x5x4 volume, 2 sessions x 12 trials, 8 images per subject (2 shared), 20 images
in the brick. One voxel ("A") holds 300 x the masterordering value of each trial, so its
averages and z-scores can be worked out by hand; one voxel ("B") is constant; the other ROI
voxels hold random int16 values checked against a plain loop written here.
"""

from __future__ import annotations

import gzip
import warnings

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io

from brainrecon.data import nsd
from brainrecon.errors import ConfigError, DataFormatError, MissingDataError, ShapeMismatchError

SHAPE = (6, 5, 4)  # (X, Y, Z)
AFF = np.array([[1.8, 0, 0, -5.0], [0, 1.8, 0, -4.0], [0, 0, 1.8, -3.0], [0, 0, 0, 1]])
# 1-based index into subjectim's columns, per trial; session 1 then session 2.
MASTER = np.array([3, 1, 4, 5, 3, 6, 2, 7, 4, 8, 5, 1,
                   6, 2, 7, 8, 3, 4, 5, 1, 6, 7, 8, 2])
SUBJ1 = np.array([3, 7, 11, 12, 15, 16, 18, 20])  # 1-based 73k ids; first two shared
SHAREDIX = np.array([3, 7])
N_BRICK = 20
# ROI voxels (i, j, k), listed in the order Brain-Diffuser's ``beta[mask > 0]`` visits them on
# the (X, Y, Z) NIfTI array: i slowest, then j, then k.
ROI_IJK = [(0, 0, 1), (1, 0, 3), (1, 3, 0), (2, 1, 0), (2, 2, 2), (3, 2, 1), (4, 1, 0),
           (4, 4, 3), (5, 4, 1)]
VOX_A = (3, 2, 1)  # column 5
COL_A = 5
VOX_B = (5, 4, 1)  # column 8, constant


def _betas(seed: int = 0) -> np.ndarray:
    """(X, Y, Z, 24) int16 betas of both sessions."""
    rng = np.random.default_rng(seed)
    b = rng.integers(-900, 900, size=SHAPE + (MASTER.size,)).astype(np.int16)
    b[VOX_A] = 300 * MASTER
    b[VOX_B] = 150
    return b


def write_tiny_nsd(root, *, seed: int = 0, n_sessions: int = 2, subjectim=None, master=None,
                   betas=None, formats=("hdf5", "nifti"), nifti_dtype=np.int16, roi=None,
                   captions=True):
    """Write the fixture under ``root`` in the real NSD layout; return the betas written."""
    master = MASTER if master is None else master
    design = root / "nsddata/experiments/nsd"
    design.mkdir(parents=True)
    si = np.zeros((8, SUBJ1.size), dtype=np.int64)
    si[0] = SUBJ1 if subjectim is None else subjectim
    si[1:] = SUBJ1  # other subjects' rows (unused)
    scipy.io.savemat(design / "nsd_expdesign.mat", {"masterordering": master[None, :],
                                                    "subjectim": si, "sharedix": SHAREDIX[None, :]})
    b = _betas(seed) if betas is None else betas
    bdir = root / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    bdir.mkdir(parents=True)
    per = b.shape[3] // n_sessions
    for s in range(n_sessions):
        vol = b[..., s * per:(s + 1) * per]
        if "nifti" in formats:
            nib.save(nib.Nifti1Image(vol.astype(nifti_dtype), AFF),
                     str(bdir / f"betas_session{s + 1:02d}.nii.gz"))
        if "hdf5" in formats:
            with h5py.File(bdir / f"betas_session{s + 1:02d}.hdf5", "w") as f:
                f.create_dataset("betas", data=np.ascontiguousarray(vol.transpose(3, 2, 1, 0)))
    rdir = root / "nsddata/ppdata/subj01/func1pt8mm/roi"
    rdir.mkdir(parents=True)
    if roi is None:
        roi = -np.ones(SHAPE, dtype=np.int16)
        roi[1:5, :, :] = 0
        for ijk in ROI_IJK:
            roi[ijk] = 1
    nib.save(nib.Nifti1Image(roi, AFF), str(rdir / "nsdgeneral.nii.gz"))
    vis = np.zeros(SHAPE, dtype=np.int16)
    vis[2, 1, 0] = 1  # V1v
    vis[3, 2, 1] = 7  # hV4
    nib.save(nib.Nifti1Image(vis, AFF), str(rdir / "prf-visualrois.nii.gz"))
    sdir = root / "nsddata_stimuli/stimuli/nsd"
    (sdir / "annotations").mkdir(parents=True)
    brick = np.zeros((N_BRICK, 8, 7, 3), dtype=np.uint8)
    brick[:] = np.arange(N_BRICK, dtype=np.uint8)[:, None, None, None]
    brick[:, 0, 0, 1] = 200  # a pixel that is not the id, to see resizing/ordering act
    with h5py.File(sdir / "nsd_stimuli.hdf5", "w") as f:
        f.create_dataset("imgBrick", data=brick)
    if captions:
        caps = np.array([[f"image {i} caption {j}" if (i + j) % 4 else "" for j in range(5)]
                         for i in range(N_BRICK)])
        np.save(sdir / "annotations/COCO_73k_annots_curated.npy", caps)
    return b


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "nsd"
    betas = write_tiny_nsd(root)
    return root, betas


def _roi_columns(betas: np.ndarray) -> np.ndarray:
    """(n_trials, 9) float64 percent signal of the ROI voxels, in ROI_IJK order."""
    return np.stack([betas[ijk] for ijk in ROI_IJK], axis=1).astype(np.float64) / 300.0


def _reference(betas, sessions=(1, 2), average=True, session_z=False):
    """Plain-loop reference: rows in first-appearance order, split by masterordering <= 2."""
    cols = _roi_columns(betas)
    trials = [t for s in sessions for t in range((s - 1) * 12, s * 12)]
    if session_z:
        for s in sessions:
            sl = slice((s - 1) * 12, s * 12)
            mu = cols[sl].mean(0)
            sd = cols[sl].std(0, ddof=1)
            sd[sd == 0] = 1
            cols[sl] = (cols[sl] - mu) / sd
    out = {}
    for split, is_test in (("train", False), ("test", True)):
        rows, ids = {}, []
        for t in trials:
            m = MASTER[t]
            if (m <= 2) != is_test:
                continue
            img = SUBJ1[m - 1] - 1
            if average:
                if img not in rows:
                    rows[img] = []
                    ids.append(img)
                rows[img].append(cols[t])
            else:
                ids.append(img)
                rows[len(ids)] = [cols[t]]
        X = np.array([np.mean(rows[i], axis=0) for i in ids]) if average else \
            np.array([rows[k + 1][0] for k in range(len(ids))])
        out[split] = (X, np.array(ids))
    return out


KEEP = [0, 1, 2, 3, 4, 5, 6, 7]  # ROI columns left after dropping the constant voxel B


def _prepare(root, **kw):
    kw.setdefault("progress", False)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        prep = nsd.prepare_subject(root, 1, **kw)
    return prep, [str(w.message) for w in rec]


def test_split_averaging_and_voxel_a_by_hand(tiny):
    root, betas = tiny
    prep, msgs = _prepare(root, zscore="none")
    # train = subject-unique images (masterordering 3..8), first-appearance order 3,4,5,6,7,8
    np.testing.assert_array_equal(prep.train_ids, [10, 11, 14, 15, 17, 19])
    np.testing.assert_array_equal(prep.test_ids, [2, 6])  # masterordering 1 then 2
    np.testing.assert_array_equal(prep.train_counts, [3] * 6)
    np.testing.assert_array_equal(prep.test_counts, [3, 3])
    assert prep.X_train.shape == (6, 8) and prep.X_test.shape == (2, 8)
    assert prep.X_train.dtype == np.float32
    # voxel A holds the masterordering value (percent signal)
    np.testing.assert_allclose(prep.X_train[:, COL_A], [3, 4, 5, 6, 7, 8], rtol=1e-6)
    np.testing.assert_allclose(prep.X_test[:, COL_A], [1, 2], rtol=1e-6)
    # constant voxel B was dropped, with a warning and a count
    assert any("1 of 9 ROI voxel(s) are constant" in m for m in msgs)
    assert prep.info["n_constant_voxels_dropped"] == 1
    assert prep.info["n_roi_voxels"] == 9 and prep.info["n_voxels"] == 8
    np.testing.assert_array_equal(prep.voxel_ijk, np.array(ROI_IJK)[KEEP])
    assert prep.volume_shape == SHAPE
    np.testing.assert_allclose(prep.affine, AFF)
    assert prep.info["trials_per_session"] == {"1": 12, "2": 12}
    assert (prep.info["n_train_trials"], prep.info["n_test_trials"]) == (18, 6)
    ref = _reference(betas)
    np.testing.assert_allclose(prep.X_train, ref["train"][0][:, KEEP], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(prep.X_test, ref["test"][0][:, KEEP], rtol=1e-6, atol=1e-7)
    # ROI labels per selected voxel
    np.testing.assert_array_equal(prep.roi_labels["nsdgeneral"], [1] * 8)
    np.testing.assert_array_equal(prep.roi_labels["prf-visualrois"], [0, 0, 0, 1, 0, 7, 0, 0])


def test_zscore_with_training_statistics_only(tiny):
    root, betas = tiny
    prep, _ = _prepare(root, zscore="train")
    s = np.sqrt(3.5)  # std(ddof=1) of 3..8
    np.testing.assert_allclose(prep.X_train[:, COL_A], (np.arange(3, 9) - 5.5) / s, rtol=1e-5)
    np.testing.assert_allclose(prep.X_test[:, COL_A], (np.array([1, 2]) - 5.5) / s, rtol=1e-5)
    ref = _reference(betas)
    tr, te = ref["train"][0][:, KEEP], ref["test"][0][:, KEEP]
    mu, sd = tr.mean(0), tr.std(0, ddof=1)
    np.testing.assert_allclose(prep.X_train, (tr - mu) / sd, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prep.X_test, (te - mu) / sd, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prep.zscore_stats.mean, mu, rtol=1e-6)
    # the test rows are not standardised by themselves
    assert not np.allclose(prep.X_test.mean(0), 0, atol=1e-3)


def test_single_trials_mode(tiny):
    root, betas = tiny
    prep, _ = _prepare(root, average_repeats=False, zscore="none")
    assert prep.X_train.shape == (18, 8) and prep.X_test.shape == (6, 8)
    # trial order: the ids repeat
    exp_train = [SUBJ1[m - 1] - 1 for m in MASTER if m > 2]
    exp_test = [SUBJ1[m - 1] - 1 for m in MASTER if m <= 2]
    np.testing.assert_array_equal(prep.train_ids, exp_train)
    np.testing.assert_array_equal(prep.test_ids, exp_test)
    np.testing.assert_allclose(prep.X_test[:, COL_A], [1, 2, 1, 2, 1, 2], rtol=1e-6)
    ref = _reference(betas, average=False)
    np.testing.assert_allclose(prep.X_train, ref["train"][0][:, KEEP], rtol=1e-6)
    assert prep.info["mode"] == "single_trial"


@pytest.mark.parametrize("kw", [dict(zscore="train"), dict(zscore="session"),
                                dict(average_repeats=False, zscore="none")])
def test_hdf5_and_nifti_identical(tiny, kw):
    root, _ = tiny
    a, _ = _prepare(root, beta_format="hdf5", **kw)
    b, _ = _prepare(root, beta_format="nifti", **kw)
    for name in ("X_train", "X_test", "train_ids", "test_ids", "voxel_ijk"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_session_wise_zscoring(tiny):
    root, betas = tiny
    prep, msgs = _prepare(root, zscore="session")
    # voxel A: session 1 holds masterordering values [3,1,4,5,3,6,2,7,4,8,5,1]
    s1 = MASTER[:12].astype(float)
    z1 = (s1 - s1.mean()) / s1.std(ddof=1)
    s2 = MASTER[12:].astype(float)
    z2 = (s2 - s2.mean()) / s2.std(ddof=1)
    z = np.concatenate([z1, z2])
    # image m=1 (test row 0) appears at trials 1, 11, 19
    np.testing.assert_allclose(prep.X_test[0, COL_A], z[[1, 11, 19]].mean(), rtol=1e-5)
    ref = _reference(betas, session_z=True)
    np.testing.assert_allclose(prep.X_train, ref["train"][0][:, KEEP], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prep.X_test, ref["test"][0][:, KEEP], rtol=1e-5, atol=1e-6)
    assert any("constant within a session" in m for m in msgs)
    assert prep.info["n_constant_voxels_dropped"] == 1


def test_session_subsets_use_the_right_trials(tiny):
    root, betas = tiny
    p2, _ = _prepare(root, sessions=[2], zscore="none")
    # session 2 = trials 12..23; its train images in first-appearance order: 6,7,8,3,4,5
    np.testing.assert_array_equal(p2.train_ids, SUBJ1[np.array([6, 7, 8, 3, 4, 5]) - 1] - 1)
    np.testing.assert_array_equal(p2.test_ids, [6, 2])
    np.testing.assert_array_equal(p2.train_counts, [2, 2, 2, 1, 1, 1])
    np.testing.assert_allclose(p2.X_train[:, COL_A], [6, 7, 8, 3, 4, 5], rtol=1e-6)
    ref = _reference(betas, sessions=(2,))
    np.testing.assert_allclose(p2.X_train, ref["train"][0][:, KEEP], rtol=1e-6)
    p1, _ = _prepare(root, sessions=1, zscore="none")
    assert p1.info["sessions"] == [1]
    np.testing.assert_array_equal(p1.train_counts, [2, 2, 2, 1, 1, 1])


def test_cache_is_memory_mapped_and_reused(tiny, tmp_path):
    root, _ = tiny
    cache = tmp_path / "cache"
    a, _ = _prepare(root, cache_dir=cache)
    assert isinstance(a.X_train, np.memmap)
    folders = [p for p in cache.iterdir()]
    assert len(folders) == 1 and not any(".tmp" in p.name for p in folders)
    b, msgs = _prepare(root, cache_dir=cache)
    assert msgs == []  # loaded from the cache: nothing recomputed, no warning repeated
    np.testing.assert_array_equal(a.X_train, b.X_train)
    assert b.info["n_constant_voxels_dropped"] == 1
    np.testing.assert_array_equal(a.roi_labels["prf-visualrois"], b.roi_labels["prf-visualrois"])
    c, _ = _prepare(root, cache_dir=cache, zscore="none")
    assert len(list(cache.iterdir())) == 2
    assert not np.array_equal(a.X_train, c.X_train)
    fresh, _ = _prepare(root)
    np.testing.assert_array_equal(a.X_train, fresh.X_train)
    np.testing.assert_allclose(b.zscore_stats.std, fresh.zscore_stats.std)


def test_stimuli_and_captions(tiny):
    root, _ = tiny
    imgs = nsd.read_stimuli(root, np.array([5, 2, 5, 19]))
    assert imgs.shape == (4, 8, 7, 3) and imgs.dtype == np.uint8
    np.testing.assert_array_equal(imgs[:, 3, 3, 0], [5, 2, 5, 19])
    small = nsd.read_stimuli(root, [4], size=4)
    assert small.shape == (1, 4, 4, 3)
    caps = nsd.read_captions(root, [0, 3])
    # image i, caption j is empty when (i + j) % 4 == 0
    assert caps[0] == [f"image 0 caption {j}" for j in (1, 2, 3)]
    assert caps[1] == [f"image 3 caption {j}" for j in (0, 2, 3, 4)]
    with pytest.raises(ConfigError, match="out of range"):
        nsd.read_stimuli(root, [N_BRICK])
    with pytest.raises(ConfigError, match="out of range"):
        nsd.read_captions(root, [-1])


# ------------------------------------------------------------------ bad input
def test_wrong_root_and_missing_files(tmp_path, tiny):
    with pytest.raises(MissingDataError, match="NSD root"):
        nsd.prepare_subject(tmp_path / "nope", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError, match="nsd_expdesign.mat"):
        nsd.prepare_subject(tmp_path / "empty", progress=False)
    root, _ = tiny
    (root / "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz").unlink()
    with pytest.raises(MissingDataError, match="nsdgeneral.nii.gz"):
        nsd.prepare_subject(root, progress=False)
    (root / "nsddata_stimuli/stimuli/nsd/annotations/COCO_73k_annots_curated.npy").unlink()
    with pytest.raises(MissingDataError, match="COCO_73k_annots_curated.npy"):
        nsd.read_captions(root, [0])


def test_subject_and_session_that_do_not_exist(tiny):
    root, _ = tiny
    with pytest.raises(ConfigError, match="subject 9"):
        nsd.prepare_subject(root, 9, progress=False)
    with pytest.raises(MissingDataError, match="subj02.*subjects present: \\['subj01'\\]"):
        nsd.prepare_subject(root, 2, progress=False)
    with pytest.raises(MissingDataError, match="betas_session05.hdf5"):
        nsd.prepare_subject(root, 1, sessions=[1, 5], progress=False)
    with pytest.raises(MissingDataError, match="betas_session03.nii.gz"):
        nsd.prepare_subject(root, 1, sessions=3, beta_format="nifti", progress=False)
    with pytest.raises(ConfigError, match="beta_format"):
        nsd.prepare_subject(root, 1, beta_format="mgh", progress=False)


def test_ids_out_of_range_or_mismatched(tmp_path):
    # subjectim points past the 20-image brick
    r1 = tmp_path / "a"
    write_tiny_nsd(r1, subjectim=np.array([3, 7, 11, 12, 15, 16, 18, 25]))
    with pytest.raises(DataFormatError, match="73k id 25.*holds 20 images"):
        nsd.prepare_subject(r1, progress=False)
    # masterordering refers to a 9th image of an 8-image list
    r2 = tmp_path / "b"
    bad = MASTER.copy()
    bad[5] = 9
    write_tiny_nsd(r2, master=bad)
    with pytest.raises(DataFormatError, match="nsd_expdesign.mat.*masterordering"):
        nsd.prepare_subject(r2, progress=False)
    # betas hold more trials than the design lists
    r3 = tmp_path / "c"
    write_tiny_nsd(r3, master=MASTER[:18])
    with pytest.raises(ShapeMismatchError, match="masterordering.*<= 18, got 24"):
        nsd.prepare_subject(r3, progress=False)


def test_nan_voxels_error_or_drop(tmp_path):
    b = _betas().astype(np.float32)
    b[ROI_IJK[0]][3] = np.nan  # session 1, trial 3, first ROI voxel
    root = tmp_path / "n"
    write_tiny_nsd(root, betas=b, formats=("nifti",), nifti_dtype=np.float32)
    with pytest.raises(DataFormatError, match="betas_session01.nii.gz: 1 of 9 ROI voxel"):
        nsd.prepare_subject(root, beta_format="nifti", progress=False)
    prep, msgs = _prepare(root, beta_format="nifti", nan="drop")
    assert prep.info["n_nan_voxels_dropped"] == 1
    assert prep.info["n_voxels"] == 7
    assert any("NaN" in m and "betas_session01.nii.gz" in m for m in msgs)
    np.testing.assert_array_equal(prep.voxel_ijk, np.array(ROI_IJK)[KEEP[1:]])


def test_truncated_or_corrupt_beta_files(tiny):
    root, _ = tiny
    bdir = root / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    h = bdir / "betas_session02.hdf5"
    data = h.read_bytes()
    h.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="betas_session02.hdf5.*truncated or corrupt"):
        nsd.prepare_subject(root, progress=False)
    n = bdir / "betas_session01.nii.gz"
    raw = gzip.decompress(n.read_bytes())
    n.write_bytes(gzip.compress(raw[: len(raw) - 500]))  # header fine, data short
    with pytest.raises(DataFormatError, match="betas_session01.nii.gz"):
        nsd.prepare_subject(root, beta_format="nifti", progress=False)
    n.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataFormatError, match="betas_session01.nii.gz"):
        nsd.prepare_subject(root, beta_format="nifti", progress=False)


def test_empty_or_misshapen_roi(tmp_path):
    r1 = tmp_path / "a"
    write_tiny_nsd(r1, roi=np.zeros(SHAPE, dtype=np.int16))
    with pytest.raises(DataFormatError, match="nsdgeneral.nii.gz: empty ROI"):
        nsd.prepare_subject(r1, progress=False)
    r2 = tmp_path / "b"
    write_tiny_nsd(r2, roi=np.ones((6, 5, 3), dtype=np.int16))
    with pytest.raises(ShapeMismatchError, match="nsdgeneral.nii.gz.*\\(6, 5, 4\\).*\\(6, 5, 3\\)"):
        nsd.prepare_subject(r2, progress=False)


def test_object_dtype_captions_refused_with_hint(tiny):
    root, _ = tiny
    p = root / "nsddata_stimuli/stimuli/nsd/annotations/COCO_73k_annots_curated.npy"
    np.save(p, np.array([["a", ""]] * N_BRICK, dtype=object), allow_pickle=True)
    with pytest.raises(DataFormatError, match="(?i)object-dtype.*convert"):
        nsd.read_captions(root, [0])


def test_stimulus_brick_runs_batches_and_corrupt_file(tiny):
    root, _ = tiny
    ids = np.array([7, 3, 4, 5, 6, 19, 3, 0, 1])
    with nsd.open_stimuli(root) as brick:
        assert len(brick) == N_BRICK
        for batch in (1, 2, 64):
            imgs = brick.read(ids, batch=batch)
            np.testing.assert_array_equal(imgs[:, 3, 3, 0], ids)
            assert (imgs[:, 0, 0, 1] == 200).all()
        assert brick.read([]).shape == (0, 8, 7, 3)
    p = root / "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataFormatError, match="nsd_stimuli.hdf5"):
        nsd.read_stimuli(root, [1])
    with pytest.raises(DataFormatError, match="nsd_stimuli.hdf5"):
        nsd.prepare_subject(root, progress=False)  # checks ids against the brick's length


def test_list_sessions_and_absent_earlier_session(tiny):
    root, betas = tiny
    assert nsd.list_sessions(root, 1, "hdf5") == [1, 2]
    assert nsd.list_sessions(root, 1, "nifti") == [1, 2]
    bdir = root / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    (bdir / "betas_session01.hdf5").unlink()
    # session 1 still known from its NIfTI header: no warning needed
    p, msgs = _prepare(root, sessions=[2], zscore="none")
    assert not any("assuming" in m for m in msgs)
    (bdir / "betas_session01.nii.gz").unlink()
    p2, msgs = _prepare(root, sessions=[2], zscore="none")
    assert any("assuming 12 trials" in m for m in msgs)
    np.testing.assert_array_equal(p.X_train, p2.X_train)
    np.testing.assert_allclose(p2.X_train[:, COL_A], [6, 7, 8, 3, 4, 5], rtol=1e-6)


def test_warns_when_subjectim_does_not_start_with_sharedix(tmp_path):
    root = tmp_path / "w"
    write_tiny_nsd(root, subjectim=np.array([3, 11, 7, 12, 15, 16, 18, 20]))
    prep, msgs = _prepare(root, zscore="none")
    assert any("are not the images of sharedix" in m for m in msgs)
    np.testing.assert_array_equal(prep.test_ids, [2, 10])  # still masterordering <= 2
