"""The data stage: betas, split, stimuli and captions of one subject, in one folder.

Every data source (toy, simulated NSD, NSD, GOD, bring-your-own) is adapted
here to the same artifact:

==========================  =========================================================
file                        content
==========================  =========================================================
``X_train.npy``             (n_train, n_voxels) float32, z-scored with training stats
``X_test.npy``              (n_test, n_voxels) float32
``train_ids.npy``           stimulus id per training row
``test_ids.npy``            stimulus id per test row
``stimuli_train.npy``       (n_train, H, W, 3) uint8
``stimuli_test.npy``        (n_test, H, W, 3) uint8
``captions.json``           ``{"train": [[str, ...], ...], "test": [...]}`` (optional)
``roi_<name>.npy``          label per voxel of each ROI file (optional)
``voxel_ijk.npy``           (n_voxels, 3) volume indices of the columns (optional)
``info.json``               counts and loader details
==========================  =========================================================
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError, ShapeMismatchError
from brainrecon.stages.base import Artifact, RunContext, Stage


@dataclass
class SplitData:
    """What every data source hands to the data stage."""

    X_train: np.ndarray
    X_test: np.ndarray
    stimuli_train: np.ndarray
    stimuli_test: np.ndarray
    train_ids: np.ndarray
    test_ids: np.ndarray
    captions_train: list[list[str]] | None = None
    captions_test: list[list[str]] | None = None
    rois: dict[str, np.ndarray] = field(default_factory=dict)
    voxel_ijk: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Check that rows, voxels and stimuli line up; raise naming both sides."""
        if self.X_train.ndim != 2 or self.X_test.ndim != 2:
            raise ShapeMismatchError("betas", "2-D (n_samples, n_voxels)", (self.X_train.shape, self.X_test.shape))
        if self.X_train.shape[1] != self.X_test.shape[1]:
            raise ShapeMismatchError("test betas voxels", self.X_train.shape[1], self.X_test.shape[1])
        for split, X, S, ids in (
            ("train", self.X_train, self.stimuli_train, self.train_ids),
            ("test", self.X_test, self.stimuli_test, self.test_ids),
        ):
            if len(S) != len(X):
                raise ShapeMismatchError(f"{split} stimuli (one per beta row)", len(X), len(S))
            if len(ids) != len(X):
                raise ShapeMismatchError(f"{split} ids (one per beta row)", len(X), len(ids))
        for name, labels in self.rois.items():
            if len(labels) != self.X_train.shape[1]:
                raise ShapeMismatchError(f"ROI {name!r} labels (one per voxel)", self.X_train.shape[1], len(labels))


def _load_toy(params: Mapping[str, Any], resources: Mapping[str, Any], progress: bool) -> SplitData:
    from brainrecon.preprocessing import zscore_train_test
    from brainrecon.testing import make_toy_experiment

    kwargs = {k: v for k, v in params.items() if k != "source"}
    exp = make_toy_experiment(**kwargs)
    X_tr, X_te, _ = zscore_train_test(exp.X_train, exp.X_test)
    return SplitData(
        X_train=X_tr,
        X_test=X_te,
        stimuli_train=exp.stimuli_train,
        stimuli_test=exp.stimuli_test,
        train_ids=np.arange(len(X_tr)),
        test_ids=np.arange(len(X_tr), len(X_tr) + len(X_te)),
        captions_train=exp.captions_train,
        captions_test=exp.captions_test,
        info={"source": "toy", "zscore": "train"},
    )


_NSD_KEYS = ("subject", "sessions", "roi", "average_repeats", "zscore", "beta_format", "nan", "roi_files")


def _split_from_nsd(root: Path, params: Mapping[str, Any], progress: bool, **defaults: Any) -> SplitData:
    """Prepare one NSD-layout subject and read its stimuli and captions by id."""
    from brainrecon.data import nsd

    kwargs = {**defaults, **{k: params[k] for k in _NSD_KEYS if params.get(k) is not None}}
    prep = nsd.prepare_subject(root, progress=progress, **kwargs)
    size = params.get("stimulus_size")
    stim_tr = nsd.read_stimuli(root, prep.train_ids, size=size)
    stim_te = nsd.read_stimuli(root, prep.test_ids, size=size)
    try:
        cap_tr = nsd.read_captions(root, prep.train_ids, path=params.get("captions_file"))
        cap_te = nsd.read_captions(root, prep.test_ids, path=params.get("captions_file"))
    except FileNotFoundError:
        if params.get("captions_required", False):
            raise
        cap_tr = cap_te = None
    info = {k: v for k, v in prep.info.items() if isinstance(v, (int, float, str, bool, list, dict, type(None)))}
    return SplitData(
        X_train=np.asarray(prep.X_train),
        X_test=np.asarray(prep.X_test),
        stimuli_train=stim_tr,
        stimuli_test=stim_te,
        train_ids=prep.train_ids,
        test_ids=prep.test_ids,
        captions_train=cap_tr,
        captions_test=cap_te,
        rois=dict(prep.roi_labels),
        voxel_ijk=prep.voxel_ijk,
        info={"source": "nsd", "nsd_root": str(root), **info},
    )


