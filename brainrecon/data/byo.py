"""Bring-your-own data: one documented file (or folder) format for any fMRI experiment.

The format is described, with a worked example on real data, in ``docs/byo_format.md``.
In short, a single ``.npz`` or ``.h5``/``.hdf5`` file holds

=========================  ============================  =====================================
key                        shape / dtype                 meaning
=========================  ============================  =====================================
``betas_train``            (n, v) float                  one row per training trial (or image)
``betas_test``             (m, v) float                  one row per test trial (or image)
``stimuli_train``          (n, H, W, 3) uint8            the image of each row; (n, H, W) is
                                                         grayscale; float in [0, 1] accepted
``stimulus_paths_train``   (n,) str                      instead of ``stimuli_train``: image
                                                         files, relative to the data file
``captions_train``         (n,) or (n, k) str            optional captions ("" = none)
``train_ids``              (n,) int or str               optional image id per row; rows that
                                                         share an id are repeats
``roi/<name>``             (v,) bool                     optional ROI masks over the voxels
=========================  ============================  =====================================

(and the same ``*_test`` keys), or a folder with NIfTI betas, a brain mask, optional ROI
volumes and a stimulus table per split, read through nilearn's ``NiftiMasker``.

:func:`load_byo` validates everything (each problem is reported with the file, the key,
and what was expected versus found), averages repeats, drops constant voxels with a
warning, and z-scores with training statistics. :func:`save_byo` writes the file form.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainrecon.data.rois import read_roi_volume, validate_mask
from brainrecon.data.stimuli import resize_images
from brainrecon.errors import (
    ConfigError,
    DataFormatError,
    MissingDataError,
    ShapeMismatchError,
)
from brainrecon.preprocessing import (
    ZScoreStats,
    apply_zscore,
    average_repeats,
    check_voxels,
    fit_zscore,
)

__all__ = ["PreparedBYO", "load_byo", "save_byo", "FOLDER_FILES", "SPLITS"]

SPLITS = ("train", "test")
#: File names of the folder form (see ``docs/byo_format.md``).
FOLDER_FILES = {
    "betas": "betas_{split}.nii.gz",
    "mask": "brain_mask.nii.gz",
    "rois": "rois",
    "table": "stimuli_{split}.csv",
}
_FILE_SUFFIXES = (".npz", ".h5", ".hdf5", ".mat")
_ORDERS = ("C", "F")
_IMAGE_KEYS = ("stimuli_{split}", "stimulus_paths_{split}")
_OPTIONAL = ("captions_{split}", "{split}_ids")
_ZSCORE = ("train", "none")
_NAN_POLICY = ("error", "drop")


@dataclass
class PreparedBYO:
    """A bring-your-own experiment ready for regression.

    Attributes
    ----------
    X_train : ndarray of float32, shape (n_train, n_voxels)
    X_test : ndarray of float32, shape (n_test, n_voxels)
        One row per image when repeats were averaged, else one per trial.
    stimuli_train, stimuli_test : ndarray of uint8, shape (n, H, W, 3)
        The image of each row.
    captions_train, captions_test : list of list of str, or None
        The captions of each row (empty strings removed).
    roi_masks : dict of str -> ndarray of bool, shape (n_voxels,)
        ROI masks over the returned voxels (empty dict when the file has none).
    train_ids, test_ids : ndarray
        Image id of each row: the file's ``train_ids`` / ``test_ids`` (unique after
        averaging), or the row number ``0..n-1`` when the file gives none
        (``info["ids_from_file"]`` tells which).
    voxel_index : ndarray of int64, shape (n_voxels,)
        Column of the file's betas (or position in the brain mask) of each returned voxel.
    zscore_stats : ZScoreStats or None
        Training statistics used to z-score (apply them to new data of this subject).
    info : dict
        Provenance and counts (file, form, repeats, NaN / constant voxels dropped ...).
    """

    X_train: np.ndarray
    X_test: np.ndarray
    stimuli_train: np.ndarray
    stimuli_test: np.ndarray
    captions_train: list[list[str]] | None = None
    captions_test: list[list[str]] | None = None
    roi_masks: dict[str, np.ndarray] = field(default_factory=dict)
    train_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    test_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    voxel_index: np.ndarray | None = None
    zscore_stats: ZScoreStats | None = None
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Reading the containers into one dict of arrays
# --------------------------------------------------------------------------------------


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            out = {}
            for k in z.files:
                try:
                    out[k] = z[k]
                except ValueError as exc:  # object arrays need pickle: refused
                    raise DataFormatError(
                        f"{path}: key {k!r} is an object array (pickled); store strings as a "
                        "fixed-width unicode array (np.array(list_of_str, dtype=str)) and "
                        "numbers as numeric arrays"
                    ) from exc
            return out
    except DataFormatError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise DataFormatError(
            f"{path}: cannot read as .npz ({type(exc).__name__}: {exc}); the file may be "
            "truncated or corrupt"
        ) from exc


def _read_h5(path: Path) -> dict[str, np.ndarray]:
    import h5py

    try:
        f = h5py.File(path, "r")
    except Exception as exc:
        raise DataFormatError(
            f"{path}: cannot open as HDF5 ({type(exc).__name__}: {exc}); the file may be "
            "truncated or corrupt"
        ) from exc
    out: dict[str, np.ndarray] = {}

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            out[name] = obj

    try:
        with f:
            f.visititems(visit)
            for name, ds in list(out.items()):
                arr = ds[()]
                if ds.dtype.kind == "O" or ds.dtype.kind == "S":  # strings
                    arr = np.array([x.decode("utf-8") if isinstance(x, bytes) else str(x)
                                    for x in np.asarray(arr).ravel()],
                                   dtype=str).reshape(np.shape(arr))
                out[name] = np.asarray(arr)
    except DataFormatError:
        raise
    except Exception as exc:
        raise DataFormatError(
            f"{path}: cannot read HDF5 dataset(s) ({type(exc).__name__}: {exc}); the file may "
            "be truncated or corrupt"
        ) from exc
    return out


def _read_mat(path: Path) -> dict[str, np.ndarray]:
    """MATLAB v4-v7.2 ``.mat`` (scipy.io.loadmat); v7.3 files are HDF5 and are refused with a hint."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except NotImplementedError as exc:  # scipy's answer to v7.3 (HDF5) files
        raise DataFormatError(
            f"{path}: MATLAB v7.3 file (HDF5); save it with -v7, or read it as .h5 (MATLAB then "
            "stores every array transposed)"
        ) from exc
    except Exception as exc:
        raise DataFormatError(
            f"{path}: cannot read as MATLAB .mat ({type(exc).__name__}: {exc}); the file may be "
            "truncated or corrupt"
        ) from exc
    # loadmat adds __header__, __version__ and __globals__: metadata, not variables
    return {k: np.asarray(v) for k, v in mat.items() if not k.startswith("__")}


