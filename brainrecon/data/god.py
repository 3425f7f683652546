"""Generic Object Decoding (GOD; Horikawa & Kamitani 2017) loader.

The preprocessed GOD data come as one file per subject in the BrainDecoderToolbox2 layout
(brainliner ``Subject{1..5}.mat``, or the figshare ``Subject{1..5}.h5`` written by bdpy):

``dataSet`` / ``dataset``
    Matrix ``(n_samples, n_columns)``. Some columns hold per-sample metadata (``DataType``,
    ``Run``, ``Label`` / ``stimulus_id`` ...), the others hold one voxel each.
``metaData`` / ``metadata``
    Three aligned fields: ``key`` (K names), ``description`` (K strings) and ``value``
    ``(K, n_columns)``. For a sample-level key, ``value[key] == 1`` marks the column of
    ``dataSet`` that holds it; for a voxel-level key (``voxel_x``, ``ROI_V1`` ... ``ROI_VC``)
    the row holds the per-voxel value (ROI flags: 1 inside, 0 or NaN outside). Unused
    entries are NaN.

Three containers are read: MATLAB v5 ``.mat`` (scipy), MATLAB v7.3 ``.mat`` (HDF5 with
column-major arrays and cell arrays of references; h5py) and bdpy ``.h5`` (h5py).

Published conventions (IC-GAN's GOD handler; see ``docs`` and the guide, methods §1.2):
``DataType`` 1 = training perception (1,200 trials, one per image), 2 = test perception
(50 images x 35 repeats, averaged per image), 3 = imagery (not returned here); every voxel
is z-scored within each run over all samples of that run (``sklearn.preprocessing.scale``,
``ddof=0``); the training rows are re-ordered to the image-id table
``imageID_training.csv`` (and the averaged test rows follow ``imageID_test.csv``).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainrecon.errors import (
    ConfigError,
    DataFormatError,
    MissingDataError,
    ShapeMismatchError,
)
from brainrecon.preprocessing import (
    apply_zscore,
    average_repeats,
    check_voxels,
    fit_zscore,
    zscore_by_group,
)

__all__ = [
    "GOD_ROIS",
    "DATATYPE_TRAIN",
    "DATATYPE_TEST",
    "DATATYPE_IMAGERY",
    "TRAIN_TABLE",
    "TEST_TABLE",
    "GODFile",
    "PreparedGOD",
    "read_god_file",
    "read_god_images",
    "read_image_table",
    "god_subject_file",
    "load_god",
]

#: ROIs of the GOD voxel metadata (key ``ROI_<name>``); VC is the union used by IC-GAN.
GOD_ROIS: tuple[str, ...] = ("V1", "V2", "V3", "V4", "LOC", "FFA", "PPA", "VC")
#: ``DataType`` codes of the GOD files.
DATATYPE_TRAIN, DATATYPE_TEST, DATATYPE_IMAGERY = 1, 2, 3
#: Names of the image-id tables distributed with GOD (and IC-GAN's ``KamitaniData/``).
TRAIN_TABLE, TEST_TABLE = "imageID_training.csv", "imageID_test.csv"

# GOD image ids are floats "<synset digits>.<image number, 6 decimals>", so two distinct ids
# differ by at least 1e-6; half of that matches a float label to its table row without ever
# matching a neighbour, and absorbs any rounding in how the .mat stored the float.
_ID_TOL = 5e-7
# Keys that may hold the image id of each sample: bdpy's GOD .h5 files use ``stimulus_id``,
# the brainliner .mat files ``Label``.
_LABEL_KEYS = ("stimulus_id", "Label")
_NORMALIZE = ("run", "run_id", "train", "none")


# --------------------------------------------------------------------------------------
# Raw file reading
# --------------------------------------------------------------------------------------


@dataclass
class GODFile:
    """The raw content of a BrainDecoderToolbox2 file.

    Attributes
    ----------
    path : Path
    dataset : ndarray of float64, shape (n_samples, n_columns)
    keys, descriptions : list of str, length K
    values : ndarray of float64, shape (K, n_columns)
    container : str
        ``"mat-v5"``, ``"mat-v7.3"`` or ``"bdpy-h5"``.
    """

    path: Path
    dataset: np.ndarray
    keys: list[str]
    descriptions: list[str]
    values: np.ndarray
    container: str

    def has(self, key: str) -> bool:
        return key in self.keys

    def value_row(self, key: str) -> np.ndarray:
        """The metadata row of ``key`` over every column (NaN where undefined)."""
        if key not in self.keys:
            raise DataFormatError(
                f"{self.path}: metadata key {key!r} not found; keys present: {self.keys}"
            )
        return self.values[self.keys.index(key)]

    def columns_of(self, key: str) -> np.ndarray:
        """Indices of the columns of ``dataset`` marked by ``key`` (value == 1)."""
        return np.flatnonzero(self.value_row(key) == 1)

    def sample_column(self, key: str) -> np.ndarray:
        """The one ``dataset`` column holding the per-sample value ``key``.

        The column is the one ``value[key] == 1`` marks. Should a file leave the row of a
        sample key empty, the column at the key's position is used when it lies before the
        first voxel column: IC-GAN's handler reads the brainliner files that way (key ``i``
        <-> column ``i`` for the leading sample keys).
        """
        cols = self.columns_of(key)
        if cols.size == 0 and not np.isfinite(self.value_row(key)).any():
            k = self.keys.index(key)
            if k < int(self.voxel_columns().min()):
                return self.dataset[:, k]
        if cols.size != 1:
            raise DataFormatError(
                f"{self.path}: metadata key {key!r} must mark exactly one column of dataSet "
                f"(value == 1), found {cols.size}"
            )
        return self.dataset[:, cols[0]]

    def voxel_columns(self) -> np.ndarray:
        """Indices of the columns holding voxels.

        ``VoxelData`` marks them in bdpy files; the brainliner files have no such key, and
        there the voxels are the columns with a finite ``voxel_x`` coordinate.
        """
        if self.has("VoxelData"):
            cols = self.columns_of("VoxelData")
        elif self.has("voxel_x"):
            cols = np.flatnonzero(np.isfinite(self.value_row("voxel_x")))
        else:
            raise DataFormatError(
                f"{self.path}: cannot tell voxel columns apart; expected a 'VoxelData' or "
                f"'voxel_x' metadata key, keys present: {self.keys}"
            )
        if cols.size == 0:
            raise DataFormatError(f"{self.path}: no voxel column found in dataSet")
        return cols


def _strings(obj: object) -> list[str]:
    """Strings of a MATLAB cell array or char matrix as loaded by scipy."""
    arr = np.asarray(obj)
    if arr.dtype.kind == "U":  # char matrix: one string per row
        if arr.ndim <= 1:
            return [str(arr.item()) if arr.ndim == 0 else "".join(arr.tolist())]
        return ["".join(row).strip() for row in arr.reshape(arr.shape[0], -1).tolist()]
    out = []
    for el in arr.ravel(order="F"):
        el = np.asarray(el)
        if el.size == 0:
            out.append("")
        elif el.dtype.kind == "U":
            out.append("".join(str(x) for x in el.ravel()).strip())
        else:
            out.append(str(el.ravel()[0]).strip())
    return out


def _read_mat_v5(path: Path) -> GODFile:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except NotImplementedError:  # v7.3: scipy points to an HDF5 reader
        raise
    except Exception as exc:
        raise DataFormatError(
            f"{path}: cannot read as a MATLAB .mat file ({type(exc).__name__}: {exc}); "
            "the file may be truncated or corrupt"
        ) from exc
    ds_name = "dataSet" if "dataSet" in mat else "dataset" if "dataset" in mat else None
    md_name = "metaData" if "metaData" in mat else "metadata" if "metadata" in mat else None
    found = sorted(k for k in mat if not k.startswith("__"))
    if ds_name is None or md_name is None:
        raise DataFormatError(
            f"{path}: expected variables 'dataSet' and 'metaData' (GOD / BrainDecoderToolbox2 "
            f"layout), found {found}"
        )
    md = mat[md_name]
    names = md.dtype.names or ()
    if not {"key", "value"} <= set(names):
        raise DataFormatError(
            f"{path}: '{md_name}' must be a struct with fields 'key', 'description', 'value'; "
            f"found fields {list(names)}"
        )
    keys = _strings(md["key"][0, 0])
    descs = _strings(md["description"][0, 0]) if "description" in names else [""] * len(keys)
    values = np.asarray(md["value"][0, 0], dtype=np.float64)
    return GODFile(path, np.asarray(mat[ds_name], dtype=np.float64), keys, descs, values, "mat-v5")


def _h5_strings(f, dset) -> list[str]:
    """Strings of a bdpy byte-string array or of a MATLAB v7.3 cell array of char."""
    import h5py

    raw = dset[()]
    if h5py.check_dtype(ref=dset.dtype) is h5py.Reference:
        # MATLAB v7.3 cell: references to uint16 char arrays (column-major, so ravel works).
        out = []
        for ref in raw.ravel(order="F"):
            chars = np.asarray(f[ref][()]).ravel()
            out.append("".join(chr(int(c)) for c in chars if c != 0).strip())
        return out
    out = []
    for x in np.asarray(raw).ravel():
        out.append((x.decode("utf-8") if isinstance(x, bytes) else str(x)).strip())
    return out


def _read_h5(path: Path) -> GODFile:
    import h5py

    try:
        f = h5py.File(str(path), "r")
    except Exception as exc:
        raise DataFormatError(
            f"{path}: cannot open as HDF5 ({type(exc).__name__}: {exc}); the file may be "
            "truncated or corrupt"
        ) from exc
    with f:
        ds_name = "dataSet" if "dataSet" in f else "dataset" if "dataset" in f else None
        md_name = "metaData" if "metaData" in f else "metadata" if "metadata" in f else None
        if ds_name is None or md_name is None:
            raise DataFormatError(
                f"{path}: expected 'dataSet'/'dataset' and 'metaData'/'metadata' (GOD / "
                f"BrainDecoderToolbox2 layout), found {sorted(f.keys())}"
            )
        md = f[md_name]
        if not isinstance(md, h5py.Group) or "key" not in md or "value" not in md:
            raise DataFormatError(
                f"{path}: '{md_name}' must hold 'key', 'description' and 'value'"
            )
        try:
            is_matlab = h5py.check_dtype(ref=md["key"].dtype) is h5py.Reference or (
                "MATLAB_class" in md["key"].attrs
            )
            keys = _h5_strings(f, md["key"])
            descs = (_h5_strings(f, md["description"]) if "description" in md
                     else [""] * len(keys))
            values = np.asarray(md["value"][()], dtype=np.float64)
            dataset = np.asarray(f[ds_name][()], dtype=np.float64)
        except (OSError, KeyError, ValueError) as exc:
            raise DataFormatError(
                f"{path}: cannot read the GOD arrays ({type(exc).__name__}: {exc}); the file "
                "may be truncated or corrupt"
            ) from exc
    if is_matlab:
        # MATLAB writes column-major arrays: HDF5 sees them transposed.
        values, dataset = values.T, dataset.T
        container = "mat-v7.3"
    else:
        container = "bdpy-h5"
    return GODFile(path, dataset, keys, descs, values, container)


def read_god_file(path: str | Path) -> GODFile:
    """Read one GOD subject file (``.mat`` v5 or v7.3, or bdpy ``.h5``).

    Parameters
    ----------
    path : path
        E.g. ``Subject3.mat`` (brainliner) or ``Subject3.h5`` (figshare / bdpy).

    Returns
    -------
    GODFile

    Raises
    ------
    MissingDataError
        The file does not exist.
    DataFormatError
        Unreadable (truncated, corrupt) or not the dataSet/metaData layout.
    ShapeMismatchError
        ``metaData.value`` does not have one column per ``dataSet`` column.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise MissingDataError(path, "GOD subject file", hint="e.g. Subject3.mat or Subject3.h5")
    if h5py.is_hdf5(str(path)):
        god = _read_h5(path)
    else:
        try:
            god = _read_mat_v5(path)
        except NotImplementedError:  # scipy says v7.3 but h5py could not open it
            raise DataFormatError(
                f"{path}: a MATLAB v7.3 header but not a readable HDF5 file; the file may "
                "be truncated or corrupt"
            ) from None
    if god.dataset.ndim != 2:
        raise ShapeMismatchError(f"{path}: dataSet dimensions", "(n_samples, n_columns)",
                                 god.dataset.shape)
    K = len(god.keys)
    if god.values.shape != (K, god.dataset.shape[1]):
        raise ShapeMismatchError(
            f"{path}: metaData.value shape (n_keys, n_columns of dataSet)",
            (K, god.dataset.shape[1]), god.values.shape,
        )
    if len(god.descriptions) != K:
        god.descriptions = (god.descriptions + [""] * K)[:K]
    return god


