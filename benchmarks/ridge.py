"""Same-run benchmark of brainrecon's RidgeDecoder against scikit-learn Ridge and himalaya.

Synthetic data of NSD shape (Brain-Diffuser subject 1: n = 8,859 training samples, p = 15,724
voxels, m = 982 test samples; t = 91,168 VDVAE targets, or 196,608 with ``--clip``), or a
scaled-down shape with ``--quick`` (n = 1,500, p = 3,000, t = 8,192, m = 200; < 2 minutes).

Every method runs in its own subprocess on identical data (regenerated from the seed), so each
peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is that method's alone; the data
themselves are included in it and reported separately. Timings cover fit + test predictions,
excluding data generation.

At full scale scikit-learn and himalaya are timed on two subsets of the targets and the time is
extrapolated linearly in t (``T(t) = a + b t`` through the two points); their peak RSS is the
subset value and is marked as such. The extrapolated figures are labelled ``extrap`` in the table.

Printed: wall time, ratio to our fixed-alpha and alpha-selection runs, peak RSS, counted GFLOP
and achieved GFLOP/s, and the GEMM-bound floor = counted flops / float32 matmul rate measured
at the start of the run on this machine. The flop count of the symmetric eigendecomposition is
taken as 10/3 n^3 (tridiagonal reduction 4/3 n^3 + back-transformation 2 n^3); the floor is also
given without it.

Usage::

    python benchmarks/ridge.py --quick
    flock /tmp/brainrecon-heavy.lock python benchmarks/ridge.py            # VDVAE shape
    flock /tmp/brainrecon-heavy.lock python benchmarks/ridge.py --clip     # CLIP-vision shape
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FULL = {"n": 8859, "p": 15724, "t": 91168, "m": 982}
CLIP_T = 196608
QUICK = {"n": 1500, "p": 3000, "t": 8192, "m": 200}
FIXED_ALPHA = 50_000.0  # Brain-Diffuser's VDVAE alpha


# ------------------------------------------------------------------------------ data
def make_data(n: int, p: int, t: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Low-rank signal plus noise, float32, generated in place to keep RSS at the data size.

    X = F A + E, Y = F B + E'; k = 64 shared factors make Y predictable from X.
    """
    rng = np.random.default_rng(seed)
    k = 64
    f = rng.standard_normal((n + m, k), dtype=np.float32)
    a = rng.standard_normal((k, p), dtype=np.float32) / np.float32(np.sqrt(k))
    b = rng.standard_normal((k, t), dtype=np.float32) * np.float32(0.3 / np.sqrt(k))
    x_all = rng.standard_normal((n + m, p), dtype=np.float32)
    x_all += f @ a
    y = np.empty((n, t), dtype=np.float32)
    step = 8192
    for s in range(0, t, step):
        e = slice(s, min(s + step, t))
        y[:, e] = rng.standard_normal((n, e.stop - e.start), dtype=np.float32)
        y[:, e] += f[:n] @ b[:, e]
    return x_all[:n], y, x_all[n:]


# ------------------------------------------------------------------------------ flop counts
def flops(method: str, n: int, p: int, t: int, m: int, n_alphas: int, folds: int = 5) -> dict[str, float]:
    """Counted floating-point operations (multiply-add = 2) of each method's algorithm."""
    gram = n * n * p  # symmetric X X^T (syrk: half of a 2 n^2 p GEMM)
    eig = 10 / 3 * n**3
    coords = 2 * m * n * p
    apply = 2 * m * n * t
    if method == "ours_fixed_chol":
        gemm = gram + n**3 / 3 + 2 * n * n * m + coords + apply
        return {"total": gemm, "gemm_only": gemm}
    if method == "ours_fixed_eigen":
        gemm = gram + 2 * m * n * n * 2 + coords + apply
        return {"total": gemm + eig, "gemm_only": gemm}
    if method.startswith("ours_select"):
        gemm = gram + 2 * n * n * t + 2 * n_alphas * n * t + coords + 2 * m * n * n * (1 + n_alphas) + apply
        if method.endswith("loo"):
            gemm += 2 * n_alphas * n * n * t
        return {"total": gemm + eig, "gemm_only": gemm}
    if method.startswith("sklearn"):
        # kernel Cholesky path: K, solve, coef = X^T dual, predict with coef
        gemm = 2 * n * n * p + n**3 / 3 + 2 * n * n * t + 2 * p * n * t + 2 * m * p * t
        return {"total": gemm, "gemm_only": gemm}
    if method == "himalaya_ridgecv":
        nt = n * (folds - 1) / folds
        nv = n - nt
        svd = 4 * nt * nt * p + 22 * nt**3 / 3  # economy SVD via QR-free bidiagonalisation (rough)
        per_fold = svd + 2 * nt * nt * t + 2 * n_alphas * nv * nt * t
        refit = 4 * n * n * p + 22 * n**3 / 3 + 2 * n * n * t + 2 * p * n * t
        gemm = folds * per_fold + refit + 2 * m * p * t
        return {"total": gemm, "gemm_only": gemm}
    if method == "himalaya_kernelcv":
        nt = n * (folds - 1) / folds
        nv = n - nt
        per_fold = 10 / 3 * nt**3 + 2 * nt * nt * t + 2 * n_alphas * nv * nt * t
        gemm = 2 * n * n * p + folds * per_fold + n**3 / 3 + 2 * n * n * t + 2 * m * n * p + 2 * m * n * t
        return {"total": gemm, "gemm_only": gemm}
    raise KeyError(method)


