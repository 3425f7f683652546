"""GOD loader against tiny files written in the real BrainDecoderToolbox2 layout.

The fixture has the structure of the brainliner ``Subject{N}.mat`` files: ``dataSet`` with
the sample metadata columns (DataType, Run, Label) first and voxel columns after them, and
``metaData`` with ``key`` / ``description`` / ``value`` where ``value`` marks each sample
column with a 1 and holds per-voxel ROI flags and coordinates. Expected outputs are worked
out by hand in the comments (runs of two samples z-score to -1/+1 with ddof=0).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.io

from brainrecon.data.god import (
    PreparedGOD,
    god_subject_file,
    load_god,
    read_god_file,
    read_image_table,
)
from brainrecon.errors import ConfigError, DataFormatError, MissingDataError

NAN = np.nan
TRAIN_IDS = ["1518878.010042", "1518878.012028", "1443537.022563", "1621127.019020"]
TRAIN_FILES = [f"n0{i.split('.')[0]}_{int(i.split('.')[1])}.JPEG" for i in TRAIN_IDS]
TEST_IDS = ["1677366.018182", "1846331.017038"]
TEST_FILES = [f"n0{i.split('.')[0]}_{int(i.split('.')[1])}.JPEG" for i in TEST_IDS]
tr = [float(x) for x in TRAIN_IDS]
te = [float(x) for x in TEST_IDS]

# Voxels: v0, v1 in V1; v2 in V2; v3 outside VC (holds a NaN that must not matter).
# Rows: DataType, Run, Label, v0, v1, v2, v3.
ROWS = [
    # training run 1: table images 2 then 0
    [1, 1, tr[2], 10, 5, 0, 1],
    [1, 1, tr[0], 20, 1, 4, NAN],
    # training run 2: table images 3 then 1
    [1, 2, tr[3], 3, 7, -2, 1],
    [1, 2, tr[1], 1, 9, 2, 1],
    # test run 1 (numbered 1 again, as a separate series): t0, t0, t1, t1
    [2, 1, te[0], 0, 1, 2, 1],
    [2, 1, te[0], 0, 3, 2, 1],
    [2, 1, te[1], 4, 1, 2, 1],
    [2, 1, te[1], 4, 3, 6, 1],
    # test run 2: t1 then t0
    [2, 2, te[1], 6, 2, 0, 1],
    [2, 2, te[0], 2, 8, 1, 1],
    # imagery run: category ids, ignored by the loader
    [3, 1, 1518878.0, 100, -50, 7, 1],
    [3, 1, 1443537.0, -100, 50, 9, 1],
]
KEYS = ["DataType", "Run", "Label", "voxel_x", "voxel_y", "voxel_z",
        "ROI_V1", "ROI_V2", "ROI_V3", "ROI_V4", "ROI_LOC", "ROI_FFA", "ROI_PPA", "ROI_VC"]
# metaData.value: one row per key, one column per dataSet column (3 sample + 4 voxel columns).
VALUES = np.array([
    [1, NAN, NAN, NAN, NAN, NAN, NAN],
    [NAN, 1, NAN, NAN, NAN, NAN, NAN],
    [NAN, NAN, 1, NAN, NAN, NAN, NAN],
    [NAN, NAN, NAN, 10, 11, 12, 13],   # voxel_x
    [NAN, NAN, NAN, 20, 21, 22, 23],   # voxel_y
    [NAN, NAN, NAN, 30, 31, 32, 33],   # voxel_z
    [NAN, NAN, NAN, 1, 1, 0, 0],       # V1
    [NAN, NAN, NAN, 0, 0, 1, 0],       # V2
    [NAN, NAN, NAN, 0, 0, 0, 0],       # V3 (empty in this tiny subject)
    [NAN, NAN, NAN, 0, 0, 0, 0],
    [NAN, NAN, NAN, 0, 0, 0, 0],
    [NAN, NAN, NAN, 0, 0, 0, 0],
    [NAN, NAN, NAN, 0, 0, 0, 0],
    [NAN, NAN, NAN, 1, 1, 1, 0],       # VC = V1 | V2
], dtype=float)

# Hand-worked expectations for normalize="run", roi="ROI_VC" (voxels v0, v1, v2).
# Training runs have two trials: the larger value -> +1, the smaller -> -1.
EXP_TRAIN = np.array([
    [1, -1, 1],     # image 0 (run 1, second trial)
    [-1, 1, 1],     # image 1 (run 2, second trial)
    [-1, 1, -1],    # image 2 (run 1, first trial)
    [1, -1, -1],    # image 3 (run 2, first trial)
], dtype=np.float32)
# Test run 1: v0 [0,0,4,4] -> [-1,-1,1,1]; v1 [1,3,1,3] -> [-1,1,-1,1];
#             v2 [2,2,2,6] (mean 3, sd sqrt 3) -> [-1/r3, -1/r3, -1/r3, r3].
# Test run 2: (t1, t0): v0 [6,2] -> [1,-1]; v1 [2,8] -> [-1,1]; v2 [0,1] -> [-1,1].
R3 = math.sqrt(3.0)
EXP_TEST = np.array([
    [(-1 - 1 - 1) / 3, (-1 + 1 + 1) / 3, (-1 / R3 - 1 / R3 + 1) / 3],   # t0
    [(1 + 1 + 1) / 3, (-1 + 1 - 1) / 3, (-1 / R3 + R3 - 1) / 3],        # t1
], dtype=np.float32)


def _cell(strings):
    arr = np.empty((1, len(strings)), dtype=object)
    arr[0, :] = strings
    return arr


def write_god_mat(path, rows=ROWS, keys=KEYS, values=VALUES):
    """A brainliner-style MATLAB v5 file (dataSet + metaData struct)."""
    meta = {"key": _cell(keys), "description": _cell([f"{k} description" for k in keys]),
            "value": np.asarray(values, dtype=float)}
    scipy.io.savemat(str(path), {"dataSet": np.asarray(rows, dtype=float), "metaData": meta})
    return path


def write_tables(folder, train_ids=TRAIN_IDS, train_files=TRAIN_FILES, test_ids=TEST_IDS,
                 test_files=TEST_FILES):
    (folder / "imageID_training.csv").write_text(
        "".join(f'{i},"{f}"\n' for i, f in zip(train_ids, train_files)))
    (folder / "imageID_test.csv").write_text(
        "".join(f'{i},"{f}"\n' for i, f in zip(test_ids, test_files)))


@pytest.fixture
def god_dir(tmp_path):
    write_god_mat(tmp_path / "Subject1.mat")
    write_tables(tmp_path)
    return tmp_path


def test_fixture_has_real_layout(god_dir):
    mat = scipy.io.loadmat(str(god_dir / "Subject1.mat"))
    assert mat["dataSet"].shape == (12, 7)
    assert set(mat["metaData"].dtype.names) == {"key", "description", "value"}
    god = read_god_file(god_dir / "Subject1.mat")
    assert god.container == "mat-v5"
    assert god.keys == KEYS
    assert god.voxel_columns().tolist() == [3, 4, 5, 6]
    np.testing.assert_array_equal(god.sample_column("Run"), [r[1] for r in ROWS])


def test_hand_computed_run_zscore_order_and_averaging(god_dir):
    d = load_god(god_dir / "Subject1.mat")
    assert isinstance(d, PreparedGOD)
    assert d.X_train.shape == (4, 3) and d.X_test.shape == (2, 3)
    assert d.X_train.dtype == np.float32 and d.X_test.dtype == np.float32
    np.testing.assert_allclose(d.X_train, EXP_TRAIN, atol=1e-6)
    np.testing.assert_allclose(d.X_test, EXP_TEST, atol=1e-6)
    np.testing.assert_array_equal(d.train_image_ids, tr)
    np.testing.assert_array_equal(d.test_image_ids, te)
    assert d.train_files == TRAIN_FILES and d.test_files == TEST_FILES
    assert d.info["n_train_trials"] == 4 and d.info["n_test_trials"] == 6
    assert d.info["n_imagery_trials_ignored"] == 2
    assert d.info["test_repeats_min"] == d.info["test_repeats_max"] == 3
    # ROI masks over the returned (VC) voxels, keyed without the ROI_ prefix.
    np.testing.assert_array_equal(d.roi_masks["V1"], [True, True, False])
    np.testing.assert_array_equal(d.roi_masks["V2"], [False, False, True])
    np.testing.assert_array_equal(d.roi_masks["VC"], [True, True, True])
    assert not d.roi_masks["PPA"].any()
    np.testing.assert_array_equal(d.voxel_xyz, [[10, 20, 30], [11, 21, 31], [12, 22, 32]])


def test_roi_selection(god_dir):
    v1 = load_god(god_dir / "Subject1.mat", roi="V1")
    np.testing.assert_allclose(v1.X_train, EXP_TRAIN[:, :2], atol=1e-6)
    v2 = load_god(god_dir / "Subject1.mat", roi="ROI_V2")
    np.testing.assert_allclose(v2.X_test, EXP_TEST[:, 2:], atol=1e-6)
    both = load_god(god_dir / "Subject1.mat", roi=["V1", "V2"])
    np.testing.assert_allclose(both.X_train, EXP_TRAIN, atol=1e-6)


def test_single_trials_and_raw_values(god_dir):
    d = load_god(god_dir / "Subject1.mat", normalize="none", average_test=False)
    # Raw v0 of the test trials grouped by table image, trial order kept:
    # t0: rows 4, 5, 9 -> 0, 0, 2 ; t1: rows 6, 7, 8 -> 4, 4, 6.
    np.testing.assert_array_equal(d.X_test[:, 0], [0, 0, 2, 4, 4, 6])
    np.testing.assert_array_equal(d.test_image_ids, [te[0]] * 3 + [te[1]] * 3)
    np.testing.assert_array_equal(d.X_train[:, 0], [20, 1, 10, 3])
    avg = load_god(god_dir / "Subject1.mat", normalize="none")
    np.testing.assert_allclose(avg.X_test[:, 0], [2 / 3, 14 / 3], rtol=1e-6)


def test_normalize_train_and_run_id_against_independent_numpy(god_dir):
    raw = np.asarray(ROWS, dtype=float)
    vox = raw[:, 3:6]
    dt, run = raw[:, 0], raw[:, 1]
    # "train": mean / sd (ddof=1) of the four training trials.
    mu = vox[dt == 1].mean(0)
    sd = vox[dt == 1].std(0, ddof=1)
    d = load_god(god_dir / "Subject1.mat", normalize="train")
    z = (vox - mu) / sd
    np.testing.assert_allclose(d.X_train, z[[1, 3, 0, 2]], atol=1e-6)
    np.testing.assert_allclose(d.X_test[0], z[[4, 5, 9]].mean(0), atol=1e-6)
    # "run_id": runs pooled by number only (IC-GAN's handler): run 1 mixes train, test and imagery.
    zr = np.empty_like(vox)
    for r in np.unique(run):
        rows = run == r
        zr[rows] = (vox[rows] - vox[rows].mean(0)) / vox[rows].std(0)
    d2 = load_god(god_dir / "Subject1.mat", normalize="run_id")
    np.testing.assert_allclose(d2.X_train, zr[[1, 3, 0, 2]], atol=1e-5)
    np.testing.assert_allclose(d2.X_test[1], zr[[6, 7, 8]].mean(0), atol=1e-5)
    assert not np.allclose(d2.X_train, EXP_TRAIN)


def test_tables_as_pair_and_matching_tolerates_float_rounding(god_dir, tmp_path_factory):
    other = tmp_path_factory.mktemp("tables")
    write_tables(other)
    rows = np.asarray(ROWS, dtype=float)
    rows[:10, 2] += 1e-9  # a label stored with a rounding error still finds its image
    write_god_mat(god_dir / "Subject2.mat", rows=rows)
    d = load_god(god_dir / "Subject2.mat",
                 image_tables=(other / "imageID_training.csv", other / "imageID_test.csv"))
    np.testing.assert_allclose(d.X_train, EXP_TRAIN, atol=1e-6)
    d = load_god(god_dir / "Subject2.mat", image_tables=other)
    np.testing.assert_allclose(d.X_test, EXP_TEST, atol=1e-6)


def test_read_image_table(god_dir):
    ids, files = read_image_table(god_dir / "imageID_training.csv")
    np.testing.assert_array_equal(ids, tr)
    assert files == TRAIN_FILES


# --- other containers -------------------------------------------------------------------


def test_bdpy_h5_layout(tmp_path):
    import h5py

    rows = np.asarray(ROWS, dtype=float)
    keys = ["DataType", "Run", "stimulus_id", "VoxelData"] + KEYS[3:]
    vox_flag = np.array([[NAN, NAN, NAN, 1, 1, 1, 1]])
    values = np.vstack([VALUES[:3], vox_flag, VALUES[3:]])
    with h5py.File(tmp_path / "Subject1.h5", "w") as f:
        f.create_dataset("dataset", data=rows)
        f.create_dataset("metadata/key", data=[k.encode() for k in keys])
        f.create_dataset("metadata/description", data=[b"" for _ in keys])
        f.create_dataset("metadata/value", data=values)
    write_tables(tmp_path)
    d = load_god(tmp_path / "Subject1.h5")
    assert d.info["container"] == "bdpy-h5" and d.info["label_key"] == "stimulus_id"
    np.testing.assert_allclose(d.X_train, EXP_TRAIN, atol=1e-6)
    np.testing.assert_allclose(d.X_test, EXP_TEST, atol=1e-6)


def _write_matlab_v73(path, rows, keys, values):
    """A MATLAB v7.3 file as MATLAB writes it: HDF5, arrays transposed, cells as references."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        ds = f.create_dataset("dataSet", data=np.asarray(rows, dtype=float).T)
        ds.attrs["MATLAB_class"] = np.bytes_("double")
        g = f.create_group("metaData")
        g.attrs["MATLAB_class"] = np.bytes_("struct")
        refs_group = f.create_group("#refs#")
        for field_name, strings in (("key", keys), ("description", [""] * len(keys))):
            refs = []
            for i, s in enumerate(strings):
                chars = np.array([[ord(c)] for c in s] or [[0]], dtype=np.uint16)
                r = refs_group.create_dataset(f"{field_name}{i}", data=chars)
                r.attrs["MATLAB_class"] = np.bytes_("char")
                refs.append(r.ref)
            cell = g.create_dataset(field_name, data=np.array(refs, dtype=h5py.ref_dtype)[:, None])
            cell.attrs["MATLAB_class"] = np.bytes_("cell")
        v = g.create_dataset("value", data=np.asarray(values, dtype=float).T)
        v.attrs["MATLAB_class"] = np.bytes_("double")
    with open(path, "r+b") as fh:  # the MATLAB text header lives in the user block
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\x00" * 8 + b"\x00\x02IM")


