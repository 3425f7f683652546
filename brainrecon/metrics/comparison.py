"""Paired comparison of two methods' reconstructions of the same test images.

Claims such as "the chained reconstructions beat the first stage on CLIP identification" or
"IC-GAN beats BigBiGAN" are claims about a *difference* between two methods scored on the same
images. Two overlapping confidence intervals of the means say little about it: the images that
are hard for one method are mostly hard for the other, so the per-image scores are correlated
and the paired difference is far more precise than either mean. This module scores that
difference directly:

* ``diff``: mean over images of ``a_i - b_i`` (per-image values of one metric);
* ``ci``: percentile bootstrap over images (the same resampled images for both methods);
* ``p_value``: two-sided sign-flip permutation test (under "no difference" each image's pair of
  scores is exchangeable, so the sign of each ``a_i - b_i`` is flipped at random);
* ``better``: which method the difference favours, in the metric's own direction
  (``higher_is_better``), or ``None`` when the CI contains 0.

Two-way identification scores of different images share distractors, so images are not fully
independent; resampling images is the usual approximation (the same one the suite's own CIs use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError, ShapeMismatchError
from brainrecon.metrics.identification import bootstrap_ci, permutation_pvalue

__all__ = ["PairedDifference", "paired_difference", "compare_methods"]


@dataclass(frozen=True)
class PairedDifference:
    """Paired difference ``a - b`` of one metric between two methods (see the module docstring)."""

    metric: str
    a: str
    b: str
    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci: tuple[float, float]
    p_value: float
    higher_is_better: bool
    better: str | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = list(self.ci)
        return d


def paired_difference(
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_boot: int = 1000,
    n_perm: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
) -> tuple[float, tuple[float, float], float]:
    """Mean paired difference of per-image scores, its bootstrap CI and sign-flip p-value.

    Parameters
    ----------
    a, b : (n,) float
        Per-image scores of two methods on the same images, in the same order. Images where
        either is not finite are dropped.
    n_boot, n_perm : int
        Bootstrap resamples and sign-flip permutations (>= 1).
    ci_level : float
        In (0, 1).
    seed : int

    Returns
    -------
    (diff, (lo, hi), p)
        ``p`` is two-sided, with the observed statistic counted among the permutations
        (never 0).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ShapeMismatchError("paired per-image scores", a.shape, b.shape, "one score per image for both methods")
    if n_boot < 1 or n_perm < 1:
        raise ConfigError(f"paired_difference: n_boot and n_perm must be >= 1, got {n_boot}, {n_perm}")
    if not 0.0 < ci_level < 1.0:
        raise ConfigError(f"paired_difference: ci_level must be in (0, 1), got {ci_level}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    if d.size < 2:
        raise ShapeMismatchError("paired per-image scores", ">= 2 images with finite scores for both", int(d.size))
    diff = float(d.mean())
    lo, hi = bootstrap_ci(d, n_boot=n_boot, level=ci_level, seed=seed)
    signs = np.random.default_rng(seed + 1).choice(np.array([-1.0, 1.0]), size=(n_perm, d.size))
    # two-sided: |flipped mean| against |observed|, with a tolerance so that rounding in the sums does not decide ties
    p = permutation_pvalue(abs(diff) - 1e-12, np.abs((signs * d).mean(1)))
    return diff, (lo, hi), p


def compare_methods(
    results: Mapping[str, Any],
    pairs: Sequence[tuple[str, str]],
    *,
    n_boot: int = 1000,
    n_perm: int = 1000,
    ci_level: float = 0.95,
    seed: int = 0,
) -> list[PairedDifference]:
    """Paired differences for every metric the two methods of each pair both have per image.

    Parameters
    ----------
    results : mapping method -> SuiteResult
        As returned by :func:`brainrecon.metrics.suite.evaluate_methods` (same images, same order).
    pairs : sequence of (a, b)
        Method names; each difference is ``a - b``.

    Returns
    -------
    list of PairedDifference
        In the order of ``pairs``, then of ``results[a].metrics``.
    """
    out: list[PairedDifference] = []
    for a, b in pairs:
        missing = [m for m in (a, b) if m not in results]
        if missing:
            raise ConfigError(f"compare_methods: unknown method(s) {missing}; expected names from {sorted(results)}")
        ra, rb = results[a], results[b]
        if ra.image_ids and rb.image_ids and list(ra.image_ids) != list(rb.image_ids):
            raise ShapeMismatchError(f"images of {a!r} and {b!r}", "the same image ids in the same order",
                                     "different ids", "paired comparisons need the same test images")
        for name, va in ra.metrics.items():
            vb = rb.metrics.get(name)
            if vb is None or not (va.available and vb.available) or va.per_image is None or vb.per_image is None:
                continue
            x, y = np.asarray(va.per_image, dtype=np.float64), np.asarray(vb.per_image, dtype=np.float64)
            if x.shape != y.shape or np.count_nonzero(np.isfinite(x) & np.isfinite(y)) < 2:
                continue
            diff, ci, p = paired_difference(x, y, n_boot=n_boot, n_perm=n_perm, ci_level=ci_level, seed=seed)
            better = None
            if ci[0] > 0 or ci[1] < 0:
                better = a if (diff > 0) == bool(va.higher_is_better) else b
            ok = np.isfinite(x) & np.isfinite(y)
            out.append(PairedDifference(name, a, b, int(ok.sum()), float(x[ok].mean()), float(y[ok].mean()), diff,
                                        ci, p, bool(va.higher_is_better), better))
    return out