def _load_nsd(params: Mapping[str, Any], resources: Mapping[str, Any], progress: bool) -> SplitData:
    root = Path(params.get("nsd_root") or resolve_root(resources, "data_root", "NSD dataset")).expanduser()
    return _split_from_nsd(root, params, progress)


_SIM_EXCLUDED = {"source", "sim_root", *_NSD_KEYS, "stimulus_size", "captions_file", "captions_required"}


def _load_sim(params: Mapping[str, Any], resources: Mapping[str, Any], progress: bool) -> SplitData:
    """Simulate (or reuse) a small NSD in the real layout, then read it with the real NSD loader."""
    from dataclasses import asdict, fields

    from brainrecon.sim import SimConfig, simulate_nsd
    from brainrecon.sim.truth import TRUTH_FORMAT_VERSION

    names = {f.name for f in fields(SimConfig)}
    unknown = sorted(set(params) - names - _SIM_EXCLUDED)
    if unknown:
        raise ConfigError(f"data: unknown simulation parameter(s) {unknown}; expected names from {sorted(names)}")
    sim_cfg = SimConfig(**{k: v for k, v in params.items() if k in names})
    if params.get("sim_root") is None:
        raise ConfigError("data.sim_root: a folder for the simulated dataset is required")
    # One folder per simulation configuration, so changing a parameter never reuses stale files.
    root = Path(params["sim_root"]).expanduser() / config_digest({**asdict(sim_cfg), "format": TRUTH_FORMAT_VERSION})
    simulate_nsd(root, sim_cfg, progress=progress)
    split = _split_from_nsd(root, {**params, "subject": sim_cfg.subject}, progress)
    split.info["source"] = "sim"
    split.info["sim_root"] = str(root)
    return split


def _load_byo(params: Mapping[str, Any], resources: Mapping[str, Any], progress: bool) -> SplitData:
    """A bring-your-own experiment (one HDF5/NPZ file or a folder; see ``docs/byo_format.md``)."""
    from brainrecon.data.byo import load_byo

    if params.get("byo_path") is None:
        raise ConfigError("data.byo_path: the bring-your-own file or folder is required")
    prep = load_byo(
        params["byo_path"],
        zscore=params.get("zscore", "train"),
        average=bool(params.get("average_repeats", True)),
        image_size=params.get("stimulus_size"),
        nan_voxels=params.get("nan_voxels", "error"),
        keys=params.get("keys"),
        stimulus_shape=params.get("stimulus_shape"),
        stimulus_order=params.get("stimulus_order", "C"),
    )
    return SplitData(
        X_train=prep.X_train,
        X_test=prep.X_test,
        stimuli_train=prep.stimuli_train,
        stimuli_test=prep.stimuli_test,
        train_ids=prep.train_ids,
        test_ids=prep.test_ids,
        captions_train=prep.captions_train,
        captions_test=prep.captions_test,
        rois={k: np.asarray(v, dtype=np.int8) for k, v in prep.roi_masks.items()},
        info={"source": "byo", **{k: v for k, v in prep.info.items() if isinstance(v, (int, float, str, bool, list))}},
    )


def _load_god(params: Mapping[str, Any], resources: Mapping[str, Any], progress: bool) -> SplitData:
    """Generic Object Decoding (``conf/data/god.yaml``): ROI voxels, per-run z-scoring, averaged test images."""
    from brainrecon.data.god import god_subject_file, load_god, read_god_images

    root = params.get("god_root") or (Path(resolve_root(resources, "data_root", "GOD dataset")) / "god")
    subject_file = god_subject_file(int(params.get("subject", 1)), Path(root).expanduser())
    prep = load_god(
        subject_file,
        roi=params.get("roi", "VC"),
        image_tables=params.get("image_tables"),
        normalize=str(params.get("normalize", "run")),
        average_test=bool(params.get("average_test", True)),
    )
    if not bool(params.get("average_test", True)):
        raise ConfigError("data.average_test: the pipeline needs one row per test image (true), got false")
    images_root = Path(params.get("images_root") or Path(root) / "images").expanduser()
    size = int(params.get("stimulus_size", 256))
    stim_tr = read_god_images(images_root / "training", prep.train_files, size=size, progress=progress)
    stim_te = read_god_images(images_root / "test", prep.test_files, size=size, progress=progress)
    info = {k: v for k, v in prep.info.items() if isinstance(v, (int, float, str, bool, list, dict, type(None)))}
    return SplitData(
        X_train=prep.X_train,
        X_test=prep.X_test,
        stimuli_train=stim_tr,
        stimuli_test=stim_te,
        # GOD ids are floats like 1518878.010042; the row number in the table is the stable id.
        train_ids=np.arange(len(prep.X_train)),
        test_ids=np.arange(len(prep.X_test)),
        rois={k: np.asarray(v, dtype=np.int8) for k, v in prep.roi_masks.items()},
        info={"source": "god", "subject_file": str(subject_file), "images_root": str(images_root),
              "train_image_ids": [f"{x:.6f}" for x in prep.train_image_ids],
              "test_image_ids": [f"{x:.6f}" for x in prep.test_image_ids], **info},
    )