def test_matlab_v73_layout(tmp_path):
    _write_matlab_v73(tmp_path / "Subject3.mat", ROWS, KEYS, VALUES)
    write_tables(tmp_path)
    god = read_god_file(tmp_path / "Subject3.mat")
    assert god.container == "mat-v7.3" and god.keys == KEYS
    d = load_god(tmp_path / "Subject3.mat")
    np.testing.assert_allclose(d.X_train, EXP_TRAIN, atol=1e-6)
    np.testing.assert_allclose(d.X_test, EXP_TEST, atol=1e-6)


# --- bad input ---------------------------------------------------------------------------


def test_missing_file_and_missing_tables(tmp_path, god_dir):
    with pytest.raises(MissingDataError, match="Subject9.mat"):
        load_god(tmp_path / "Subject9.mat")
    with pytest.raises(MissingDataError, match="imageID_training.csv"):
        load_god(god_dir / "Subject1.mat", image_tables=(tmp_path / "nope" / "imageID_training.csv",
                                                        god_dir / "imageID_test.csv"))


def test_wrong_variables(tmp_path):
    scipy.io.savemat(str(tmp_path / "Subject1.mat"), {"data": np.zeros((3, 3))})
    write_tables(tmp_path)
    with pytest.raises(DataFormatError, match=(
            r"Subject1.mat.*expected variables 'dataSet' and 'metaData'.*"
            r"\['data'\]")):
        load_god(tmp_path / "Subject1.mat")