def god_subject_file(subject: int, root: str | Path | None = None) -> Path:
    """The file of GOD subject ``subject`` (1-5): ``Subject{N}.mat`` or ``Subject{N}.h5``.

    Parameters
    ----------
    subject : int
        1 to 5.
    root : path, optional
        Folder holding the subject files; default ``<data root>/god``
        (:func:`brainrecon.paths.data_root`, i.e. ``$BRAINRECON_DATA/god``).
    """
    from brainrecon.paths import data_root

    if isinstance(subject, bool) or not isinstance(subject, (int, np.integer)) or not (
        1 <= int(subject) <= 5
    ):
        raise ConfigError(f"subject: GOD has subjects 1 to 5, got {subject!r}")
    folder = Path(root) if root is not None else data_root() / "god"
    if not folder.is_dir():
        raise MissingDataError(folder, "GOD data folder",
                               hint="set BRAINRECON_DATA or pass root=")
    candidates = [folder / f"Subject{int(subject)}{ext}" for ext in (".mat", ".h5")]
    for c in candidates:
        if c.is_file():
            return c
    raise MissingDataError(
        candidates[0], f"GOD file of subject {int(subject)}",
        hint=f"looked for {[c.name for c in candidates]} in {folder}",
    )


def read_image_table(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """Read a GOD image-id table (``imageID_training.csv`` / ``imageID_test.csv``).

    Each row is ``<numeric id>,<file name>`` without a header, e.g.
    ``1518878.010042,"n01518878_10042.JPEG"``.

    Returns
    -------
    ids : ndarray of float64, shape (n_images,)
    files : list of str
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError(path, "GOD image-id table")
    ids, files = [], []
    with open(path, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise DataFormatError(
                    f"{path}, line {lineno}: expected '<numeric id>,<file name>', got {row!r}"
                )
            try:
                ids.append(float(row[0]))
            except ValueError:
                raise DataFormatError(
                    f"{path}, line {lineno}: expected a numeric image id, got {row[0]!r}"
                ) from None
            files.append(row[1].strip())
    if not ids:
        raise DataFormatError(f"{path}: empty image-id table (expected one row per image)")
    ids_arr = np.asarray(ids, dtype=np.float64)
    s = np.sort(ids_arr)
    if s.size > 1 and (np.diff(s) <= 2 * _ID_TOL).any():
        raise DataFormatError(f"{path}: duplicate image ids in the table")
    return ids_arr, files


def _match_ids(
    labels: np.ndarray, table: np.ndarray, *, source: str, table_path: Path
) -> np.ndarray:
    """Row of ``table`` for each float label (within :data:`_ID_TOL`); unknown ids raise."""
    order = np.argsort(table)
    st = table[order]
    pos = np.clip(np.searchsorted(st, labels), 1, max(len(st) - 1, 1))
    left = st[pos - 1]
    right = st[np.minimum(pos, len(st) - 1)]
    use_left = np.abs(labels - left) <= np.abs(labels - right)
    nearest = np.where(use_left, pos - 1, np.minimum(pos, len(st) - 1))
    ok = np.abs(st[nearest] - labels) <= _ID_TOL
    if not ok.all():
        bad = np.unique(labels[~ok])
        raise DataFormatError(
            f"{source}: {bad.size} image id(s) are not in {table_path} "
            f"(first: {[f'{b:.6f}' for b in bad[:3]]}); expected every label to match a table id "
            f"within {_ID_TOL:g}"
        )
    return order[nearest]


# --------------------------------------------------------------------------------------
# Prepared data
# --------------------------------------------------------------------------------------


@dataclass
class PreparedGOD:
    """One GOD subject ready for regression.

    Attributes
    ----------
    X_train : ndarray of float32, shape (n_train_images, n_voxels)
        One row per training image, in the order of the training table (1,200 in GOD).
    X_test : ndarray of float32, shape (n_test_images, n_voxels)
        Test repeats averaged per image in the order of the test table (50 in GOD); with
        ``average_test=False`` one row per test trial, grouped by table order.
    train_image_ids, test_image_ids : ndarray of float64
        Image id per row (as in the csv tables, e.g. ``1518878.010042``).
    train_files, test_files : list of str
        Image file names per row (second column of the tables).
    roi_masks : dict of str -> ndarray of bool, shape (n_voxels,)
        Every ``ROI_<name>`` of the file restricted to the returned voxels, keyed by
        ``<name>`` (``"V1"``, ..., ``"VC"``).
    voxel_xyz : ndarray of float64, shape (n_voxels, 3) or None
        ``voxel_x/y/z`` of the returned voxels when the file has them.
    info : dict
        Provenance and counts (file, container, ROI, normalisation, trial counts, dropped
        voxels, repeats per test image).
    """

    X_train: np.ndarray
    X_test: np.ndarray
    train_image_ids: np.ndarray
    test_image_ids: np.ndarray
    train_files: list[str]
    test_files: list[str]
    roi_masks: dict[str, np.ndarray]
    voxel_xyz: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def _resolve_tables(
    image_tables: str | Path | Sequence[str | Path] | None, subject_file: Path
) -> tuple[Path, Path]:
    if image_tables is None:
        folder = subject_file.parent
        return folder / TRAIN_TABLE, folder / TEST_TABLE
    if isinstance(image_tables, (str, Path)):
        folder = Path(image_tables)
        if not folder.is_dir():
            raise MissingDataError(folder, "folder of GOD image-id tables",
                                   hint=f"expected {TRAIN_TABLE} and {TEST_TABLE} inside")
        return folder / TRAIN_TABLE, folder / TEST_TABLE
    tables = list(image_tables)
    if len(tables) != 2:
        raise ConfigError(
            f"image_tables: expected a folder or (train_csv, test_csv), got {len(tables)} item(s)"
        )
    return Path(tables[0]), Path(tables[1])


def _roi_key(name: str) -> str:
    return name if name.startswith("ROI_") else f"ROI_{name}"


def load_god(
    path_to_subject_file: str | Path,
    *,
    roi: str | Sequence[str] = "ROI_VC",
    image_tables: str | Path | Sequence[str | Path] | None = None,
    normalize: str = "run",
    average_test: bool = True,
    label_key: str | None = None,
) -> PreparedGOD:
    """Load one GOD subject: ROI voxels, per-run z-scoring, table order, test averaging.

    Parameters
    ----------
    path_to_subject_file : path
        ``Subject{N}.mat`` (brainliner, MATLAB v5 or v7.3) or ``Subject{N}.h5`` (bdpy).
    roi : str or sequence of str, default "ROI_VC"
        ROI key(s) of the voxel metadata, with or without the ``ROI_`` prefix (``"V1"``,
        ``"ROI_LOC"``...). Several names select their union.
    image_tables : folder, or (train_csv, test_csv), optional
        The image-id tables; default: ``imageID_training.csv`` and ``imageID_test.csv``
        beside the subject file.
    normalize : {"run", "run_id", "train", "none"}, default "run"
        ``"run"``: z-score every voxel within each run over all samples of that run
        (``ddof=0`` as ``sklearn.preprocessing.scale``; runs are told apart by
        ``(DataType, Run)`` so that a training and a test run that share a run number are
        never pooled). ``"run_id"``: group by the ``Run`` number alone, exactly as IC-GAN's
        handler does (identical to "run" when run numbers are unique across data types).
        ``"train"``: z-score with the mean/std (``ddof=1``) of the training trials, applied
        to the test trials. ``"none"``: raw values.
    average_test : bool, default True
        Average the test repeats per image (IC-GAN/BigBiGAN). False returns every test
        trial (rows grouped by image in table order, trial order kept within an image).
    label_key : str, optional
        Metadata key holding the image id of each sample; default ``"stimulus_id"`` if
        present, else ``"Label"``.

    Returns
    -------
    PreparedGOD

    Raises
    ------
    MissingDataError, DataFormatError, ShapeMismatchError, ConfigError
        Missing file or table, wrong layout, unknown ROI, NaN voxels, labels absent from
        the tables, or table images without any trial.

    Notes
    -----
    Voxels holding NaN raise (with their count). Voxels that are constant within a
    normalisation group (a run, or the training trials) cannot be z-scored: they are
    dropped with a warning that gives their count, and ``info["dropped_voxels"]`` lists
    their indices among the ROI voxels.
    """
    if normalize not in _NORMALIZE:
        raise ConfigError(f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
    god = read_god_file(path_to_subject_file)
    path = god.path
    train_csv, test_csv = _resolve_tables(image_tables, path)
    train_table, train_files_all = read_image_table(train_csv)
    test_table, test_files_all = read_image_table(test_csv)

    # --- sample metadata -------------------------------------------------------------
    for key in ("DataType", "Run"):
        if not god.has(key):
            raise DataFormatError(
                f"{path}: required sample metadata key {key!r} missing; keys present: {god.keys}"
            )
    if label_key is None:
        label_key = next((k for k in _LABEL_KEYS if god.has(k)), None)
        if label_key is None:
            raise DataFormatError(
                f"{path}: no image-id key; expected one of {list(_LABEL_KEYS)}, keys present: "
                f"{god.keys}"
            )
    datatype = god.sample_column("DataType")
    run = god.sample_column("Run")
    labels = god.sample_column(label_key)

    # --- voxels and ROIs -------------------------------------------------------------
    vox_cols = god.voxel_columns()
    roi_keys_all = [k for k in god.keys if k.startswith("ROI_")]
    wanted = [roi] if isinstance(roi, str) else list(roi)
    if not wanted:
        raise ConfigError("roi: expected at least one ROI name")
    select = np.zeros(vox_cols.size, dtype=bool)
    for name in wanted:
        key = _roi_key(name)
        if not god.has(key):
            raise DataFormatError(
                f"{path}: ROI {key!r} not in the voxel metadata; ROIs present: {roi_keys_all}"
            )
        select |= god.value_row(key)[vox_cols] == 1
    if not select.any():
        raise DataFormatError(f"{path}: ROI {wanted} selects no voxel (expected at least one)")
    cols = vox_cols[select]
    X = god.dataset[:, cols]
    roi_masks = {k[4:]: god.value_row(k)[cols] == 1 for k in roi_keys_all}
    voxel_xyz = None
    if all(god.has(k) for k in ("voxel_x", "voxel_y", "voxel_z")):
        voxel_xyz = np.stack([god.value_row(k)[cols] for k in ("voxel_x", "voxel_y", "voxel_z")],
                             axis=1)

    is_train = datatype == DATATYPE_TRAIN
    is_test = datatype == DATATYPE_TEST
    if not is_train.any() or not is_test.any():
        raise DataFormatError(
            f"{path}: expected training (DataType 1) and test (DataType 2) samples, found "
            f"{int(is_train.sum())} and {int(is_test.sum())}"
        )

    # --- NaN / constant voxels, then normalisation ---------------------------------------
    check_voxels(X, source=f"{path} [{'+'.join(wanted)}]", nan="error", constant="ignore")
    groups: np.ndarray | None = None  # normalisation group of each sample (per-run modes)
    if normalize == "run":
        groups = np.unique(np.stack([datatype, run], axis=1), axis=0, return_inverse=True)[1]
        groups = np.asarray(groups).ravel()
    elif normalize == "run_id":
        groups = np.unique(run, return_inverse=True)[1].ravel()
    if groups is not None:
        sizes = np.bincount(groups)
        if (sizes < 2).any():
            g = int(np.flatnonzero(sizes < 2)[0])
            raise DataFormatError(
                f"{path}: run (DataType {datatype[groups == g][0]:g}, Run {run[groups == g][0]:g})"
                " holds a single sample; per-run z-scoring needs at least 2 (use "
                "normalize='train' or 'none')"
            )
        const = np.zeros(X.shape[1], dtype=bool)
        for g in np.unique(groups):
            block = X[groups == g]
            const |= (block.max(axis=0) == block.min(axis=0))
    else:
        train_rows = X[is_train]
        const = (train_rows.max(axis=0) == train_rows.min(axis=0)) if len(train_rows) > 1 \
            else np.ones(X.shape[1], dtype=bool)
    dropped = np.flatnonzero(const)
    if dropped.size:
        where = "within a run" if groups is not None else "over the training trials"
        warnings.warn(
            f"{path}: {dropped.size} of {X.shape[1]} voxel(s) of ROI {wanted} are constant "
            f"{where} and cannot be z-scored; they are dropped",
            RuntimeWarning, stacklevel=2,
        )
        keep = ~const
        X = X[:, keep]
        roi_masks = {k: m[keep] for k, m in roi_masks.items()}
        if voxel_xyz is not None:
            voxel_xyz = voxel_xyz[keep]
        if X.shape[1] == 0:
            raise DataFormatError(f"{path}: every voxel of ROI {wanted} is constant")
    if groups is not None:
        Xn = zscore_by_group(X, groups, ddof=0)
    elif normalize == "train":
        Xn = apply_zscore(X, fit_zscore(X[is_train], ddof=1))
    else:
        Xn = X.astype(np.float32)

    # --- training rows in table order ----------------------------------------------------
    src_train = f"{path} training samples (DataType 1, key {label_key!r})"
    train_idx = _match_ids(labels[is_train], train_table, source=src_train, table_path=train_csv)
    present = np.unique(train_idx)
    if present.size != train_table.size:
        missing = np.setdiff1d(np.arange(train_table.size), present)
        raise DataFormatError(
            f"{src_train}: {missing.size} of {train_table.size} images of {train_csv} have no "
            f"trial (first: {[train_files_all[i] for i in missing[:3]]})"
        )
    X_train, _, train_counts = average_repeats(
        Xn[is_train], train_idx, order=np.arange(train_table.size)
    )

    # --- test rows: averaged per image in table order ------------------------------------
    src_test = f"{path} test samples (DataType 2, key {label_key!r})"
    test_idx = _match_ids(labels[is_test], test_table, source=src_test, table_path=test_csv)
    present = np.unique(test_idx)
    if present.size != test_table.size:
        missing = np.setdiff1d(np.arange(test_table.size), present)
        raise DataFormatError(
            f"{src_test}: {missing.size} of {test_table.size} images of {test_csv} have no "
            f"trial (first: {[test_files_all[i] for i in missing[:3]]})"
        )
    test_counts = np.bincount(test_idx, minlength=test_table.size)
    if average_test:
        X_test, _, _ = average_repeats(Xn[is_test], test_idx, order=np.arange(test_table.size))
        test_rows = np.arange(test_table.size)
    else:
        perm = np.argsort(test_idx, kind="stable")
        X_test = np.ascontiguousarray(Xn[is_test][perm], dtype=np.float32)
        test_rows = test_idx[perm]

    info = {
        "file": str(path),
        "container": god.container,
        "roi": wanted,
        "label_key": label_key,
        "normalize": normalize,
        "average_test": average_test,
        "image_tables": [str(train_csv), str(test_csv)],
        "n_voxels": int(X_train.shape[1]),
        "n_train_trials": int(is_train.sum()),
        "n_test_trials": int(is_test.sum()),
        "n_imagery_trials_ignored": int((datatype == DATATYPE_IMAGERY).sum()),
        "train_repeats_max": int(train_counts.max()),
        "test_repeats_min": int(test_counts.min()),
        "test_repeats_max": int(test_counts.max()),
        "n_dropped_constant_voxels": int(dropped.size),
        "dropped_voxels": dropped.tolist(),
    }
    if info["train_repeats_max"] > 1:
        info["note"] = "some training images have several trials; they were averaged"
    return PreparedGOD(
        X_train=np.ascontiguousarray(X_train, dtype=np.float32),
        X_test=np.ascontiguousarray(X_test, dtype=np.float32),
        train_image_ids=train_table.copy(),
        test_image_ids=test_table[test_rows],
        train_files=list(train_files_all),
        test_files=[test_files_all[i] for i in test_rows],
        roi_masks=roi_masks,
        voxel_xyz=voxel_xyz,
        info=info,
    )


def read_god_images(folder: str | Path, files: Sequence[str], *, size: int = 256, progress: bool = False) -> np.ndarray:
    """Read GOD stimulus images by file name: central square crop, resized to ``size``.

    The ImageNet photographs of GOD are not square; IC-GAN and BigBiGAN feed their central
    square, resized (PIL bicubic) to the generator's resolution.

    Parameters
    ----------
    folder : path
        Folder of one split's images (``<images_root>/training`` or ``<images_root>/test``).
    files : sequence of str
        File names as in the image-id tables (``PreparedGOD.train_files``).
    size : int, default 256
        Output side in pixels.
    progress : bool
        Show a progress bar.

    Returns
    -------
    ndarray of uint8, shape (len(files), size, size, 3)

    Raises
    ------
    MissingDataError
        A file named in the table is absent (the first missing one is named, with the count).
    """
    from PIL import Image

    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
        raise ConfigError(f"stimulus_size: expected a positive int, got {size!r}")
    folder = Path(folder)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise MissingDataError(
            folder / missing[0], "GOD stimulus image",
            hint=f"{len(missing)} of {len(files)} image(s) named in the table are absent from {folder}",
        )
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    it: Sequence[str] = files
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(files, desc=f"GOD images ({folder.name})", leave=False)
    for i, name in enumerate(it):
        with Image.open(folder / name) as im:
            im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            square = im.crop((left, top, left + side, top + side))
            out[i] = np.asarray(square.resize((int(size), int(size)), Image.BICUBIC), dtype=np.uint8)
    return out