def _rename_keys(arrays: dict[str, np.ndarray], keys: Mapping[str, str], source: str) -> dict[str, np.ndarray]:
    """Keep only the variables named in ``keys`` (format key -> file key), under the format's names."""
    missing = sorted(v for v in keys.values() if v not in arrays)
    if missing:
        raise DataFormatError(f"{source}: keys {missing} named in keys= are absent; the file holds "
                              f"{sorted(arrays)}")
    return {str(k): arrays[str(v)] for k, v in keys.items()}


def _unflatten_stimuli(arrays: dict[str, np.ndarray], shape: Sequence[int], order: str,
                       source: str) -> None:
    """Reshape 2-D ``stimuli_*`` ``(n, H*W[*3])`` to ``(n, *shape)`` in place (``order`` "C" or "F")."""
    shape = tuple(int(v) for v in shape)
    for split in SPLITS:
        key = f"stimuli_{split}"
        if key not in arrays:
            continue
        arr = np.asarray(arrays[key])
        if arr.ndim != 2 or arr.shape[1] != int(np.prod(shape)):
            raise ShapeMismatchError(f"{source}: {key} to unflatten into {shape}",
                                     f"(n, {int(np.prod(shape))})", arr.shape)
        # order="F" is MATLAB's column-major layout (row-major would transpose every image)
        arrays[key] = np.stack([row.reshape(shape, order=order) for row in arr]) if len(arr) else arr