def test_truncated_files(god_dir, tmp_path):
    raw = (god_dir / "Subject1.mat").read_bytes()
    (tmp_path / "cut.mat").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFormatError, match="cut.mat.*truncated or corrupt"):
        read_god_file(tmp_path / "cut.mat")
    _write_matlab_v73(tmp_path / "v73.mat", ROWS, KEYS, VALUES)
    raw = (tmp_path / "v73.mat").read_bytes()
    (tmp_path / "v73cut.mat").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFormatError, match="v73cut.mat.*(truncated or corrupt)"):
        read_god_file(tmp_path / "v73cut.mat")


def test_value_shape_mismatch(tmp_path):
    from brainrecon.errors import ShapeMismatchError

    write_god_mat(tmp_path / "Subject1.mat", values=VALUES[:, :6])
    with pytest.raises(ShapeMismatchError, match=r"metaData.value.*\(14, 7\).*\(14, 6\)"):
        read_god_file(tmp_path / "Subject1.mat")


def test_unknown_and_empty_roi(god_dir):
    with pytest.raises(DataFormatError, match=r"ROI 'ROI_hMT'.*ROI_V1"):
        load_god(god_dir / "Subject1.mat", roi="hMT")
    with pytest.raises(DataFormatError, match="selects no voxel"):
        load_god(god_dir / "Subject1.mat", roi="V3")


