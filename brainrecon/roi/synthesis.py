"""ROI-optimal latents: synthetic fMRI patterns through the fitted ridge decoders.

For a synthetic pattern ``q`` (:func:`brainrecon.roi.masks.synthetic_patterns`) and a decoder
with weights ``W`` (voxels x targets) and intercept ``b``, the raw ROI latent is ``q W``. It is
computed in the dual form by :meth:`RidgeDecoder.project` (``(q Xc^T) (K + alpha I)^-1 Yc``),
so the ``voxels x targets`` weight matrix is never formed. The reference methods then
normalise it, per target, with the schemes of :class:`RoiScaling`:

``paper_vdvae`` (Brain-Diffuser, VDVAE)
    ``v = unit(q W) * scale + b``; then, per latent dimension, standardise **across the ROI
    vectors** and map to the training latents' mean and std; finally ``unit(v) * norm``.
    Published: ``scale`` 50, ``norm`` 80 (91,168-d latents). The standardisation across ROIs
    is transductive (each ROI's latent depends on which other ROIs are synthesised with it) and
    needs at least two ROIs; it also removes ``scale`` and ``b`` (kept for faithfulness).
``unit`` (Brain-Diffuser, CLIP-text and CLIP-vision)
    ``v = unit(q W) * scale + b``, the norm taken over the whole token tensor.
    Published: ``scale`` 9 for CLIP-text (77 x 768), 15 for CLIP-vision (257 x 768).
``icgan_instance`` (IC-GAN, instance features)
    ``v = unit(unit(q W) + b)`` (instance features are unit vectors).
``affine`` (IC-GAN, noise and dense vectors)
    ``v = q W + b``, the decoder's plain prediction for the pattern.
``train_norm`` (no published scheme: pixels, BigBiGAN, other spaces)
    ``v = b + unit(q W) * scale * m`` with ``m`` the median norm of the centred training
    latents: at ``scale`` 1 the ROI latent is as far from the mean latent as a typical
    training latent.

Published constants were set for the published latent shapes. :func:`default_scaling` keeps
them for those shapes and transfers them to other shapes of the same space by the rule they
imply: the CLIP scales are per token (9 ~ sqrt(77), 15 ~ sqrt(257): unit norm per token), so
they scale with ``sqrt(n_tokens)``; the VDVAE norm is per dimension (80 / sqrt(91168)), so it
scales with ``sqrt(n_dims)``. For the default experiment's small models this gives CLIP-text
``9 * sqrt(24/77) = 5.0``, CLIP-vision ``15 * sqrt(65/257) = 7.5`` and VDVAE norm
``80 * sqrt(8072/91168) = 23.8``, each close to the median norm of that space's training
latents (4.6, 7.3, 23.3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from brainrecon.errors import ConfigError, DataFormatError, ShapeMismatchError

__all__ = [
    "RoiScaling",
    "SCALING_METHODS",
    "PUBLISHED_SCALING",
    "PUBLISHED_SHAPES",
    "TargetStats",
    "default_scaling",
    "resolve_scalings",
    "roi_latents",
    "decoder_intercept",
]

SCALING_METHODS: tuple[str, ...] = ("paper_vdvae", "unit", "icgan_instance", "affine", "train_norm")


@dataclass(frozen=True)
class RoiScaling:
    """How a raw ROI projection ``q W`` becomes a latent (see the module docstring).

    Parameters
    ----------
    method : str
        One of :data:`SCALING_METHODS`.
    scale : float
        Multiplier of the unit-norm projection (``paper_vdvae``, ``unit``, ``train_norm``).
    norm : float, optional
        Final norm (``paper_vdvae`` only).
    source : str
        Where the constants come from (``published``, ``transferred ...``, ``generic``, ``user``);
        reported, never used in computations.
    """

    method: str
    scale: float = 1.0
    norm: float | None = None
    source: str = "user"

    def __post_init__(self) -> None:
        if self.method not in SCALING_METHODS:
            raise ConfigError(f"roi scaling method: expected one of {list(SCALING_METHODS)}, got {self.method!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"roi scaling scale: expected a finite value > 0, got {self.scale!r}")
        if self.method == "paper_vdvae" and (self.norm is None or not self.norm > 0):
            raise ConfigError(f"roi scaling norm: method 'paper_vdvae' needs a final norm > 0, got {self.norm!r}")

    def to_dict(self) -> dict:
        return asdict(self)


#: The reference constants (Brain-Diffuser ``scripts/*roi*``; IC-GAN ``explore_roi_semantics.py``).
PUBLISHED_SCALING: dict[str, RoiScaling] = {
    "vdvae.z": RoiScaling("paper_vdvae", scale=50.0, norm=80.0, source="published (Brain-Diffuser)"),
    "versatile.clip_text": RoiScaling("unit", scale=9.0, source="published (Brain-Diffuser)"),
    "versatile.clip_vision": RoiScaling("unit", scale=15.0, source="published (Brain-Diffuser)"),
    "icgan.instance": RoiScaling("icgan_instance", source="published (IC-GAN)"),
    "icgan.noise": RoiScaling("affine", source="published (IC-GAN)"),
    "icgan.dense": RoiScaling("affine", source="published (IC-GAN)"),
}
#: Latent shapes the published constants were set for.
PUBLISHED_SHAPES: dict[str, tuple[int, ...]] = {
    "vdvae.z": (91168,),
    "versatile.clip_text": (77, 768),
    "versatile.clip_vision": (257, 768),
}


def default_scaling(key: str, shape: tuple[int, ...]) -> RoiScaling:
    """The published scaling of target ``key`` (``<space>.<target>``), transferred to ``shape``.

    See the module docstring for the transfer rules; targets without a published scheme get
    ``train_norm`` with scale 1.
    """
    pub = PUBLISHED_SCALING.get(key)
    if pub is None:
        return RoiScaling("train_norm", 1.0, source="generic (no published scheme)")
    ref = PUBLISHED_SHAPES.get(key)
    shape = tuple(int(s) for s in shape)
    if ref is None or ref == shape:
        return pub
    if pub.method == "unit":  # per-token constant: scale ~ sqrt(tokens)
        factor = math.sqrt(shape[0] / ref[0])
        return RoiScaling("unit", pub.scale * factor, source=f"transferred from published {pub.scale:g} at {ref[0]} tokens "
                                                            f"(x sqrt({shape[0]}/{ref[0]}))")
    if pub.method == "paper_vdvae":  # per-dimension norm: norm ~ sqrt(dims)
        size, ref_size = int(np.prod(shape)), int(np.prod(ref))
        factor = math.sqrt(size / ref_size)
        return RoiScaling("paper_vdvae", pub.scale, pub.norm * factor,
                          source=f"transferred from published norm {pub.norm:g} at {ref_size} dims (x sqrt({size}/{ref_size}))")
    return pub


def resolve_scalings(
    shapes: Mapping[str, tuple[int, ...]], overrides: Mapping[str, Mapping] | None = None
) -> dict[str, RoiScaling]:
    """Scaling per target key: :func:`default_scaling`, updated field by field with ``overrides``.

    ``overrides`` is keyed like the targets, flat (``{"vdvae.z": {"norm": 80}}``) or nested
    as Hydra writes it (``{"vdvae": {"z": {"norm": 80}}}``).
    """
    flat: dict[str, dict] = {}
    for k, v in (overrides or {}).items():
        if not isinstance(v, Mapping):
            raise ConfigError(f"roi.scaling.{k}: expected a mapping of method/scale/norm, got {v!r}")
        if "." in k or set(v) <= {"method", "scale", "norm"}:
            flat[k] = dict(v)
        else:
            for t, vv in v.items():
                if not isinstance(vv, Mapping):
                    raise ConfigError(f"roi.scaling.{k}.{t}: expected a mapping of method/scale/norm, got {vv!r}")
                flat[f"{k}.{t}"] = dict(vv)
    unknown = sorted(set(flat) - set(shapes))
    if unknown:
        raise ConfigError(f"roi.scaling: unknown target(s) {unknown}; expected keys from {sorted(shapes)}")
    out = {}
    for key, shape in shapes.items():
        base = default_scaling(key, shape)
        if key in flat:
            bad = sorted(set(flat[key]) - {"method", "scale", "norm"})
            if bad:
                raise ConfigError(f"roi.scaling.{key}: unknown field(s) {bad}; expected method, scale, norm")
            method = flat[key].get("method", base.method)
            if method != base.method:  # another scheme: its own defaults, not the replaced scheme's constants
                start = default_scaling(key, shape)
                same = start.method == method
                fields = {"method": method, "scale": start.scale if same else 1.0, "norm": start.norm if same else None}
            else:
                fields = {"method": base.method, "scale": base.scale, "norm": base.norm}
            fields.update(flat[key])
            base = RoiScaling(fields["method"], float(fields["scale"]),
                              None if fields["norm"] is None else float(fields["norm"]), source="user")
        out[key] = base
    return out


@dataclass
class TargetStats:
    """Statistics of a target's training latents that the scaling schemes need.

    Attributes
    ----------
    mean, std : (t,) per-dimension mean and std (ddof 0) of the training latents
    median_centred_norm : median over training samples of ``||y_i - mean||``
    median_norm : median of ``||y_i||``
    """

    mean: np.ndarray
    std: np.ndarray
    median_centred_norm: float
    median_norm: float

    @classmethod
    def from_latents(cls, Y: np.ndarray, chunk: int = 4096) -> TargetStats:
        """Statistics of training latents ``Y`` (n, t), streamed over columns (Y may be memory-mapped)."""
        Y2 = Y.reshape(len(Y), -1)  # a view: memory-mapped latents stay on disk
        n, t = Y2.shape
        mean = np.empty(t)
        std = np.empty(t)
        sq = np.zeros(n)
        sq_c = np.zeros(n)
        for a in range(0, t, chunk):
            block = np.asarray(Y2[:, a : a + chunk], dtype=np.float64)
            m = block.mean(0)
            mean[a : a + chunk], std[a : a + chunk] = m, block.std(0)
            sq += (block**2).sum(1)
            sq_c += ((block - m) ** 2).sum(1)
        return cls(mean, std, float(np.median(np.sqrt(sq_c))), float(np.median(np.sqrt(sq))))


def decoder_intercept(decoder) -> np.ndarray:
    """The decoder's prediction for the all-zero (training-mean) pattern: ``y_mean - x_mean W``, shape (t,)."""
    zeros = np.zeros((1, int(decoder.n_features_in_)), dtype=np.float32)
    return np.asarray(decoder.predict(zeros)[0], dtype=np.float64)


