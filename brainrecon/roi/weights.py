"""ROI weight analysis: which voxels the decoders lean on, per target (IC-GAN's "Figure 5a").

For each decoder (voxels -> one target), the weight of voxel v is the norm (L1 by default, as
IC-GAN) of its row of ``W`` across the target's output dimensions. The rows are computed in
chunks of voxels through :meth:`RidgeDecoder.project` (``I_chunk W`` in the dual form), so the
whole ``voxels x targets`` matrix is never held. Norms are turned into percentile ranks over
all voxels (0-100) and averaged within each ROI. The *semantic index* of an ROI is the
percentile for a semantic target minus that for a low-level one (IC-GAN: instance minus dense;
Brain-Diffuser's spaces: CLIP-text minus VDVAE): positive where the semantic decoder relies on
the ROI more than the low-level decoder does.

Across subjects, :func:`across_subjects` gives the mean, the standard error of the mean and
Welch t-tests between ROI pairs (IC-GAN used p < 0.008 with five subjects).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata

from brainrecon.errors import ConfigError, ShapeMismatchError

__all__ = [
    "voxel_weight_norms",
    "percentile_ranks",
    "roi_percentiles",
    "default_semantic_pair",
    "WeightAnalysis",
    "weight_analysis",
    "across_subjects",
]


def voxel_weight_norms(decoder, *, ord: int | float = 1, chunk: int = 256, progress: bool = False) -> np.ndarray:
    """Norm of each voxel's weights across the decoder's outputs, ``(n_voxels,)`` float64.

    Parameters
    ----------
    decoder : RidgeDecoder
    ord : {1, 2, inf}
        Vector norm over the outputs (IC-GAN: 1).
    chunk : int
        Voxels per :meth:`RidgeDecoder.project` call (memory ~ ``chunk x n_targets``).
    """
    if ord not in (1, 2, np.inf):
        raise ConfigError(f"weight norm ord: expected 1, 2 or inf, got {ord!r}")
    p = int(decoder.n_features_in_)
    out = np.empty(p)
    starts = range(0, p, max(int(chunk), 1))
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="voxel weight norms", unit="chunk")
    for a in starts:
        b = min(a + chunk, p)
        eye = np.zeros((b - a, p), dtype=np.float32)
        eye[np.arange(b - a), np.arange(a, b)] = 1.0
        out[a:b] = np.linalg.norm(np.asarray(decoder.project(eye), dtype=np.float64), ord=ord, axis=1)
    return out


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """Percentile rank of every value among all of them, in (0, 100] (ties share their mean rank)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ShapeMismatchError("values to rank", "a non-empty 1-D array", v.shape)
    return 100.0 * rankdata(v) / v.size


def roi_percentiles(percentiles: np.ndarray, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mean percentile within each ROI."""
    p = np.asarray(percentiles)
    out = {}
    for name, m in masks.items():
        m = np.asarray(m, dtype=bool)
        if m.shape != p.shape:
            raise ShapeMismatchError(f"ROI {name!r} mask", p.shape, m.shape)
        out[name] = float(p[m].mean())
    return out


def default_semantic_pair(keys: Sequence[str]) -> tuple[str, str] | None:
    """(semantic, low-level) target keys for the semantic index, or None if no pair applies."""
    for sem, low in (("icgan.instance", "icgan.dense"), ("versatile.clip_text", "vdvae.z"),
                     ("versatile.clip_vision", "vdvae.z")):
        if sem in keys and low in keys:
            return sem, low
    return None


@dataclass
class WeightAnalysis:
    """Mean voxel-weight percentile per target and ROI, and the semantic index per ROI."""

    rois: list[str]
    percentiles: dict[str, dict[str, float]]   # target -> ROI -> mean percentile
    semantic_pair: tuple[str, str] | None
    semantic_index: dict[str, float] | None
    ord: float = 1

    def to_json(self) -> dict[str, Any]:
        return {"rois": self.rois, "percentiles": self.percentiles, "ord": self.ord,
                "semantic_pair": None if self.semantic_pair is None else list(self.semantic_pair),
                "semantic_index": self.semantic_index}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> WeightAnalysis:
        pair = d.get("semantic_pair")
        return cls(list(d["rois"]), {k: dict(v) for k, v in d["percentiles"].items()},
                   None if pair is None else (pair[0], pair[1]), d.get("semantic_index"), d.get("ord", 1))


def weight_analysis(
    decoders: Mapping[str, Any],
    masks: Mapping[str, np.ndarray],
    *,
    semantic_pair: tuple[str, str] | None | str = "auto",
    ord: int | float = 1,
    progress: bool = False,
) -> WeightAnalysis:
    """Voxel-weight percentiles of every decoder averaged per ROI, and the semantic index.

    Parameters
    ----------
    decoders : mapping of target key (``<space>.<target>``) -> RidgeDecoder
    masks : mapping of ROI -> (n_voxels,) bool
    semantic_pair : (semantic key, low-level key), ``"auto"`` or None
        ``auto``: :func:`default_semantic_pair`.
    """
    if not decoders:
        raise ConfigError("weight analysis: expected at least one decoder")
    pct = {}
    for key, dec in decoders.items():
        pct[key] = roi_percentiles(percentile_ranks(voxel_weight_norms(dec, ord=ord, progress=progress)), masks)
    pair = default_semantic_pair(list(decoders)) if semantic_pair == "auto" else semantic_pair
    index = None
    if pair is not None:
        missing = [k for k in pair if k not in pct]
        if missing:
            raise ConfigError(f"roi.weights.semantic_pair: unknown target(s) {missing}; have {sorted(pct)}")
        index = {r: pct[pair[0]][r] - pct[pair[1]][r] for r in masks}
    return WeightAnalysis(list(masks), pct, None if pair is None else tuple(pair), index, float(ord))


def across_subjects(values: Sequence[Mapping[str, float]], alpha: float = 0.008) -> dict[str, Any]:
    """Mean, SEM and pairwise Welch t-tests of per-ROI values over subjects.

    Parameters
    ----------
    values : sequence (one per subject) of mapping ROI -> value (e.g. the semantic index)
    alpha : float
        Significance threshold reported with the tests (IC-GAN: 0.008).

    Returns
    -------
    dict with ``rois``, ``n_subjects``, ``mean``, ``sem`` (NaN with one subject) and ``tests``:
    ``{"A vs B": {"t": ..., "p": ..., "significant": bool}}`` (empty with fewer than two subjects).
    """
    from scipy.stats import ttest_ind

    if not values:
        raise ConfigError("across_subjects: expected values of at least one subject")
    rois = list(values[0])
    for k, v in enumerate(values):
        if list(v) != rois:
            raise ShapeMismatchError(f"ROIs of subject {k}", rois, list(v))
    arr = np.array([[float(v[r]) for r in rois] for v in values])
    n = len(values)
    mean = arr.mean(0)
    sem = arr.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full(len(rois), np.nan)
    tests = {}
    if n > 1:
        for i in range(len(rois)):
            for j in range(i + 1, len(rois)):
                t, p = ttest_ind(arr[:, i], arr[:, j], equal_var=False)
                tests[f"{rois[i]} vs {rois[j]}"] = {"t": float(t), "p": float(p), "significant": bool(p < alpha)}
    return {"rois": rois, "n_subjects": n, "mean": dict(zip(rois, mean.tolist())),
            "sem": dict(zip(rois, sem.tolist())), "alpha": alpha, "tests": tests}
