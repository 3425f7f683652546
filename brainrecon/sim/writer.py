"""Write a complete simulated NSD subject in the real NSD on-disk layout, with its ground truth.

Files (``root`` = dataset root; XX = subject, NN = session, both 1-based):

* ``nsddata/experiments/nsd/nsd_expdesign.mat``: ``masterordering`` (1, n_trials),
  ``subjectim`` (8, n_images), ``sharedix`` (1, n_test), all float64 holding 1-based integers
  like the real file. Only subject ``config.subject`` has betas; the other rows of
  ``subjectim`` hold the same shared images followed by other permutations of the unique ids.
* ``nsddata_betas/ppdata/subjXX/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_sessionNN.nii.gz``
  (X, Y, Z, n_trials_in_session) int16 = round(percent * 300), and ``betas_sessionNN.hdf5``
  (dataset ``betas``, (n_trials_in_session, Z, Y, X), gzip level 1, one chunk per trial). Brain
  voxels outside nsdgeneral carry 0 (they are not simulated). The last session holds the
  remaining trials when n_trials is not a multiple of trials_per_session.
* ``.../betas_fithrf_GLMdenoise_RR/ncsnr.nii.gz``: float32 NSD-style estimate (see
  :mod:`brainrecon.sim.noise`); 0 outside nsdgeneral.
* ``nsddata/ppdata/subjXX/func1pt8mm/roi/<name>.nii.gz`` for nsdgeneral, prf-visualrois,
  prf-eccrois, floc-faces/places/bodies/words: int16, -1 outside the brain, 0 not in the ROI.
* ``nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5`` (``imgBrick`` (n_images, S, S, 3) uint8,
  one chunk per image) and ``.../annotations/COCO_73k_annots_curated.npy`` ((n_images, 5) '<U').
* ``brainrecon_sim/``: ``truth.npz`` + ``truth.json`` (:class:`~brainrecon.sim.truth.SimTruth`),
  ``model/`` (:class:`~brainrecon.sim.encoding.EncodingModel`), ``complete.json`` (written last).

Every volume uses a box of nilearn's MNI152 2 mm grid (affine shifted accordingly, sform and
qform code 4 = MNI). Files are byte-identical for the same configuration (fixed gzip/zip/MAT
timestamps, HDF5 without object times).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import uuid
import warnings
from pathlib import Path

import numpy as np

from brainrecon.errors import ConfigError
from brainrecon.sim import layout as L
from brainrecon.sim.anatomy import place_voxels
from brainrecon.sim.encoding import FeatureSpec, build_encoding_model, image_hashes, lowlevel_features
from brainrecon.sim.noise import (
    estimate_ncsnr,
    ncsnr_for_ceiling,
    noise_ceiling,
    session_bounds,
    simulate_trials,
)
from brainrecon.sim.npz import write_npz
from brainrecon.sim.stimuli import CATEGORIES, make_stimuli
from brainrecon.sim.truth import SimConfig, SimTruth, load_truth, truth_arrays, truth_meta

# Relative SNR by voxel class: early areas are the most reliable in NSD
_ROI_SNR = {"V1": 1.2, "V2": 1.15, "V3": 1.05, "hV4": 0.95, "floc": 0.9, "other": 0.7}


def _config_key(config: SimConfig) -> dict:
    return {"format": 1, "config": config.to_json()}


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_sform(affine, code=4)
    img.set_qform(affine, code=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _write_mat(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """MATLAB v5 file with a fixed header text (scipy writes the creation date there)."""
    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, arrays, format="5", do_compression=False, oned_as="row")
    raw = bytearray(buf.getvalue())
    header = b"MATLAB 5.0 MAT-file, written by brainrecon.sim"
    raw[:116] = header.ljust(116, b" ")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(raw))


def _write_h5(path: Path, name: str, data: np.ndarray, chunks: tuple[int, ...], compression: str | None) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", track_order=False) as f:
        f.create_dataset(
            name, data=data, chunks=chunks, compression=compression,
            compression_opts=1 if compression == "gzip" else None, track_times=False,
        )


def _first_appearance(ids: np.ndarray) -> np.ndarray:
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)]


def _generate(root: Path, config: SimConfig, progress: bool) -> SimTruth:
    """Compute and write everything under ``root`` (a fresh folder)."""
    from tqdm.auto import tqdm

    ss = np.random.SeedSequence(config.seed)
    rng_stim, rng_anat, rng_model, rng_design, rng_noise, rng_snr = (np.random.default_rng(s) for s in ss.spawn(6))
    steps = tqdm(total=7, desc="sim: NSD", disable=not progress)

    # 1. stimuli: imgBrick order = generation order (0-based 73k id = row)
    stim = make_stimuli(config.stimulus_source, config.n_images, config.image_size, rng_stim, progress, config.body_shape)
    steps.update()

    # 2. voxels and the encoding model
    vox = place_voxels(config.n_voxels, rng_anat, config.early_fraction, config.category_fraction)
    spec = FeatureSpec()
    features = np.concatenate([lowlevel_features(stim.images, spec), stim.semantics], axis=1)
    area = vox.area()
    coverage = _prf_coverage(vox, spec)
    noise_sd = config.noise_sd * np.exp(rng_snr.normal(0.0, 0.2, vox.n_voxels))
    rel = np.exp(rng_snr.normal(0.0, config.snr_spread, vox.n_voxels))
    rel *= (0.1 + 0.9 * coverage) * np.array([_ROI_SNR[a] for a in area])
    # scale so that the median true 3-trial noise ceiling is the requested one (NC is monotonic in SNR)
    target = ncsnr_for_ceiling(config.median_noise_ceiling, 3)
    snr = rel * target / np.median(rel) * np.sqrt(1.0 + config.drift_sd**2)
    signal_sd = snr * noise_sd
    mean_response = rng_snr.uniform(0.5, 2.5, vox.n_voxels)
    model = build_encoding_model(vox, features, signal_sd, mean_response, rng_model, spec, image_hashes(stim.images))
    model.voxels = {
        "ijk": vox.ijk, "mni": vox.mni, "roi_class": vox.roi_class, "hemisphere": vox.hemisphere,
        "prf_x": vox.prf_x, "prf_y": vox.prf_y, "prf_sigma": vox.prf_sigma, "prf_ecc": vox.prf_ecc,
        "prf_angle": vox.prf_angle,
    }
    model.roi_labels = dict(vox.roi_labels)
    responses = model.predict_from_features(features)
    steps.update()

    # 3. design: shared (test) images first in the subject's list, as in NSD
    n_img = config.n_images
    shared = np.sort(rng_design.choice(n_img, size=config.n_test, replace=False))
    unique = np.setdiff1d(np.arange(n_img), shared)
    subject_ids = np.concatenate([shared, rng_design.permutation(unique)])
    subjectim = np.empty((8, n_img), dtype=np.float64)
    for s in range(8):
        row = subject_ids if s == config.subject - 1 else np.concatenate([shared, rng_design.permutation(unique)])
        subjectim[s] = row + 1
    trial_index = rng_design.permutation(np.repeat(np.arange(n_img), config.n_repeats))
    bounds = session_bounds(len(trial_index), config.trials_per_session)
    trial_session = np.concatenate([np.full(b - a, s + 1) for s, (a, b) in enumerate(bounds)]).astype(np.int64)
    trial_ids = subject_ids[trial_index]
    is_test = trial_index < config.n_test
    steps.update()

    # 4. trials, quantised exactly as NSD stores them
    betas_pct, offsets, slopes = simulate_trials(
        responses.astype(np.float64), trial_ids, bounds, noise_sd, config.session_offset_sd, config.drift_sd, rng_noise
    )
    scaled = np.round(betas_pct * L.BETA_SCALE)
    n_clip = int(np.sum((scaled < -32768) | (scaled > 32767)))
    if n_clip:
        warnings.warn(f"brainrecon.sim: {n_clip} betas clipped to the int16 range", stacklevel=2)
    betas_i16 = np.clip(scaled, -32768, 32767).astype(np.int16)
    betas = (betas_i16.astype(np.float32) / np.float32(L.BETA_SCALE)).astype(np.float32)
    ncsnr = estimate_ncsnr(betas, trial_ids, bounds)
    true_ncsnr = (signal_sd_actual(responses, subject_ids) / (noise_sd * np.sqrt(1.0 + config.drift_sd**2))).astype(
        np.float32
    )
    steps.update()

    # 5. NSD files
    sub = config.subject
    _write_mat(
        L.nsd(root).expdesign,
        {
            "masterordering": (trial_index + 1).astype(np.float64)[None, :],
            "subjectim": subjectim,
            "sharedix": (shared + 1).astype(np.float64)[None, :],
        },
    )
    i, j, k = vox.ijk.T
    vol = np.zeros((*vox.volume_shape, config.trials_per_session), dtype=np.int16)
    for s, (a, b) in enumerate(tqdm(bounds, desc="sim: sessions", disable=not progress)):
        v4 = vol[..., : b - a] if b - a < vol.shape[3] else vol
        v4[...] = 0
        v4[i, j, k, :] = betas_i16[a:b].T
        _write_nifti(L.nsd(root).beta_file(sub, s + 1, "nifti"), v4, vox.affine)
        h5 = np.ascontiguousarray(v4.transpose(3, 2, 1, 0))
        _write_h5(L.nsd(root).beta_file(sub, s + 1, "hdf5"), "betas", h5, (1, *h5.shape[1:]), "gzip")
    del vol
    _write_nifti(L.nsd(root).ncsnr(sub), vox.volume(ncsnr, 0, np.float32), vox.affine)
    for name, labels in vox.roi_labels.items():
        _write_nifti(L.nsd(root).roi_file(sub, name), vox.volume(labels, -1, np.int16, fill_brain=0), vox.affine)
    steps.update()
    S = config.image_size
    _write_h5(L.nsd(root).stimuli, "imgBrick", stim.images, (1, S, S, 3), None)
    cpath = L.nsd(root).captions
    cpath.parent.mkdir(parents=True, exist_ok=True)
    np.save(cpath, np.asarray(stim.captions, dtype=str), allow_pickle=False)
    steps.update()

    # 6. ground truth
    truth = SimTruth(
        root=root,
        config=config,
        betas=betas,
        trial_image_index=trial_index.astype(np.int64),
        trial_session=trial_session,
        subject_image_ids=subject_ids.astype(np.int64),
        shared_ids=shared.astype(np.int64),
        train_image_ids=_first_appearance(trial_ids[~is_test]).astype(np.int64),
        test_image_ids=_first_appearance(trial_ids[is_test]).astype(np.int64),
        voxel_ijk=vox.ijk,
        voxel_mni=vox.mni,
        roi_labels=dict(vox.roi_labels),
        roi_class=vox.roi_class,
        prf={"x": vox.prf_x, "y": vox.prf_y, "sigma": vox.prf_sigma, "ecc": vox.prf_ecc, "angle": vox.prf_angle},
        ncsnr=ncsnr,
        noise_ceiling_3trial=noise_ceiling(ncsnr, 3),
        true_ncsnr=true_ncsnr,
        true_noise_ceiling_3trial=noise_ceiling(true_ncsnr, 3),
        signal_sd=signal_sd.astype(np.float32),
        noise_sd=noise_sd.astype(np.float32),
        session_offsets=offsets.astype(np.float32),
        drift_slopes=slopes.astype(np.float32),
        features=features.astype(np.float32),
        feature_names=spec.feature_names(),
        responses=responses,
        semantics=stim.semantics,
        categories=list(CATEGORIES),
        captions=np.asarray(stim.captions, dtype=str),
        descriptions=stim.descriptions,
        volume_shape=vox.volume_shape,
        affine=vox.affine,
    )
    tdir = L.truth_dir(root)
    tdir.mkdir(parents=True, exist_ok=True)
    write_npz(tdir / "truth.npz", truth_arrays(truth))
    (tdir / "truth.json").write_text(json.dumps(truth_meta(truth), indent=1, sort_keys=True) + "\n")
    model.save(tdir / "model")
    (tdir / "complete.json").write_text(json.dumps(_config_key(config), indent=2, sort_keys=True) + "\n")
    steps.update()
    steps.close()
    return truth


def signal_sd_actual(responses: np.ndarray, subject_ids: np.ndarray) -> np.ndarray:
    """S.d. over the subject's images of the noise-free responses (population s.d.)."""
    return responses[subject_ids].astype(np.float64).std(axis=0)


