"""Natural Scenes Dataset (NSD) loader: the real on-disk layout, streamed one session at a time.

Layout read (``root`` = the dataset root, as downloaded from the NSD S3 bucket)::

    nsddata/experiments/nsd/nsd_expdesign.mat           masterordering, subjectim, sharedix
    nsddata/ppdata/subjXX/func1pt8mm/roi/<name>.nii.gz    nsdgeneral, prf-visualrois, prf-eccrois,
                                                          floc-faces/-places/-bodies/-words
    nsddata_betas/ppdata/subjXX/func1pt8mm/betas_fithrf_GLMdenoise_RR/
        betas_sessionNN.hdf5      dataset "betas", int16 (n_trials, Z, Y, X)
        betas_sessionNN.nii.gz    int16 (X, Y, Z, n_trials)
        ncsnr.nii.gz              noise-ceiling SNR per voxel (optional)
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5          dataset "imgBrick", uint8 (n, H, W, 3)
    nsddata_stimuli/stimuli/nsd/annotations/COCO_73k_annots_curated.npy   unicode (n, 5)

Nothing is hard-coded about sizes: trials per session come from the beta files, the volume
shape and affine from the files, the number of images from ``subjectim`` and ``imgBrick``.

What :func:`prepare_subject` does (Brain-Diffuser's recipe, with options):

1. Trial ``t`` shows the image ``subjectim[subject-1, masterordering[t]-1] - 1`` (0-based
   "73k" id). Trials whose ``masterordering`` value is ``<= len(sharedix)`` show shared
   images and form the **test** split; the others (subject-unique images) form **train**.
   Images are ordered by first appearance in the chosen sessions' trials.
2. For each chosen session, in turn, only the ROI voxels are read (HDF5 in blocks of trials
   over the ROI's bounding box; NIfTI in blocks of trials), as float32 percent signal change
   (stored value / 300). Peak memory is one session of ROI voxels plus the outputs.
3. ``zscore="session"``: each session is z-scored per voxel over its own trials first
   (MindEye1); ``zscore="train"``: after averaging, every voxel is z-scored with the mean and
   standard deviation (``ddof=1``) of the *training rows only* (Brain-Diffuser);
   ``zscore="none"``: percent signal change as is.
4. ``average_repeats=True``: the (up to 3) repeats of each image are averaged (float64 sums);
   otherwise one row per trial and the ids repeat.
5. Voxels constant over the training rows (or within a session, for session z-scoring)
   cannot be z-scored: they are dropped **with a warning** and counted in ``info``. NaN or
   infinite betas raise :class:`~brainrecon.errors.DataFormatError` naming the file, unless
   ``nan="drop"`` (then those voxels are dropped with a warning and counted).

Voxel order: Brain-Diffuser's (``beta[mask > 0]`` on the ``(X, Y, Z, trial)`` NIfTI arrays,
i.e. ``np.nonzero(mask)``), whichever beta format is read; see
:func:`brainrecon.data.rois.mask_to_ijk`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainrecon.data.rois import NSD_ROI_LABELS, labels_at, mask_to_ijk, read_roi_volume, roi_mask
from brainrecon.data.stimuli import StimulusBrick, read_caption_rows
from brainrecon.fingerprint import file_fingerprint
from brainrecon.errors import ConfigError, DataFormatError, MissingDataError, ShapeMismatchError
from brainrecon.preprocessing import (
    NSD_BETA_SCALE,
    RunningMoments,
    ZScoreStats,
    add_rows_at,
    check_voxels,
    scale_betas,
)

__all__ = [
    "PreparedNSD",
    "NSDLayout",
    "ExpDesign",
    "prepare_subject",
    "read_expdesign",
    "list_sessions",
    "read_session_betas",
    "read_stimuli",
    "read_captions",
    "read_ncsnr",
    "load_prepared",
]

#: NSD subjects are numbered 1..8.
NSD_SUBJECTS = tuple(range(1, 9))
BETA_VERSION = "betas_fithrf_GLMdenoise_RR"
RESOLUTION = "func1pt8mm"
#: Trials read per block: bounds the raw int16 temporary of one read.
TRIAL_BLOCK = 64
#: Bump when the prepared arrays would change for the same inputs (invalidates caches).
_CACHE_VERSION = 1


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NSDLayout:
    """Paths of the NSD files under ``root`` (no file is touched by building it)."""

    root: Path

    @property
    def expdesign(self) -> Path:
        return self.root / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"

    @property
    def stimuli(self) -> Path:
        return self.root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"

    @property
    def captions(self) -> Path:
        return (self.root / "nsddata_stimuli" / "stimuli" / "nsd" / "annotations"
                / "COCO_73k_annots_curated.npy")

    def betas_dir(self, subject: int) -> Path:
        return (self.root / "nsddata_betas" / "ppdata" / f"subj{subject:02d}" / RESOLUTION
                / BETA_VERSION)

    def beta_file(self, subject: int, session: int, fmt: str) -> Path:
        ext = {"hdf5": "hdf5", "nifti": "nii.gz"}[fmt]
        return self.betas_dir(subject) / f"betas_session{session:02d}.{ext}"

    def roi_dir(self, subject: int) -> Path:
        return self.root / "nsddata" / "ppdata" / f"subj{subject:02d}" / RESOLUTION / "roi"

    def roi_file(self, subject: int, name: str) -> Path:
        return self.roi_dir(subject) / f"{name}.nii.gz"

    def ncsnr(self, subject: int) -> Path:
        return self.betas_dir(subject) / "ncsnr.nii.gz"


def _layout(root: str | os.PathLike) -> NSDLayout:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingDataError(root, "NSD root folder", hint="pass the folder that holds nsddata/")
    return NSDLayout(root)


# --------------------------------------------------------------------------------------------
# Experimental design
# --------------------------------------------------------------------------------------------
@dataclass
class ExpDesign:
    """Contents of ``nsd_expdesign.mat`` (all 1-based, as stored).

    Attributes
    ----------
    masterordering : ndarray of int64, shape (n_trials_total,)
        Per trial, 1-based index into a subject's image list (a column of ``subjectim``).
    subjectim : ndarray of int64, shape (n_subjects, n_images_per_subject)
        Per subject, 1-based "73k" ids of its images; the first ``len(sharedix)`` are shared.
    sharedix : ndarray of int64, shape (n_shared,)
        1-based 73k ids of the images shown to every subject.
    path : Path
    """

    masterordering: np.ndarray
    subjectim: np.ndarray
    sharedix: np.ndarray
    path: Path

    @property
    def n_shared(self) -> int:
        return int(self.sharedix.size)

    def trial_images(self, subject: int) -> tuple[np.ndarray, np.ndarray]:
        """0-based 73k id and "is shared (test)" flag of every trial, for ``subject``."""
        if not 1 <= subject <= self.subjectim.shape[0]:
            raise ConfigError(
                f"subject {subject} does not exist in {self.path}: subjectim has "
                f"{self.subjectim.shape[0]} subject rows (expected 1..{self.subjectim.shape[0]})"
            )
        row = self.subjectim[subject - 1]
        ids = row[self.masterordering - 1] - 1
        shared = self.masterordering <= self.n_shared
        return ids.astype(np.int64), shared


def read_expdesign(root: str | os.PathLike) -> ExpDesign:
    """Read and validate ``nsddata/experiments/nsd/nsd_expdesign.mat``.

    Raises
    ------
    MissingDataError
        The file is absent (usually: ``root`` is not the NSD root).
    DataFormatError
        The file is unreadable, lacks a key, or holds ids out of range.
    """
    import scipy.io

    lay = _layout(root)
    path = lay.expdesign
    if not path.is_file():
        raise MissingDataError(
            path, "NSD design file",
            hint=f"is {lay.root} the NSD root? expected nsddata/experiments/nsd/nsd_expdesign.mat",
        )
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:
        raise DataFormatError(
            f"{path}: cannot read as a MATLAB v5 file ({type(exc).__name__}: {exc})"
        ) from exc
    missing = [k for k in ("masterordering", "subjectim", "sharedix") if k not in mat]
    if missing:
        raise DataFormatError(f"{path}: missing variable(s) {missing}; expected masterordering, "
                              "subjectim, sharedix")

    def _int(name: str, arr: np.ndarray) -> np.ndarray:
        arr = np.asarray(arr)
        if arr.size and (not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr))):
            raise DataFormatError(f"{path}: {name} must hold integer ids")
        return arr.astype(np.int64)

    mo = _int("masterordering", mat["masterordering"]).ravel()
    si = _int("subjectim", mat["subjectim"])
    sh = _int("sharedix", mat["sharedix"]).ravel()
    if si.ndim != 2:
        raise DataFormatError(f"{path}: subjectim must be 2-D (n_subjects, n_images), got {si.shape}")
    if mo.size == 0 or mo.min() < 1 or mo.max() > si.shape[1]:
        raise DataFormatError(
            f"{path}: masterordering values must be 1-based indices into subjectim's "
            f"{si.shape[1]} columns, got range [{mo.min() if mo.size else '-'}, "
            f"{mo.max() if mo.size else '-'}]"
        )
    if si.min() < 1:
        raise DataFormatError(f"{path}: subjectim must hold 1-based 73k ids (>= 1), min is {si.min()}")
    if sh.size > si.shape[1]:
        raise DataFormatError(f"{path}: sharedix has {sh.size} ids, more than subjectim's columns")
    return ExpDesign(mo, si, sh, path)


# --------------------------------------------------------------------------------------------
# Betas
# --------------------------------------------------------------------------------------------
_SESSION_RE = {"hdf5": re.compile(r"betas_session(\d+)\.hdf5$"),
               "nifti": re.compile(r"betas_session(\d+)\.nii\.gz$")}


def _check_subject(lay: NSDLayout, subject: int) -> None:
    if isinstance(subject, bool) or not isinstance(subject, (int, np.integer)):
        raise ConfigError(f"subject must be an integer 1..8, got {subject!r}")
    subject = int(subject)
    if subject not in NSD_SUBJECTS:
        raise ConfigError(f"subject {subject} does not exist in NSD (expected 1..8)")
    bdir = lay.betas_dir(subject)
    if not bdir.is_dir():
        parent = bdir.parents[2]  # nsddata_betas/ppdata
        have = sorted(p.name for p in parent.glob("subj*")) if parent.is_dir() else []
        raise MissingDataError(bdir, f"betas folder of subject {subject}",
                               hint=f"subjects present: {have or 'none'}")


def _check_format(beta_format: str) -> None:
    if beta_format not in ("hdf5", "nifti"):
        raise ConfigError(f"beta_format must be 'hdf5' or 'nifti', got {beta_format!r}")


def list_sessions(root: str | os.PathLike, subject: int = 1, beta_format: str = "hdf5") -> list[int]:
    """Session numbers (1-based) whose beta file exists in ``beta_format``, sorted."""
    _check_format(beta_format)
    lay = _layout(root)
    _check_subject(lay, subject)
    rx = _SESSION_RE[beta_format]
    found = []
    for p in lay.betas_dir(int(subject)).iterdir():
        m = rx.match(p.name)
        if m:
            found.append(int(m.group(1)))
    return sorted(found)


@dataclass
class _BetaHeader:
    n_trials: int
    volume_shape: tuple[int, int, int]  # (X, Y, Z)
    affine: np.ndarray | None
    dtype: np.dtype


def _corrupt(path: Path, exc: BaseException, what: str) -> DataFormatError:
    return DataFormatError(
        f"{path}: cannot read {what} ({type(exc).__name__}: {exc}); the file may be truncated "
        "or corrupt, download it again"
    )


def _beta_header(path: Path, fmt: str) -> _BetaHeader:
    if not path.is_file():
        raise MissingDataError(path, "beta file")
    if fmt == "hdf5":
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if "betas" not in f:
                    raise DataFormatError(
                        f"{path}: expected an HDF5 dataset 'betas' (n_trials, Z, Y, X), found "
                        f"{list(f.keys())}")
                ds = f["betas"]
                shape, dtype = ds.shape, ds.dtype
        except DataFormatError:
            raise
        except Exception as exc:
            raise _corrupt(path, exc, "HDF5 betas") from exc
        if len(shape) != 4:
            raise DataFormatError(f"{path}: dataset 'betas' must be 4-D (n_trials, Z, Y, X), got {shape}")
        return _BetaHeader(int(shape[0]), (int(shape[3]), int(shape[2]), int(shape[1])), None, dtype)
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = img.shape
        dtype = img.get_data_dtype()
    except Exception as exc:
        raise _corrupt(path, exc, "NIfTI betas") from exc
    if len(shape) != 4:
        raise DataFormatError(f"{path}: NIfTI betas must be 4-D (X, Y, Z, n_trials), got {shape}")
    return _BetaHeader(int(shape[3]), tuple(int(s) for s in shape[:3]),
                       np.asarray(img.affine, dtype=np.float64), dtype)


def read_session_betas(
    path: str | Path,
    mask: np.ndarray,
    *,
    beta_format: str | None = None,
    beta_scale: float = NSD_BETA_SCALE,
    trial_block: int = TRIAL_BLOCK,
) -> np.ndarray:
    """ROI voxels of one session's beta file, as float32 ``stored / beta_scale``.

    Parameters
    ----------
    path : path
        ``betas_sessionNN.hdf5`` or ``betas_sessionNN.nii.gz``.
    mask : ndarray of bool, shape (X, Y, Z)
        Voxels to keep (order: :func:`brainrecon.data.rois.mask_to_ijk`).
    beta_format : {"hdf5", "nifti"}, optional
        Guessed from the file name when omitted.
    beta_scale : float
        Stored values are divided by this (NSD: 300).
    trial_block : int
        Trials read at once; bounds the raw temporary.

    Returns
    -------
    ndarray of float32, shape (n_trials, n_voxels)
    """
    path = Path(path)
    fmt = beta_format or ("hdf5" if path.name.endswith(".hdf5") else "nifti")
    _check_format(fmt)
    hdr = _beta_header(path, fmt)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != hdr.volume_shape:
        raise ShapeMismatchError(f"{path}: betas volume (X, Y, Z) vs ROI mask", mask.shape,
                                 hdr.volume_shape)
    ijk = mask_to_ijk(mask)
    lo = ijk.min(axis=0)
    hi = ijk.max(axis=0) + 1
    # Positions of the ROI voxels inside the bounding box, in the reader's axis order.
    rel = ijk - lo
    out = np.empty((hdr.n_trials, ijk.shape[0]), dtype=np.float32)
    if fmt == "hdf5":
        import h5py

        try:
            with h5py.File(path, "r") as f:
                ds = f["betas"]
                for t0 in range(0, hdr.n_trials, trial_block):
                    t1 = min(t0 + trial_block, hdr.n_trials)
                    # (t, Z, Y, X) box: read the ROI's bounding box only.
                    raw = ds[t0:t1, lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
                    vals = raw[:, rel[:, 2], rel[:, 1], rel[:, 0]]
                    out[t0:t1] = scale_betas(vals, beta_scale)
        except (DataFormatError, ShapeMismatchError):
            raise
        except Exception as exc:
            raise _corrupt(path, exc, "HDF5 betas") from exc
    else:
        import nibabel as nib

        try:
            # keep_file_open: successive trial blocks continue the same gzip stream instead of
            # decompressing from the start for every block.
            img = nib.load(str(path), keep_file_open=True)
            proxy = img.dataobj
            for t0 in range(0, hdr.n_trials, trial_block):
                t1 = min(t0 + trial_block, hdr.n_trials)
                # NIfTI is Fortran-ordered, so whole volumes of consecutive trials are one
                # contiguous read; the box is cut in memory.
                raw = np.asarray(proxy[..., t0:t1])[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
                vals = raw[rel[:, 0], rel[:, 1], rel[:, 2], :].T
                out[t0:t1] = scale_betas(vals, beta_scale)
            del proxy, img  # releases the kept-open file handle
        except Exception as exc:
            raise _corrupt(path, exc, "NIfTI betas") from exc
    return out


# --------------------------------------------------------------------------------------------
# Stimuli, captions, ncsnr
# --------------------------------------------------------------------------------------------
def read_stimuli(root: str | os.PathLike, ids: np.ndarray, *, size: int | None = None) -> np.ndarray:
    """NSD stimulus images at 0-based 73k ``ids`` as uint8 ``(n, H, W, 3)``, read lazily.

    Only the requested rows of ``imgBrick`` are read (in batches); ``size`` resizes each image
    to ``size x size`` while reading.
    """
    path = _layout(root).stimuli
    with StimulusBrick(path, "imgBrick") as brick:
        return brick.read(ids, size=size)


def open_stimuli(root: str | os.PathLike) -> StimulusBrick:
    """A lazy :class:`~brainrecon.data.stimuli.StimulusBrick` on ``nsd_stimuli.hdf5`` (close it)."""
    return StimulusBrick(_layout(root).stimuli, "imgBrick")


def read_captions(root: str | os.PathLike, ids, *, path: str | os.PathLike | None = None) -> list[list[str]]:
    """COCO captions of the images at 0-based 73k ``ids``; empty strings dropped.

    Parameters
    ----------
    root : path
        NSD root (used when ``path`` is not given).
    ids : sequence of int
    path : path, optional
        A captions ``.npy`` elsewhere (unicode ``(n_images, n_captions)``).
    """
    p = Path(path) if path is not None else _layout(root).captions
    return read_caption_rows(p, ids)


def read_ncsnr(root: str | os.PathLike, subject: int, voxel_ijk: np.ndarray) -> np.ndarray:
    """Noise-ceiling SNR (``ncsnr.nii.gz`` beside the betas) of each voxel, float32.

    The noise ceiling of an ``n``-trial average in percent is ``100 * ncsnr**2 / (ncsnr**2 + 1/n)``.
    """
    import nibabel as nib

    lay = _layout(root)
    path = lay.ncsnr(int(subject))
    if not path.is_file():
        raise MissingDataError(path, "noise-ceiling SNR volume")
    try:
        vol = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    except Exception as exc:
        raise _corrupt(path, exc, "NIfTI ncsnr") from exc
    if vol.ndim != 3:
        raise DataFormatError(f"{path}: expected a 3-D volume, got shape {vol.shape}")
    return labels_at(vol, voxel_ijk).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Prepared subject
# --------------------------------------------------------------------------------------------
@dataclass
class PreparedNSD:
    """One subject's betas, split and preprocessed (see :func:`prepare_subject`).

    Attributes
    ----------
    X_train, X_test : ndarray of float32, shape (n_rows, n_voxels)
        Memory-mapped read-only ``.npy`` when loaded from a cache.
    train_ids, test_ids : ndarray of int64
        0-based 73k stimulus id of each row (repeat in single-trial mode).
    voxel_ijk : ndarray of int64, shape (n_voxels, 3)
        Volume indices of the columns (constant/NaN voxels already dropped).
    affine : ndarray (4, 4); volume_shape : (X, Y, Z)
    roi_labels : dict str -> ndarray of int32 (n_voxels,)
        For each ROI file found (``nsdgeneral``, ``prf-visualrois``, ...), the label of each
        column; names of labels in :data:`brainrecon.data.rois.NSD_ROI_LABELS`.
    train_counts, test_counts : ndarray of int64
        Trials averaged into each row (1 in single-trial mode).
    zscore_stats : ZScoreStats or None
        Training statistics used when ``zscore="train"`` (to z-score new data alike).
    info : dict
        JSON-friendly description: subject, sessions, trials per session, mode, z-scoring,
        voxel counts (in ROI, dropped constant, dropped NaN), split sizes.
    """

    X_train: np.ndarray
    X_test: np.ndarray
    train_ids: np.ndarray
    test_ids: np.ndarray
    voxel_ijk: np.ndarray
    affine: np.ndarray
    volume_shape: tuple
    roi_labels: dict[str, np.ndarray]
    info: dict
    train_counts: np.ndarray | None = None
    test_counts: np.ndarray | None = None
    zscore_stats: ZScoreStats | None = field(default=None, repr=False)

    @property
    def n_voxels(self) -> int:
        return int(self.voxel_ijk.shape[0])


def _resolve_sessions(
    sessions, available: list[int], lay: NSDLayout, subject: int, fmt: str
) -> list[int]:
    if sessions is None:
        if not available:
            raise MissingDataError(lay.betas_dir(subject), f"{fmt} beta files (betas_sessionNN)")
        return list(available)
    if isinstance(sessions, (int, np.integer)) and not isinstance(sessions, bool):
        if sessions < 1:
            raise ConfigError(f"sessions must be >= 1, got {sessions}")
        wanted = list(range(1, int(sessions) + 1))  # "the first n sessions", as Brain-Diffuser
    else:
        wanted = [int(s) for s in sessions]
        if not wanted:
            raise ConfigError("sessions is an empty list")
        if len(set(wanted)) != len(wanted):
            raise ConfigError(f"sessions has duplicates: {wanted}")
        if min(wanted) < 1:
            raise ConfigError(f"session numbers are 1-based, got {wanted}")
    absent = [s for s in wanted if s not in available]
    if absent:
        raise MissingDataError(
            lay.beta_file(subject, absent[0], fmt), f"beta file of session {absent[0]}",
            hint=f"subject {subject} has {fmt} sessions {_ranges(available) or 'none'}; "
                 f"missing requested session(s) {absent}",
        )
    return sorted(wanted)


def _ranges(xs: list[int]) -> str:
    if not xs:
        return ""
    parts, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ",".join(parts)


def _session_trial_counts(
    lay: NSDLayout, subject: int, upto: int, fmt: str, headers: dict[int, _BetaHeader]
) -> dict[int, int]:
    """Trials in sessions 1..upto (needed to place each session in masterordering)."""
    counts: dict[int, int] = {}
    other = "nifti" if fmt == "hdf5" else "hdf5"
    unknown = []
    for s in range(1, upto + 1):
        if s in headers:
            counts[s] = headers[s].n_trials
            continue
        for f in (fmt, other):
            p = lay.beta_file(subject, s, f)
            if p.is_file():
                counts[s] = _beta_header(p, f).n_trials
                break
        else:
            unknown.append(s)
    if unknown:
        known = set(counts.values())
        if len(known) != 1:
            raise MissingDataError(
                lay.beta_file(subject, unknown[0], fmt), "beta file of an earlier session",
                hint="needed to know where later sessions start in masterordering; sessions "
                     "differ in length so it cannot be inferred",
            )
        n = known.pop()
        warnings.warn(
            f"beta files of session(s) {unknown} are absent; assuming {n} trials each (like "
            "the sessions present) to locate later sessions in masterordering",
            RuntimeWarning, stacklevel=3,
        )
        counts.update({s: n for s in unknown})
    return counts


def _cache_key(params: dict, files: list[Path]) -> str:
    desc = {"params": params, "files": [[p.name, file_fingerprint(p)] for p in files],
            "version": _CACHE_VERSION}
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


_ARRAYS = ("X_train", "X_test", "train_ids", "test_ids", "voxel_ijk", "affine",
           "train_counts", "test_counts")


def load_prepared(folder: str | Path) -> PreparedNSD:
    """Load a prepared-subject cache folder written by :func:`prepare_subject` (memory-mapped)."""
    folder = Path(folder)
    info_path = folder / "info.json"
    if not info_path.is_file():
        raise MissingDataError(info_path, "prepared NSD cache (info.json)")
    info = json.loads(info_path.read_text())
    arrs = {}
    for name in _ARRAYS:
        p = folder / f"{name}.npy"
        if not p.is_file():
            raise MissingDataError(p, "prepared NSD cache array")
        arrs[name] = np.load(p, mmap_mode="r" if name.startswith("X_") else None, allow_pickle=False)
    roi_labels = {n: np.load(folder / f"roi_{n}.npy", allow_pickle=False) for n in info["roi_files"]}
    stats = None
    if (folder / "zscore_mean.npy").is_file():
        stats = ZScoreStats(np.load(folder / "zscore_mean.npy"), np.load(folder / "zscore_std.npy"),
                            ddof=int(info["ddof"]), n_samples=int(info["n_train_rows"]))
    return PreparedNSD(
        X_train=arrs["X_train"], X_test=arrs["X_test"], train_ids=arrs["train_ids"],
        test_ids=arrs["test_ids"], voxel_ijk=arrs["voxel_ijk"], affine=arrs["affine"],
        volume_shape=tuple(info["volume_shape"]), roi_labels=roi_labels, info=info,
        train_counts=arrs["train_counts"], test_counts=arrs["test_counts"], zscore_stats=stats,
    )


def _save_prepared(prep: PreparedNSD, target: Path) -> PreparedNSD:
    """Write into a temporary sibling folder, then rename: a cache folder is always complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    try:
        for name in _ARRAYS:
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(getattr(prep, name)), allow_pickle=False)
        for n, lab in prep.roi_labels.items():
            np.save(tmp / f"roi_{n}.npy", lab, allow_pickle=False)
        if prep.zscore_stats is not None:
            np.save(tmp / "zscore_mean.npy", prep.zscore_stats.mean)
            np.save(tmp / "zscore_std.npy", prep.zscore_stats.std)
        (tmp / "info.json").write_text(json.dumps(prep.info, indent=1, sort_keys=True))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "info.json").is_file():  # not a concurrent writer: a real failure
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_prepared(target)


