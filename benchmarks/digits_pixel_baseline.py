"""Acceptance check: a pixel-space ridge baseline on van Gerven et al.'s digits69 fMRI data.

Fits scikit-learn ``RidgeCV`` (one alpha chosen by efficient leave-one-out on the
90 training images only) from z-scored voxels (training mean/std) to the 784
pixels in [0, 1], predicts the 10 test images and prints per-image PCC, MSE and
SSIM averaged over them, beside the published numbers of the DGMM paper (Table 2)
and the no-brain floors listed in ``../shared/data/README.md``.

SSIM protocols printed (the paper does not state its own):

* ``gauss``: brainrecon's SSIM — Brain-Diffuser's settings (Gaussian window sigma 1.5,
  radius 5, population covariance, data_range 1) on the 28x28 image; the mean runs over
  the 18x18 interior where the window fits.
* ``uniform7``: scikit-image's defaults (7x7 uniform window, sample covariance,
  data_range 1), for comparison.

Usage::

    python benchmarks/digits_pixel_baseline.py [--data PATH]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from brainrecon.errors import DataFormatError, MissingDataError  # noqa: E402
from brainrecon.metrics import evaluate  # noqa: E402
from brainrecon.paths import shared_dataset_file  # noqa: E402

#: DGMM paper (arXiv:1704.07575) Table 2, as listed in ../shared/data/README.md: (PCC, MSE, SSIM)
PUBLISHED = {
    "Miyawaki et al.": (0.767, 0.042, 0.466),
    "BCCA": (0.411, 0.119, 0.192),
    "DCCAE-A": (0.548, 0.074, 0.358),
    "DCCAE-S": (0.511, 0.080, 0.552),
    "De-CNN": (0.799, 0.038, 0.613),
    "DGMM": (0.803, 0.037, 0.645),
}
README_FLOORS = {"mean training image": (0.655, 0.055, 0.309), "mean image of true class": (0.736, 0.045, 0.411)}
ALPHAS = np.logspace(-2, 6, 33)


def load_digits69(path: Path) -> dict[str, np.ndarray]:
    """Voxels (float32), stimuli ``(n, 28, 28)`` in [0, 1] and labels of the standard split."""
    from scipy.io import loadmat

    if not path.is_file():
        raise MissingDataError(path, "digits69 .mat file")
    mat = loadmat(str(path))
    need = ("fmriTrn", "fmriTest", "stimTrn", "stimTest", "labelTrn", "labelTest")
    missing = [k for k in need if k not in mat]
    if missing:
        raise DataFormatError(f"{path}: missing keys {missing}")
    out = {}
    for split, suffix in (("train", "Trn"), ("test", "Test")):
        out[f"X_{split}"] = mat[f"fmri{suffix}"].astype(np.float32)
        # stored column-major (MATLAB): order='F' gives upright digits
        out[f"img_{split}"] = mat[f"stim{suffix}"].reshape(-1, 28, 28, order="F").astype(np.float32) / 255.0
        out[f"label_{split}"] = mat[f"label{suffix}"].ravel()
    return out


def to_rgb(gray: np.ndarray) -> np.ndarray:
    """``(n, 28, 28)`` to ``(n, 3, 28, 28)``; luma weights sum to 1, so SSIM's grayscale is unchanged."""
    return np.repeat(gray[:, None], 3, axis=1).astype(np.float32)


def ssim_uniform7(gt: np.ndarray, rec: np.ndarray) -> np.ndarray:
    """scikit-image's default SSIM (7x7 uniform window, sample covariance) per image."""
    from skimage.metrics import structural_similarity

    return np.array([structural_similarity(a, b, data_range=1.0) for a, b in zip(gt, rec)])


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="path of digit69_28x28.mat")
    args = ap.parse_args(argv)
    path = shared_dataset_file("vangerven2010-digits69/digit69_28x28.mat", args.data)
    d = load_digits69(path)
    from sklearn.linear_model import RidgeCV

    t0 = time.perf_counter()
    mu, sd = d["X_train"].mean(0), d["X_train"].std(0)
    sd[sd == 0] = 1.0
    X_tr, X_te = (d["X_train"] - mu) / sd, (d["X_test"] - mu) / sd
    Y_tr = d["img_train"].reshape(len(X_tr), -1)
    # alpha chosen by efficient leave-one-out on the training set only
    model = RidgeCV(alphas=ALPHAS, alpha_per_target=False).fit(X_tr, Y_tr)
    pred = np.clip(model.predict(X_te), 0.0, 1.0).reshape(-1, 28, 28).astype(np.float32)
    fit_s = time.perf_counter() - t0

    gt = d["img_test"]
    candidates = {
        "ridge (pixels, this run)": pred,
        "floor: mean training image": np.broadcast_to(d["img_train"].mean(0), gt.shape).astype(np.float32),
        "floor: mean image of true class": np.stack(
            [d["img_train"][d["label_train"] == lab].mean(0) for lab in d["label_test"]]
        ).astype(np.float32),
    }
    print(f"digits69: {len(X_tr)} train / {len(X_te)} test images, {X_tr.shape[1]} voxels; {path}")
    print(f"RidgeCV alpha = {model.alpha_:.4g} (grid 1e-2..1e6, LOO on train); fit+predict {fit_s:.2f} s")
    print("Per-image metrics averaged over the 10 test images (images in [0, 1]); "
          "SSIM 'gauss' = Brain-Diffuser settings, 'unif7' = skimage defaults")
    header = f"{'method':38s} {'PCC':>6s} {'MSE':>7s} {'SSIM gauss':>10s} {'SSIM unif7':>10s}  PCC 95% CI / p"
    print(header)
    print("-" * len(header))
    for name, rec in candidates.items():
        res = evaluate(to_rgb(gt), to_rgb(rec), preset="native", metrics=["PixCorr", "SSIM", "MSE"],
                       n_boot=2000, n_perm=2000, seed=0)
        m = res.metrics
        u7 = ssim_uniform7(gt, rec).mean()
        ci = m["PixCorr"].ci
        print(f"{name:38s} {m['PixCorr'].mean:6.3f} {m['MSE'].mean:7.4f} {m['SSIM'].mean:10.3f} {u7:10.3f}  "
              f"[{ci[0]:.3f}, {ci[1]:.3f}] p={m['PixCorr'].p_value:.3g}")
    print("-" * len(header))
    for name, (pcc, err, s) in README_FLOORS.items():
        print(f"{'README floor: ' + name:38s} {pcc:6.3f} {err:7.3f} {s:10.3f} {'':>10s}  (SSIM protocol unstated)")
    for name, (pcc, err, s) in PUBLISHED.items():
        print(f"{'published: ' + name:38s} {pcc:6.3f} {err:7.3f} {s:10.3f} {'':>10s}  (DGMM Table 2)")


if __name__ == "__main__":
    main()
