"""Paths of the real NSD on-disk layout written by the simulator (``root`` = dataset root)."""

from __future__ import annotations

from pathlib import Path

BETAS_SPACE = "func1pt8mm"
BETAS_VERSION = "betas_fithrf_GLMdenoise_RR"
BETA_SCALE = 300.0  # NSD stores percent signal change x 300 as int16
TRUTH_DIR = "brainrecon_sim"


def expdesign_path(root: Path) -> Path:
    return Path(root) / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"


def betas_dir(root: Path, subject: int) -> Path:
    return Path(root) / "nsddata_betas" / "ppdata" / f"subj{subject:02d}" / BETAS_SPACE / BETAS_VERSION


def betas_path(root: Path, subject: int, session: int, ext: str) -> Path:
    """``ext`` is ``"nii.gz"`` or ``"hdf5"``; sessions are 1-based."""
    return betas_dir(root, subject) / f"betas_session{session:02d}.{ext}"


def ncsnr_path(root: Path, subject: int) -> Path:
    return betas_dir(root, subject) / "ncsnr.nii.gz"


def roi_path(root: Path, subject: int, name: str) -> Path:
    return Path(root) / "nsddata" / "ppdata" / f"subj{subject:02d}" / BETAS_SPACE / "roi" / f"{name}.nii.gz"


def stimuli_path(root: Path) -> Path:
    return Path(root) / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"


def captions_path(root: Path) -> Path:
    return Path(root) / "nsddata_stimuli" / "stimuli" / "nsd" / "annotations" / "COCO_73k_annots_curated.npy"


def truth_dir(root: Path) -> Path:
    return Path(root) / TRUTH_DIR
