"""Paired method comparisons: brainrecon.metrics.comparison and the evaluate stage's pairs."""

from __future__ import annotations

import numpy as np
import pytest

from brainrecon.errors import ConfigError, ShapeMismatchError
from brainrecon.metrics.comparison import compare_methods, paired_difference
from brainrecon.metrics.suite import MetricValue, SuiteResult
from brainrecon.stages.evaluate import comparison_pairs


def _result(values: dict[str, np.ndarray], higher: bool = True) -> SuiteResult:
    metrics = {k: MetricValue(k, float(np.mean(v)), None, None, np.asarray(v, float), higher) for k, v in values.items()}
    n = len(next(iter(values.values())))
    return SuiteResult("native", n, metrics, image_ids=[str(i) for i in range(n)])


def test_paired_difference_detects_a_small_consistent_gain():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.9, 100)  # large spread across images, shared by both methods
    diff, (lo, hi), p = paired_difference(base + 0.02 + rng.normal(0, 0.01, 100), base, seed=1)
    assert diff == pytest.approx(0.02, abs=0.005)
    assert 0 < lo < diff < hi
    assert p < 0.01


def test_paired_difference_of_exchangeable_scores_is_not_significant():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.6, 0.1, 80), rng.normal(0.6, 0.1, 80)
    diff, (lo, hi), p = paired_difference(a, b, seed=0)
    assert lo < 0 < hi and p > 0.05
    d2, _, p2 = paired_difference(b, a, seed=0)
    assert d2 == pytest.approx(-diff)


def test_paired_difference_bad_input():
    with pytest.raises(ShapeMismatchError):
        paired_difference(np.zeros(5), np.zeros(6))
    with pytest.raises(ConfigError):
        paired_difference(np.zeros(5), np.zeros(5), n_boot=0)
    with pytest.raises(ShapeMismatchError):
        paired_difference(np.array([1.0, np.nan]), np.array([0.0, 1.0]))


def test_compare_methods_direction_and_verdict():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, 60)
    res = {"a": _result({"dist": base - 0.1}), "b": _result({"dist": base})}
    for higher, winner in ((True, "b"), (False, "a")):
        for r in res.values():
            r.metrics["dist"].higher_is_better = higher
        (d,) = compare_methods(res, [("a", "b")], n_boot=200, n_perm=200)
        assert d.diff == pytest.approx(-0.1) and d.better == winner
    with pytest.raises(ConfigError, match="unknown method"):
        compare_methods(res, [("a", "c")])


def test_comparison_pairs_auto_and_explicit():
    recons = {"pixels": 0, "vdvae": 0, "versatile": 0, "vdvae (ceiling)": 0}
    assert comparison_pairs("auto", {"versatile": "vdvae"}, recons) == [("versatile", "vdvae"), ("pixels", "versatile")]
    assert comparison_pairs("auto", {}, {"icgan": 0, "bigbigan": 0}) == [("bigbigan", "icgan")]
    assert comparison_pairs("none", {}, recons) == []
    assert comparison_pairs([["vdvae", "vdvae (ceiling)"]], {}, recons) == [("vdvae", "vdvae (ceiling)")]
    with pytest.raises(ConfigError, match="unknown method"):
        comparison_pairs([["vdvae", "nope"]], {}, recons)
    with pytest.raises(ConfigError, match="expected 'auto'"):
        comparison_pairs("sometimes", {}, recons)
