"""Where the simulated voxels sit, which ROIs they belong to, and their receptive fields.

Voxels are placed in the MNI152 brain mask shipped with nilearn (2 mm grid, loaded from the
package, no download); the written volumes are a box cropped from that grid with the
correspondingly shifted affine, so they overlay the MNI template in any viewer.

Early visual cortex (V1, V2, V3 with ventral/dorsal halves, and hV4) is laid out as nested
bands around a model calcarine sulcus in each occipital lobe (MNI y <= -68 mm):

* the distance above (dorsal) or below (ventral) the calcarine, in bands of 5 mm, gives the
  area (V1, V2, V3, then hV4 below V3v) and the polar angle: the calcarine is the horizontal
  meridian, the V1/V2 and V3 outer borders are vertical meridians, V2/V3 is horizontal;
  dorsal halves map the lower visual field, ventral halves the upper field, and each
  hemisphere the contralateral hemifield; hV4 spans a whole quarter-to-quarter hemifield;
* the distance from the occipital pole gives eccentricity on a log scale (cortical
  magnification): fovea at the pole, about 9 degrees at the anterior end;
* pRF size sigma = a + b * eccentricity with (a, b) growing from V1 to hV4.

Within each band the most medial voxels are taken (hV4: voxels about 28 mm lateral).
Category-selective ROIs (NSD floc labels) are compact blobs grown around literature-like
MNI centres in ventral/lateral occipito-temporal cortex; blobs of different categories may
share voxels (as NSD's floc ROIs do). A few unlabelled nsdgeneral voxels sit in lateral and
dorsal occipital cortex. ``nsdgeneral`` is the union of all simulated voxels.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from brainrecon.errors import ConfigError

#: prf-visualrois label values (NSD).
VISUALROI_LABELS: dict[str, int] = {"V1v": 1, "V1d": 2, "V2v": 3, "V2d": 4, "V3v": 5, "V3d": 6, "hV4": 7}
#: prf-eccrois upper edges (degrees) of labels 1..4; label 5 is beyond the last edge.
ECC_EDGES: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
#: floc ROI files and their label names (label value = position + 1), as in NSD.
FLOC_LABELS: dict[str, tuple[str, ...]] = {
    "floc-faces": ("OFA", "FFA-1", "FFA-2", "mTL-faces", "aTL-faces"),
    "floc-places": ("OPA", "PPA", "RSC"),
    "floc-bodies": ("EBA", "FBA-1", "FBA-2", "mTL-bodies"),
    "floc-words": ("OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words"),
}
ROI_FILES: tuple[str, ...] = ("nsdgeneral", "prf-visualrois", "prf-eccrois", *FLOC_LABELS)

# Right-hemisphere MNI centres (mm) of the floc sub-ROIs (mirrored to the left); word ROIs
# are left-lateralised, so their x is given for the left hemisphere and not mirrored.
_FLOC_CENTRES: dict[str, tuple[float, float, float]] = {
    "OFA": (40, -80, -10), "FFA-1": (40, -64, -18), "FFA-2": (40, -48, -22),
    "mTL-faces": (32, -32, -26), "aTL-faces": (32, -8, -36),
    "OPA": (32, -84, 24), "PPA": (26, -46, -8), "RSC": (12, -54, 10),
    "EBA": (48, -72, 4), "FBA-1": (46, -56, -10), "FBA-2": (46, -42, -12), "mTL-bodies": (40, -26, -14),
    "OWFA": (-46, -76, -14), "VWFA-1": (-46, -62, -16), "VWFA-2": (-48, -48, -16),
    "mfs-words": (-38, -38, -20), "mTL-words": (-54, -30, -10),
}
_OTHER_CENTRES = ((44, -82, -2), (22, -86, 30))

#: pRF size law sigma = a + b * ecc (degrees) per area; grows along the hierarchy.
PRF_SIZE_LAW: dict[str, tuple[float, float]] = {"V1": (0.12, 0.08), "V2": (0.2, 0.12), "V3": (0.3, 0.18), "hV4": (0.5, 0.3)}
_AREA_SHARE = {"V1": 0.30, "V2": 0.27, "V3": 0.23, "hV4": 0.20}
_BAND_MM = 5.0
_ECC_MAX = 9.0


@dataclass
class VoxelLayout:
    """Simulated voxels in a cropped MNI152 2 mm volume.

    Voxel order is the C order of ``ijk`` in the volume, i.e. the order of
    ``np.nonzero(nsdgeneral_volume > 0)`` on the NIfTI array (X, Y, Z).

    Attributes
    ----------
    ijk : (n, 3) int32 voxel indices in the written volume
    mni : (n, 3) float32 MNI coordinates (mm)
    roi_class : (n,) str, one of V1v V1d V2v V2d V3v V3d hV4 floc other
    hemisphere : (n,) str, 'L' or 'R'
    prf_x, prf_y, prf_sigma, prf_ecc, prf_angle : (n,) float32 degrees; x right, y up, angle
        counter-clockwise from the right horizontal meridian. For floc and other voxels,
        the large pRF of their weak low-level input.
    roi_labels : ROI file name -> (n,) int16 label per voxel (0 = not in that ROI)
    volume_shape : (3,) shape of the written volumes
    affine : (4, 4) float64 voxel -> MNI mm
    brain : bool volume, inside the MNI152 brain mask
    """

    ijk: np.ndarray
    mni: np.ndarray
    roi_class: np.ndarray
    hemisphere: np.ndarray
    prf_x: np.ndarray
    prf_y: np.ndarray
    prf_sigma: np.ndarray
    prf_ecc: np.ndarray
    prf_angle: np.ndarray
    roi_labels: dict[str, np.ndarray]
    volume_shape: tuple[int, int, int]
    affine: np.ndarray
    brain: np.ndarray

    @property
    def n_voxels(self) -> int:
        return int(self.ijk.shape[0])

    def area(self) -> np.ndarray:
        """Visual area per voxel (V1, V2, V3, hV4, floc, other)."""
        return np.array([c[:-1] if c[:-1] in ("V1", "V2", "V3") else c for c in self.roi_class.tolist()])

    def volume(self, values: np.ndarray, outside: float = 0, dtype=np.int16, fill_brain: float | None = None) -> np.ndarray:
        """Scatter per-voxel ``values`` into a volume; ``fill_brain`` for brain voxels not simulated."""
        vol = np.full(self.volume_shape, outside, dtype=dtype)
        if fill_brain is not None:
            vol[self.brain] = fill_brain
        vol[self.ijk[:, 0], self.ijk[:, 1], self.ijk[:, 2]] = values
        return vol


@functools.lru_cache(maxsize=1)
def _mni_mask_cached() -> tuple[np.ndarray, np.ndarray]:
    # importing nilearn.datasets and resampling the template takes seconds: do it once per process
    from nilearn.datasets import load_mni152_brain_mask

    img = load_mni152_brain_mask(resolution=2)
    brain = np.asarray(img.dataobj) > 0
    affine = np.asarray(img.affine, dtype=np.float64)
    brain.setflags(write=False)
    affine.setflags(write=False)
    return brain, affine


def load_mni_mask() -> tuple[np.ndarray, np.ndarray]:
    """(bool volume, affine) of nilearn's MNI152 brain mask at 2 mm (shipped in the package)."""
    brain, affine = _mni_mask_cached()
    return brain.copy(), affine.copy()


