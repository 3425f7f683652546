"""Bring-your-own loader: hand-worked expectations, every container, every bad input."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from brainrecon.data.byo import PreparedBYO, load_byo, save_byo
from brainrecon.errors import DataFormatError, MissingDataError, ShapeMismatchError
from brainrecon.paths import repo_root, shared_data_dir

R3 = math.sqrt(3.0)
# Training rows; ids 10, 20, 10, 30. Averaging id 10 (rows 0 and 2) gives [1, 6, 0], so the
# averaged training matrix is [[1, 6, 0], [2, 4, 0], [3, 2, 3]]: per voxel mean 2 / 4 / 1 and
# sd (ddof=1) 1 / 2 / sqrt(3).
BETAS_TRAIN = np.array([[0, 5, -1], [2, 4, 0], [2, 7, 1], [3, 2, 3]], dtype=float)
TRAIN_IDS = np.array([10, 20, 10, 30])
BETAS_TEST = np.array([[2, 4, 1], [4, 0, 1 + R3]], dtype=float)
EXP_TRAIN = np.array([[-1, 1, -1 / R3], [0, 0, -1 / R3], [1, -1, 2 / R3]], dtype=np.float32)
EXP_TEST = np.array([[0, 0, 0], [2, -2, 1]], dtype=np.float32)


def _stimuli(n, seed, size=8):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _arrays():
    st = _stimuli(4, 0)
    st[2] = st[0]  # rows 0 and 2 are repeats of image 10
    return dict(
        betas_train=BETAS_TRAIN, betas_test=BETAS_TEST, stimuli_train=st,
        stimuli_test=_stimuli(2, 1), captions_train=["ten", "twenty", "ten", "thirty"],
        captions_test=["a", ""], train_ids=TRAIN_IDS, rois={"V1": np.array([1, 1, 0], bool)},
    )


def _check_hand_values(d: PreparedBYO, st):
    assert d.X_train.dtype == np.float32 and d.X_test.dtype == np.float32
    np.testing.assert_allclose(d.X_train, EXP_TRAIN, atol=1e-6)
    np.testing.assert_allclose(d.X_test, EXP_TEST, atol=1e-6)
    np.testing.assert_array_equal(d.train_ids, [10, 20, 30])
    np.testing.assert_array_equal(d.test_ids, [0, 1])  # no test ids in the file: row numbers
    assert d.info["ids_from_file"] == {"train": True, "test": False}
    np.testing.assert_array_equal(d.stimuli_train, st[[0, 1, 3]])
    assert d.captions_train == [["ten"], ["twenty"], ["thirty"]]
    assert d.captions_test == [["a"], []]
    np.testing.assert_array_equal(d.roi_masks["V1"], [True, True, False])
    assert d.info["train_repeats"] == {"min": 1, "max": 2}
    np.testing.assert_allclose(d.zscore_stats.mean, [2, 4, 1])
    np.testing.assert_allclose(d.zscore_stats.std, [1, 2, R3])


@pytest.mark.parametrize("name", ["exp.npz", "exp.h5", "exp.hdf5"])
def test_hand_computed_roundtrip(tmp_path, name):
    a = _arrays()
    path = save_byo(tmp_path / name, **a)
    d = load_byo(path)
    assert isinstance(d, PreparedBYO)
    _check_hand_values(d, a["stimuli_train"])
    assert d.info["form"] == ("npz" if name.endswith("npz") else "hdf5")


def test_no_averaging_and_no_zscore(tmp_path):
    path = save_byo(tmp_path / "e.npz", **_arrays())
    d = load_byo(path, average=False, zscore="none")
    np.testing.assert_array_equal(d.X_train, BETAS_TRAIN.astype(np.float32))
    np.testing.assert_array_equal(d.train_ids, TRAIN_IDS)
    assert d.zscore_stats is None and d.info["train_repeats"] is None


def test_grayscale_and_float_stimuli(tmp_path):
    gray = np.arange(4 * 2 * 2, dtype=np.uint8).reshape(4, 2, 2)
    flt = np.full((2, 2, 2, 3), 0.5)
    path = save_byo(tmp_path / "g.npz", betas_train=BETAS_TRAIN, betas_test=BETAS_TEST,
                    stimuli_train=gray, stimuli_test=flt)
    d = load_byo(path)
    assert d.stimuli_train.shape == (4, 2, 2, 3) and d.info["stimuli_grayscale"]
    for c in range(3):
        np.testing.assert_array_equal(d.stimuli_train[..., c], gray)
    assert (d.stimuli_test == 128).all()  # round(0.5 * 255)


def test_stimulus_paths_relative_and_resize(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    st = _stimuli(6, 3)
    names = []
    for i, im in enumerate(st):
        Image.fromarray(im).save(tmp_path / "img" / f"{i}.png")
        names.append(f"img/{i}.png")
    path = save_byo(tmp_path / "p.npz", betas_train=BETAS_TRAIN, betas_test=BETAS_TEST,
                    stimulus_paths_train=names[:4], stimulus_paths_test=names[4:])
    d = load_byo(path, zscore="none")
    np.testing.assert_array_equal(d.stimuli_train, st[:4])  # PNG is lossless
    np.testing.assert_array_equal(d.stimuli_test, st[4:])
    Image.fromarray(_stimuli(1, 4, size=5)[0]).save(tmp_path / "img" / "1.png")
    with pytest.raises(ShapeMismatchError, match=(
            r"p.npz \(train\): size of image 1.png.*\(8, 8, 3\).*"
            r"\(5, 5, 3\).*image_size")):
        load_byo(path)
    assert load_byo(path, image_size=4).stimuli_train.shape == (4, 4, 4, 3)
    Image.fromarray(st[1]).save(tmp_path / "img" / "1.png")
    (tmp_path / "img" / "2.png").unlink()
    with pytest.raises(MissingDataError, match=r"stimulus image \(row 2 .*2.png"):
        load_byo(path)


# --- folder form -----------------------------------------------------------------------------


def _write_folder(root: Path, *, roi_shape=(3, 3, 2), roi_empty=False):
    import nibabel as nib

    rng = np.random.default_rng(7)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    mask = np.zeros((3, 3, 2), dtype=np.uint8)
    mask[0, 1, 0] = mask[2, 2, 1] = mask[1, 0, 1] = mask[2, 0, 0] = 1
    tr = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    te = rng.normal(size=(3, 3, 2, 2)).astype(np.float32)
    root.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(mask, affine), root / "brain_mask.nii.gz")
    nib.save(nib.Nifti1Image(tr, affine), root / "betas_train.nii.gz")
    nib.save(nib.Nifti1Image(te, affine), root / "betas_test.nii.gz")
    # NSD-style labels: -1 outside the brain, 0 in the brain but not the ROI, 1 in the ROI.
    roi = np.zeros(roi_shape, dtype=np.int16)
    roi[roi_shape[0] - 1, 1, 1] = -1
    if not roi_empty:
        roi[2, 2, 1] = roi[0, 1, 0] = 1
    (root / "rois").mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(roi, affine), root / "rois" / "V1.nii.gz")
    (root / "img").mkdir(exist_ok=True)
    from PIL import Image

    st = _stimuli(6, 9)
    for i, im in enumerate(st):
        Image.fromarray(im).save(root / "img" / f"{i}.png")
    (root / "stimuli_train.csv").write_text(
        "image,id,caption\n" + "".join(f"img/{i}.png,{i},cap {i}\n" for i in range(4)))
    (root / "stimuli_test.csv").write_text("image\nimg/4.png\nimg/5.png\n")
    return mask.astype(bool), tr, te, st


def test_nifti_folder(tmp_path):
    mask, tr, te, st = _write_folder(tmp_path / "exp")
    d = load_byo(tmp_path / "exp", zscore="none")
    # Independent expectation: voxels inside the mask, C order over (X, Y, Z).
    exp_tr = np.stack([tr[..., t][mask] for t in range(4)])
    np.testing.assert_allclose(d.X_train, exp_tr, atol=1e-6)
    np.testing.assert_allclose(d.X_test, np.stack([te[..., t][mask] for t in range(2)]), atol=1e-6)
    # Mask voxels in C order: (0,1,0), (1,0,1), (2,0,0), (2,2,1); V1 holds (0,1,0) and (2,2,1).
    np.testing.assert_array_equal(d.roi_masks["V1"], [True, False, False, True])
    np.testing.assert_array_equal(d.stimuli_train, st[:4])
    assert d.captions_train[3] == ["cap 3"] and d.captions_test is None
    assert d.info["form"] == "nifti-folder" and d.info["n_mask_voxels"] == 4
    z = load_byo(tmp_path / "exp")
    np.testing.assert_allclose(z.X_train, (exp_tr - exp_tr.mean(0)) / exp_tr.std(0, ddof=1),
                               atol=1e-5)


def test_nifti_folder_bad_roi_and_truncated(tmp_path):
    _write_folder(tmp_path / "a", roi_shape=(3, 3, 3))
    with pytest.raises(ShapeMismatchError, match=(
            r"V1.nii.gz: ROI volume shape.*\(3,"
            r" 3, 2\).*\(3, 3, 3\)")):
        load_byo(tmp_path / "a")
    _write_folder(tmp_path / "b", roi_empty=True)
    with pytest.raises(DataFormatError, match=r"ROI 'roi/V1'.*empty"):
        load_byo(tmp_path / "b")
    _write_folder(tmp_path / "c")
    raw = (tmp_path / "c" / "betas_train.nii.gz").read_bytes()
    (tmp_path / "c" / "betas_train.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFormatError, match=(
            r"betas_train.nii.gz: cannot read"
            r" .*truncated or corrupt")):
        load_byo(tmp_path / "c")
    _write_folder(tmp_path / "d")
    (tmp_path / "d" / "brain_mask.nii.gz").unlink()
    with pytest.raises(MissingDataError, match="brain mask not found.*brain_mask.nii.gz"):
        load_byo(tmp_path / "d")


# --- bad input ---------------------------------------------------------------------------------


def test_missing_file_and_unknown_container(tmp_path):
    with pytest.raises(MissingDataError, match=r"nothere.npz"):
        load_byo(tmp_path / "nothere.npz")
    (tmp_path / "x.csv").write_text("a\n")
    with pytest.raises(DataFormatError, match=r"x.csv: unknown bring-your-own container '.csv'"):
        load_byo(tmp_path / "x.csv")


def test_wrong_keys(tmp_path):
    np.savez(tmp_path / "k.npz", betas_train=BETAS_TRAIN, beta_test=BETAS_TEST,
             stimuli_train=_stimuli(4, 0))
    with pytest.raises(DataFormatError, match=re.escape(
            "missing required key(s) ['betas_test', 'stimuli_test or stimulus_paths_test']")):
        load_byo(tmp_path / "k.npz")
    np.savez(tmp_path / "both.npz", betas_train=BETAS_TRAIN, betas_test=BETAS_TEST,
             stimuli_train=_stimuli(4, 0), stimulus_paths_train=np.array(["a"] * 4),
             stimuli_test=_stimuli(2, 0))
    with pytest.raises(DataFormatError, match="either 'stimuli_train' or 'stimulus_paths_train'"):
        load_byo(tmp_path / "both.npz")
    np.savez(tmp_path / "extra.npz", betas_train=BETAS_TRAIN, betas_test=BETAS_TEST,
             stimuli_train=_stimuli(4, 0), stimuli_test=_stimuli(2, 0),
             caption_train=np.array(["a"] * 4))
    with pytest.warns(UserWarning, match=r"ignored unknown key\(s\) \['caption_train'\]"):
        load_byo(tmp_path / "extra.npz")


def test_shape_mismatches(tmp_path):
    base = dict(betas_train=BETAS_TRAIN, betas_test=BETAS_TEST, stimuli_train=_stimuli(4, 0),
                stimuli_test=_stimuli(2, 0))
    np.savez(tmp_path / "s.npz", **{**base, "stimuli_train": _stimuli(3, 0)})
    with pytest.raises(ShapeMismatchError, match=(
            r"s.npz: rows of stimuli_train vs"
            r" betas_train: expected 4, got 3")):
        load_byo(tmp_path / "s.npz")
    np.savez(tmp_path / "v.npz", **{**base, "betas_test": BETAS_TEST[:, :2]})
    with pytest.raises(ShapeMismatchError, match=(
            r"voxels of betas_test vs betas_train:"
            r" expected 3, got 2")):
        load_byo(tmp_path / "v.npz")
    np.savez(tmp_path / "c.npz", **base, captions_test=np.array(["a", "b", "c"]))
    with pytest.raises(ShapeMismatchError, match=(
            r"rows of captions_test vs betas_test:"
            r" expected 2, got 3")):
        load_byo(tmp_path / "c.npz")
    np.savez(tmp_path / "r.npz", **{**base, "stimuli_test": np.zeros((2, 4, 4, 4), np.uint8)})
    with pytest.raises(ShapeMismatchError, match=r"stimuli shape.*\(2, 4, 4, 4\).*alpha"):
        load_byo(tmp_path / "r.npz")
    with pytest.raises(ShapeMismatchError, match=r"rows of train_ids vs betas_train"):
        save_byo(tmp_path / "i.npz", **base, train_ids=[1, 2])


def test_nan_voxels_counted(tmp_path):
    bt = BETAS_TRAIN.copy()
    bt[1, 0] = np.nan
    bt[3, 2] = np.inf
    path = save_byo(tmp_path / "n.npz", betas_train=bt, betas_test=BETAS_TEST,
                    stimuli_train=_stimuli(4, 0), stimuli_test=_stimuli(2, 0))
    with pytest.raises(DataFormatError, match=r"n.npz \(betas\): 2 of 3 voxel\(s\) hold NaN"):
        load_byo(path)
    with pytest.warns(RuntimeWarning, match=r"2 of 3 voxel\(s\) hold NaN.*dropped"):
        d = load_byo(path, nan_voxels="drop", zscore="none")
    np.testing.assert_array_equal(d.voxel_index, [1])
    np.testing.assert_array_equal(d.X_train[:, 0], BETAS_TRAIN[:, 1])
    assert d.info["n_nan_voxels"] == 2


def test_constant_voxels_dropped_with_warning(tmp_path):
    bt = BETAS_TRAIN.copy()
    bt[:, 1] = 7.0
    a = {**_arrays(), "betas_train": bt, "train_ids": None}
    path = save_byo(tmp_path / "c.npz", **a)
    with pytest.warns(RuntimeWarning, match=(
            r"c.npz: 1 of 3 voxel\(s\) are constant over the 4 training row\(s\).*"
            r"dropped")):
        d = load_byo(path)
    assert d.info["n_constant_voxels"] == 1 and d.X_train.shape == (4, 2)
    np.testing.assert_array_equal(d.voxel_index, [0, 2])
    np.testing.assert_array_equal(d.roi_masks["V1"], [True, False])
    col = BETAS_TRAIN[:, 0]
    np.testing.assert_allclose(d.X_train[:, 0], (col - col.mean()) / col.std(ddof=1), atol=1e-6)


def test_bad_roi_masks(tmp_path):
    base = dict(betas_train=BETAS_TRAIN, betas_test=BETAS_TEST, stimuli_train=_stimuli(4, 0),
                stimuli_test=_stimuli(2, 0))
    np.savez(tmp_path / "e.npz", **base, **{"roi/FFA": np.zeros(3, bool)})
    with pytest.raises(DataFormatError, match=r"e.npz: ROI 'roi/FFA': the mask is empty"):
        load_byo(tmp_path / "e.npz")
    np.savez(tmp_path / "l.npz", **base, **{"roi/FFA": np.ones(5, bool)})
    with pytest.raises(ShapeMismatchError, match=(
            r"l.npz: ROI 'roi/FFA': mask shape:"
            r" expected \(3,\), got \(5,\)")):
        load_byo(tmp_path / "l.npz")
    np.savez(tmp_path / "s.npz", **base, roi_PPA=np.ones((3, 1), bool))
    with pytest.raises(ShapeMismatchError, match=(
            r"ROI 'roi_PPA': mask shape: expected"
            r" \(3,\), got \(3, 1\)")):
        load_byo(tmp_path / "s.npz")


def test_truncated_and_corrupt_files(tmp_path):
    path = save_byo(tmp_path / "t.h5", **_arrays())
    raw = path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFormatError, match=r"cut.h5: cannot .*truncated or corrupt"):
        load_byo(tmp_path / "cut.h5")
    (tmp_path / "junk.hdf5").write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(DataFormatError, match=r"junk.hdf5: cannot open as HDF5"):
        load_byo(tmp_path / "junk.hdf5")
    path = save_byo(tmp_path / "t.npz", **_arrays())
    raw = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFormatError, match=(
            r"cut.npz: cannot read as .npz.*truncated"
            r" or corrupt")):
        load_byo(tmp_path / "cut.npz")


def test_object_arrays_refused(tmp_path):
    np.savez(tmp_path / "o.npz", betas_train=BETAS_TRAIN, betas_test=BETAS_TEST,
             stimuli_train=_stimuli(4, 0), stimuli_test=_stimuli(2, 0),
             captions_train=np.array(["a", None, "b", "c"], dtype=object))
    with pytest.raises(DataFormatError, match=r"o.npz: key 'captions_train' is an object array"):
        load_byo(tmp_path / "o.npz")


def test_repeats_with_different_stimuli(tmp_path):
    a = _arrays()
    a["stimuli_train"] = _stimuli(4, 5)  # rows 0 and 2 (id 10) now differ
    path = save_byo(tmp_path / "r.npz", **a)
    with pytest.raises(DataFormatError, match=(
            r"rows 0 and 2 share the id 10 but"
            r" their stimuli_train differ")):
        load_byo(path)


def test_bad_stimulus_dtype_and_range(tmp_path):
    base = dict(betas_train=BETAS_TRAIN, betas_test=BETAS_TEST, stimuli_train=_stimuli(4, 0))
    with pytest.raises(DataFormatError, match=(
            r"f.npz: stimuli_test: float stimuli must be .*"
            r" within \[0, 1\], found range \[2, 2\]")):
        save_byo(tmp_path / "f.npz", **base, stimuli_test=np.full((2, 4, 4, 3), 2.0))
    np.savez(tmp_path / "d.npz", **base, stimuli_test=np.zeros((2, 4, 4, 3), np.uint16))
    with pytest.raises(DataFormatError, match=(
            r"d.npz: stimuli_test: stimuli"
            r" dtype must be uint8.*uint16")):
        load_byo(tmp_path / "d.npz")


# --- the documented example on real data ------------------------------------------------------


def _doc_example() -> str:
    root = repo_root() or Path(__file__).resolve().parents[2]
    text = (root / "docs" / "byo_format.md").read_text()
    m = re.search(r"<!-- byo-example: digits69 -->\s*```python\n(.*?)```", text, re.S)
    assert m, "docs/byo_format.md lost its digits69 example block"
    return m.group(1)


def test_doc_example_block_is_short():
    code = [ln for ln in _doc_example().splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]
    assert len(code) <= 12


def test_doc_example_runs_on_digits69(tmp_path):
    shared = shared_data_dir()
    src = None if shared is None else shared / "vangerven2010-digits69" / "digit69_28x28.mat"
    if src is None or not src.is_file():
        pytest.skip("../shared/data/vangerven2010-digits69/digit69_28x28.mat is absent "
                    "(development/CI data only)")
    ns = {"src": src, "dst": tmp_path / "digits69.npz"}
    exec(compile(_doc_example(), "docs/byo_format.md", "exec"), ns)
    d = ns["data"]
    assert d.X_train.shape == (90, 3092) and d.X_test.shape == (10, 3092)
    assert d.stimuli_train.shape == (90, 28, 28, 3) and d.stimuli_test.shape == (10, 28, 28, 3)
    assert d.info["stimuli_grayscale"] and d.info["n_constant_voxels"] == 0
    np.testing.assert_allclose(d.X_train.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(d.X_train.std(0, ddof=1), 1, atol=1e-4)
    # Orientation: a six has its loop at the bottom, a nine at the top, so the bottom half of
    # the mean six holds more ink than that of the mean nine. Transposed digits (row-major
    # reshape) reverse this.
    img = d.stimuli_train[..., 0].astype(float)
    six = np.array([c == ["a handwritten six"] for c in d.captions_train])
    bottom_minus_top = img[:, 14:].sum((1, 2)) - img[:, :14].sum((1, 2))
    assert six.sum() > 0 and (~six).sum() > 0
    assert bottom_minus_top[six].mean() > bottom_minus_top[~six].mean() + 1000