def test_label_not_in_table_and_image_without_trial(god_dir, tmp_path):
    rows = np.asarray(ROWS, dtype=float)
    rows[0, 2] = 1999999.000001
    write_god_mat(god_dir / "Bad.mat", rows=rows)
    with pytest.raises(DataFormatError, match=(
            r"Bad.mat training samples.*imageID_training.csv.*"
            r"1999999.000001")):
        load_god(god_dir / "Bad.mat")
    write_tables(tmp_path, train_ids=TRAIN_IDS + ["1999999.000002"],
                 train_files=TRAIN_FILES + ["n01999999_2.JPEG"])
    write_god_mat(tmp_path / "Subject1.mat")
    with pytest.raises(DataFormatError, match=r"1 of 5 images .* no trial.*n01999999_2.JPEG"):
        load_god(tmp_path / "Subject1.mat")


def test_nan_voxel_in_roi_raises_with_count(god_dir):
    rows = np.asarray(ROWS, dtype=float)
    rows[3, 4] = NAN  # voxel v1, inside VC
    write_god_mat(god_dir / "Nan.mat", rows=rows)
    with pytest.raises(DataFormatError, match=r"Nan.mat.*1 of 3 voxel\(s\) hold NaN"):
        load_god(god_dir / "Nan.mat")
    # The NaN of v3 (outside VC) in the base fixture never mattered; V1 alone is fine too.
    assert load_god(god_dir / "Nan.mat", roi="V2").X_train.shape == (4, 1)