def _nifti_data(path: Path, what: str):
    import nibabel as nib

    if not path.is_file():
        raise MissingDataError(path, what)
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:
        raise DataFormatError(
            f"{path}: cannot read {what} ({type(exc).__name__}: {exc}); expected a readable "
            "NIfTI file (it may be truncated or corrupt)"
        ) from exc
    return img, data


def _read_table(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        raise MissingDataError(path, "stimulus table", hint="columns: image[,id][,caption]")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if "image" not in cols:
            raise DataFormatError(
                f"{path}: expected a header with an 'image' column (and optional 'id', "
                f"'caption'), found columns {cols}"
            )
        rows = list(reader)
    if not rows:
        raise DataFormatError(f"{path}: the stimulus table has no row")
    return {c: [r[c] or "" for r in rows] for c in cols if c in ("image", "id", "caption")}


def _read_folder(folder: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The folder form as the same dict of arrays as the file form."""
    import nibabel as nib
    from nilearn.maskers import NiftiMasker

    mask_path = folder / FOLDER_FILES["mask"]
    mask_img, mask_data = _nifti_data(mask_path, "brain mask")
    if mask_data.ndim == 4 and mask_data.shape[3] == 1:
        mask_data = mask_data[..., 0]
    if mask_data.ndim != 3:
        raise ShapeMismatchError(f"{mask_path}: brain mask dimensions", "3-D (X, Y, Z)",
                                 mask_data.shape)
    mask_bool = np.nan_to_num(mask_data) != 0
    if not mask_bool.any():
        raise DataFormatError(f"{mask_path}: the brain mask is empty (no non-zero voxel)")
    affine = np.asarray(mask_img.affine, dtype=np.float64)
    mask_img = nib.Nifti1Image(mask_bool.astype(np.uint8), affine)
    # With its defaults (no smoothing, standardising or detrending) the masker only gathers
    # the voxels inside the mask (in C order over the volume): betas pass through as is.
    masker = NiftiMasker(mask_img=mask_img).fit()

    def transform(img) -> np.ndarray:
        with warnings.catch_warnings():
            # nilearn >= 0.14 announces a rename of its default standardize=False; the
            # default (no standardisation) is what is wanted on every supported version.
            warnings.filterwarnings("ignore", message=".*standardize.*", category=FutureWarning)
            return np.asarray(masker.transform(img))

    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        bpath = folder / FOLDER_FILES["betas"].format(split=split)
        img, data = _nifti_data(bpath, f"{split} betas (4-D NIfTI)")
        if data.ndim == 3:
            data = data[..., None]
        if data.ndim != 4:
            raise ShapeMismatchError(f"{bpath}: betas dimensions", "4-D (X, Y, Z, n)", data.shape)
        if data.shape[:3] != mask_bool.shape:
            raise ShapeMismatchError(
                f"{bpath}: betas volume shape vs {mask_path.name}", mask_bool.shape,
                data.shape[:3], hint="the brain mask must be on the betas' grid",
            )
        if not np.allclose(img.affine, affine, atol=1e-3):
            raise ShapeMismatchError(
                f"{bpath}: betas affine vs {mask_path.name}", np.round(affine, 3).tolist(),
                np.round(img.affine, 3).tolist(), hint="the brain mask must be on the betas' grid",
            )
        arrays[f"betas_{split}"] = transform(nib.Nifti1Image(data.astype(np.float32), affine))
        table_path = folder / FOLDER_FILES["table"].format(split=split)
        table = _read_table(table_path)
        arrays[f"stimulus_paths_{split}"] = np.array(table["image"], dtype=str)
        if "caption" in table:
            arrays[f"captions_{split}"] = np.array(table["caption"], dtype=str)
        if "id" in table:
            arrays[f"{split}_ids"] = np.array(table["id"], dtype=str)
    roi_dir = folder / FOLDER_FILES["rois"]
    if roi_dir.is_dir():
        for rpath in sorted(roi_dir.glob("*.nii*")):
            name = rpath.name.split(".nii")[0]
            labels, _ = read_roi_volume(rpath, expected_shape=mask_bool.shape,
                                        expected_affine=affine)
            vol = nib.Nifti1Image((labels > 0).astype(np.float32), affine)
            arrays[f"roi/{name}"] = transform(vol).ravel() > 0.5
    info = {"mask_shape": list(mask_bool.shape), "affine": affine.tolist(),
            "n_mask_voxels": int(mask_bool.sum())}
    return arrays, info


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _check_keys(arrays: Mapping[str, np.ndarray], source: str) -> None:
    missing = [k for k in ("betas_train", "betas_test") if k not in arrays]
    for split in SPLITS:
        img_keys = [k.format(split=split) for k in _IMAGE_KEYS]
        present = [k for k in img_keys if k in arrays]
        if not present:
            missing.append(" or ".join(img_keys))
        elif len(present) == 2:
            raise DataFormatError(
                f"{source}: give either {img_keys[0]!r} or {img_keys[1]!r}, not both"
            )
    if missing:
        raise DataFormatError(
            f"{source}: missing required key(s) {missing}; found keys {sorted(arrays)} "
            "(see docs/byo_format.md)"
        )


def _known(key: str) -> bool:
    if key.startswith("roi/") or key.startswith("roi_"):
        return True
    for split in SPLITS:
        names = ["betas_{split}", *_IMAGE_KEYS, *_OPTIONAL]
        if key in {n.format(split=split) for n in names}:
            return True
    return False


def _as_images(arr: np.ndarray, source: str) -> tuple[np.ndarray, bool]:
    """uint8 (n, H, W, 3) from uint8/float [0, 1], RGB or grayscale; returns (images, was_gray)."""
    arr = np.asarray(arr)
    gray = arr.ndim == 3 or (arr.ndim == 4 and arr.shape[3] == 1)
    if arr.ndim == 4 and arr.shape[3] not in (1, 3):
        raise ShapeMismatchError(
            f"{source}: stimuli shape", "(n, H, W, 3) RGB or (n, H, W) grayscale", arr.shape,
            hint="drop the alpha channel of RGBA images",
        )
    if arr.ndim not in (3, 4):
        raise ShapeMismatchError(f"{source}: stimuli shape",
                                 "(n, H, W, 3) RGB or (n, H, W) grayscale", arr.shape)
    if arr.dtype == np.uint8:
        img = arr
    elif arr.dtype.kind == "f":
        finite = np.isfinite(arr).all()
        if not finite or arr.min() < 0 or arr.max() > 1:
            raise DataFormatError(
                f"{source}: float stimuli must be finite and within [0, 1], found range "
                f"[{np.nanmin(arr):g}, {np.nanmax(arr):g}]; store uint8 0-255 otherwise"
            )
        img = np.round(arr * 255.0).astype(np.uint8)
    else:
        raise DataFormatError(
            f"{source}: stimuli dtype must be uint8 (0-255) or float in [0, 1], got {arr.dtype}"
        )
    if gray:
        img = img.reshape(img.shape[:3])
        # Grayscale images are repeated over three channels: every latent space takes RGB.
        img = np.repeat(img[..., None], 3, axis=3)
    return np.ascontiguousarray(img), gray


def _check_shapes(arrays: Mapping[str, np.ndarray], source: str) -> int:
    """Check betas / stimuli / captions / ids / ROI shapes; returns the number of voxels."""
    betas = {}
    for split in SPLITS:
        b = np.asarray(arrays[f"betas_{split}"])
        if b.ndim != 2:
            raise ShapeMismatchError(f"{source}: betas_{split} dimensions",
                                     "(n_samples, n_voxels)", b.shape)
        if b.shape[0] == 0:
            raise ShapeMismatchError(f"{source}: betas_{split} rows", "at least 1", 0)
        if not (np.issubdtype(b.dtype, np.floating) or np.issubdtype(b.dtype, np.integer)):
            raise DataFormatError(f"{source}: betas_{split} must be numeric, got {b.dtype}")
        betas[split] = b
    n_vox = betas["train"].shape[1]
    if betas["test"].shape[1] != n_vox:
        raise ShapeMismatchError(f"{source}: voxels of betas_test vs betas_train",
                                 n_vox, betas["test"].shape[1])
    for split in SPLITS:
        n = betas[split].shape[0]
        for key in [k.format(split=split) for k in (*_IMAGE_KEYS, *_OPTIONAL)]:
            if key not in arrays:
                continue
            arr = np.asarray(arrays[key])
            if arr.ndim == 0 or arr.shape[0] != n:
                raise ShapeMismatchError(
                    f"{source}: rows of {key} vs betas_{split}", n,
                    arr.shape[0] if arr.ndim else "a scalar",
                    hint="one entry per row of the betas",
                )
            if key.startswith("stimulus_paths") or key.startswith("captions"):
                if arr.dtype.kind not in ("U", "S"):
                    raise DataFormatError(f"{source}: {key} must hold strings, got {arr.dtype}")
                if key.startswith("stimulus_paths") and arr.ndim != 1:
                    raise ShapeMismatchError(f"{source}: {key} shape", f"({n},)", arr.shape)
                if arr.ndim > 2:
                    raise ShapeMismatchError(f"{source}: {key} shape", f"({n},) or ({n}, k)",
                                             arr.shape)
            if key.endswith("_ids") and arr.ndim != 1:
                raise ShapeMismatchError(f"{source}: {key} shape", f"({n},)", arr.shape)
    for key, arr in arrays.items():
        if key.startswith(("roi/", "roi_")):
            validate_mask(np.asarray(arr), shape=(n_vox,), source=f"{source}: ROI {key!r}")
    return n_vox


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def _load_paths(paths: np.ndarray, root: Path, source: str, image_size: int | None) -> np.ndarray:
    from PIL import Image

    images = []
    for i, p in enumerate(paths.tolist()):
        full = Path(p) if Path(p).is_absolute() else root / p
        if not full.is_file():
            raise MissingDataError(full, f"stimulus image (row {i} of {source})")
        try:
            with Image.open(full) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except Exception as exc:
            raise DataFormatError(
                f"{full}: cannot read image (row {i} of {source}; {type(exc).__name__}: {exc})"
            ) from exc
        if image_size is not None:
            arr = resize_images(arr[None], image_size)[0]
        elif images and arr.shape != images[0].shape:
            raise ShapeMismatchError(
                f"{source}: size of image {full.name} vs the first image", images[0].shape,
                arr.shape, hint="pass image_size=... to resize every image to a square",
            )
        images.append(arr)
    return np.stack(images)


def _ids_or_rows(ids: np.ndarray | None, n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids)


def _captions(arr: np.ndarray | None) -> list[list[str]] | None:
    if arr is None:
        return None
    arr = np.asarray(arr)
    if arr.ndim == 1:
        arr = arr[:, None]
    return [[str(c) for c in row if str(c).strip()] for row in arr.tolist()]


def _average_split(
    X: np.ndarray, ids: np.ndarray, others: dict[str, np.ndarray], source: str
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Average repeats of X; keep the first row of the other arrays, checking they agree."""
    X_avg, uniq, counts = average_repeats(X, ids)
    # Iterating backwards leaves each id mapped to its first row.
    first = {v: i for i, v in reversed(list(enumerate(ids.tolist())))}
    rows = np.array([first[v] for v in uniq.tolist()], dtype=np.int64)
    out = {}
    for key, arr in others.items():
        if key.startswith("stimul"):  # repeats of an image must show the same image
            ref = arr[rows]
            idx_of = {v: k for k, v in enumerate(uniq.tolist())}
            for i, v in enumerate(ids.tolist()):
                if not np.array_equal(arr[i], ref[idx_of[v]]):
                    raise DataFormatError(
                        f"{source}: rows {rows[idx_of[v]]} and {i} share the id {v!r} but their "
                        f"{key} differ; expected repeats of one image to hold the same stimulus"
                    )
        out[key] = arr[rows]
    return X_avg, uniq, out, counts


def load_byo(
    path: str | Path,
    *,
    zscore: str = "train",
    average: bool = True,
    image_size: int | None = None,
    nan_voxels: str = "error",
    ddof: int = 1,
    keys: Mapping[str, str] | None = None,
    stimulus_shape: Sequence[int] | None = None,
    stimulus_order: str = "C",
) -> PreparedBYO:
    """Load a bring-your-own experiment (file or folder form, see ``docs/byo_format.md``).

    Parameters
    ----------
    path : path
        A ``.npz`` or ``.h5``/``.hdf5`` file, or a folder in the NIfTI folder form.
    zscore : {"train", "none"}, default "train"
        "train": z-score every voxel with the mean and standard deviation of the training
        rows (after repeat averaging), applied to train and test alike. "none": as stored.
    average : bool, default True
        When ``train_ids`` / ``test_ids`` are given, average the rows that share an id
        (order of first appearance). False keeps one row per trial.
    image_size : int, optional
        Resize every stimulus to ``image_size x image_size`` (PIL bicubic); required when
        image files differ in size.
    nan_voxels : {"error", "drop"}, default "error"
        Voxels holding NaN/inf raise with their count; "drop" removes them with a warning.
    ddof : int, default 1
        Degrees of freedom of the z-scoring standard deviation (1 as Brain-Diffuser).
    keys : mapping of str to str, optional
        File form only: the file's variable for each format key (``{"betas_train": "fmriTrn",
        ...}``); only the named variables are read. Default: the file uses the format's names.
    stimulus_shape : sequence of int, optional
        File form only: stimuli stored flattened ``(n, H*W)`` are reshaped to ``(n, *shape)``.
    stimulus_order : {"C", "F"}, default "C"
        Memory order of flattened stimuli: "F" for MATLAB's column-major images.

    Returns
    -------
    PreparedBYO

    Raises
    ------
    MissingDataError
        The file, folder, an image file or a NIfTI file does not exist.
    DataFormatError
        Unreadable (truncated, corrupt) file, missing keys, NaN voxels, empty ROI mask,
        stimuli of a wrong dtype, or repeats of one id with different stimuli.
    ShapeMismatchError
        Rows of betas vs stimuli/captions/ids, voxels of train vs test, ROI mask length,
        NIfTI grids that disagree.
    """
    if zscore not in _ZSCORE:
        raise ConfigError(f"zscore must be one of {_ZSCORE}, got {zscore!r}")
    if nan_voxels not in _NAN_POLICY:
        raise ConfigError(f"nan_voxels must be one of {_NAN_POLICY}, got {nan_voxels!r}")
    if stimulus_order not in _ORDERS:
        raise ConfigError(f"stimulus_order must be one of {_ORDERS}, got {stimulus_order!r}")
    path = Path(path)
    extra_info: dict = {}
    if path.is_dir() and (keys or stimulus_shape):
        raise ConfigError(f"{path}: keys= and stimulus_shape= apply to the file form, not to a folder")
    if path.is_dir():
        arrays, extra_info = _read_folder(path)
        form, root = "nifti-folder", path
    elif not path.exists():
        raise MissingDataError(path, "bring-your-own data file",
                               hint=f"a {'/'.join(_FILE_SUFFIXES)} file or a folder")
    elif path.suffix.lower() == ".npz":
        arrays, form, root = _read_npz(path), "npz", path.parent
    elif path.suffix.lower() in (".h5", ".hdf5"):
        arrays, form, root = _read_h5(path), "hdf5", path.parent
    elif path.suffix.lower() == ".mat":
        arrays, form, root = _read_mat(path), "mat", path.parent
    else:
        raise DataFormatError(
            f"{path}: unknown bring-your-own container {path.suffix!r}; expected one of "
            f"{list(_FILE_SUFFIXES)} or a folder"
        )
    source = str(path)
    if keys:
        arrays = _rename_keys(arrays, keys, source)
        extra_info["keys"] = dict(keys)
    if stimulus_shape:
        _unflatten_stimuli(arrays, stimulus_shape, stimulus_order, source)
        extra_info["stimulus_unflattened"] = f"{list(stimulus_shape)} order {stimulus_order}"
    _check_keys(arrays, source)
    unknown = sorted(k for k in arrays if not _known(k))
    if unknown:
        warnings.warn(f"{source}: ignored unknown key(s) {unknown} (see docs/byo_format.md)",
                      UserWarning, stacklevel=2)
    n_vox = _check_shapes(arrays, source)
    rois = {k[4:]: validate_mask(np.asarray(v), shape=(n_vox,), source=f"{source}: ROI {k!r}")
            for k, v in arrays.items() if k.startswith(("roi/", "roi_"))}

    # --- NaN voxels over both splits ------------------------------------------------------
    X = {s: np.asarray(arrays[f"betas_{s}"], dtype=np.float64) for s in SPLITS}
    nan_rep = check_voxels(np.vstack([X["train"], X["test"]]), source=f"{source} (betas)",
                           nan="error" if nan_voxels == "error" else "warn", constant="ignore")
    keep = ~nan_rep.nan

    # --- repeats --------------------------------------------------------------------------
    per_split: dict[str, dict] = {}
    for s in SPLITS:
        others = {}
        for key in (f"stimuli_{s}", f"stimulus_paths_{s}", f"captions_{s}"):
            if key in arrays:
                others[key] = np.asarray(arrays[key])
        ids = np.asarray(arrays[f"{s}_ids"]) if f"{s}_ids" in arrays else None
        counts = None
        Xs = X[s]
        if ids is not None and average:
            Xs, ids, others, counts = _average_split(Xs, ids, others, f"{source} ({s})")
            Xs = np.asarray(Xs, dtype=np.float64)
        per_split[s] = {"X": Xs, "ids": ids, "others": others, "counts": counts}

    # --- constant voxels over the training rows ----------------------------------------------
    Xtr = per_split["train"]["X"][:, keep]
    const_rep = check_voxels(Xtr, source=f"{source} (training rows)", nan="ignore",
                             constant="ignore")
    const = np.zeros(n_vox, dtype=bool)
    const[np.flatnonzero(keep)[const_rep.constant]] = True
    if const.any():
        warnings.warn(
            f"{source}: {int(const.sum())} of {n_vox} voxel(s) are constant over the "
            f"{Xtr.shape[0]} training row(s) and cannot be z-scored; they are dropped",
            RuntimeWarning, stacklevel=2,
        )
    keep &= ~const
    if not keep.any():
        raise DataFormatError(f"{source}: no voxel left after dropping NaN and constant voxels")
    roi_masks = {}
    for name, m in rois.items():
        m = m[keep]
        if not m.any():
            warnings.warn(f"{source}: ROI {name!r} is empty after dropping NaN/constant voxels",
                          RuntimeWarning, stacklevel=2)
        roi_masks[name] = m

    # --- z-scoring ----------------------------------------------------------------------------
    X_train = per_split["train"]["X"][:, keep]
    X_test = per_split["test"]["X"][:, keep]
    stats = None
    if zscore == "train":
        if X_train.shape[0] <= ddof:
            raise ShapeMismatchError(f"{source}: training rows for z-scoring",
                                     f"more than ddof={ddof}", X_train.shape[0])
        stats = fit_zscore(X_train, ddof=ddof)
        X_train, X_test = apply_zscore(X_train, stats), apply_zscore(X_test, stats)
    else:
        X_train, X_test = X_train.astype(np.float32), X_test.astype(np.float32)

    # --- stimuli and captions --------------------------------------------------------------
    stim, grays, caps = {}, {}, {}
    for s in SPLITS:
        others = per_split[s]["others"]
        if f"stimuli_{s}" in others:
            img, gray = _as_images(others[f"stimuli_{s}"], f"{source}: stimuli_{s}")
            if image_size is not None:
                img = resize_images(img, image_size)
        else:
            img = _load_paths(others[f"stimulus_paths_{s}"], root, f"{source} ({s})", image_size)
            gray = False
        stim[s], grays[s] = img, gray
        caps[s] = _captions(others.get(f"captions_{s}"))

    def _count_info(c):
        return None if c is None else {"min": int(c.min()), "max": int(c.max())}

    info = {
        "file": source,
        "form": form,
        "zscore": zscore,
        "ddof": ddof if zscore == "train" else None,
        "average": average,
        "n_voxels_in_file": int(n_vox),
        "n_voxels": int(keep.sum()),
        "n_nan_voxels": nan_rep.n_nan,
        "n_constant_voxels": int(const.sum()),
        "n_train_rows_in_file": int(X["train"].shape[0]),
        "n_test_rows_in_file": int(X["test"].shape[0]),
        "train_repeats": _count_info(per_split["train"]["counts"]),
        "test_repeats": _count_info(per_split["test"]["counts"]),
        "stimuli_grayscale": bool(grays["train"] or grays["test"]),
        "ids_from_file": {s: per_split[s]["ids"] is not None for s in SPLITS},
        **extra_info,
    }
    return PreparedBYO(
        X_train=np.ascontiguousarray(X_train, dtype=np.float32),
        X_test=np.ascontiguousarray(X_test, dtype=np.float32),
        stimuli_train=stim["train"],
        stimuli_test=stim["test"],
        captions_train=caps["train"],
        captions_test=caps["test"],
        roi_masks=roi_masks,
        train_ids=_ids_or_rows(per_split["train"]["ids"], X_train.shape[0]),
        test_ids=_ids_or_rows(per_split["test"]["ids"], X_test.shape[0]),
        voxel_index=np.flatnonzero(keep).astype(np.int64),
        zscore_stats=stats,
        info=info,
    )


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def save_byo(
    path: str | Path,
    *,
    betas_train: np.ndarray,
    betas_test: np.ndarray,
    stimuli_train: np.ndarray | None = None,
    stimuli_test: np.ndarray | None = None,
    stimulus_paths_train: Sequence[str] | None = None,
    stimulus_paths_test: Sequence[str] | None = None,
    captions_train: Sequence | None = None,
    captions_test: Sequence | None = None,
    train_ids: Sequence | None = None,
    test_ids: Sequence | None = None,
    rois: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write a bring-your-own file (``.npz`` or ``.h5``/``.hdf5``, chosen by the suffix).

    The arrays are checked as :func:`load_byo` checks them before anything is written.
    Strings are stored as fixed-width unicode (``.npz``) or UTF-8 (HDF5), never pickled.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {
        "betas_train": np.asarray(betas_train), "betas_test": np.asarray(betas_test)}
    optional = {
        "stimuli_train": stimuli_train, "stimuli_test": stimuli_test,
        "stimulus_paths_train": stimulus_paths_train, "stimulus_paths_test": stimulus_paths_test,
        "captions_train": captions_train, "captions_test": captions_test,
        "train_ids": train_ids, "test_ids": test_ids,
    }
    for key, val in optional.items():
        if val is None:
            continue
        arr = np.asarray(val)
        if key.startswith(("stimulus_paths", "captions")) or arr.dtype.kind == "O":
            arr = np.asarray(val, dtype=str)
        arrays[key] = arr
    for name, mask in (rois or {}).items():
        arrays[f"roi/{name}"] = np.asarray(mask, dtype=bool)
    _check_keys(arrays, str(path))
    _check_shapes(arrays, str(path))
    for s in SPLITS:
        if f"stimuli_{s}" in arrays:
            _as_images(arrays[f"stimuli_{s}"], f"{path}: stimuli_{s}")
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npz":
        np.savez(path, **arrays)
    elif suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "w") as f:
            for key, arr in arrays.items():
                if arr.dtype.kind == "U":
                    f.create_dataset(key, data=arr.astype(object),
                                     dtype=h5py.string_dtype("utf-8"))
                else:
                    f.create_dataset(key, data=arr)
    else:
        raise ConfigError(f"path: expected a .npz, .h5 or .hdf5 file name, got {path.name!r}")
    return path