def matmul_rate(size: int = 4096, repeats: int = 3) -> float:
    """Best-of-``repeats`` float32 GEMM rate (GFLOP/s) of numpy's BLAS on this machine."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


# ------------------------------------------------------------------------------ workers
def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(args: argparse.Namespace) -> dict:
    n, p, t, m = args.n, args.p, args.t, args.m
    X, Y, Xt = make_data(n, p, t, m, args.seed)
    t_sub = args.subset or t
    Y = Y[:, :t_sub] if t_sub < t else Y
    if t_sub < t:
        Y = np.ascontiguousarray(Y)
    rss_data = _rss_mb()
    alphas = np.logspace(1, 6, args.n_alphas)
    name = args.worker
    # Imports (scipy, sklearn, himalaya, torch) happen before the clock starts.
    import scipy.linalg  # noqa: F401
    import sklearn.linear_model  # noqa: F401

    if name.startswith("ours"):
        # Both of our backends use torch (the numpy backend factors with torch's LAPACK), so its
        # import (about 2 s) stays outside the clock like every other library's.
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    if name.startswith("himalaya"):
        import himalaya.kernel_ridge  # noqa: F401
        import himalaya.ridge  # noqa: F401
    best: dict | None = None
    for _ in range(max(args.repeats, 1)):
        res = _timed_run(name, args, X, Y, Xt, alphas, rss_data)
        if best is None or res["time_s"] < best["time_s"]:
            best = res
    best["repeats"] = args.repeats
    best["rss_peak_mb"] = _rss_mb()
    return best


def _timed_run(name: str, args: argparse.Namespace, X: np.ndarray, Y: np.ndarray, Xt: np.ndarray,
               alphas: np.ndarray, rss_data: float) -> dict:
    t0 = time.perf_counter()
    extra: dict = {}
    if name.startswith("ours"):
        from brainrecon.decoding.ridge import RidgeDecoder

        backend = "torch" if "torch" in name else "numpy"
        if name.startswith("ours_fixed"):
            model = RidgeDecoder(FIXED_ALPHA, solver="cholesky" if "chol" in name else "eigen", backend=backend,
                                 chunk_size=args.chunk)
        else:
            cv = "loo" if name.endswith("loo") else "gcv"
            model = RidgeDecoder(alphas, cv=cv, backend=backend, chunk_size=args.chunk)
        model.fit(X, Y)
        t_fit = time.perf_counter() - t0
        pred = model.predict(Xt)
        extra["fit_s"] = t_fit
        extra["predict_s"] = time.perf_counter() - t0 - t_fit
        extra["alpha_counts"] = {f"{a:g}": int(c) for a, c in zip(*np.unique(model.alpha_, return_counts=True))}
    elif name.startswith("sklearn"):
        from sklearn.linear_model import Ridge

        dt = np.float64 if name.endswith("64") else np.float32
        Xf, Yf, Xtf = X.astype(dt), Y.astype(dt), Xt.astype(dt)
        rss_data = _rss_mb()
        t0 = time.perf_counter()
        pred = Ridge(alpha=FIXED_ALPHA).fit(Xf, Yf).predict(Xtf)
    elif name.startswith("himalaya"):
        import himalaya.backend
        from himalaya.kernel_ridge import KernelRidgeCV
        from himalaya.ridge import RidgeCV

        himalaya.backend.set_backend("numpy")
        batch = min(Y.shape[1], args.chunk)
        if name == "himalaya_ridgecv":
            model = RidgeCV(alphas=alphas, fit_intercept=True, cv=5,
                            solver_params={"n_targets_batch": batch, "n_targets_batch_refit": batch, "warn": False})
        else:
            model = KernelRidgeCV(alphas=alphas, kernel="linear", fit_intercept=True, cv=5,
                                  solver_params={"n_targets_batch": batch, "n_targets_batch_refit": batch})
        model.fit(X, Y)
        pred = np.asarray(model.predict(Xt))
    else:
        raise SystemExit(f"unknown worker {name}")
    elapsed = time.perf_counter() - t0
    return {"name": name, "time_s": elapsed, "rss_peak_mb": _rss_mb(), "rss_data_mb": rss_data,
            "t_run": int(Y.shape[1]), "pred_shape": list(pred.shape), "pred_finite": bool(np.isfinite(pred).all()),
            **extra}


def spawn(name: str, shape: dict, args: argparse.Namespace, subset: int | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--n", str(shape["n"]), "--p", str(shape["p"]),
           "--t", str(shape["t"]), "--m", str(shape["m"]), "--seed", str(args.seed), "--n-alphas", str(args.n_alphas),
           "--chunk", str(args.chunk), "--repeats", str(args.repeats or 1)]
    if subset:
        cmd += ["--subset", str(subset)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timed out after {args.worker_timeout} s", "subset": subset}
    if proc.returncode != 0:
        return {"name": name, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed",
                "subset": subset}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_incl_datagen_s"] = time.perf_counter() - t0
    split = f" (fit {res['fit_s']:.2f} + predict {res['predict_s']:.2f})" if "fit_s" in res else ""
    print(f"  {name:22s} t={res['t_run']:>7d} time {res['time_s']:8.2f} s{split}  peak RSS {res['rss_peak_mb']:8.0f} MB "
          f"(data {res['rss_data_mb']:.0f} MB)", flush=True)
    return res


def extrapolate(name: str, shape: dict, args: argparse.Namespace, subsets: tuple[int, int]) -> dict:
    r1, r2 = (spawn(name, shape, args, s) for s in subsets)
    for r in (r1, r2):
        if "error" in r:
            return r
    slope = (r2["time_s"] - r1["time_s"]) / (subsets[1] - subsets[0])
    intercept = r1["time_s"] - slope * subsets[0]
    return {"name": name, "time_s": intercept + slope * shape["t"], "rss_peak_mb": r2["rss_peak_mb"],
            "rss_data_mb": r2["rss_data_mb"], "extrapolated_from": [r1, r2], "t_run": shape["t"]}


# ------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="scaled-down shape (< 2 min)")
    ap.add_argument("--clip", action="store_true", help="CLIP-vision target count (196,608)")
    ap.add_argument("--n", type=int)
    ap.add_argument("--p", type=int)
    ap.add_argument("--t", type=int)
    ap.add_argument("--m", type=int)
    ap.add_argument("--n-alphas", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subsets", type=int, nargs=2, default=None,
                    help="target counts for the extrapolated baselines (full mode default 1024 4096)")
    ap.add_argument("--with-loo", action="store_true", help="also time exact LOO at full scale")
    ap.add_argument("--with-torch", action="store_true", help="also time the torch backend at full scale")
    ap.add_argument("--skip", nargs="*", default=[], help="worker names to skip")
    ap.add_argument("--worker-timeout", type=int, default=1800)
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed repeats per method, best kept (default 1)")
    ap.add_argument("--json", type=str, default=None, help="write all results to this file")
    ap.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--subset", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(run_worker(args)))
        return

    if args.repeats is None:
        args.repeats = 1
    shape = dict(QUICK if args.quick else FULL)
    if args.clip and not args.quick:
        shape["t"] = CLIP_T
    for key in shape:
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    n, p, t, m = shape["n"], shape["p"], shape["t"], shape["m"]
    print(f"shape n={n} p={p} t={t} m={m}; {args.n_alphas} alphas logspace(1,6); fixed alpha {FIXED_ALPHA:g}; "
          f"{os.cpu_count()} CPUs; load avg {os.getloadavg()[0]:.2f}", flush=True)
    rate_start = matmul_rate()
    print(f"measured float32 matmul rate (4096^3, numpy BLAS): {rate_start:.1f} GFLOP/s", flush=True)

    full_scale = not args.quick and args.subsets is not False
    subsets = tuple(args.subsets) if args.subsets else ((1024, 4096) if not args.quick else None)
    if subsets and max(subsets) >= t:
        subsets = None
    ours = ["ours_fixed_chol", "ours_fixed_eigen", "ours_select_gcv"]
    if args.quick or args.with_loo:
        ours.append("ours_select_loo")
    if args.quick or args.with_torch:
        ours.append("ours_select_gcv_torch")
    baselines = ["sklearn_fixed_64", "sklearn_fixed_32", "himalaya_kernelcv", "himalaya_ridgecv"]
    results: dict[str, dict] = {}
    for name in ours:
        if name not in args.skip:
            results[name] = spawn(name, shape, args)
    for name in baselines:
        if name in args.skip:
            continue
        results[name] = extrapolate(name, shape, args, subsets) if (full_scale and subsets) else spawn(name, shape, args)

    # The machine is shared: the rate is measured again at the end and the higher value (the less
    # contended one) defines the floor, so that the floor is never flattered by a busy machine.
    rate_end = matmul_rate()
    rate = max(rate_start, rate_end)
    print(f"\nfloat32 matmul rate: start {rate_start:.1f}, end {rate_end:.1f}, floor uses {rate:.1f} GFLOP/s; "
          f"load avg now {os.getloadavg()[0]:.2f}")
    print("\nmethod                  time (s)   x vs fixed  x vs select  peak RSS MB  GFLOP   GFLOP/s  floor s  "
          "time/floor  floor(no eig) s")
    fixed_t = results.get("ours_fixed_chol", {}).get("time_s")
    sel_t = results.get("ours_select_gcv", {}).get("time_s")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:22s} ERROR {r['error']}")
            continue
        fl = flops(name.replace("_torch", ""), n, p, t, m, args.n_alphas)
        r["gflop"] = fl["total"] / 1e9
        r["gflops_per_s"] = fl["total"] / 1e9 / r["time_s"]
        r["floor_s"] = fl["total"] / 1e9 / rate
        r["floor_gemm_only_s"] = fl["gemm_only"] / 1e9 / rate
        tag = " extrap" if "extrapolated_from" in r else ""
        print(f"{name:22s} {r['time_s']:9.2f}{tag:7s} {r['time_s'] / fixed_t if fixed_t else float('nan'):8.2f} "
              f"{r['time_s'] / sel_t if sel_t else float('nan'):10.2f} {r['rss_peak_mb']:11.0f} {r['gflop']:8.0f} "
              f"{r['gflops_per_s']:8.1f} {r['floor_s']:8.2f} {r['time_s'] / r['floor_s']:9.2f} {r['floor_gemm_only_s']:10.2f}")
    if fixed_t and sel_t:
        print("\ntargets:")
        for ref in ("sklearn_fixed_64", "sklearn_fixed_32"):
            if ref in results and "time_s" in results[ref]:
                print(f"  fixed alpha vs {ref}: {results[ref]['time_s'] / fixed_t:.1f}x faster (target >= 10x)")
        if "ours_fixed_eigen" in results and "time_s" in results["ours_fixed_eigen"]:
            print(f"  selection ({args.n_alphas} alphas, GCV) / fixed alpha, same eigen method: "
                  f"{sel_t / results['ours_fixed_eigen']['time_s']:.2f} (target <= 1.5)")
        print(f"  selection / fixed alpha, our fastest (Cholesky) path: {sel_t / fixed_t:.2f}")
        print(f"  selection time / GEMM floor: {sel_t / results['ours_select_gcv']['floor_s']:.2f} (target <= 2)")
        print(f"  selection wall time {sel_t:.1f} s (target <= 300 s x{2 if t > FULL['t'] else 1}), "
              f"peak RSS {results['ours_select_gcv']['rss_peak_mb'] / 1024:.2f} GB (target <= 12 GB x{2 if t > FULL['t'] else 1})")
        for hn in ("himalaya_kernelcv", "himalaya_ridgecv"):
            if hn in results and "time_s" in results[hn]:
                print(f"  {hn}: {results[hn]['time_s']:.1f} s = {results[hn]['time_s'] / sel_t:.1f}x our selection time")
    if args.json:
        Path(args.json).write_text(json.dumps({"shape": shape, "matmul_gflops": rate, "matmul_gflops_start_end": [rate_start, rate_end], "results": results}, indent=2))


if __name__ == "__main__":
    main()