def test_constant_voxel_within_a_run_is_dropped_with_warning(god_dir):
    rows = np.asarray(ROWS, dtype=float)
    rows[8, 4] = rows[9, 4] = 5.0  # v1 constant within test run 2
    write_god_mat(god_dir / "Const.mat", rows=rows)
    with pytest.warns(RuntimeWarning, match=r"1 of 3 voxel\(s\).*constant within a run.*dropped"):
        d = load_god(god_dir / "Const.mat")
    assert d.info["n_dropped_constant_voxels"] == 1 and d.info["dropped_voxels"] == [1]
    np.testing.assert_allclose(d.X_train, EXP_TRAIN[:, [0, 2]], atol=1e-6)
    np.testing.assert_array_equal(d.roi_masks["V1"], [True, False])


def test_unmarked_sample_keys_fall_back_to_leading_columns(god_dir):
    values = VALUES.copy()
    values[:3] = NAN  # sample keys that mark no column: key i <-> column i (IC-GAN's reading)
    write_god_mat(god_dir / "Unmarked.mat", values=values)
    d = load_god(god_dir / "Unmarked.mat")
    np.testing.assert_allclose(d.X_train, EXP_TRAIN, atol=1e-6)


def test_god_subject_file(god_dir, tmp_path):
    assert god_subject_file(1, root=god_dir) == god_dir / "Subject1.mat"
    with pytest.raises(MissingDataError, match=r"GOD file of subject 2.*Subject2.mat.*Subject2.h5"):
        god_subject_file(2, root=god_dir)
    with pytest.raises(ConfigError, match="subjects 1 to 5, got 6"):
        god_subject_file(6, root=god_dir)
    with pytest.raises(MissingDataError, match="GOD data folder not found"):
        god_subject_file(1, root=tmp_path / "nowhere")


