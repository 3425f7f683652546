"""The ``digits69`` experiment (van Gerven et al. 2010 sixes and nines) through the library, several seeds.

Two parts:

``--select`` (training trials only)
    10-fold cross-validation over the 90 **training** trials chooses the knobs of
    ``conf/experiment/digits69.yaml``: the rescaling of ridge predictions (``none`` or
    ``train_stats``) and, for ``digits_prior``, the blend weight and the prior weight. Every
    fold z-scores with its own training rows and fits the library's ``RidgeDecoder`` (exact
    LOO alpha per target, as the config) on the other 81 trials; the VAE is the one under
    evaluation (its training never saw the 10 test images). Objective: mean PCC + mean SSIM
    of the held-out reconstructions. The 10 test trials are never read by this part.

run (default)
    For each seed: the digit VAE trained with that seed (seed 0 = the bundled weights; other
    seeds are trained here with ``scripts/train_digit_vae.py``'s defaults, into ``--out``),
    then ``experiment=digits69`` through :func:`brainrecon.stages.pipeline.run_experiment`.
    Printed per method, mean +- std over seeds: per-image PCC, MSE, SSIM on [0, 1] images
    averaged over the 10 test images (with the evaluate stage's bootstrap CI of the first
    seed), two-way identification by pixel correlation, and the 6-vs-9 accuracy of the
    reconstructions under a logistic-regression classifier trained on the 90 training
    stimuli' pixels (its C chosen by 5-fold CV on those stimuli). Beside: the published
    numbers (DGMM paper Table 2) and the no-brain floors. Writes ``digits69_results.json``
    and ``digits69_reconstructions.png`` (stimuli on top, each method below, first seed).

Protocol: PCC = Pearson r of the 784 pixels per image; MSE per image; SSIM = brainrecon's
(Gaussian window sigma 1.5, population covariance, data_range 1, mean over the 18x18 interior);
"SSIM u7" = scikit-image's defaults (7x7 uniform window, sample covariance, data_range 1); all
averaged over the 10 test images. The paper does not state its SSIM window.

Usage::

    python benchmarks/digits69.py --select                 # choose the knobs on training data
    python benchmarks/digits69.py --seeds 0 1 2 --out /tmp/digits69
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO))

from brainrecon.errors import DataFormatError, MissingDataError  # noqa: E402
from brainrecon.paths import shared_dataset_file  # noqa: E402

PUBLISHED = {  # DGMM paper (arXiv:1704.07575) Table 2: (PCC, MSE, SSIM)
    "Miyawaki et al.": (0.767, 0.042, 0.466),
    "De-CNN": (0.799, 0.038, 0.613),
    "DGMM": (0.803, 0.037, 0.645),
}
METHODS = ("pixels", "digits", "digits_prior")
PRIOR_WEIGHTS = (0.001, 0.01, 0.1, 1.0)
BLENDS = (0.25, 0.5, 0.75, 1.0)


def read_mat(path: Path, test: bool) -> dict[str, np.ndarray]:
    """Voxels, stimuli ``(n, 28, 28)`` in [0, 1] and labels of the training (and test) split."""
    from scipy.io import loadmat

    if not path.is_file():
        raise MissingDataError(path, "digits69 .mat file", hint="pass --data or provide ../shared/data")
    names = ["fmriTrn", "stimTrn", "labelTrn"] + (["fmriTest", "stimTest", "labelTest"] if test else [])
    mat = loadmat(str(path), variable_names=names)
    missing = [k for k in names if k not in mat]
    if missing:
        raise DataFormatError(f"{path}: missing keys {missing}")
    out = {}
    for split, suffix in (("train", "Trn"), ("test", "Test")) if test else (("train", "Trn"),):
        out[f"X_{split}"] = mat[f"fmri{suffix}"].astype(np.float64)
        # MATLAB column-major: order="F" gives upright digits
        out[f"img_{split}"] = mat[f"stim{suffix}"].reshape(-1, 28, 28, order="F").astype(np.float32) / 255.0
        out[f"label_{split}"] = mat[f"label{suffix}"].ravel().astype(np.int64)
    return out


def lowlevel(gt: np.ndarray, rec: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image PCC, MSE and SSIM of grey images ``(n, 28, 28)`` in [0, 1]."""
    from skimage.metrics import structural_similarity

    from brainrecon.metrics.lowlevel import pixcorr_unchecked, ssim_gray

    gt64, rec64 = gt.astype(np.float64), np.clip(rec, 0, 1).astype(np.float64)
    return {
        "PCC": pixcorr_unchecked(gt64.reshape(len(gt), -1), rec64.reshape(len(rec), -1)),
        "MSE": ((gt64 - rec64) ** 2).reshape(len(gt), -1).mean(1),
        "SSIM": ssim_gray(gt64, rec64),
        # scikit-image's defaults (7x7 uniform window, sample covariance): another common protocol
        "SSIM_u7": np.array([structural_similarity(a, b, data_range=1.0) for a, b in zip(gt64, rec64)]),
    }


