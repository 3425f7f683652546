"""Configuration and ground truth of the simulated NSD experiment."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from brainrecon.errors import ConfigError, DataFormatError, MissingDataError
from brainrecon.sim import layout as L
from brainrecon.sim.stimuli import BODY_SHAPES

TRUTH_FORMAT_VERSION = 2  # 2: features gained the luminance/colour block


@dataclass(frozen=True)
class SimConfig:
    """Parameters of the simulated experiment; the defaults are the project's default experiment.

    Attributes
    ----------
    n_train, n_test : subject-unique (training) and shared (test) images
    n_repeats : trials per image (NSD: 3)
    image_size : side of the square RGB uint8 stimuli, pixels
    n_voxels : voxels inside nsdgeneral (early visual + category ROIs + unlabelled)
    trials_per_session : trials per beta file (the last session may be shorter)
    subject : NSD subject number (1-8) whose files are written
    stimulus_source : ``"procedural"`` or a folder of photographs (``.jpg``/``.png``)
    body_shape : how procedural scenes draw bodies, one of
        :data:`brainrecon.sim.stimuli.BODY_SHAPES` (``"solid"``; ``"stick"`` for the bundled GANs,
        which were trained on stick figures)
    median_noise_ceiling : target median over nsdgeneral of the true noise ceiling of
        3-trial averages, percent (NSD-like: 20-40)
    snr_spread : s.d. of log per-voxel SNR
    noise_sd : median trial noise s.d., percent signal change
    session_offset_sd, drift_sd : session offset s.d. and linear-drift s.d., relative to noise_sd
    early_fraction, category_fraction : shares of early visual and category-ROI voxels
    seed : seed of every random draw
    """

    n_train: int = 1200
    n_test: int = 100
    n_repeats: int = 3
    image_size: int = 128
    n_voxels: int = 4000
    trials_per_session: int = 750
    subject: int = 1
    stimulus_source: str = "procedural"
    body_shape: str = "solid"
    median_noise_ceiling: float = 30.0
    snr_spread: float = 0.5
    noise_sd: float = 3.0
    session_offset_sd: float = 0.5
    drift_sd: float = 0.3
    early_fraction: float = 0.6
    category_fraction: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        # a folder given as a Path is stored as text so that the config is JSON-serialisable
        if not isinstance(self.stimulus_source, str):
            object.__setattr__(self, "stimulus_source", str(self.stimulus_source))

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid parameter."""
        checks = [
            ("n_train", self.n_train >= 1, ">= 1"),
            ("n_test", self.n_test >= 1, ">= 1"),
            ("n_repeats", self.n_repeats >= 2, ">= 2 (repeats are needed for the noise ceiling)"),
            ("image_size", self.image_size >= 16, ">= 16"),
            ("trials_per_session", self.trials_per_session >= 2, ">= 2"),
            ("subject", 1 <= self.subject <= 8, "1..8"),
            ("median_noise_ceiling", 0.0 < self.median_noise_ceiling < 100.0, "in (0, 100)"),
            ("snr_spread", self.snr_spread >= 0.0, ">= 0"),
            ("noise_sd", self.noise_sd > 0.0, "> 0"),
            ("session_offset_sd", self.session_offset_sd >= 0.0, ">= 0"),
            ("drift_sd", self.drift_sd >= 0.0, ">= 0"),
            ("body_shape", self.body_shape in BODY_SHAPES, f"one of {list(BODY_SHAPES)}"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"SimConfig.{name}: expected {expected}, got {getattr(self, name)!r}")

    @property
    def n_images(self) -> int:
        return self.n_train + self.n_test

    @property
    def n_trials(self) -> int:
        return self.n_images * self.n_repeats

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "SimConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"SimConfig: unknown keys {sorted(unknown)}")
        # simulations written before the field existed drew stick-figure bodies
        return cls(**{"body_shape": "stick", **d})


@dataclass
class SimTruth:
    """Ground truth of a simulation, exactly consistent with the files written under ``root``.

    Images are indexed by their 0-based "73k" id (row of ``imgBrick``). Voxels are in the
    order of ``np.nonzero(nsdgeneral > 0)`` on the NIfTI array (X, Y, Z).

    Attributes
    ----------
    root : dataset root
    config : SimConfig
    betas : (n_trials, n_voxels) float32, percent signal change as written (int16 / 300)
    trial_image_index : (n_trials,) 0-based column of the subject's image list per trial
        (``masterordering - 1``)
    trial_session : (n_trials,) 1-based session of each trial
    subject_image_ids : (n_images,) 0-based 73k ids of the subject's image list (``subjectim``
        row minus 1); the first ``n_test`` are the shared images
    shared_ids : (n_test,) 0-based 73k ids of the shared images, ascending (``sharedix - 1``)
    train_image_ids, test_image_ids : 0-based 73k ids in Brain-Diffuser order (first
        appearance in the trial sequence)
    voxel_ijk : (n_voxels, 3) indices in the written volumes
    voxel_mni : (n_voxels, 3) MNI mm
    roi_labels : ROI file name -> (n_voxels,) int16 label (0 = not in the ROI)
    roi_class : (n_voxels,) V1v V1d V2v V2d V3v V3d hV4 floc other
    prf : dict x, y, sigma, ecc, angle -> (n_voxels,) float32 degrees
    ncsnr : (n_voxels,) NSD-style estimate from the written betas (written to ncsnr.nii.gz)
    noise_ceiling_3trial : 100 * ncsnr^2 / (ncsnr^2 + 1/3)
    true_ncsnr, true_noise_ceiling_3trial : from the known model (see brainrecon.sim.noise)
    signal_sd, noise_sd : (n_voxels,) percent
    session_offsets, drift_slopes : (n_sessions, n_voxels) percent
    features : (n_images, n_features) float32, the encoding model's features per image
    feature_names : list of n_features names
    responses : (n_images, n_voxels) float32 noise-free responses, percent
    semantics : (n_images, n_categories) float32 category areas
    categories : category names (columns of semantics)
    captions : (n_images, 5) unicode
    descriptions : per image scene description (JSON)
    volume_shape, affine : of every written volume
    """

    root: Path
    config: SimConfig
    betas: np.ndarray
    trial_image_index: np.ndarray
    trial_session: np.ndarray
    subject_image_ids: np.ndarray
    shared_ids: np.ndarray
    train_image_ids: np.ndarray
    test_image_ids: np.ndarray
    voxel_ijk: np.ndarray
    voxel_mni: np.ndarray
    roi_labels: dict[str, np.ndarray]
    roi_class: np.ndarray
    prf: dict[str, np.ndarray]
    ncsnr: np.ndarray
    noise_ceiling_3trial: np.ndarray
    true_ncsnr: np.ndarray
    true_noise_ceiling_3trial: np.ndarray
    signal_sd: np.ndarray
    noise_sd: np.ndarray
    session_offsets: np.ndarray
    drift_slopes: np.ndarray
    features: np.ndarray
    feature_names: list[str]
    responses: np.ndarray
    semantics: np.ndarray
    categories: list[str]
    captions: np.ndarray
    descriptions: list[dict] = field(default_factory=list)
    volume_shape: tuple[int, int, int] = (0, 0, 0)
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))

    @property
    def n_voxels(self) -> int:
        return int(self.betas.shape[1])

    @property
    def trial_image_ids(self) -> np.ndarray:
        """(n_trials,) 0-based 73k id shown at each trial."""
        return self.subject_image_ids[self.trial_image_index]

    def stimuli(self, ids: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Images (n, H, W, 3) uint8 read lazily from ``nsd_stimuli.hdf5`` by 0-based 73k id."""
        import h5py

        path = L.nsd(self.root).stimuli
        with h5py.File(path, "r") as f:
            brick = f["imgBrick"]
            if ids is None:
                return brick[()]
            ids = np.asarray(ids, dtype=np.int64)
            uniq, inverse = np.unique(ids, return_inverse=True)  # h5py needs increasing indices
            return brick[uniq][inverse]

    def model(self):
        """The true :class:`~brainrecon.sim.encoding.EncodingModel`."""
        from brainrecon.sim.encoding import EncodingModel

        return EncodingModel.load(L.truth_dir(self.root) / "model")

    def roi_mask(self, name: str, label: int | None = None) -> np.ndarray:
        """Boolean (n_voxels,) membership of an ROI file (any label > 0, or one label)."""
        if name not in self.roi_labels:
            raise ConfigError(f"roi name: expected one of {sorted(self.roi_labels)}, got {name!r}")
        lab = self.roi_labels[name]
        return lab > 0 if label is None else lab == label


_ARRAY_FIELDS = (
    "betas", "trial_image_index", "trial_session", "subject_image_ids", "shared_ids", "train_image_ids",
    "test_image_ids", "voxel_ijk", "voxel_mni", "roi_class", "ncsnr", "noise_ceiling_3trial", "true_ncsnr",
    "true_noise_ceiling_3trial", "signal_sd", "noise_sd", "session_offsets", "drift_slopes", "features",
    "responses", "semantics", "captions", "affine",
)


def truth_arrays(t: SimTruth) -> dict[str, np.ndarray]:
    """The arrays of ``t`` as stored in ``truth.npz``."""
    out = {k: np.asarray(getattr(t, k)) for k in _ARRAY_FIELDS}
    out.update({f"roi__{k}": v for k, v in t.roi_labels.items()})
    out.update({f"prf__{k}": v for k, v in t.prf.items()})
    return out


def truth_meta(t: SimTruth) -> dict:
    """The JSON part of the truth (config, names, descriptions)."""
    return {
        "format_version": TRUTH_FORMAT_VERSION,
        "config": t.config.to_json(),
        "feature_names": list(t.feature_names),
        "categories": list(t.categories),
        "descriptions": t.descriptions,
        "volume_shape": list(t.volume_shape),
    }


def load_truth(root: str | Path) -> SimTruth:
    """Read the ground truth written by :func:`brainrecon.sim.simulate_nsd` under ``root``."""
    root = Path(root)
    tdir = L.truth_dir(root)
    meta_path, npz_path = tdir / "truth.json", tdir / "truth.npz"
    for p in (meta_path, npz_path):
        if not p.is_file():
            raise MissingDataError(p, "simulation ground truth", f"run brainrecon.sim.simulate_nsd({str(root)!r}) first")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != TRUTH_FORMAT_VERSION:
        raise DataFormatError(f"{meta_path}: format_version {TRUTH_FORMAT_VERSION} expected, got {meta.get('format_version')}")
    with np.load(npz_path, allow_pickle=False) as z:
        arr = {k: z[k] for k in z.files}
    kwargs = {k: arr[k] for k in _ARRAY_FIELDS}
    return SimTruth(
        root=root,
        config=SimConfig.from_json(meta["config"]),
        roi_labels={k[5:]: v for k, v in arr.items() if k.startswith("roi__")},
        prf={k[5:]: v for k, v in arr.items() if k.startswith("prf__")},
        feature_names=list(meta["feature_names"]),
        categories=list(meta["categories"]),
        descriptions=list(meta["descriptions"]),
        volume_shape=tuple(meta["volume_shape"]),
        **kwargs,
    )