def test_single_sample_run_is_refused_for_run_normalisation(god_dir):
    rows = np.asarray(ROWS, dtype=float)
    rows[11, 1] = 2  # imagery runs 1 and 2 now hold one sample each
    write_god_mat(god_dir / "Single.mat", rows=rows)
    with pytest.raises(DataFormatError,
                       match=r"Single.mat: run \(DataType 3, Run 1\) holds a single"):
        load_god(god_dir / "Single.mat")
    d = load_god(god_dir / "Single.mat", normalize="train")
    assert d.X_train.shape == (4, 3)


# ------------------------------------------------------------------ data stage source "god"
def _write_images(folder, files, sizes):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for f, (w, h) in zip(files, sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f, format="JPEG")


def test_data_stage_god_source_reads_betas_and_central_square_images(god_dir):
    from brainrecon.stages.base import ArtifactStore, Runner
    from brainrecon.stages.data import DataStage

    images = god_dir / "images"
    _write_images(images / "training", TRAIN_FILES, [(40, 30), (30, 40), (32, 32), (50, 20)])
    _write_images(images / "test", TEST_FILES, [(24, 36), (36, 24)])
    params = {"source": "god", "god_root": str(god_dir), "subject": 1, "roi": "VC", "normalize": "run",
              "average_test": True, "images_root": str(images), "stimulus_size": 16}
    art = Runner(ArtifactStore(god_dir / "art"), progress=False).run(DataStage(params))
    prep = load_god(god_dir / "Subject1.mat", roi="VC")
    np.testing.assert_allclose(art.array("X_train"), prep.X_train, atol=1e-6)
    np.testing.assert_allclose(art.array("X_test"), prep.X_test, atol=1e-6)
    assert art.array("stimuli_train").shape == (4, 16, 16, 3)
    assert art.array("stimuli_test").shape == (2, 16, 16, 3)
    info = art.json("info")
    assert info["source"] == "god" and info["train_image_ids"][0] == TRAIN_IDS[0]
    assert "V1" in info["rois"]


def test_read_god_images_crops_the_central_square(tmp_path):
    from PIL import Image

    from brainrecon.data.god import read_god_images

    # A 30x10 image: left and right thirds red, central 10x10 square green.
    a = np.zeros((10, 30, 3), np.uint8)
    a[:, :10, 0] = a[:, 20:, 0] = 255
    a[:, 10:20, 1] = 255
    Image.fromarray(a).save(tmp_path / "x.png")
    out = read_god_images(tmp_path, ["x.png"], size=10)
    assert out.shape == (1, 10, 10, 3)
    assert out[0, :, :, 1].min() > 200 and out[0, :, :, 0].max() < 50


def test_read_god_images_names_the_missing_file(tmp_path):
    from brainrecon.data.god import read_god_images

    with pytest.raises(MissingDataError, match=r"absent\.JPEG"):
        read_god_images(tmp_path, ["absent.JPEG"], size=8)