def _counts(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Split ``total`` by ``shares`` with largest remainders (sums exactly to total)."""
    raw = {k: total * v / sum(shares.values()) for k, v in shares.items()}
    out = {k: int(np.floor(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: out[k] - raw[k])[: total - sum(out.values())]:
        out[k] += 1
    return out


def place_voxels(
    n_voxels: int,
    rng: np.random.Generator,
    early_fraction: float = 0.6,
    category_fraction: float = 0.3,
) -> VoxelLayout:
    """Choose ``n_voxels`` voxels, label them and give them pRFs (see the module docstring)."""
    if n_voxels < 60:
        raise ConfigError(f"SimConfig.n_voxels: expected >= 60 (room for every ROI), got {n_voxels}")
    if not (0 < early_fraction and 0 < category_fraction and early_fraction + category_fraction <= 1):
        raise ConfigError(
            f"SimConfig.early_fraction/category_fraction: expected positive with sum <= 1, got "
            f"{early_fraction}, {category_fraction}"
        )
    brain, affine = load_mni_mask()
    ijk_all = np.argwhere(brain)  # C order
    xyz = ijk_all @ affine[:3, :3].T + affine[:3, 3]
    x, y, z = xyz.T
    used = np.zeros(len(ijk_all), dtype=bool)
    tie = rng.random(len(ijk_all))  # random tie-breaking, fixed by the seed

    n_early = int(round(n_voxels * early_fraction))
    n_cat = int(round(n_voxels * category_fraction))
    n_other = n_voxels - n_early - n_cat

    # ---- early visual cortex
    occ = (y <= -68) & (np.abs(x) <= 34) & (x != 0)
    z_calc = 2.0 + 0.25 * (y + 100.0)  # model calcarine, rising anteriorly
    u = (z - z_calc) / _BAND_MM
    y_pole = y[occ].min()
    d_max = -68.0 - y_pole
    e_a, e_min = 0.25, 0.05
    k_mag = d_max / np.log((_ECC_MAX - e_min) / e_a + 1.0)

    area_counts = _counts(n_early, _AREA_SHARE)
    pieces: list[tuple[np.ndarray, str, str]] = []  # (indices, roi_class, hemisphere)
    for area, count in area_counts.items():
        halves = ("v", "d") if area != "hV4" else ("",)
        keys = [(h, hemi) for h in halves for hemi in ("L", "R")]
        for (half, hemi), c in zip(keys, _counts(count, {kk: 1.0 for kk in keys}).values()):
            level = {"V1": 0, "V2": 1, "V3": 2, "hV4": 3}[area]
            lo, hi = (level, level + 1) if half == "d" else (-level - 1, -level)
            pool = occ & (u >= lo) & (u < hi) & ((x < 0) if hemi == "L" else (x > 0)) & ~used
            idx = np.flatnonzero(pool)
            key = np.abs(np.abs(x[idx]) - 28.0) if area == "hV4" else np.abs(x[idx])
            idx = idx[np.lexsort((tie[idx], key))][:c]
            if len(idx) < c:
                raise ConfigError(f"SimConfig.n_voxels={n_voxels}: too many for {area}{half} ({len(idx)} < {c} voxels)")
            used[idx] = True
            pieces.append((idx, area + half, hemi))

    early_idx = np.concatenate([p[0] for p in pieces])
    early_class = np.concatenate([np.full(len(p[0]), p[1], dtype="<U8") for p in pieces])
    early_hemi = np.concatenate([np.full(len(p[0]), p[2], dtype="<U1") for p in pieces])

    # retinotopy from the position in the band and the distance from the pole
    uu = u[early_idx]
    a = np.abs(uu)
    frac = a - np.floor(a)
    ecc = e_a * (np.exp((y[early_idx] - y_pole) / k_mag) - 1.0) + e_min
    ecc = np.minimum(ecc * np.exp(rng.normal(0.0, 0.1, size=len(ecc))), _ECC_MAX)
    angle = np.empty(len(uu))
    for cls in np.unique(early_class):
        m = early_class == cls
        if cls == "hV4":
            angle[m] = 90.0 - 180.0 * frac[m]
            continue
        # V1, V3: HM at the inner edge -> VM at the outer edge; V2 runs VM -> HM
        mag = 90.0 * frac[m] if cls[:2] in ("V1", "V3") else 90.0 * (1.0 - frac[m])
        angle[m] = mag if cls.endswith("v") else -mag
    angle += rng.normal(0.0, 5.0, size=len(angle))
    angle = np.clip(angle, -90.0, 90.0)
    # left hemisphere sees the right visual field (x > 0)
    side = np.where(early_hemi == "L", 1.0, -1.0)
    px = side * ecc * np.cos(np.deg2rad(angle))
    py = ecc * np.sin(np.deg2rad(angle))
    area_of = np.array([c if c == "hV4" else c[:2] for c in early_class])
    sig = np.empty(len(ecc))
    for ar, (sa, sb) in PRF_SIZE_LAW.items():
        m = area_of == ar
        sig[m] = sa + sb * ecc[m]
    sig *= np.exp(rng.normal(0.0, 0.1, size=len(sig)))

    # ---- category-selective blobs (memberships may overlap), grown round-robin
    blobs: list[tuple[str, int, np.ndarray]] = []  # (roi file, label, candidate order)
    free = ~used
    for roi_file, names in FLOC_LABELS.items():
        for lab, name in enumerate(names, start=1):
            cx, cy, cz = _FLOC_CENTRES[name]
            hemis = (cx,) if roi_file == "floc-words" else (cx, -cx)
            for hx in hemis:
                dist = (x - hx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 + 1e-3 * tie
                cand = np.flatnonzero(free & (dist < 30.0**2))
                blobs.append((roi_file, lab, cand[np.argsort(dist[cand], kind="stable")]))
    membership: dict[int, dict[str, int]] = {}
    pos = [0] * len(blobs)
    while len(membership) < n_cat:
        progressed = False
        for b, (roi_file, lab, order) in enumerate(blobs):
            if len(membership) >= n_cat:
                break
            if pos[b] >= len(order):
                continue
            v = int(order[pos[b]])
            pos[b] += 1
            progressed = True
            membership.setdefault(v, {}).setdefault(roi_file, lab)
        if not progressed:
            raise ConfigError(f"SimConfig.n_voxels={n_voxels}: not enough room for the category ROIs")
    cat_idx = np.array(sorted(membership), dtype=np.int64)
    used[cat_idx] = True

    # ---- unlabelled nsdgeneral voxels
    other_parts = []
    oc = _counts(n_other, {i: 1.0 for i in range(2 * len(_OTHER_CENTRES))})
    for i, (cx, cy, cz) in enumerate([c for cc in _OTHER_CENTRES for c in (cc, (-cc[0], cc[1], cc[2]))]):
        dist = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 + 1e-3 * tie
        cand = np.flatnonzero(~used)
        take = cand[np.argsort(dist[cand], kind="stable")][: oc[i]]
        used[take] = True
        other_parts.append(take)
    other_idx = np.concatenate(other_parts) if other_parts else np.zeros(0, dtype=np.int64)

    # ---- low-level pRFs of floc/other voxels: large, near the fovea
    n_c, n_o = len(cat_idx), len(other_idx)
    c_x, c_y = rng.normal(0.0, 1.0, n_c), rng.normal(0.0, 1.0, n_c)
    c_s = rng.uniform(2.0, 4.0, n_c)
    o_x, o_y = rng.uniform(-3.0, 3.0, n_o), rng.uniform(-3.0, 3.0, n_o)
    o_s = rng.uniform(1.5, 3.0, n_o)

    all_idx = np.concatenate([early_idx, cat_idx, other_idx])
    roi_class = np.concatenate([early_class, np.full(n_c, "floc", "<U8"), np.full(n_o, "other", "<U8")])
    hemi = np.concatenate([early_hemi, np.where(x[cat_idx] < 0, "L", "R"), np.where(x[other_idx] < 0, "L", "R")])
    prf_x = np.concatenate([px, c_x, o_x])
    prf_y = np.concatenate([py, c_y, o_y])
    prf_s = np.concatenate([sig, c_s, o_s])

    n = len(all_idx)
    labels = {name: np.zeros(n, dtype=np.int16) for name in ROI_FILES}
    labels["nsdgeneral"][:] = 1
    n_e = len(early_idx)
    labels["prf-visualrois"][:n_e] = [VISUALROI_LABELS[c] for c in early_class]
    ecc_all = np.hypot(prf_x, prf_y)
    labels["prf-eccrois"][:n_e] = 1 + np.searchsorted(np.asarray(ECC_EDGES), ecc_all[:n_e], side="right")
    for j, v in enumerate(cat_idx.tolist()):
        for roi_file, lab in membership[v].items():
            labels[roi_file][n_e + j] = lab

    # ---- crop the volume to the voxels' bounding box (+2 voxels) and sort in C order
    ijk_sel = ijk_all[all_idx]
    lo = np.maximum(ijk_sel.min(axis=0) - 2, 0)
    hi = np.minimum(ijk_sel.max(axis=0) + 3, np.array(brain.shape))
    crop_affine = affine.copy()
    crop_affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    ijk_crop = (ijk_sel - lo).astype(np.int32)
    shape = tuple(int(v) for v in hi - lo)
    order = np.ravel_multi_index(ijk_crop.T, shape).argsort(kind="stable")

    def o(a: np.ndarray) -> np.ndarray:
        return a[order]

    return VoxelLayout(
        ijk=o(ijk_crop),
        mni=o(xyz[all_idx]).astype(np.float32),
        roi_class=o(roi_class),
        hemisphere=o(hemi.astype("<U1")),
        prf_x=o(prf_x).astype(np.float32),
        prf_y=o(prf_y).astype(np.float32),
        prf_sigma=o(prf_s).astype(np.float32),
        prf_ecc=o(ecc_all).astype(np.float32),
        prf_angle=o(np.rad2deg(np.arctan2(prf_y, prf_x))).astype(np.float32),
        roi_labels={k: o(v) for k, v in labels.items()},
        volume_shape=shape,
        affine=crop_affine,
        brain=brain[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].copy(),
    )