#: Data sources by name; each takes (params, resources, progress).
SOURCES: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any], bool], SplitData]] = {
    "toy": _load_toy,
    "nsd": _load_nsd,
    "sim": _load_sim,
    "byo": _load_byo,
    "god": _load_god,
}


def register_source(name: str, loader: Callable[[Mapping[str, Any], Mapping[str, Any], bool], SplitData]) -> None:
    """Make a data source available to the data stage under ``name``."""
    SOURCES[name] = loader


def config_digest(params: Mapping[str, Any], n: int = 10) -> str:
    """Short stable digest of a JSON-able mapping (used to name simulated datasets)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


class DataStage(Stage):
    """Load one subject's betas and stimuli from a configured source.

    Parameters (``params``)
    -----------------------
    source : str
        One of :data:`SOURCES`.
    Other keys are handed to the source's loader.
    """

    name = "data"
    version = 2  # 2: voxel_ijk.npy

    def fingerprint(self) -> dict[str, Any]:
        """The data's content: paths are not hashed, so two datasets at two paths must differ here."""
        from brainrecon.fingerprint import path_fingerprint

        source = self.params.get("source")
        if source == "sim":  # the files are a function of the (hashed) configuration and the simulator
            from brainrecon.sim.truth import TRUTH_FORMAT_VERSION

            return {"sim_format": TRUTH_FORMAT_VERSION}
        if source == "byo" and self.params.get("byo_path"):
            return {"byo": path_fingerprint(self.params["byo_path"])}
        if source == "god" and self.params.get("god_root"):
            from brainrecon.fingerprint import files_fingerprint

            root = Path(self.params["god_root"]).expanduser()
            subject = int(self.params.get("subject", 1))
            files = [root / f"Subject{subject}{ext}" for ext in (".mat", ".h5")]
            files += [root / "imageID_training.csv", root / "imageID_test.csv"]
            images = self.params.get("images_root")
            return {
                "god": files_fingerprint([f for f in files if f.is_file()], base=root),
                "images": path_fingerprint(images) if images else "default",
            }
        if source == "nsd" and self.params.get("nsd_root"):
            return {"nsd": nsd_fingerprint(Path(self.params["nsd_root"]), int(self.params.get("subject", 1)))}
        return {}

    def run(self, inputs: Mapping[str, Artifact], ctx: RunContext) -> dict[str, Any]:
        source = self.params.get("source")
        if source not in SOURCES:
            raise ConfigError(f"data.source: expected one of {sorted(SOURCES)}, got {source!r}")
        data = SOURCES[source](self.params, ctx.resources, ctx.progress)
        data.validate()
        ctx.save_array("X_train", np.asarray(data.X_train, dtype=np.float32))
        ctx.save_array("X_test", np.asarray(data.X_test, dtype=np.float32))
        ctx.save_array("train_ids", np.asarray(data.train_ids))
        ctx.save_array("test_ids", np.asarray(data.test_ids))
        ctx.save_array("stimuli_train", np.asarray(data.stimuli_train, dtype=np.uint8))
        ctx.save_array("stimuli_test", np.asarray(data.stimuli_test, dtype=np.uint8))
        if data.captions_train is not None and data.captions_test is not None:
            ctx.save_json("captions", {"train": data.captions_train, "test": data.captions_test})
        for roi, labels in data.rois.items():
            ctx.save_array(f"roi_{roi}", np.asarray(labels))
        if data.voxel_ijk is not None:
            ctx.save_array("voxel_ijk", np.asarray(data.voxel_ijk, dtype=np.int64))
        info = {
            "n_train": int(len(data.X_train)),
            "n_test": int(len(data.X_test)),
            "n_voxels": int(data.X_train.shape[1]),
            "stimulus_shape": list(data.stimuli_test.shape[1:]),
            "rois": sorted(data.rois),
            **data.info,
        }
        ctx.save_json("info", info)
        return info


def nsd_fingerprint(root: Path, subject: int) -> str:
    """Fingerprint of an NSD subject's design, betas and ROI files (missing ones count as missing)."""
    from brainrecon.data.nsd import NSDLayout
    from brainrecon.fingerprint import files_fingerprint

    root = root.expanduser()
    lay = NSDLayout(root)
    folders = [lay.expdesign.parent, lay.betas_dir(subject), lay.roi_dir(subject)]
    files = [p for d in folders if d.is_dir() for p in d.iterdir() if p.is_file()]
    return files_fingerprint(files, base=root) if files else "missing"


def read_captions(artifact: Artifact, split: str) -> list[list[str]] | None:
    """Captions of a data artifact's split, or None when the source has none."""
    if not artifact.has("captions.json"):
        return None
    return artifact.json("captions")[split]


def resolve_root(resources: Mapping[str, Any], key: str, what: str) -> Path:
    """A path resource, with an error naming the config key when it is missing."""
    value = resources.get(key)
    if value is None:
        raise ConfigError(f"{key}: a path to the {what} is required")
    return Path(value).expanduser()