def _prf_coverage(vox, spec: FeatureSpec) -> np.ndarray:
    """Fraction of each voxel's pRF mass that falls on the image."""
    from brainrecon.sim.encoding import prf_cell_weights

    return prf_cell_weights(
        vox.prf_x.astype(np.float64), vox.prf_y.astype(np.float64), vox.prf_sigma.astype(np.float64), 1, spec.stimulus_deg
    )[:, 0]


def _existing(root: Path, config: SimConfig) -> SimTruth | None:
    marker = L.truth_dir(root) / "complete.json"
    if not marker.is_file():
        return None
    found = json.loads(marker.read_text())
    if found != _config_key(config):
        raise ConfigError(
            f"{root} holds a simulation with another configuration ({marker}): expected "
            f"{_config_key(config)['config']}, found {found.get('config')}; choose another root or delete it"
        )
    return load_truth(root)


def _clean_stale_tmp(root: Path) -> None:
    """Remove temporary folders of earlier runs for this root whose process no longer exists."""
    prefix = f".{root.name}.sim-tmp-"
    if not root.parent.is_dir():
        return
    for p in root.parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        try:
            pid = int(p.name[len(prefix) :].split("-")[0])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass


def simulate_nsd(root: str | Path, config: SimConfig = SimConfig(), *, progress: bool = True) -> SimTruth:
    """Write a simulated NSD subject under ``root`` and return its ground truth.

    Idempotent and atomic: everything is written into a temporary sibling folder that is
    renamed to ``root`` when complete. If ``root`` already holds a complete simulation with
    the same configuration it is returned without recomputation; a different configuration
    or a non-empty folder that is not a simulation raises :class:`ConfigError`.

    Parameters
    ----------
    root : dataset root to create
    config : SimConfig, the default experiment by default
    progress : show tqdm progress bars
    """
    config.validate()
    root = Path(root).expanduser().absolute()
    found = _existing(root, config)
    if found is not None:
        return found
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ConfigError(
            f"simulation root {root}: expected a new or empty folder, found existing content without "
            f"{L.TRUTH_DIR}/complete.json"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(root)
    tmp = root.parent / f".{root.name}.sim-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    t0 = time.perf_counter()
    try:
        _generate(tmp, config, progress)
        if root.is_dir():
            root.rmdir()  # empty (checked above); rename needs the target absent
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        # another process may have completed the same simulation meanwhile
        found = _existing(root, config)
        if found is not None:
            return found
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    truth = load_truth(root)
    if progress:
        print(f"brainrecon.sim: wrote {root} in {time.perf_counter() - t0:.1f} s")
    return truth
