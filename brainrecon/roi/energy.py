"""Where in the visual field an ROI-optimal image puts its energy.

Early visual ROIs are retinotopic: an ROI-optimal image should change the picture where the
ROI's population receptive fields (pRFs) are. The *energy map* of an ROI image is its squared
difference from the *baseline image* (the decode of the decoders' intercepts, i.e. of the
all-zero synthetic pattern: what the decoders produce when no ROI is activated), summed over
colour channels. Measures:

``profile``
    Mean energy per pixel in eccentricity rings (default: NSD's ``prf-eccrois`` edges 0.5, 1,
    2, 4 degrees), i.e. an energy *density*, so that the large outer rings do not win by area.
``preferred_ecc``
    Density-weighted geometric mean of the ring centres (degrees).
``coverage_r``
    Pearson r between the energy map and the ROI's pRF coverage map (sum of the voxels'
    Gaussian pRFs), where pRFs are known (simulated data).
``effective_r`` and ``reference_ecc``
    Where a *reference* sensitivity map of the ROI is given (simulated data: the effective
    receptive fields of the simulator, :meth:`brainrecon.sim.encoding.EncodingModel.spatial_sensitivity`,
    i.e. the pRFs as seen through the model's pooled features), the Pearson r of the energy map
    with it and the map's own preferred eccentricity: where the ROI actually looks.

``contrast_profile`` and ``contrast_preferred_ecc``
    The same two measures of the *contrast* an ROI image adds over the baseline: the positive
    part of the difference of their local luminance contrast-energy maps
    (:func:`contrast_energy`). Early visual cortex, real and simulated, responds to local
    contrast whatever its sign and phase, while its response to the sign of local luminance
    is weak and, averaged over a region's voxels, largely cancels. The squared difference
    above sees both; this measure sees only what such voxels are driven by. On the simulated
    data it is the one that recovers the bands' order from their own preferred natural images
    (``benchmarks/roi_eccentricity_oracle.py``).

For the eccentricity bands, :func:`ordering` gives the Spearman correlation between band order
and preferred eccentricity and whether the order is strictly centre to periphery.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError, ShapeMismatchError

__all__ = [
    "DEFAULT_RING_EDGES",
    "NSD_STIMULUS_DEG",
    "energy_maps",
    "contrast_energy",
    "contrast_maps",
    "eccentricity_grid",
    "ring_profile",
    "preferred_eccentricity",
    "prf_coverage",
    "EnergyResult",
    "energy_analysis",
    "ordering",
    "neighbours_text",
]

#: Inner edges of NSD's eccentricity rings (degrees): 0-0.5, 0.5-1, 1-2, 2-4, > 4.
DEFAULT_RING_EDGES: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
#: NSD stimuli subtended 8.4 degrees of visual angle.
NSD_STIMULUS_DEG: float = 8.4


def energy_maps(images: np.ndarray, baseline: np.ndarray, size: int = 128) -> np.ndarray:
    """Squared difference from ``baseline``, summed over channels, at ``size`` x ``size``.

    Parameters
    ----------
    images : (n, 3, H, W) float in [0, 1]
    baseline : (1, 3, h, w) or (3, h, w) float in [0, 1]
    size : int
        Working resolution (both are resized to it, antialiased bicubic).

    Returns
    -------
    ndarray (n, size, size) float64
    """
    from brainrecon.images import resize

    images = np.asarray(images, dtype=np.float32)
    baseline = np.asarray(baseline, dtype=np.float32)
    if baseline.ndim == 3:
        baseline = baseline[None]
    if images.ndim != 4 or images.shape[1] != 3 or baseline.shape[:2] != (1, 3):
        raise ShapeMismatchError("energy images / baseline", "(n, 3, H, W) and (1, 3, h, w)", (images.shape, baseline.shape))
    a, b = resize(images, size), resize(baseline, size)
    return ((a.astype(np.float64) - b.astype(np.float64)) ** 2).sum(1)


def contrast_energy(images: np.ndarray, size: int = 128, sigma: float | None = None) -> np.ndarray:
    """Local luminance contrast energy of each image, ``(n, size, size)``.

    Luminance (Rec. 601 weights) at ``size`` x ``size`` is band-passed (minus its Gaussian blur of
    width ``2 sigma``), squared and pooled with a Gaussian of width ``sigma``: the energy of a
    local, phase-invariant contrast detector, as a complex-cell population pools it.

    Parameters
    ----------
    images : (n, 3, H, W) float in [0, 1]
    size : int
        Working resolution (antialiased bicubic resize).
    sigma : float, optional
        Pooling width in pixels at ``size``; default ``size / 64`` (0.13 degrees of NSD's 8.4),
        fine enough to resolve the innermost eccentricity ring (radius 0.5 degrees).
    """
    from scipy.ndimage import gaussian_filter

    from brainrecon.images import resize

    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ShapeMismatchError("contrast-energy images", "(n, 3, H, W)", images.shape)
    s = float(size) / 64.0 if sigma is None else float(sigma)
    if s <= 0:
        raise ConfigError(f"contrast-energy sigma must be > 0 pixels, got {s}")
    x = resize(images, size).astype(np.float64)
    lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    out = np.empty_like(lum)
    for i, im in enumerate(lum):
        band = im - gaussian_filter(im, 2.0 * s, mode="reflect")
        out[i] = gaussian_filter(band * band, s, mode="reflect")
    return out


def contrast_maps(images: np.ndarray, baseline: np.ndarray, size: int = 128) -> np.ndarray:
    """Contrast energy each image adds over ``baseline``: ``max(C(image) - C(baseline), 0)``, (n, size, size).

    Parameters
    ----------
    images : (n, 3, H, W) float in [0, 1]
    baseline : (1, 3, h, w) or (3, h, w) float in [0, 1]
    """
    baseline = np.asarray(baseline, dtype=np.float32)
    if baseline.ndim == 3:
        baseline = baseline[None]
    if baseline.shape[:2] != (1, 3):
        raise ShapeMismatchError("contrast baseline", "(1, 3, h, w)", baseline.shape)
    return np.clip(contrast_energy(images, size) - contrast_energy(baseline, size), 0.0, None)


def eccentricity_grid(size: int, stimulus_deg: float = NSD_STIMULUS_DEG) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x right, y up) and eccentricity in degrees, each (size, size)."""
    c = ((np.arange(size) + 0.5) / size - 0.5) * stimulus_deg
    x = np.broadcast_to(c[None, :], (size, size))
    y = np.broadcast_to(-c[:, None], (size, size))
    return x, y, np.hypot(x, y)


def ring_profile(maps: np.ndarray, stimulus_deg: float = NSD_STIMULUS_DEG,
                 edges: Sequence[float] = DEFAULT_RING_EDGES) -> np.ndarray:
    """Mean energy per pixel in each eccentricity ring, ``(n, n_rings)``; the last ring is open."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise ShapeMismatchError("energy maps", "(n, size, size)", maps.shape)
    e = list(edges) + [np.inf]
    _, _, ecc = eccentricity_grid(maps.shape[-1], stimulus_deg)
    cols = []
    for lo, hi in zip(e[:-1], e[1:]):
        ring = (ecc >= lo) & (ecc < hi)
        if not ring.any():
            raise ConfigError(f"eccentricity ring [{lo}, {hi}) holds no pixel at {maps.shape[-1]} px over {stimulus_deg} deg")
        cols.append(maps[:, ring].mean(1))
    return np.stack(cols, axis=1)


def ring_centres(edges: Sequence[float] = DEFAULT_RING_EDGES, stimulus_deg: float = NSD_STIMULUS_DEG) -> np.ndarray:
    """Representative eccentricity of each ring: geometric middle, half the edge for the first,
    the middle up to the image corner for the open last ring."""
    e = list(edges)
    outer = stimulus_deg / np.sqrt(2.0)
    out = []
    for k, lo in enumerate(e):
        hi = e[k + 1] if k + 1 < len(e) else outer
        out.append(hi / 2.0 if lo == 0 else float(np.sqrt(lo * max(hi, lo))))
    return np.asarray(out)


def preferred_eccentricity(profile: np.ndarray, edges: Sequence[float] = DEFAULT_RING_EDGES,
                           stimulus_deg: float = NSD_STIMULUS_DEG) -> np.ndarray:
    """Density-weighted geometric mean of the ring centres, degrees, ``(n,)``."""
    p = np.asarray(profile, dtype=np.float64)
    c = np.log(ring_centres(edges, stimulus_deg))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.exp((p * c).sum(1) / p.sum(1))


def prf_coverage(x: np.ndarray, y: np.ndarray, sigma: np.ndarray, size: int,
                 stimulus_deg: float = NSD_STIMULUS_DEG) -> np.ndarray:
    """Sum of isotropic Gaussian pRFs (degrees; x right, y up) sampled on the image grid, (size, size)."""
    gx, gy, _ = eccentricity_grid(size, stimulus_deg)
    out = np.zeros((size, size))
    for x0, y0, s in zip(np.asarray(x, float), np.asarray(y, float), np.asarray(sigma, float)):
        out += np.exp(-((gx - x0) ** 2 + (gy - y0) ** 2) / (2.0 * s * s)) / (2.0 * np.pi * s * s)
    return out


@dataclass
class EnergyResult:
    """Energy measures of one image set (one latent space), one entry per ROI."""

    rois: list[str]
    edges: list[float]
    stimulus_deg: float
    profile: np.ndarray            # (n_rois, n_rings) energy density
    preferred_ecc: np.ndarray      # (n_rois,)
    coverage_r: np.ndarray | None = None  # (n_rois,)
    nominal_ecc: dict[str, float] = field(default_factory=dict)
    effective_r: np.ndarray | None = None  # (n_rois,)
    reference_ecc: dict[str, float] = field(default_factory=dict)
    contrast_profile: np.ndarray | None = None  # (n_rois, n_rings) density of the contrast added
    contrast_preferred_ecc: np.ndarray | None = None  # (n_rois,)
    preferred_ecc_samples: np.ndarray | None = None  # (n_samples, n_rois): each draw's own, with several draws
    contrast_preferred_ecc_samples: np.ndarray | None = None  # (n_samples, n_rois)

    #: Optional array fields, written as lists or null.
    _OPTIONAL_ARRAYS = ("coverage_r", "effective_r", "contrast_profile", "contrast_preferred_ecc",
                        "preferred_ecc_samples", "contrast_preferred_ecc_samples")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rois": self.rois, "edges": self.edges, "stimulus_deg": self.stimulus_deg,
                               "profile": self.profile.tolist(), "preferred_ecc": self.preferred_ecc.tolist(),
                               "nominal_ecc": self.nominal_ecc, "reference_ecc": self.reference_ecc}
        for k in self._OPTIONAL_ARRAYS:
            v = getattr(self, k)
            out[k] = None if v is None else v.tolist()
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> EnergyResult:
        def arr(v: Any) -> np.ndarray:  # NaN is stored as null
            return np.array([np.nan if x is None else x for x in np.ravel(np.asarray(v, dtype=object))],
                            dtype=float).reshape(np.shape(v))

        optional = {k: None if d.get(k) is None else arr(d[k]) for k in cls._OPTIONAL_ARRAYS}  # some absent before session 11
        return cls(list(d["rois"]), [float(e) for e in d["edges"]], float(d["stimulus_deg"]), arr(d["profile"]),
                   arr(d["preferred_ecc"]), nominal_ecc=dict(d.get("nominal_ecc") or {}),
                   reference_ecc=dict(d.get("reference_ecc") or {}), **optional)


def energy_analysis(
    images: np.ndarray,
    baseline: np.ndarray,
    rois: Sequence[str],
    *,
    stimulus_deg: float = NSD_STIMULUS_DEG,
    edges: Sequence[float] = DEFAULT_RING_EDGES,
    prfs: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    nominal_ranges: Mapping[str, tuple[float, float]] | None = None,
    reference_maps: Mapping[str, np.ndarray] | None = None,
    size: int = 128,
) -> EnergyResult:
    """Energy profile, preferred eccentricity and pRF-coverage correlation of ROI images, and the
    profile and preferred eccentricity of the contrast they add (module docstring).

    Parameters
    ----------
    images : (n_rois, 3, H, W) or (n_samples, n_rois, 3, H, W) float in [0, 1]
        Row i is the ROI-optimal image of ``rois[i]``. With samples (a stochastic decoder) the
        energy maps are averaged over samples.
    baseline : (1, 3, h, w), or (n_samples, 1, 3, h, w) with samples
        The decode of the intercepts (see the module docstring), with the same seed as each sample.
    prfs : mapping ROI -> (x, y, sigma) of its voxels, optional
        Known pRFs (simulated data) for ``coverage_r``.
    nominal_ranges : mapping ROI -> (lo, hi) degrees, optional
        Nominal eccentricity of eccentricity bands (reported as the geometric middle).
    reference_maps : mapping ROI -> (size, size) sensitivity map, optional
        Where each ROI actually looks (``effective_r``, ``reference_ecc``).
    """
    images, baseline = np.asarray(images), np.asarray(baseline)
    if images.ndim == 5:  # (samples, n_rois, 3, H, W): the expected energy over the decoder's samples
        if baseline.ndim != 5 or len(baseline) != len(images) or images.shape[1] != len(rois):
            raise ShapeMismatchError("ROI image samples and baselines", f"(s, {len(rois)}, 3, H, W) and (s, 1, 3, h, w)",
                                     (images.shape, baseline.shape))
        # each sample against the baseline decoded with the same seed, so shared sampling noise cancels
        per_e = np.stack([energy_maps(im, b, size) for im, b in zip(images, baseline)])
        per_c = np.stack([contrast_maps(im, b, size) for im, b in zip(images, baseline)])
        maps, cmaps = per_e.mean(0), per_c.mean(0)
        # per draw too, so that an ordering can be given with its sampling uncertainty
        pref_s, cpref_s = (np.stack([preferred_eccentricity(ring_profile(m, stimulus_deg, edges), edges, stimulus_deg)
                                     for m in per]) for per in (per_e, per_c))
    else:
        if len(images) != len(rois):
            raise ShapeMismatchError("ROI images (one per ROI)", len(rois), len(images))
        maps = energy_maps(images, baseline, size)
        cmaps = contrast_maps(images, baseline, size)
        pref_s = cpref_s = None
    prof = ring_profile(maps, stimulus_deg, edges)
    pref = preferred_eccentricity(prof, edges, stimulus_deg)
    cprof = ring_profile(cmaps, stimulus_deg, edges)
    cpref = preferred_eccentricity(cprof, edges, stimulus_deg)  # NaN where an image adds no contrast anywhere
    cov = None
    if prfs:
        cov = np.full(len(rois), np.nan)
        for i, r in enumerate(rois):
            if r in prfs:
                c = prf_coverage(*prfs[r], size=size, stimulus_deg=stimulus_deg)
                m = maps[i]
                if m.std() > 0 and c.std() > 0:
                    cov[i] = float(np.corrcoef(m.ravel(), c.ravel())[0, 1])
    eff, ref_ecc = None, {}
    if reference_maps:
        eff = np.full(len(rois), np.nan)
        for i, r in enumerate(rois):
            if r not in reference_maps:
                continue
            m = np.asarray(reference_maps[r], dtype=np.float64)
            if m.shape != (size, size):
                raise ShapeMismatchError(f"reference map of {r!r}", (size, size), m.shape)
            ref_ecc[r] = float(preferred_eccentricity(ring_profile(m[None], stimulus_deg, edges), edges, stimulus_deg)[0])
            if maps[i].std() > 0 and m.std() > 0:
                eff[i] = float(np.corrcoef(maps[i].ravel(), m.ravel())[0, 1])
    nominal = {}
    for r, (lo, hi) in (nominal_ranges or {}).items():
        hi_eff = hi if np.isfinite(hi) else stimulus_deg / np.sqrt(2.0)
        nominal[r] = hi_eff / 2.0 if lo == 0 else float(np.sqrt(lo * hi_eff))
    return EnergyResult(list(rois), [float(e) for e in edges], float(stimulus_deg), prof, pref, cov, nominal, eff, ref_ecc,
                        cprof, cpref, pref_s, cpref_s)


def ordering(values: Sequence[float], samples: np.ndarray | None = None, *, n_boot: int = 2000,
             level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Spearman correlation of ``values`` with their position, and whether they strictly increase.

    Parameters
    ----------
    values : (n,) preferred eccentricities in band order
    samples : (n_samples, n) each draw's preferred eccentricities, optional
        With two or more draws, each pair of neighbours gets ``neighbours``: the ratio of the
        outer to the inner band's preferred eccentricity, as the geometric mean over draws of the
        per-draw ratio (both images of a draw share the decoding seed), with a percentile
        bootstrap CI over draws, the fraction of draws in which the outer is larger, and a verdict:
        ``ordered`` (CI above 1), ``reversed`` (CI below 1) or ``unresolved``.
    """
    from scipy.stats import spearmanr

    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return {"spearman": float("nan"), "strictly_increasing": False, "values": v.tolist()}
    rho = spearmanr(np.arange(v.size), v)[0]
    out: dict[str, Any] = {"spearman": float(rho), "strictly_increasing": bool(np.all(np.diff(v) > 0)),
                           "values": v.tolist()}
    if samples is None:
        return out
    S = np.asarray(samples, dtype=np.float64)
    if S.ndim != 2 or S.shape[1] != v.size:
        raise ShapeMismatchError("per-draw preferred eccentricities", f"(n_samples, {v.size})", S.shape)
    if len(S) < 2 or np.allclose(S, S[0], equal_nan=True):  # one draw, or a deterministic decoder: no spread
        return out
    rng = np.random.default_rng(seed)
    alpha = (1.0 - level) / 2.0
    pairs = []
    with np.errstate(invalid="ignore", divide="ignore"):
        logs = np.log(S)
    for j in range(v.size - 1):
        d = logs[:, j + 1] - logs[:, j]
        d = d[np.isfinite(d)]
        if len(d) < 2:
            pairs.append({"ratio": float("nan"), "ci": [float("nan"), float("nan")], "fraction_increasing": float("nan"),
                          "verdict": "unresolved", "n": int(len(d))})
            continue
        boot = d[rng.integers(0, len(d), size=(int(n_boot), len(d)))].mean(1)
        lo, hi = np.exp(np.quantile(boot, [alpha, 1.0 - alpha]))
        verdict = "ordered" if lo > 1.0 else "reversed" if hi < 1.0 else "unresolved"
        pairs.append({"ratio": float(np.exp(d.mean())), "ci": [float(lo), float(hi)],
                      "fraction_increasing": float((d > 0).mean()), "verdict": verdict, "n": int(len(d))})
    out["neighbours"] = pairs
    out["level"] = float(level)
    return out


def neighbours_text(order: Mapping[str, Any]) -> str:
    """``ecc1/ecc0pt5 1.21 [1.05, 1.40] ordered; ...``: the per-draw verdicts of an :func:`ordering`.

    ``order`` needs ``rois`` (band names) and ``neighbours``.
    """
    parts = []
    for a, b, p in zip(order["rois"][:-1], order["rois"][1:], order["neighbours"]):
        r, ci = p["ratio"], p["ci"]
        txt = "n/a" if r is None or not np.isfinite(r) else f"{r:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"
        parts.append(f"{b}/{a} {txt} {p['verdict']}")
    return "; ".join(parts)
