"""Benchmark: prepare an NSD-sized synthetic subject with bounded memory.

Writes, into a temporary folder (deleted afterwards unless ``--keep``), a synthetic subject in
the real NSD layout with NSD's sizes:

* 15,724 nsdgeneral voxels (subject 1's count), 37 sessions x 750 trials of int16 betas
  (HDF5 ``betas_sessionNN.hdf5``; ``--format nifti`` writes ``.nii.gz`` instead);
* ``nsd_expdesign.mat`` with 40 x 750 = 30,000 trials (10,000 images x 3 repeats, random order),
  ``subjectim`` 8 x 10,000, 1,000 shared images;
* ``nsd_stimuli.hdf5`` with an ``imgBrick`` of 73,000 x 425 x 425 x 3 uint8, chunked per image
  and gzip-compressed; only the subject's 10,000 images are written (flat colour plus a
  stamp, so that they compress), the others are HDF5 fill value: the file keeps the real
  shape without 40 GB of disk;
* the captions file, 73,000 x 5 unicode strings.

**The volume is cropped**: (X, Y, Z) = (44, 40, 28) instead of NSD's (81, 104, 83), still
holding the 15,724 ROI voxels (a compact blob). Per-session files are therefore ~70 MB instead
of ~1 GB; the arrays that the loader keeps (ROI voxels only) are the real sizes.

Then, in a fresh child process (so that the generator's memory does not count), it runs
``brainrecon.data.nsd.prepare_subject`` (repeats averaged, z-scored with training statistics,
as Brain-Diffuser) and reads every test stimulus at full size plus every training stimulus at
64 x 64 through the lazy reader, and reports the child's peak resident memory
(``ru_maxrss``) and wall time. A second child prepares single trials (the largest output);
a third prepares with ``cache_dir`` twice (miss: compute and write the ``.npy`` files; hit:
memory-map them).

Run (heavy: ~3 GB of disk, a few minutes)::

    flock /tmp/brainrecon-heavy.lock python benchmarks/nsd_prepare.py
    python benchmarks/nsd_prepare.py --quick      # small version, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LIMIT_GB = 8.0


def _sizes(quick: bool) -> dict:
    if quick:
        return dict(n_voxels=2000, volume=(20, 18, 14), sessions=3, total_sessions=4,
                    trials=120, n_images=160, n_shared=20, brick=400, img=64)
    return dict(n_voxels=15724, volume=(44, 40, 28), sessions=37, total_sessions=40,
                trials=750, n_images=10000, n_shared=1000, brick=73000, img=425)


def generate(root: Path, cfg: dict, fmt: str, seed: int = 0) -> None:
    """Write the synthetic subject (one session in memory at a time)."""
    import h5py
    import nibabel as nib
    import scipy.io

    rng = np.random.default_rng(seed)
    X, Y, Z = cfg["volume"]
    aff = np.diag([1.8, 1.8, 1.8, 1.0])
    # ROI: the n_voxels voxels nearest the volume centre (a compact blob).
    grid = np.stack(np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij"), -1)
    d = np.linalg.norm((grid - np.array([X, Y, Z]) / 2.0) * np.array([1.0, 0.9, 1.2]), axis=-1)
    order = np.argsort(d.ravel(), kind="stable")[: cfg["n_voxels"]]
    roi = np.zeros(X * Y * Z, dtype=np.int16)
    roi[order] = 1
    roi = roi.reshape(X, Y, Z)
    rdir = root / "nsddata/ppdata/subj01/func1pt8mm/roi"
    rdir.mkdir(parents=True)
    nib.save(nib.Nifti1Image(roi, aff), str(rdir / "nsdgeneral.nii.gz"))

    # Design: each of the subject's images 3 times, shuffled; first n_shared are shared.
    n_img, n_sh = cfg["n_images"], cfg["n_shared"]
    n_trials_total = cfg["total_sessions"] * cfg["trials"]
    master = rng.permutation(np.resize(np.arange(1, n_img + 1), n_trials_total))
    subjectim = np.zeros((8, n_img), dtype=np.int64)
    for s in range(8):
        shared = np.sort(rng.choice(np.arange(1, cfg["brick"] // 2), n_sh, replace=False)) \
            if s == 0 else subjectim[0, :n_sh]
        rest = rng.choice(np.setdiff1d(np.arange(1, cfg["brick"] + 1), shared), n_img - n_sh,
                          replace=False)
        subjectim[s] = np.concatenate([shared, rest])
    ddir = root / "nsddata/experiments/nsd"
    ddir.mkdir(parents=True)
    scipy.io.savemat(ddir / "nsd_expdesign.mat", {"masterordering": master[None].astype(np.float64),
                                                  "subjectim": subjectim.astype(np.float64),
                                                  "sharedix": subjectim[0, :n_sh][None].astype(np.float64)})

    # Betas: NSD-like int16 (percent signal x 300), session by session.
    bdir = root / "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR"
    bdir.mkdir(parents=True)
    for s in range(1, cfg["sessions"] + 1):
        vol = rng.normal(0, 600, size=(cfg["trials"], Z, Y, X)).astype(np.int16)
        if fmt == "hdf5":
            with h5py.File(bdir / f"betas_session{s:02d}.hdf5", "w") as f:
                f.create_dataset("betas", data=vol)
        else:
            nib.save(nib.Nifti1Image(vol.transpose(3, 2, 1, 0), aff),
                     str(bdir / f"betas_session{s:02d}.nii.gz"))
        del vol

    # Stimuli: real shape, chunked per image; only the subject's images are written.
    sdir = root / "nsddata_stimuli/stimuli/nsd"
    (sdir / "annotations").mkdir(parents=True)
    size = cfg["img"]
    with h5py.File(sdir / "nsd_stimuli.hdf5", "w") as f:
        ds = f.create_dataset("imgBrick", shape=(cfg["brick"], size, size, 3), dtype=np.uint8,
                              chunks=(1, size, size, 3), compression="gzip", compression_opts=1)
        ids = np.sort(subjectim[0] - 1)
        for a in range(0, ids.size, 256):
            blk = ids[a:a + 256]
            imgs = np.empty((blk.size, size, size, 3), dtype=np.uint8)
            imgs[:] = (blk[:, None, None, None] * np.array([7, 13, 29]) % 251).astype(np.uint8)
            imgs[:, :8, :8, :] = 255
            for k, i in enumerate(blk):
                ds[int(i)] = imgs[k]
    caps = np.array([f"synthetic image {i}" for i in range(cfg["brick"])])
    np.save(sdir / "annotations/COCO_73k_annots_curated.npy",
            np.stack([caps, caps, np.full_like(caps, ""), caps, caps], axis=1))


def _child_prepare(root: str, fmt: str, average: bool, sessions: int, out: str,
                   cache: str | None = None) -> None:
    """Runs inside a fresh process: prepare and read stimuli, write timings as JSON."""
    sys.path.insert(0, str(REPO))
    from brainrecon.data import nsd

    if cache is not None:  # cache miss (compute + atomic write) then cache hit (memory map)
        t0 = time.perf_counter()
        nsd.prepare_subject(root, 1, sessions=sessions, zscore="train", beta_format=fmt,
                            cache_dir=cache, progress=False)
        t1 = time.perf_counter()
        prep = nsd.prepare_subject(root, 1, sessions=sessions, zscore="train", beta_format=fmt,
                                   cache_dir=cache, progress=False)
        t2 = time.perf_counter()
        float(np.asarray(prep.X_train).sum())  # touch every page of the memory map
        Path(out).write_text(json.dumps(dict(
            cache_miss_s=t1 - t0, cache_hit_s=t2 - t1, hit_and_read_all_s=time.perf_counter() - t1,
            memmap=isinstance(prep.X_train, np.memmap))))
        return
    t0 = time.perf_counter()
    prep = nsd.prepare_subject(root, 1, sessions=sessions, average_repeats=average,
                               zscore="train", beta_format=fmt, progress=False)
    t_prep = time.perf_counter() - t0
    res = dict(prepare_s=t_prep, X_train=list(prep.X_train.shape), X_test=list(prep.X_test.shape),
               info={k: prep.info[k] for k in ("n_voxels", "n_train_images", "n_test_images",
                                                "n_train_trials", "n_test_trials")})
    if average:
        t1 = time.perf_counter()
        test = nsd.read_stimuli(root, prep.test_ids)  # full 425 x 425
        n_read = test.shape[0]
        del test
        with nsd.open_stimuli(root) as brick:
            for a in range(0, prep.train_ids.size, 512):
                n_read += brick.read(prep.train_ids[a:a + 512], size=64).shape[0]
        caps = nsd.read_captions(root, prep.train_ids)
        res.update(stimuli_s=time.perf_counter() - t1, stimuli_read=n_read, captions=len(caps))
    Path(out).write_text(json.dumps(res))


def _run_child(args: list[str]) -> tuple[dict, float, float]:
    """Run this script as a child; return its JSON result, peak RSS (GB) and wall time (s)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tf:
        out = tf.name
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args, "--out", out])
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"child {args} failed with status {status}")
    res = json.loads(Path(out).read_text())
    os.unlink(out)
    return res, ru.ru_maxrss / 1024**2, wall  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small subject (seconds)")
    ap.add_argument("--format", choices=("hdf5", "nifti"), default="hdf5")
    ap.add_argument("--workdir", default=None, help="where to generate (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sessions", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child_prepare(a.root, a.format, not a.single, a.sessions, a.out, a.cache)
        return

    cfg = _sizes(a.quick)
    tmp = Path(tempfile.mkdtemp(prefix="nsd_bench_", dir=a.workdir))
    root = tmp / "nsd"
    try:
        t0 = time.perf_counter()
        generate(root, cfg, a.format)
        t_gen = time.perf_counter() - t0
        disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        common = ["--root", str(root), "--format", a.format, "--sessions", str(cfg["sessions"])]
        avg, rss_avg, wall_avg = _run_child(common)
        single, rss_single, wall_single = _run_child(common + ["--single"])
        cached, rss_cached, _ = _run_child(common + ["--cache", str(tmp / "cache")])
        report = {
            "mode": "quick" if a.quick else "full",
            "sizes": {**cfg, "volume_note": "cropped volume (real NSD: 81x104x83)"},
            "format": a.format, "generate_s": round(t_gen, 1),
            "disk_gb": round(disk / 1024**3, 2),
            "averaged": {**avg, "peak_rss_gb": round(rss_avg, 3), "child_wall_s": round(wall_avg, 1)},
            "single_trial": {**single, "peak_rss_gb": round(rss_single, 3),
                             "child_wall_s": round(wall_single, 1)},
            "cached": {**cached, "peak_rss_gb": round(rss_cached, 3)},
            "limit_gb": LIMIT_GB,
            "pass": bool(max(rss_avg, rss_single, rss_cached) < LIMIT_GB),
            "note": "files were just written, so they are in the OS page cache (warm reads)",
        }
        print(json.dumps(report, indent=1))
    finally:
        if a.keep:
            print(f"data kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