def _unit_rows(a: np.ndarray, what: str, names: list[str] | None = None) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        bad = np.flatnonzero(~(norms[:, 0] > 0))
        who = [names[i] for i in bad] if names else bad.tolist()
        raise DataFormatError(f"{what}: zero or non-finite norm for ROI(s) {who}; the ROI pattern projects to nothing")
    return a / norms


def roi_latents(
    decoder,
    patterns: np.ndarray,
    scaling: RoiScaling,
    *,
    stats: TargetStats | None = None,
    intercept: np.ndarray | None = None,
    roi_names: list[str] | None = None,
) -> np.ndarray:
    """ROI-optimal latents of one target, ``(n_rois, t)`` float32.

    Parameters
    ----------
    decoder : RidgeDecoder
        The fitted decoder of the target (voxels -> flattened latents).
    patterns : (n_rois, n_voxels)
        Synthetic fMRI patterns (:func:`~brainrecon.roi.masks.synthetic_patterns`).
    scaling : RoiScaling
    stats : TargetStats, optional
        Training-latent statistics; required by ``paper_vdvae`` and ``train_norm``.
    intercept : (t,), optional
        The decoder's intercept (computed with :func:`decoder_intercept` when omitted).
    roi_names : list of str, optional
        Named in errors.
    """
    Q = np.asarray(patterns, dtype=np.float32)
    if Q.ndim != 2:
        raise ShapeMismatchError("ROI patterns", "(n_rois, n_voxels)", Q.shape)
    raw = np.asarray(decoder.project(Q), dtype=np.float64)  # q W through the dual form
    b = decoder_intercept(decoder) if intercept is None else np.asarray(intercept, dtype=np.float64)
    if b.shape != (raw.shape[1],):
        raise ShapeMismatchError("decoder intercept", (raw.shape[1],), b.shape)
    method = scaling.method
    if method in ("paper_vdvae", "train_norm") and stats is None:
        raise ConfigError(f"roi scaling {method!r}: needs the training latents' statistics (stats=TargetStats...)")
    if method == "affine":
        out = raw + b
    elif method == "unit":
        out = _unit_rows(raw, "ROI projection", roi_names) * scaling.scale + b
    elif method == "icgan_instance":
        out = _unit_rows(_unit_rows(raw, "ROI projection", roi_names) + b, "ROI instance vector", roi_names)
    elif method == "train_norm":
        out = b + _unit_rows(raw, "ROI projection", roi_names) * (scaling.scale * stats.median_centred_norm)
    else:  # paper_vdvae
        if raw.shape[0] < 2:
            raise ConfigError(
                "roi scaling 'paper_vdvae': standardises across the ROI vectors and needs at least 2 ROIs, "
                f"got {raw.shape[0]} (add ROIs, or set roi.scaling.<space>.<target>.method=unit)"
            )
        v = _unit_rows(raw, "ROI projection", roi_names) * scaling.scale + b
        mu, sd = v.mean(0), v.std(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            standard = np.where(sd > 0, (v - mu) / sd, 0.0)
        v = standard * stats.std + stats.mean
        out = _unit_rows(v, "rescaled ROI latent", roi_names) * scaling.norm
    return out.astype(np.float32)