def prepare_subject(
    root: str | os.PathLike,
    subject: int = 1,
    *,
    sessions: int | Sequence[int] | None = None,
    roi: str = "nsdgeneral",
    average_repeats: bool = True,
    zscore: str = "train",
    beta_format: str = "hdf5",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    beta_scale: float = NSD_BETA_SCALE,
    ddof: int = 1,
    nan: str = "error",
    roi_files: Sequence[str] | None = None,
) -> PreparedNSD:
    """Read, split and preprocess one NSD subject, streaming one session at a time.

    Parameters
    ----------
    root : path
        NSD root (holds ``nsddata/``, ``nsddata_betas/``, ``nsddata_stimuli/``).
    subject : int, default 1
        1..8.
    sessions : int, sequence of int, or None
        ``None``: every session with a beta file; an int ``n``: sessions ``1..n`` (Brain-Diffuser
        uses 37); a sequence: exactly those (1-based) sessions.
    roi : str, default "nsdgeneral"
        ROI file (``roi/<roi>.nii.gz``) whose voxels with label > 0 are kept.
    average_repeats : bool, default True
        Average the repeats of each image (Brain-Diffuser), or keep single trials.
    zscore : {"train", "session", "none"}
        See the module docstring. "train" uses training rows only (``ddof``).
    beta_format : {"hdf5", "nifti"}
        Which of NSD's two beta forms to read; both give identical arrays.
    cache_dir : path, optional
        Store the result as memory-mappable ``.npy`` files under
        ``cache_dir/nsd_subjXX_<key>/`` (key = hash of the parameters and input file sizes)
        and reuse it next time.
    progress : bool
        tqdm progress bar over sessions.
    beta_scale : float, default 300
        Stored betas are divided by this.
    ddof : int, default 1
        Delta degrees of freedom of the z-scoring standard deviations.
    nan : {"error", "drop"}
        NaN/infinite betas raise (default) or their voxels are dropped with a warning.
    roi_files : sequence of str, optional
        ROI files whose labels are reported in ``roi_labels``; default: every file of
        :data:`~brainrecon.data.rois.NSD_ROI_LABELS` that exists, plus ``roi``.

    Returns
    -------
    PreparedNSD
    """
    if zscore not in ("train", "session", "none"):
        raise ConfigError(f"zscore must be 'train', 'session' or 'none', got {zscore!r}")
    if nan not in ("error", "drop"):
        raise ConfigError(f"nan must be 'error' or 'drop', got {nan!r}")
    _check_format(beta_format)
    lay = _layout(root)
    design = read_expdesign(lay.root)
    _check_subject(lay, subject)
    subject = int(subject)
    trial_ids, trial_shared = design.trial_images(subject)
    first_cols = set(design.subjectim[subject - 1, : design.n_shared].tolist())
    if first_cols != set(design.sharedix.tolist()):
        # The split follows Brain-Diffuser (masterordering <= len(sharedix)); in real NSD
        # those columns are exactly the shared images. Say so when a file breaks that.
        warnings.warn(
            f"{design.path}: the first {design.n_shared} columns of subjectim (row {subject}) "
            "are not the images of sharedix; the test split still follows masterordering <= "
            f"{design.n_shared} (Brain-Diffuser's rule)", RuntimeWarning, stacklevel=2)

    available = list_sessions(lay.root, subject, beta_format)
    chosen = _resolve_sessions(sessions, available, lay, subject, beta_format)
    headers = {s: _beta_header(lay.beta_file(subject, s, beta_format), beta_format) for s in chosen}
    counts = _session_trial_counts(lay, subject, max(chosen), beta_format, headers)
    starts = np.cumsum([0] + [counts[s] for s in range(1, max(chosen) + 1)])
    needed = int(starts[-1])
    if needed > design.masterordering.size:
        raise ShapeMismatchError(
            f"trials in beta files of sessions 1..{max(chosen)} vs masterordering in {design.path}",
            f"<= {design.masterordering.size}", needed,
            hint="the beta files hold more trials than the design lists",
        )

    # ROI and voxel grid: every session must share the ROI's grid.
    first = headers[chosen[0]]
    roi_path = lay.roi_file(subject, roi)
    labels_vol, roi_affine = read_roi_volume(roi_path, expected_shape=first.volume_shape,
                                             expected_affine=first.affine)
    for s in chosen[1:]:
        if headers[s].volume_shape != first.volume_shape:
            raise ShapeMismatchError(f"{lay.beta_file(subject, s, beta_format)}: volume shape",
                                     first.volume_shape, headers[s].volume_shape)
    mask = roi_mask(labels_vol, source=str(roi_path))
    ijk = mask_to_ijk(mask)
    affine = first.affine if first.affine is not None else roi_affine

    names = list(roi_files) if roi_files is not None else [
        n for n in NSD_ROI_LABELS if lay.roi_file(subject, n).is_file()]
    if roi not in names:
        names.append(roi)
    roi_labels = {}
    for n in names:
        vol = labels_vol if n == roi else read_roi_volume(
            lay.roi_file(subject, n), expected_shape=first.volume_shape, expected_affine=affine)[0]
        roi_labels[n] = labels_at(vol, ijk).astype(np.int32)

    # Stimulus ids must exist in the image brick when it is present.
    if lay.stimuli.is_file():
        with StimulusBrick(lay.stimuli) as brick:
            n_images = len(brick)
        sel = np.concatenate([trial_ids[starts[s - 1]:starts[s]] for s in chosen])
        if sel.max() >= n_images:
            raise DataFormatError(
                f"{design.path}: subjectim refers to 73k id {int(sel.max()) + 1} (1-based) but "
                f"{lay.stimuli} holds {n_images} images"
            )

    params = dict(subject=subject, sessions=chosen, roi=roi, average_repeats=bool(average_repeats),
                  zscore=zscore, beta_format=beta_format, beta_scale=float(beta_scale), ddof=int(ddof),
                  nan=nan, roi_files=sorted(names))
    target = None
    if cache_dir is not None:
        files = [design.path, roi_path] + [lay.beta_file(subject, s, beta_format) for s in chosen] \
            + [lay.roi_file(subject, n) for n in sorted(names)]
        target = Path(cache_dir).expanduser() / f"nsd_subj{subject:02d}_{_cache_key(params, files)}"
        if (target / "info.json").is_file():
            return load_prepared(target)

    # Rows of the outputs, known before any beta is read.
    t_idx = np.concatenate([np.arange(starts[s - 1], starts[s]) for s in chosen])
    ids_all = trial_ids[t_idx]
    shared_all = trial_shared[t_idx]
    n_vox = ijk.shape[0]
    splits = {}
    for split, sel in (("train", ~shared_all), ("test", shared_all)):
        sids = ids_all[sel]
        if average_repeats:
            _, first_pos = np.unique(sids, return_index=True)
            order = sids[np.sort(first_pos)]
            pos = {v: i for i, v in enumerate(order.tolist())}
            rows = np.fromiter((pos[v] for v in sids.tolist()), np.int64, count=sids.size)
            n_rows = order.size
            cnt = np.bincount(rows, minlength=n_rows).astype(np.int64)
            acc = np.zeros((n_rows, n_vox), dtype=np.float64)
        else:
            order, rows, n_rows = sids, np.arange(sids.size), sids.size
            cnt = np.ones(n_rows, dtype=np.int64)
            acc = np.empty((n_rows, n_vox), dtype=np.float32)
        # Map from position in t_idx to (split row); -1 where the trial is in the other split.
        row_of = np.full(t_idx.size, -1, dtype=np.int64)
        row_of[np.flatnonzero(sel)] = rows
        splits[split] = dict(ids=order.astype(np.int64), counts=cnt, acc=acc, row_of=row_of)

    bad_nan = np.zeros(n_vox, dtype=bool)
    bad_session_const = np.zeros(n_vox, dtype=bool)
    nan_files: list[str] = []
    try:
        from tqdm.auto import tqdm
        it = tqdm(chosen, desc=f"NSD subj{subject:02d} sessions", unit="session",
                  disable=not progress or not sys.stderr.isatty())
    except ImportError:  # tqdm is a dependency; keep working without it anyway
        it = chosen
    pos0 = 0
    for s in it:
        path = lay.beta_file(subject, s, beta_format)
        Xs = read_session_betas(path, mask, beta_format=beta_format, beta_scale=beta_scale)
        fin = np.isfinite(Xs).all(axis=0)
        if not fin.all():
            if nan == "error":
                raise DataFormatError(
                    f"{path}: {int((~fin).sum())} of {n_vox} ROI voxel(s) hold NaN or infinite "
                    "betas; expected finite values (pass nan='drop' to drop those voxels)")
            bad_nan |= ~fin
            nan_files.append(path.name)
            Xs[:, ~fin] = 0.0
        if zscore == "session":
            rm = RunningMoments(n_vox)
            rm.update(Xs)
            st = rm.stats(ddof=ddof)
            const = st.constant & ~bad_nan
            bad_session_const |= const
            std = np.where(st.constant, 1.0, st.std)
            Xs = ((Xs.astype(np.float64) - st.mean) / std).astype(np.float32)
        sl = slice(pos0, pos0 + Xs.shape[0])
        for sp in splits.values():
            r = sp["row_of"][sl]
            hit = r >= 0
            if average_repeats:
                add_rows_at(sp["acc"], r[hit], Xs[hit].astype(np.float64))
            else:
                sp["acc"][r[hit]] = Xs[hit]
        pos0 += Xs.shape[0]
        del Xs

    X = {}
    for name, sp in splits.items():
        if average_repeats:
            # divide in place block by block, then a single float32 copy
            acc = sp["acc"]
            out = np.empty(acc.shape, dtype=np.float32)
            for a in range(0, acc.shape[0], 1024):
                out[a:a + 1024] = (acc[a:a + 1024] / sp["counts"][a:a + 1024, None]).astype(np.float32)
            sp["acc"] = None
            del acc
            X[name] = out
        else:
            X[name] = sp["acc"]
    if X["train"].shape[0] == 0:
        raise DataFormatError(
            f"no training trials in sessions {chosen} of subject {subject} ({design.path}: every "
            f"masterordering value is <= len(sharedix) = {design.n_shared})")

    # Voxels to drop: NaN (when allowed), constant within a session, constant over training rows.
    keep = ~(bad_nan | bad_session_const)
    if bad_nan.any():
        warnings.warn(f"{int(bad_nan.sum())} of {n_vox} ROI voxel(s) hold NaN/inf betas in "
                      f"{nan_files}; dropped (nan='drop')", RuntimeWarning, stacklevel=2)
    if bad_session_const.any():
        warnings.warn(f"{int(bad_session_const.sum())} of {n_vox} ROI voxel(s) are constant within "
                      "a session and cannot be session-z-scored; dropped", RuntimeWarning,
                      stacklevel=2)
    rep = check_voxels(X["train"][:, keep] if not keep.all() else X["train"],
                       source=f"NSD subj{subject:02d} training betas ({roi})", nan="error",
                       constant="ignore")
    n_const_train = rep.n_constant
    if n_const_train:
        warnings.warn(f"{n_const_train} of {int(keep.sum())} ROI voxel(s) are constant over the "
                      f"{X['train'].shape[0]} training rows of subject {subject}; dropped",
                      RuntimeWarning, stacklevel=2)
        keep[np.flatnonzero(keep)[rep.constant]] = False
    if not keep.all():
        if not keep.any():
            raise DataFormatError(f"{roi_path}: every ROI voxel was dropped (constant or NaN)")
        X = {k: np.ascontiguousarray(v[:, keep]) for k, v in X.items()}
        ijk = ijk[keep]
        roi_labels = {k: v[keep] for k, v in roi_labels.items()}

    stats = None
    if zscore == "train":
        rm = RunningMoments(ijk.shape[0])
        rm.update(X["train"])
        stats = rm.stats(ddof=ddof)
        for k in X:  # in place, block-wise: no second copy of the arrays
            A = X[k]
            for a in range(0, A.shape[0], 1024):
                A[a:a + 1024] = ((A[a:a + 1024].astype(np.float64) - stats.mean)
                                 / stats.std).astype(np.float32)

    info = dict(
        dataset="nsd", subject=subject, sessions=chosen,
        trials_per_session={str(s): int(counts[s]) for s in chosen},
        mode="averaged" if average_repeats else "single_trial", zscore=zscore, ddof=int(ddof),
        beta_format=beta_format, beta_scale=float(beta_scale), roi=roi, roi_files=sorted(roi_labels),
        n_roi_voxels=int(n_vox), n_voxels=int(ijk.shape[0]),
        n_constant_voxels_dropped=int(n_const_train + bad_session_const.sum()),
        n_constant_train_voxels_dropped=int(n_const_train),
        n_constant_session_voxels_dropped=int(bad_session_const.sum()),
        n_nan_voxels_dropped=int(bad_nan.sum()),
        n_train_rows=int(X["train"].shape[0]), n_test_rows=int(X["test"].shape[0]),
        n_train_trials=int((~shared_all).sum()), n_test_trials=int(shared_all.sum()),
        n_train_images=int(np.unique(splits["train"]["ids"]).size),
        n_test_images=int(np.unique(splits["test"]["ids"]).size),
        volume_shape=list(first.volume_shape),
        split="train = subject-unique images (masterordering > len(sharedix)), test = shared "
              "images; rows in first-appearance order",
    )
    prep = PreparedNSD(
        X_train=X["train"], X_test=X["test"], train_ids=splits["train"]["ids"],
        test_ids=splits["test"]["ids"], voxel_ijk=ijk, affine=np.asarray(affine, np.float64),
        volume_shape=tuple(first.volume_shape), roi_labels=roi_labels, info=info,
        train_counts=splits["train"]["counts"], test_counts=splits["test"]["counts"],
        zscore_stats=stats,
    )
    if target is not None:
        del X
        return _save_prepared(prep, target)
    return prep
