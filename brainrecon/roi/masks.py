"""Which voxels make up an ROI, and the synthetic fMRI pattern built from it.

ROI catalogue
-------------
An ROI is a :class:`RoiSpec`: a label file of the data artifact (``roi_<file>.npy``), the
label values that belong to it (``None``: any label > 0) and files whose voxels are removed
from it. Named sets reproduce the reference analyses:

``brain_diffuser`` (NSD, 13 ROIs, Brain-Diffuser's order)
    ``faces``, ``words``, ``places``, ``bodies`` (floc files, any label); ``V1``..``V4`` from
    ``prf-visualrois`` labels (1, 2), (3, 4), (5, 6), (7) — the reference applied these labels
    to ``floc-faces`` by mistake (bug B1 of the methods guide); here they are read from
    ``prf-visualrois`` as intended; eccentricity bands ``ecc0pt5``, ``ecc1``, ``ecc2``,
    ``ecc4``, ``ecc4plus`` from ``prf-eccrois`` labels 1..5 (0.5, 1, 2, 4 and > 4 degrees).
``floc``, ``visual``, ``eccentricity``
    The three groups of that set.
``icgan`` (GOD, 7 ROIs)
    ``V1``..``V4``, ``LOC`` minus the voxels it shares with ``FFA``, ``FFA`` minus those it
    shares with ``LOC``, and ``PPA``, from the GOD voxel flags (``roi_V1.npy`` ...), as
    IC-GAN's ``explore_roi_semantics.py``.

Besides names, :func:`resolve_rois` accepts NIfTI masks (``.nii``/``.nii.gz``; voxels > 0),
mapped onto the data's voxel columns through ``voxel_ijk``.

Synthetic pattern
-----------------
:func:`synthetic_patterns` builds the reference's "ROI-optimal" fMRI pattern: ``value`` (1)
for voxels inside the ROI and 0 elsewhere, in the z-scored voxel space the decoders were fitted
in, restricted to ``nsdgeneral`` (all voxels of the betas). 0 is the training mean of every
voxel, so the pattern reads "this ROI one standard deviation above its mean, everything else at
its mean".

With ``contrast`` > 0 the pattern becomes a localiser-style contrast within the ROI's group
(faces vs. words, places, bodies; V1 vs. V2..V4; one eccentricity band vs. the others): the
other ROIs of the group are set *below* their mean, each peer ROI with the same total weight,
so that the negative mass is ``contrast`` times the positive one (``contrast=1``: the pattern
sums to zero over the group, as a GLM contrast ``[1, -1/3, -1/3, -1/3]`` on ROI means). It
asks the decoders for what the ROI prefers *over its peers* rather than for what it shares
with them; the references use ``contrast=0``.

:func:`conditional_patterns` builds data-driven patterns from the training betas instead: the
brain state expected when the ROI is ``value`` above its mean (every voxel's regression on the
ROI's mean response), optionally with its peers held at their means (the joint regression on
the group's ROI responses, the ``partial`` pattern of the roi stage).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brainrecon.errors import ConfigError, DataFormatError, ShapeMismatchError

__all__ = [
    "RoiSpec",
    "ROI_GROUPS",
    "ROI_CATALOGUE",
    "ROI_SETS",
    "ECC_RINGS",
    "is_nifti",
    "nifti_mask",
    "resolve_rois",
    "synthetic_patterns",
    "conditional_patterns",
    "roi_slug",
    "nifti_name",
]


#: Comparison groups of ROIs (:attr:`RoiSpec.group`).
ROI_GROUPS: tuple[str, ...] = ("category", "visual", "eccentricity", "custom")


@dataclass(frozen=True)
class RoiSpec:
    """Definition of one ROI over the voxel columns of a data artifact.

    Parameters
    ----------
    name : str
        Display name (``faces``, ``V1``, ``ecc2``, ...).
    file : str
        Label file of the data artifact, without ``roi_`` and ``.npy`` (``floc-faces``,
        ``prf-visualrois``; GOD: ``V1``, ``LOC`` ...).
    labels : tuple of int, optional
        Label values inside the ROI; ``None`` selects every label > 0 (negative labels, NSD's
        "outside the brain", are never selected).
    exclude_files : tuple of str
        Label files whose voxels (label > 0) are removed (IC-GAN: LOC minus FFA).
    group : str
        Comparison group in the closed-loop table: ``category``, ``visual``, ``eccentricity``
        or ``custom``. An ROI image is compared with the other ROIs of its group.
    ecc_range : (float, float), optional
        Nominal eccentricity range in degrees (eccentricity bands only).
    """

    name: str
    file: str
    labels: tuple[int, ...] | None = None
    exclude_files: tuple[str, ...] = ()
    group: str = "custom"
    ecc_range: tuple[float, float] | None = None

    def mask(self, labels: Mapping[str, np.ndarray]) -> np.ndarray:
        """Boolean (n_voxels,) membership from per-voxel label arrays."""
        if self.file not in labels:
            raise ConfigError(
                f"ROI {self.name!r}: needs label file {self.file!r}, the data has {sorted(labels)}",
            )
        lab = np.asarray(labels[self.file])
        mask = lab > 0 if self.labels is None else np.isin(lab, self.labels)
        for other in self.exclude_files:
            if other not in labels:
                raise ConfigError(f"ROI {self.name!r}: needs label file {other!r}, the data has {sorted(labels)}")
            mask &= ~(np.asarray(labels[other]) > 0)
        return mask


#: Eccentricity rings (degrees) of NSD's ``prf-eccrois`` labels 1..5.
ECC_RINGS: dict[str, tuple[float, float]] = {
    "ecc0pt5": (0.0, 0.5), "ecc1": (0.5, 1.0), "ecc2": (1.0, 2.0), "ecc4": (2.0, 4.0), "ecc4plus": (4.0, float("inf")),
}

_NSD_FLOC = [
    RoiSpec("faces", "floc-faces", group="category"),
    RoiSpec("words", "floc-words", group="category"),
    RoiSpec("places", "floc-places", group="category"),
    RoiSpec("bodies", "floc-bodies", group="category"),
]
_NSD_VISUAL = [
    RoiSpec("V1", "prf-visualrois", (1, 2), group="visual"),
    RoiSpec("V2", "prf-visualrois", (3, 4), group="visual"),
    RoiSpec("V3", "prf-visualrois", (5, 6), group="visual"),
    RoiSpec("V4", "prf-visualrois", (7,), group="visual"),
]
_NSD_ECC = [
    RoiSpec(name, "prf-eccrois", (k,), group="eccentricity", ecc_range=rng)
    for k, (name, rng) in enumerate(ECC_RINGS.items(), start=1)
]
_GOD = [
    RoiSpec("V1", "V1", group="visual"),
    RoiSpec("V2", "V2", group="visual"),
    RoiSpec("V3", "V3", group="visual"),
    RoiSpec("V4", "V4", group="visual"),
    RoiSpec("LOC", "LOC", exclude_files=("FFA",), group="category"),
    RoiSpec("FFA", "FFA", exclude_files=("LOC",), group="category"),
    RoiSpec("PPA", "PPA", group="category"),
]

#: Named ROI sets (see the module docstring). NSD names and GOD names overlap (``V1``..``V4``);
#: :func:`resolve_rois` picks the definition whose label file the data has.
ROI_SETS: dict[str, tuple[RoiSpec, ...]] = {
    "brain_diffuser": tuple(_NSD_FLOC + _NSD_VISUAL + _NSD_ECC),
    "floc": tuple(_NSD_FLOC),
    "visual": tuple(_NSD_VISUAL),
    "eccentricity": tuple(_NSD_ECC),
    "icgan": tuple(_GOD),
}

#: Every named ROI: NSD definitions first, then GOD ones (the first whose file exists wins).
ROI_CATALOGUE: dict[str, tuple[RoiSpec, ...]] = {}
for _spec in _NSD_FLOC + _NSD_VISUAL + _NSD_ECC + _GOD:
    ROI_CATALOGUE.setdefault(_spec.name, ())
    ROI_CATALOGUE[_spec.name] += (_spec,)
#: Other spellings accepted for catalogue names.
_ALIASES = {"ecc0.5": "ecc0pt5", "ecc4+": "ecc4plus", "hV4": "V4", "floc-faces": "faces", "floc-words": "words",
            "floc-places": "places", "floc-bodies": "bodies"}


def roi_slug(name: str) -> str:
    """A file-name-safe version of an ROI name (letters, digits and ``.+_-`` kept, anything else -> ``_``)."""
    slug = re.sub(r"[^A-Za-z0-9.+_-]+", "_", name).strip("_")
    return slug or "roi"


def is_nifti(entry: object) -> bool:
    """Whether an ROI entry names a NIfTI file (``.nii`` or ``.nii.gz``)."""
    text = os.fspath(entry) if isinstance(entry, (str, os.PathLike)) else ""
    return text.endswith((".nii", ".nii.gz"))


def nifti_mask(
    path: str | os.PathLike,
    voxel_ijk: np.ndarray,
    *,
    volume_shape: tuple[int, int, int] | None = None,
    affine: np.ndarray | None = None,
) -> np.ndarray:
    """Voxel columns inside a NIfTI mask (values > 0), in the order of ``voxel_ijk``.

    Parameters
    ----------
    path : path
        3-D NIfTI volume on the betas' grid.
    voxel_ijk : (n_voxels, 3) int
        Volume indices of the betas' columns (``voxel_ijk.npy`` of the data artifact).
    volume_shape, affine : optional
        The betas' grid; a mask on another grid raises
        :class:`~brainrecon.errors.ShapeMismatchError` naming the file.

    Returns
    -------
    ndarray of bool, shape (n_voxels,)
    """
    from brainrecon.data.rois import labels_at, read_roi_volume

    labels, _ = read_roi_volume(path, expected_shape=volume_shape, expected_affine=affine)
    ijk = np.asarray(voxel_ijk)
    if ijk.ndim != 2 or ijk.shape[1] != 3:
        raise ShapeMismatchError("voxel_ijk", "(n_voxels, 3)", ijk.shape)
    if np.any(ijk.max(axis=0) >= np.asarray(labels.shape)):
        raise ShapeMismatchError(
            f"{path}: mask volume shape", f"a volume containing the betas' voxels (max index {ijk.max(axis=0).tolist()})",
            labels.shape, hint="the mask must be on the betas' voxel grid",
        )
    return labels_at(labels, ijk) > 0


def _spec_for(name: str, labels: Mapping[str, np.ndarray]) -> RoiSpec:
    key = _ALIASES.get(name, name)
    options = ROI_CATALOGUE.get(key)
    if options is None:
        raise ConfigError(
            f"roi.rois: unknown ROI {name!r}; expected a name from {sorted(ROI_CATALOGUE)}, a set from "
            f"{sorted(ROI_SETS)}, a label file of the data ({sorted(labels)}) or a NIfTI mask path (.nii/.nii.gz)"
        )
    for spec in options:
        if spec.file in labels:
            return spec
    raise ConfigError(
        f"roi.rois: ROI {name!r} needs label file {options[0].file!r}, the data has {sorted(labels)}"
    )


def resolve_rois(
    entries: Sequence[str | os.PathLike | RoiSpec | Mapping],
    labels: Mapping[str, np.ndarray],
    *,
    voxel_ijk: np.ndarray | None = None,
    volume_shape: tuple[int, int, int] | None = None,
    affine: np.ndarray | None = None,
    restrict: np.ndarray | None = None,
) -> tuple[list[RoiSpec], dict[str, np.ndarray]]:
    """Turn ROI names, set names, label files, specs or NIfTI masks into boolean voxel masks.

    Parameters
    ----------
    entries : sequence
        Each entry is a catalogue name (``faces``, ``V1``, ``ecc2`` ...), a set name
        (``brain_diffuser``, ``floc``, ``visual``, ``eccentricity``, ``icgan``), a label file
        of the data (``floc-faces``: every label > 0), a NIfTI path, a :class:`RoiSpec`, or a
        mapping ``{"name": ..., "path": ...}`` for a NIfTI mask with a chosen name.
    labels : mapping of str to (n_voxels,) int
        Per-voxel label arrays of the data artifact (``roi_<file>.npy``).
    voxel_ijk, volume_shape, affine
        Needed for NIfTI masks (see :func:`nifti_mask`).
    restrict : (n_voxels,) bool, optional
        Keep only these voxels (Brain-Diffuser restricts every ROI to ``nsdgeneral``).

    Returns
    -------
    specs : list of RoiSpec
        One per ROI, in the order given (sets expanded in place); NIfTI masks get
        ``file=<path>`` and group ``custom``.
    masks : dict of name to (n_voxels,) bool

    Raises
    ------
    ConfigError
        Unknown names, duplicate names, missing label files.
    DataFormatError
        An ROI with no voxel (after ``restrict``).
    """
    specs: list[RoiSpec] = []
    masks: dict[str, np.ndarray] = {}
    n_vox = None if not labels else len(next(iter(labels.values())))

    def add(spec: RoiSpec, mask: np.ndarray) -> None:
        if spec.name in masks:
            raise ConfigError(f"roi.rois: ROI name {spec.name!r} given twice; names must be unique")
        mask = np.asarray(mask, dtype=bool)
        if restrict is not None:
            mask = mask & np.asarray(restrict, dtype=bool)
        if not mask.any():
            raise DataFormatError(f"ROI {spec.name!r} ({spec.file}): no voxel selected (expected at least one)")
        specs.append(spec)
        masks[spec.name] = mask

    for entry in entries:
        if isinstance(entry, RoiSpec):
            add(entry, entry.mask(labels))
        elif isinstance(entry, Mapping) or is_nifti(entry):
            if isinstance(entry, Mapping):
                if "path" not in entry:
                    raise ConfigError(f"roi.rois: a mapping entry needs 'path' (a NIfTI mask), got keys {sorted(entry)}")
                path = Path(os.fspath(entry["path"])).expanduser()
                name = str(entry.get("name") or nifti_name(path))
            else:
                path = Path(os.fspath(entry)).expanduser()
                name = nifti_name(path)
            if voxel_ijk is None:
                raise ConfigError(
                    f"roi.rois: NIfTI mask {str(path)!r} needs the voxel coordinates of the betas "
                    "(voxel_ijk.npy in the data artifact; NSD and simulated data have them)"
                )
            mask = nifti_mask(path, voxel_ijk, volume_shape=volume_shape, affine=affine)
            if n_vox is not None and mask.shape != (n_vox,):
                raise ShapeMismatchError(f"{path}: voxels", n_vox, mask.shape[0])
            add(RoiSpec(name, str(path)), mask)
        else:
            name = str(entry)
            if name in ROI_SETS:
                options = [s for s in ROI_SETS[name]]
                missing = sorted({s.file for s in options} - set(labels))
                if missing:
                    raise ConfigError(f"roi.rois: ROI set {name!r} needs label files {missing}, the data has {sorted(labels)}")
                for spec in options:
                    add(spec, spec.mask(labels))
            elif _ALIASES.get(name, name) in ROI_CATALOGUE:
                spec = _spec_for(name, labels)
                add(spec, spec.mask(labels))
            elif name in labels:
                spec = RoiSpec(name, name)
                add(spec, spec.mask(labels))
            else:
                _spec_for(name, labels)  # raises with the list of valid names
    if not specs:
        raise ConfigError("roi.rois: expected at least one ROI, got none")
    return specs, masks


def conditional_patterns(
    masks: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    X: np.ndarray,
    *,
    value: float = 1.0,
    restrict: np.ndarray | None = None,
    groups: Sequence[str | None] | None = None,
) -> np.ndarray:
    """The brain state expected when an ROI is ``value`` above its mean: one row per ROI.

    Every voxel ``j`` gets ``value * cov(x_j, r) / var(r)``, with ``r`` the ROI's mean response
    over the training trials ``X``: the regression of each voxel on the ROI. The ROI's own
    voxels average ``value`` by construction; voxels that co-vary with it (a neighbouring
    eccentricity band, early visual voxels that see what the ROI prefers) take the values they
    typically have then, where the references' pattern fixes them at their mean. So the decoders
    are asked about a state the brain actually visits, not one in which the ROI moves alone.

    Parameters
    ----------
    masks : mapping of name to (n_voxels,) bool, or a sequence of masks
    X : (n_trials, n_voxels) float
        Training betas in the space the decoders were fitted in (z-scored).
    value : float
        The ROI's mean activation in that space.
    restrict : (n_voxels,) bool, optional
        Voxels outside it are 0.
    groups : sequence of str or None, optional
        Group of each mask. An ROI with peers in its group (same name, not ``None``) gets the
        *partial* pattern: the state expected when it is ``value`` above its mean **while its
        peers are at their means**, the coefficient of its response in the joint regression of
        every voxel on the mean responses of all ROIs of the group. Its own voxels still average
        ``value``; each peer's voxels average 0.

    Returns
    -------
    ndarray of float32, shape (n_rois, n_voxels)
    """
    rows = list(masks.values()) if isinstance(masks, Mapping) else list(masks)
    if groups is not None and len(groups) != len(rows):
        raise ConfigError(f"conditional_patterns: expected one group per mask ({len(rows)}), got {len(groups)}")
    X = np.asarray(X)
    n_voxels = np.asarray(rows[0]).shape[0] if rows else "n_voxels"
    if X.ndim != 2 or (rows and X.shape[1] != n_voxels):
        raise ShapeMismatchError("X (training betas)", f"(n_trials, {n_voxels})", X.shape)
    M = synthetic_patterns(rows, restrict=restrict) > 0
    Q = np.zeros(M.shape, dtype=np.float32)
    R = np.zeros((X.shape[0], len(M)))
    for i, m in enumerate(M):
        if m.any():
            r = X[:, m].astype(np.float64).mean(1)
            R[:, i] = r - r.mean()
    for i, m in enumerate(M):
        if not m.any():
            continue
        g = None if groups is None else groups[i]
        members = [i] + [j for j in range(len(M)) if g is not None and j != i and groups[j] == g and M[j].any()]
        G = R[:, members]
        gram = G.T @ G
        if np.linalg.matrix_rank(gram) < len(members):
            raise DataFormatError(
                f"conditional_patterns: the mean responses of ROI {i} and its peers {members[1:]} are linearly "
                "dependent over the training trials (a constant ROI, or ROIs with the same voxels)"
            )
        # weights over trials whose product with X is the regression coefficient of ROI i's response
        # (the first column); X.T @ w needs no centring of X because every column of G sums to zero
        w = G @ np.linalg.solve(gram, np.eye(len(members))[:, 0])
        # w in X's dtype: a float64 w would make numpy copy all of X to float64 (1.1 GB for NSD's betas)
        Q[i] = value * (X.T @ w.astype(X.dtype if X.dtype.kind == "f" else np.float64))
    if restrict is not None:
        Q[:, ~np.asarray(restrict, dtype=bool)] = 0.0
    return Q


def nifti_name(path: Path) -> str:
    """The file name of a NIfTI mask without ``.nii``/``.nii.gz`` (the ROI's default name)."""
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def synthetic_patterns(
    masks: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    *,
    value: float = 1.0,
    restrict: np.ndarray | None = None,
    contrast: float = 0.0,
    groups: Sequence[str | None] | None = None,
) -> np.ndarray:
    """The reference's synthetic fMRI patterns, one row per ROI: ``value`` inside, 0 outside.

    Parameters
    ----------
    masks : mapping of name to (n_voxels,) bool, or a sequence of masks
    value : float
        Activation of the ROI's voxels in z-scored units (Brain-Diffuser and IC-GAN: 1).
    restrict : (n_voxels,) bool, optional
        Voxels outside it are 0 (Brain-Diffuser: ``nsdgeneral``, i.e. every column of the betas).
    contrast : float
        Weight of the peer ROIs (module docstring), in [0, 1]. 0 (the references): peers at
        their mean. ``c`` > 0: the voxels of each of the ``k`` other ROIs of the group (not in
        the ROI itself) get ``-value * c * n_roi / (k * n_peer)``, so that the pattern's negative
        mass is ``c`` times its positive mass and every peer counts alike whatever its size.
    groups : sequence of str or None, optional
        Group of each mask (``RoiSpec.group``); required when ``contrast`` > 0. An ROI alone in
        its group, or whose group is ``None``, keeps the plain pattern.

    Returns
    -------
    ndarray of float32, shape (n_rois, n_voxels)
    """
    rows = list(masks.values()) if isinstance(masks, Mapping) else list(masks)
    if not rows:
        raise ConfigError("synthetic_patterns: expected at least one mask, got none")
    shapes = {np.asarray(m).shape for m in rows}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ShapeMismatchError("ROI masks", "1-D masks of one length (n_voxels,)", sorted(shapes))
    M = np.stack([np.asarray(m, dtype=bool) for m in rows])
    if restrict is not None:
        restrict = np.asarray(restrict, dtype=bool)
        if restrict.shape != (M.shape[1],):
            raise ShapeMismatchError("restrict mask", (M.shape[1],), restrict.shape)
        M = M & restrict[None]
    Q = M.astype(np.float32) * np.float32(value)
    contrast = float(contrast)
    if not (np.isfinite(contrast) and 0.0 <= contrast <= 1.0):
        raise ConfigError(f"roi.contrast: expected a number in [0, 1], got {contrast!r}")
    if contrast == 0.0:
        return Q
    if groups is None or len(groups) != len(rows):
        raise ConfigError(
            f"synthetic_patterns: contrast > 0 needs one group per mask ({len(rows)}), got "
            f"{None if groups is None else len(groups)}"
        )
    sizes = M.sum(1)
    for i, g in enumerate(groups):
        if g is None:
            continue
        peers = [j for j, h in enumerate(groups) if h == g and j != i and sizes[j] > 0]
        if not peers or sizes[i] == 0:
            continue
        for j in peers:
            # Each peer carries the same share of the negative mass, spread over its own voxels
            # (those also in ROI i stay positive: the ROI is asked to be active there).
            only = M[j] & ~M[i]
            if only.any():
                Q[i, only] -= np.float32(value * contrast * sizes[i] / (len(peers) * only.sum()))
    return Q