# ----------------------------------------------------------------------------- selection
def select(data_path: Path, weights: str, folds: int = 10, seed: int = 0) -> dict:
    """Choose rescaling, blend and prior weight by K-fold CV on the training trials only."""
    from brainrecon.decoding.rescale import rescale
    from brainrecon.decoding.ridge import RidgeDecoder
    from brainrecon.latents.base import Stimuli
    from brainrecon.latents.digits import build_digit_space
    from brainrecon.preprocessing import zscore_train_test

    d = read_mat(data_path, test=False)  # the test trials are not even read
    X, S = d["X_train"], d["img_train"]
    n = len(X)
    space = build_digit_space(weights, mode="prior")
    rgb = np.repeat((S * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    Z = space.encode(Stimuli(rgb))["z"]
    alphas = [1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0]  # conf/experiment/digits69.yaml
    order = np.random.default_rng(seed).permutation(n)
    preds = {m: {"pix": np.zeros((n, 784), np.float32), "z": np.zeros_like(Z)} for m in ("none", "train_stats")}
    for f in np.array_split(order, folds):
        tr = np.setdiff1d(np.arange(n), f)
        Xtr, Xte, _ = zscore_train_test(X[tr], X[f])
        for key, Y in (("pix", S[tr].reshape(len(tr), -1)), ("z", Z[tr])):
            dec = RidgeDecoder(alphas, cv="loo", alpha_per_target=True).fit(Xtr, Y)
            raw = dec.predict(Xte)
            for method in preds:
                kw = {}
                if method == "train_stats":
                    kw = {"pred_mean": dec.train_pred_mean_, "pred_std": dec.train_pred_std_}
                preds[method][key][f] = rescale(raw, method, train_mean=Y.mean(0), train_std=Y.std(0), **kw)
    rows = []
    for method, p in preds.items():
        pix = np.clip(p["pix"].reshape(n, 28, 28), 0, 1)
        pix = np.round(pix * 255) / 255  # the generate stage stores uint8 images
        lat = space.decode_gray(p["z"])
        cands = {("pixels", None, None): pix, ("digits", None, None): lat}
        for b in BLENDS[:-1]:
            cands[("digits_prior", "blend", b)] = b * lat + (1 - b) * pix
        for lam in PRIOR_WEIGHTS:
            space.prior_weight = lam
            proj = space.decode_gray(space.project(p["z"], pix))
            for b in BLENDS:
                cands[("digits_prior", lam, b)] = b * proj + (1 - b) * pix
        for (name, lam, b), img in cands.items():
            m = lowlevel(S, img)
            rows.append({"rescale": method, "method": name, "prior_weight": lam, "blend": b,
                         **{k: float(v.mean()) for k, v in m.items()}})
    for r in rows:
        r["objective"] = r["PCC"] + r["SSIM"]
    best_prior = max((r for r in rows if r["method"] == "digits_prior"), key=lambda r: r["objective"])
    # one rescaling serves the whole experiment: the one of the best digits_prior setting
    return {"rows": rows, "choice": best_prior, "folds": folds, "weights": weights}


def print_selection(sel: dict) -> None:
    """Print the CV table (best settings first)."""
    print(f"10-fold CV on the 90 training trials (weights {sel['weights']}); objective PCC + SSIM")
    print(f"{'rescale':12s} {'method':13s} {'prior_w':>8s} {'blend':>6s} {'PCC':>6s} {'MSE':>7s} {'SSIM':>6s}")
    for r in sorted(sel["rows"], key=lambda r: -r["objective"])[:15]:
        print(f"{r['rescale']:12s} {r['method']:13s} {str(r['prior_weight']):>8s} {str(r['blend']):>6s} "
              f"{r['PCC']:6.3f} {r['MSE']:7.4f} {r['SSIM']:6.3f}")
    for m in ("pixels", "digits"):
        for r in sel["rows"]:
            if r["method"] == m:
                print(f"  {r['rescale']:12s} {m:13s} PCC {r['PCC']:.3f} MSE {r['MSE']:.4f} SSIM {r['SSIM']:.3f}")
    c = sel["choice"]
    print(f"chosen: rescale={c['rescale']} digits_prior prior_weight={c['prior_weight']} blend={c['blend']}")


# ----------------------------------------------------------------------------- run
def weights_for_seed(seed: int, out: Path, data_path: Path, threads: int) -> str:
    """Seed 0: the bundled weights; other seeds: trained here (cached in ``out``) with the bundled
    model's training arguments (``digit_vae.training.json``) and only the seed changed."""
    from brainrecon.paths import bundled_weights_dir

    if seed == 0:
        return "bundled:digit_vae.safetensors"
    path = out / "weights" / f"digit_vae_seed{seed}.safetensors"
    if not path.is_file():
        prov = json.loads((bundled_weights_dir() / "digit_vae.training.json").read_text())["arguments"]
        sys.path.insert(0, str(REPO / "scripts"))
        import train_digit_vae

        argv = ["--data", str(data_path), "--out", str(path), "--seed", str(seed), "--threads", str(threads),
                "--steps", str(prov["steps"]), "--latent-dim", str(prov["latent_dim"]), "--batch", str(prov["batch"]),
                "--lr", str(prov["lr"]), "--beta", str(prov["beta"])]
        train_digit_vae.main(argv + (["--no-sklearn"] if prov.get("no_sklearn") else []))
    return str(path)


def run_seed(seed: int, weights: str, out: Path, overrides: list[str]) -> dict[str, np.ndarray]:
    """Run ``experiment=digits69`` for one seed; returns the test reconstructions and the metrics.json."""
    from hydra import compose, initialize_config_dir

    from brainrecon.stages.pipeline import run_experiment
    from pipelines.config import build_spaces, to_plain

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="run", overrides=[
            "experiment=digits69", f"seed={seed}", f"paths.artifacts_root={out / 'artifacts'}", "progress=false",
            f"latents.digits.weights_path={weights}", f"latents.digits_prior.weights_path={weights}", *overrides])
    result = run_experiment(to_plain(cfg), build_spaces(cfg), artifacts_root=out / "artifacts", progress=False)
    recs = {m: np.asarray(result.artifacts[f"generate/{m}"].array("reconstruction"), dtype=np.float32)[..., 0] / 255.0
            for m in METHODS}
    recs["metrics"] = json.loads((result.artifacts["evaluate"].path / "report" / "metrics.json").read_text())
    return recs


def digit_classifier(img_train: np.ndarray, label_train: np.ndarray):  # noqa: ANN201
    """Logistic regression on the training stimuli's pixels, C chosen by 5-fold CV on them (accuracy)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    X = img_train.reshape(len(img_train), -1)
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    scores = {C: cross_val_score(LogisticRegression(C=C, max_iter=5000), X, label_train, cv=folds).mean()
              for C in np.logspace(-3, 2, 11)}
    best = max(scores, key=scores.get)  # first best: the smallest C among ties (strongest regularisation)
    clf = LogisticRegression(C=best, max_iter=5000).fit(X, label_train)
    return clf


def two_way(gt: np.ndarray, rec: np.ndarray) -> float:
    """Two-way identification by pixel correlation (chance 0.5)."""
    from brainrecon.metrics.identification import two_way_identification

    return float(np.mean(two_way_identification(gt.reshape(len(gt), -1), rec.reshape(len(rec), -1))))


def figure(gt: np.ndarray, rows: dict[str, np.ndarray], path: Path) -> None:
    """Stimuli on top, each method's reconstructions below (as the paper's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    allrows = {"stimulus": gt, **rows}
    fig, axes = plt.subplots(len(allrows), len(gt), figsize=(len(gt) * 0.9, len(allrows) * 0.95))
    for i, (name, imgs) in enumerate(allrows.items()):
        for j in range(len(gt)):
            ax = axes[i, j]
            ax.imshow(np.clip(imgs[j], 0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Select on training data, or run the seeds and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="digit69_28x28.mat (default ../shared/data/...)")
    ap.add_argument("--out", type=Path, default=Path("artifacts/benchmarks/digits69"))
    ap.add_argument("--select", action="store_true", help="only choose the knobs by CV on the training trials")
    ap.add_argument("--weights", default="bundled:digit_vae.safetensors", help="VAE used by --select")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for the runs")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    path = shared_dataset_file("vangerven2010-digits69/digit69_28x28.mat", args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.select:
        t0 = time.perf_counter()
        sel = select(path, args.weights)
        print_selection(sel)
        (args.out / "digits69_selection.json").write_text(json.dumps(sel, indent=1) + "\n")
        print(f"({time.perf_counter() - t0:.0f} s; wrote {args.out / 'digits69_selection.json'})")
        return

    d = read_mat(path, test=True)
    gt = d["img_test"]
    clf = digit_classifier(d["img_train"], d["label_train"])
    per_seed: dict[str, list[dict]] = {m: [] for m in METHODS}
    first = None
    for seed in args.seeds:
        t0 = time.perf_counter()
        w = weights_for_seed(seed, args.out, path, args.threads)
        recs = run_seed(seed, w, args.out, list(args.overrides))
        first = first or recs
        for m in METHODS:
            ll = lowlevel(gt, recs[m])
            per_seed[m].append({**{k: float(v.mean()) for k, v in ll.items()},
                                "2-way": two_way(gt, recs[m]),
                                "6v9": float((clf.predict(recs[m].reshape(len(gt), -1)) == d["label_test"]).mean())})
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s ({w})")
    floors = {
        "floor: mean training image": np.broadcast_to(d["img_train"].mean(0), gt.shape),
        "floor: mean image of true class": np.stack([d["img_train"][d["label_train"] == c].mean(0)
                                                     for c in d["label_test"]]),
    }
    print(f"\ndigits69: 10 test images, per-image metrics averaged; mean +- std over seeds {args.seeds}; "
          "CI = bootstrap 95% of the first seed (evaluate stage)")
    print(f"{'method':34s} {'PCC':>14s} {'MSE':>16s} {'SSIM':>14s} {'SSIM u7':>14s} {'2-way':>12s} {'6v9 acc':>12s}"
          "  PCC CI / SSIM CI")
    table = {}
    for m in METHODS:
        arr = {k: np.array([r[k] for r in per_seed[m]]) for k in per_seed[m][0]}
        table[m] = {k: {"mean": float(v.mean()), "std": float(v.std()), "per_seed": v.tolist()} for k, v in arr.items()}
        mm = first["metrics"]["methods"][m]["metrics"]
        ci = f"[{mm['PixCorr']['ci_low']:.3f}, {mm['PixCorr']['ci_high']:.3f}] / [{mm['SSIM']['ci_low']:.3f}, {mm['SSIM']['ci_high']:.3f}]"
        cells = " ".join(f"{arr[k].mean():.3f}+-{arr[k].std():.3f}".rjust(w)
                         for k, w in (("PCC", 14), ("MSE", 16), ("SSIM", 14), ("SSIM_u7", 14), ("2-way", 12),
                                                                 ("6v9", 12)))
        print(f"{m:34s} {cells}  {ci}")
    for name, img in floors.items():
        ll = lowlevel(gt, img)
        table[name] = {k: float(v.mean()) for k, v in ll.items()}
        print(f"{name:34s} {ll['PCC'].mean():14.3f} {ll['MSE'].mean():16.4f} {ll['SSIM'].mean():14.3f} "
              f"{ll['SSIM_u7'].mean():14.3f}")
    for name, (p, e, s) in PUBLISHED.items():
        print(f"{'published: ' + name:34s} {p:14.3f} {e:16.3f} {s:14.3f}   (DGMM Table 2, SSIM protocol unstated)")
    stim_acc = float((clf.predict(gt.reshape(len(gt), -1)) == d["label_test"]).mean())
    print(f"6-vs-9 classifier on the true test stimuli: {stim_acc:.2f} (C={clf.C:.3g}, by 5-fold CV on the training stimuli)")
    fig_path = args.out / "digits69_reconstructions.png"
    figure(gt, {m: first[m] for m in METHODS}, fig_path)
    (args.out / "digits69_results.json").write_text(json.dumps(
        {"seeds": args.seeds, "table": table, "classifier_on_stimuli": stim_acc, "published": PUBLISHED,
         "overrides": list(args.overrides)}, indent=1) + "\n")
    print(f"wrote {fig_path} and {args.out / 'digits69_results.json'}")


if __name__ == "__main__":
    main()
