"""The simulator's true encoding model (ground truth for every later stage).

Features
--------
``EncodingModel.features(images)`` returns one float32 row per image, the concatenation of

1. **Gabor energy** (``spec.n_energy`` columns). Luminance (Rec. 601 weights) is resized to
   ``spec.model_size`` pixels (box filter), its mean removed, and filtered by complex
   (quadrature) Gabor filters defined in the frequency domain: Gaussian pass-bands centred on
   ``cycles_per_image[k]`` at ``n_orientations`` orientations (0, 45, 90, 135 degrees, 0 =
   vertical stripes), 1-octave half-amplitude bandwidth. The energy (modulus of the complex
   response) of scale ``k`` is averaged over a ``grids[k]`` x ``grids[k]`` grid of cells.
   Column order: scale, then orientation, then cell row (top to bottom), then cell column.
2. **Local luminance and colour** (``spec.n_lumcol`` = 6 * ``lumcol_grid**2`` columns). The RGB
   image is resized to ``model_size`` pixels (box filter) and converted to three signed
   channels with fixed weights (:data:`LUMCOL_WEIGHTS`; R, G, B in [0, 1]):
   luminance relative to mid grey ``0.299 R + 0.587 G + 0.114 B - 0.5``; red-green
   (L-M-like) ``R - G``; blue-yellow (S-(L+M)-like) ``B - (R + G) / 2``. Each channel is
   averaged over a ``lumcol_grid`` x ``lumcol_grid`` grid of cells and half-wave rectified
   into an ON (``max(m, 0)``) and an OFF (``max(-m, 0)``) feature, so every feature is >= 0
   while ON - OFF recovers the signed local mean. Column order: channel (``lum``, ``rg``,
   ``by``), then polarity (``on``, ``off``), then cell row (top to bottom), then cell column.
   Unlike the phase-invariant energy, this block carries where the image is bright or dark
   and which colour it has, as early visual cortex does.
3. **Semantic content** (``len(spec.categories)`` columns): the fraction of the image covered
   by each object category (:data:`brainrecon.sim.stimuli.CATEGORIES`). This cannot be read
   from pixels: it is given with ``semantics=`` or looked up in the model's registry of the
   simulated stimuli (exact uint8 match); unknown images get zeros and a warning.

Responses
---------
For voxel ``v``: ``drive = features @ weights[v] + bias[v]`` (all weights >= 0, so drive > 0),
``response = offset[v] + gain[v] * (drive ** exponent[v] - center[v])`` in percent signal
change (compressive spatial summation, exponent < 1; computed in float64). Early visual
voxels (V1-hV4) weight the Gabor energy by their population receptive field (a 2-D Gaussian
integrated over each cell) times a spatial-frequency preference that falls with pRF size and
a weak orientation bias, and the luminance/colour block by the same pRF's mass per cell times
per-voxel channel preferences (:func:`lumcol_preferences`): an ON/OFF imbalance per channel
(random sign, slightly more often OFF-dominant, so that the response is a signed function of
local luminance and colour) and a colour weight relative to luminance that is largest in hV4
and V1 (:data:`COLOUR_WEIGHT`). The luminance/colour block is scaled per voxel so that it
holds ``LUMCOL_SHARE`` (0.4) of the variance of the two low-level drives over the stimulus
set (var_lumcol / (var_lumcol + var_energy)), the Gabor energy the rest. Category-selective
voxels weight their preferred category's area strongly, other categories weakly, plus a weak
Gabor-energy term from a large foveal pRF; they and the unlabelled voxels have no
luminance/colour weights. Blocks 1 and 2 are the ``spec.n_lowlevel`` columns computed from
pixels (:func:`lowlevel_features`); ``spec.semantic_slice`` selects block 3.
``gain``, ``center`` (the mean of ``drive ** exponent`` over the stimulus set) and ``offset``
are calibrated on the simulated stimulus set so that each voxel's noise-free response has the
standard deviation and mean chosen by the simulator.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from brainrecon.errors import DataFormatError, MissingDataError, ShapeMismatchError
from brainrecon.sim.stimuli import CATEGORIES

MODEL_FORMAT_VERSION = 2  # 2: luminance/colour block added to the features

#: Weights (rows: lum, rg, by; columns: R, G, B) and offsets of the signed luminance/colour
#: channels; luminance uses the Rec. 601 weights of the energy block, relative to mid grey.
LUMCOL_WEIGHTS: np.ndarray = np.array(
    [[0.299, 0.587, 0.114], [1.0, -1.0, 0.0], [-0.5, -0.5, 1.0]], dtype=np.float32
)
LUMCOL_OFFSETS: np.ndarray = np.array([-0.5, 0.0, 0.0], dtype=np.float32)
LUMCOL_CHANNELS: tuple[str, ...] = ("lum", "rg", "by")


@dataclass(frozen=True)
class FeatureSpec:
    """Definition of the feature space (see the module docstring)."""

    model_size: int = 64
    cycles_per_image: tuple[float, ...] = (16.0, 8.0, 4.0)
    grids: tuple[int, ...] = (16, 8, 4)
    n_orientations: int = 4
    bandwidth_octaves: float = 1.0
    stimulus_deg: float = 8.4  # NSD: the 425-pixel images subtended 8.4 degrees
    lumcol_grid: int = 8
    categories: tuple[str, ...] = CATEGORIES

    def __post_init__(self) -> None:
        if len(self.cycles_per_image) != len(self.grids):
            raise ShapeMismatchError("FeatureSpec.grids", len(self.cycles_per_image), len(self.grids), "one grid per scale")
        for g in self.grids:
            if self.model_size % g:
                raise ShapeMismatchError("FeatureSpec.grids", f"divisors of model_size={self.model_size}", g)
        if self.lumcol_grid < 1 or self.model_size % self.lumcol_grid:
            raise ShapeMismatchError(
                "FeatureSpec.lumcol_grid", f"a divisor of model_size={self.model_size}", self.lumcol_grid
            )

    @property
    def n_energy(self) -> int:
        """Columns of the Gabor energy block (the first low-level columns)."""
        return sum(self.n_orientations * g * g for g in self.grids)

    @property
    def n_lumcol(self) -> int:
        """Columns of the luminance/colour block (after the energy block)."""
        return 2 * len(LUMCOL_CHANNELS) * self.lumcol_grid**2

    @property
    def energy_slice(self) -> slice:
        return slice(0, self.n_energy)

    @property
    def lumcol_slice(self) -> slice:
        return slice(self.n_energy, self.n_lowlevel)

    @property
    def n_lowlevel(self) -> int:
        """Columns computed from pixels: Gabor energy then luminance/colour."""
        return self.n_energy + self.n_lumcol

    @property
    def n_features(self) -> int:
        return self.n_lowlevel + len(self.categories)

    @property
    def semantic_slice(self) -> slice:
        return slice(self.n_lowlevel, self.n_features)

    def feature_names(self) -> list[str]:
        """One name per feature column, e.g. ``energy/cpi16/ori45/r3c7``, ``lumcol/rg/off/r0c5``
        or ``semantic/face``."""
        names = []
        for cpi, g in zip(self.cycles_per_image, self.grids):
            for o in range(self.n_orientations):
                deg = round(180.0 * o / self.n_orientations)
                names += [f"energy/cpi{cpi:g}/ori{deg}/r{r}c{c}" for r in range(g) for c in range(g)]
        g = self.lumcol_grid
        for ch in LUMCOL_CHANNELS:
            for pol in ("on", "off"):
                names += [f"lumcol/{ch}/{pol}/r{r}c{c}" for r in range(g) for c in range(g)]
        return names + [f"semantic/{c}" for c in self.categories]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "FeatureSpec":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# --------------------------------------------------------------------------- image features
def as_float_images(images: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) uint8 or float in [0, 1] (a single (H, W, 3) image is accepted) -> float32."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ShapeMismatchError("images", "(n, H, W, 3)", arr.shape)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataFormatError(f"images: expected uint8 or float in [0, 1], got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if arr.size and (np.nanmin(arr) < -1e-3 or np.nanmax(arr) > 1.0 + 1e-3):
        raise DataFormatError(
            f"images: float images must lie in [0, 1], got range [{arr.min():.3g}, {arr.max():.3g}]"
        )
    return arr


def _resize_square(lum: np.ndarray, size: int) -> np.ndarray:
    """Resize (n, H, W) float32 to (n, size, size): box average when H is a multiple, else PIL.

    Also used per colour channel, so that every block sees the same resized image."""
    n, h, w = lum.shape
    if h == w == size:
        return lum
    if h == w and h % size == 0:
        f = h // size
        return lum.reshape(n, size, f, size, f).mean(axis=(2, 4), dtype=np.float32)
    from PIL import Image

    method = Image.Resampling.BOX if h >= size else Image.Resampling.BILINEAR
    out = np.empty((n, size, size), dtype=np.float32)
    for i in range(n):
        out[i] = np.asarray(Image.fromarray(lum[i], mode="F").resize((size, size), method), dtype=np.float32)
    return out


def gabor_bank(spec: FeatureSpec) -> np.ndarray:
    """Frequency responses (n_scales * n_orientations, size, size) of the complex Gabor filters."""
    n = spec.model_size
    f = np.fft.fftfreq(n) * n  # cycles per image
    fy, fx = f[:, None], f[None, :]
    b = 2.0**spec.bandwidth_octaves
    filters = []
    for f0 in spec.cycles_per_image:
        # Gaussian pass-band whose half-amplitude width spans `bandwidth_octaves`
        sigma = f0 * (b - 1.0) / ((b + 1.0) * np.sqrt(2.0 * np.log(2.0)))
        for o in range(spec.n_orientations):
            th = np.pi * o / spec.n_orientations
            cx, cy = f0 * np.cos(th), f0 * np.sin(th)
            filters.append(np.exp(-((fx - cx) ** 2 + (fy - cy) ** 2) / (2.0 * sigma**2)))
    return np.stack(filters).astype(np.float32)


def gabor_energy_features(images: np.ndarray, spec: FeatureSpec, batch: int = 128) -> np.ndarray:
    """Pooled Gabor energy (n, spec.n_energy) float32 of images (see module docstring)."""
    rgb = as_float_images(images)
    lum = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    lum = _resize_square(lum, spec.model_size)
    lum = lum - lum.mean(axis=(1, 2), keepdims=True)
    bank = gabor_bank(spec)
    n_ori = spec.n_orientations
    out = np.empty((lum.shape[0], spec.n_energy), dtype=np.float32)
    for start in range(0, lum.shape[0], batch):
        spec_img = np.fft.fft2(lum[start : start + batch]).astype(np.complex64)
        resp = np.abs(np.fft.ifft2(spec_img[:, None] * bank[None])).astype(np.float32)
        cols = []
        for k, g in enumerate(spec.grids):
            e = resp[:, k * n_ori : (k + 1) * n_ori]
            c = spec.model_size // g
            pooled = e.reshape(e.shape[0], n_ori, g, c, g, c).mean(axis=(3, 5))
            cols.append(pooled.reshape(e.shape[0], -1))
        out[start : start + batch] = np.concatenate(cols, axis=1)
    return out


def lumcol_features(images: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Rectified local luminance/colour (n, spec.n_lumcol) float32 of images (see module docstring)."""
    rgb = as_float_images(images)
    n = rgb.shape[0]
    # signed channels first, then one resize per channel (both steps are linear, so the order
    # does not matter for a box filter and this keeps the PIL path to single-channel images)
    signed = rgb @ LUMCOL_WEIGHTS.T + LUMCOL_OFFSETS  # (n, H, W, 3)
    g = spec.lumcol_grid
    c = spec.model_size // g
    blocks = []
    for k in range(len(LUMCOL_CHANNELS)):
        ch = _resize_square(np.ascontiguousarray(signed[..., k]), spec.model_size)
        m = ch.reshape(n, g, c, g, c).mean(axis=(2, 4), dtype=np.float32).reshape(n, g * g)
        blocks += [np.maximum(m, 0.0), np.maximum(-m, 0.0)]
    return np.concatenate(blocks, axis=1).astype(np.float32)


def lowlevel_features(images: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """All pixel-computed features (n, spec.n_lowlevel): Gabor energy then luminance/colour."""
    return np.concatenate([gabor_energy_features(images, spec), lumcol_features(images, spec)], axis=1)


def image_hashes(images: np.ndarray) -> np.ndarray:
    """SHA-1 of each image as uint8 (float images are rounded from [0, 1]): (n,) '<U40'."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(as_float_images(arr) * 255.0), 0, 255).astype(np.uint8)
    return np.array(
        [hashlib.sha1(np.ascontiguousarray(a).tobytes() + str(a.shape).encode()).hexdigest() for a in arr],
        dtype="<U40",
    )


# --------------------------------------------------------------------------- receptive fields
def cell_edges_deg(g: int, stimulus_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Cell edges of a g x g grid: x edges left->right, y edges top->bottom (y up is positive)."""
    x = np.linspace(-stimulus_deg / 2, stimulus_deg / 2, g + 1)
    return x, x[::-1].copy()


def prf_cell_weights(x0: np.ndarray, y0: np.ndarray, sigma: np.ndarray, g: int, stimulus_deg: float) -> np.ndarray:
    """Mass of isotropic Gaussian pRFs in each cell of a g x g grid: (n_vox, g*g), rows top->bottom."""
    xe, ye = cell_edges_deg(g, stimulus_deg)
    s = sigma[:, None]
    wx = ndtr((xe[None, 1:] - x0[:, None]) / s) - ndtr((xe[None, :-1] - x0[:, None]) / s)
    # ye decreases: cell r spans [ye[r+1], ye[r]]
    wy = ndtr((ye[None, :-1] - y0[:, None]) / s) - ndtr((ye[None, 1:] - y0[:, None]) / s)
    return (wy[:, :, None] * wx[:, None, :]).reshape(len(x0), g * g)


def preferred_cycles_per_image(sigma_deg: np.ndarray, stimulus_deg: float) -> np.ndarray:
    """Preferred spatial frequency of a pRF of size sigma: about 0.6 cycles per sigma."""
    return 0.6 * stimulus_deg / np.maximum(sigma_deg, 1e-3)


def lowlevel_weights(
    x0: np.ndarray,
    y0: np.ndarray,
    sigma: np.ndarray,
    ori_pref: np.ndarray,
    ori_strength: np.ndarray,
    spec: FeatureSpec,
) -> np.ndarray:
    """Weights (n_vox, spec.n_energy) of pRFs over the Gabor energy features."""
    pref = preferred_cycles_per_image(sigma, spec.stimulus_deg)
    cpi = np.asarray(spec.cycles_per_image)
    sw = np.exp(-0.5 * (np.log2(cpi[None, :] / pref[:, None])) ** 2)  # 1-octave s.d. tuning
    sw /= sw.sum(axis=1, keepdims=True)
    th = np.pi * np.arange(spec.n_orientations) / spec.n_orientations
    ow = 1.0 + ori_strength[:, None] * np.cos(2.0 * (th[None, :] - ori_pref[:, None]))
    blocks = []
    for k, g in enumerate(spec.grids):
        cw = prf_cell_weights(x0, y0, sigma, g, spec.stimulus_deg)
        blocks.append((sw[:, k, None, None] * ow[:, :, None] * cw[:, None, :]).reshape(len(x0), -1))
    return np.concatenate(blocks, axis=1).astype(np.float32)


def lumcol_preferences(area: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-voxel weights (n_vox, 6) of the channels lum-on, lum-off, rg-on, rg-off, by-on, by-off.

    Each channel gets ``base * (1 + a)`` on ON and ``base * (1 - a)`` on OFF, with an imbalance
    ``|a| ~ U(0.4, 1)`` of random sign (OFF-dominant with probability 0.6: "black dominance"
    of early visual cortex), so weights stay >= 0 while ``a`` sets a signed response to the
    channel's local mean. ``base`` is 1 for luminance and ``COLOUR_WEIGHT[area] * U(0.5, 1)``
    for each colour axis. Voxels of areas without an entry in :data:`COLOUR_WEIGHT` get zeros.
    """
    n = len(area)
    n_ch = len(LUMCOL_CHANNELS)
    sign = np.where(rng.random((n, n_ch)) < 0.6, -1.0, 1.0)
    imbalance = sign * rng.uniform(0.4, 1.0, (n, n_ch))
    base = np.ones((n, n_ch))
    colour = np.array([COLOUR_WEIGHT.get(a, 0.0) for a in area])
    base[:, 1:] = colour[:, None] * rng.uniform(0.5, 1.0, (n, n_ch - 1))
    pref = np.stack([base * (1.0 + imbalance), base * (1.0 - imbalance)], axis=2).reshape(n, 2 * n_ch)
    pref[~np.isin(area, list(COLOUR_WEIGHT))] = 0.0
    return pref


def lumcol_weights(
    x0: np.ndarray, y0: np.ndarray, sigma: np.ndarray, pref: np.ndarray, spec: FeatureSpec
) -> np.ndarray:
    """Weights (n_vox, spec.n_lumcol): pRF mass per cell of the lumcol grid times ``pref`` (n_vox, 6)."""
    cw = prf_cell_weights(x0, y0, sigma, spec.lumcol_grid, spec.stimulus_deg)
    return (pref[:, :, None] * cw[:, None, :]).reshape(len(x0), -1).astype(np.float32)


# --------------------------------------------------------------------------- the model
def _save_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


@dataclass
class EncodingModel:
    """Noise-free voxel responses to images (see the module docstring for the equations).

    Attributes
    ----------
    spec : FeatureSpec
    weights : (n_voxels, n_features) float32, >= 0
    bias, exponent, offset : (n_voxels,) float32; gain, center : (n_voxels,) float64
    voxels : dict of per-voxel arrays (``ijk``, ``roi_class``, ``prf_x``, ``prf_y``,
        ``prf_sigma``, ``prf_ecc``, ``prf_angle`` ...), as written by the simulator
    roi_labels : dict ROI file name -> (n_voxels,) int labels (0 = not in the ROI)
    registry_hashes, registry_semantics : the simulated stimuli's hashes and category areas
    """

    spec: FeatureSpec
    weights: np.ndarray
    bias: np.ndarray
    exponent: np.ndarray
    gain: np.ndarray
    center: np.ndarray
    offset: np.ndarray
    voxels: dict[str, np.ndarray] = field(default_factory=dict)
    roi_labels: dict[str, np.ndarray] = field(default_factory=dict)
    registry_hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype="<U40"))
    registry_semantics: np.ndarray = field(default_factory=lambda: np.zeros((0, len(CATEGORIES)), np.float32))

    @property
    def n_voxels(self) -> int:
        return int(self.weights.shape[0])

    def semantics_for(self, images: np.ndarray) -> np.ndarray:
        """Category areas of images known to the registry; zeros (with a warning) for others."""
        hashes = image_hashes(images)
        index = {h: i for i, h in enumerate(self.registry_hashes.tolist())}
        out = np.zeros((len(hashes), len(self.spec.categories)), dtype=np.float32)
        missing = 0
        for i, h in enumerate(hashes.tolist()):
            j = index.get(h)
            if j is None:
                missing += 1
            else:
                out[i] = self.registry_semantics[j]
        if missing:
            warnings.warn(
                f"EncodingModel: {missing} of {len(hashes)} images are not simulated stimuli; their semantic "
                "features are set to 0 (pass semantics= to give them)",
                stacklevel=3,
            )
        return out

    def features(self, images: np.ndarray, semantics: np.ndarray | None = None) -> np.ndarray:
        """Feature matrix (n, spec.n_features) float32 of images (n, H, W, 3) uint8 or float [0, 1]."""
        low = lowlevel_features(images, self.spec)
        if semantics is None:
            sem = self.semantics_for(images)
        else:
            sem = np.asarray(semantics, dtype=np.float32)
            if sem.shape != (low.shape[0], len(self.spec.categories)):
                raise ShapeMismatchError("semantics", (low.shape[0], len(self.spec.categories)), sem.shape)
        return np.concatenate([low, sem], axis=1)

    def drive(self, features: np.ndarray) -> np.ndarray:
        """Linear drive (n, n_voxels) float64 before the compressive nonlinearity."""
        f = np.asarray(features, dtype=np.float32)
        if f.ndim != 2 or f.shape[1] != self.spec.n_features:
            raise ShapeMismatchError("features", f"(n, {self.spec.n_features})", f.shape)
        return f.astype(np.float64) @ self.weights.T.astype(np.float64) + self.bias[None, :].astype(np.float64)

    def compressed(self, features: np.ndarray) -> np.ndarray:
        """``max(drive, 0) ** exponent`` (n, n_voxels) float64."""
        return np.maximum(self.drive(features), 0.0) ** self.exponent[None, :].astype(np.float64)

    def predict_from_features(self, features: np.ndarray) -> np.ndarray:
        """Noise-free responses (n, n_voxels) float32, percent signal change."""
        c = self.compressed(features)
        out = self.offset[None, :].astype(np.float64) + self.gain[None, :] * (c - self.center[None, :])
        return out.astype(np.float32)

    def predict(self, images: np.ndarray, semantics: np.ndarray | None = None) -> np.ndarray:
        """Noise-free responses (n, n_voxels) float32 to images, percent signal change."""
        return self.predict_from_features(self.features(images, semantics))

    def spatial_sensitivity(
        self, features: np.ndarray, voxels: np.ndarray | None = None, size: int | None = None
    ) -> np.ndarray:
        """Where each voxel's drive comes from in the image: its *effective* receptive field.

        A voxel's pRF is nominal; the model sees the image through features pooled over grid
        cells (the finest is ``model_size / grids[0]`` pixels for the Gabor energy and
        ``model_size / lumcol_grid`` for luminance/colour), so a pRF smaller than a cell is
        spread over the cell. The sensitivity of voxel v at pixel p is
        ``sum_f weights[v, f] * sd_f * [p in cell(f)] / |cell(f)|`` over the pixel-computed
        features, with ``sd_f`` the feature's standard deviation over ``features`` (a stimulus
        set): a feature contributes in proportion to the drive variance it can cause. Each
        voxel's map is normalised to sum 1 (as a pRF integrates to 1); voxels without low-level
        weights give zeros.

        Parameters
        ----------
        features : (n, n_features) or (n, n_lowlevel)
            Features of a stimulus set (:meth:`features` or :func:`lowlevel_features`).
        voxels : (k,) int or bool, optional
            Voxels to map (default all).
        size : int, optional
            Map side in pixels (default ``model_size``); cells are mapped to the nearest pixels.

        Returns
        -------
        (k, size, size) float64, row 0 at the top of the image.
        """
        spec = self.spec
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] not in (spec.n_lowlevel, spec.n_features):
            raise ShapeMismatchError("features", f"(n, {spec.n_lowlevel}) or (n, {spec.n_features})", f.shape)
        sd = f[:, : spec.n_lowlevel].std(axis=0)
        W = self.weights[:, : spec.n_lowlevel].astype(np.float64)
        if voxels is not None:
            W = W[np.asarray(voxels)]
        W = W * sd[None, :]
        size = int(size or spec.model_size)
        out = np.zeros((len(W), size, size))
        col = 0
        blocks = [(g, spec.n_orientations) for g in spec.grids] + [(spec.lumcol_grid, 2 * len(LUMCOL_CHANNELS))]
        for g, n_maps in blocks:
            # (k, g, g) summed weight per cell over the block's maps, then spread evenly over the cell's pixels
            cells = W[:, col : col + n_maps * g * g].reshape(len(W), n_maps, g, g).sum(1)
            col += n_maps * g * g
            edges = np.linspace(0, size, g + 1)
            idx = np.minimum(np.searchsorted(edges, np.arange(size) + 0.5, side="right") - 1, g - 1)
            area = np.bincount(idx, minlength=g).astype(np.float64)  # pixels per cell along one axis
            out += (cells / (area[None, :, None] * area[None, None, :]))[:, idx][:, :, idx]
        tot = out.sum(axis=(1, 2), keepdims=True)
        return np.divide(out, tot, out=np.zeros_like(out), where=tot > 0)

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> None:
        """Write ``model.npz`` (arrays) and ``model.json`` (feature spec, names) into ``folder``."""
        from brainrecon.sim.npz import write_npz

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {
            "weights": self.weights,
            "bias": self.bias,
            "exponent": self.exponent,
            "gain": self.gain,
            "center": self.center,
            "offset": self.offset,
            "registry_hashes": self.registry_hashes,
            "registry_semantics": self.registry_semantics,
        }
        arrays.update({f"voxel__{k}": v for k, v in self.voxels.items()})
        arrays.update({f"roi__{k}": v for k, v in self.roi_labels.items()})
        write_npz(folder / "model.npz", arrays)
        _save_json(
            folder / "model.json",
            {
                "format_version": MODEL_FORMAT_VERSION,
                "spec": self.spec.to_json(),
                "n_voxels": self.n_voxels,
                "n_features": self.spec.n_features,
                "response": "offset + gain * (max(features @ weights.T + bias, 0) ** exponent - center) (percent signal)",
            },
        )

    @classmethod
    def load(cls, folder: str | Path) -> "EncodingModel":
        """Read a model written by :meth:`save`."""
        folder = Path(folder)
        meta_path, npz_path = folder / "model.json", folder / "model.npz"
        for p in (meta_path, npz_path):
            if not p.is_file():
                raise MissingDataError(p, "encoding model file", "written by EncodingModel.save")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != MODEL_FORMAT_VERSION:
            raise DataFormatError(
                f"{meta_path}: format_version {MODEL_FORMAT_VERSION} expected, got {meta.get('format_version')}"
            )
        spec = FeatureSpec.from_json(meta["spec"])
        with np.load(npz_path, allow_pickle=False) as z:
            arr = {k: z[k] for k in z.files}
        model = cls(
            spec=spec,
            weights=arr["weights"],
            bias=arr["bias"],
            exponent=arr["exponent"],
            gain=arr["gain"],
            center=arr["center"],
            offset=arr["offset"],
            voxels={k[len("voxel__") :]: v for k, v in arr.items() if k.startswith("voxel__")},
            roi_labels={k[len("roi__") :]: v for k, v in arr.items() if k.startswith("roi__")},
            registry_hashes=arr["registry_hashes"],
            registry_semantics=arr["registry_semantics"],
        )
        if model.weights.shape[1] != spec.n_features:
            raise ShapeMismatchError(f"{npz_path} weights", f"(n_voxels, {spec.n_features})", model.weights.shape)
        return model


# --------------------------------------------------------------------------- construction
#: Compressive exponent per area (CSS model: stronger compression higher in the hierarchy).
EXPONENTS: dict[str, float] = {"V1": 0.5, "V2": 0.45, "V3": 0.4, "hV4": 0.35, "floc": 0.5, "other": 0.45}
#: S.d. of the low-level drive relative to the semantic drive, for voxels that have both.
LOWLEVEL_SHARE: dict[str, float] = {"floc": 0.35, "other": 1.0}
#: Colour weight relative to luminance per early visual area: colour-opponent signals are
#: strong in V1 (blobs) and hV4 and weaker in V2/V3 (a plausible simplification).
COLOUR_WEIGHT: dict[str, float] = {"V1": 0.8, "V2": 0.5, "V3": 0.5, "hV4": 1.0}
#: Share of the early visual voxels' low-level drive variance (over the stimulus set) given to
#: the luminance/colour block: var_lumcol / (var_lumcol + var_energy), set per voxel.
LUMCOL_SHARE: float = 0.4


def build_encoding_model(
    layout,
    features: np.ndarray,
    signal_sd: np.ndarray,
    mean_response: np.ndarray,
    rng: np.random.Generator,
    spec: FeatureSpec,
    registry_hashes: np.ndarray,
) -> EncodingModel:
    """Draw voxel weights for ``layout`` (a :class:`~brainrecon.sim.anatomy.VoxelLayout`) and
    calibrate gain/center/offset on ``features`` of the stimulus set so that each voxel's noise-free
    response has standard deviation ``signal_sd`` and mean ``mean_response`` (percent)."""
    from brainrecon.sim.stimuli import FLOC_CATEGORY

    n = layout.n_voxels
    area = layout.area()
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[1] != spec.n_features:
        raise ShapeMismatchError("features", f"(n_images, {spec.n_features})", feats.shape)
    low_f, sem_f = feats[:, : spec.n_lowlevel], feats[:, spec.semantic_slice]
    ori_pref = rng.uniform(0.0, np.pi, n)
    ori_strength = rng.uniform(0.0, 0.3, n)  # voxel-level orientation bias is weak
    x0, y0 = layout.prf_x.astype(np.float64), layout.prf_y.astype(np.float64)
    s0 = layout.prf_sigma.astype(np.float64)
    w_energy = lowlevel_weights(x0, y0, s0, ori_pref, ori_strength, spec).astype(np.float64)
    w_lumcol = lumcol_weights(x0, y0, s0, lumcol_preferences(area, rng), spec).astype(np.float64)
    # per voxel, scale the luminance/colour block to LUMCOL_SHARE of the low-level drive variance
    has_lc = np.flatnonzero(w_lumcol.any(axis=1))
    if has_lc.size:
        e_sd = (feats[:, spec.energy_slice].astype(np.float64) @ w_energy[has_lc].T).std(axis=0)
        l_sd = (feats[:, spec.lumcol_slice].astype(np.float64) @ w_lumcol[has_lc].T).std(axis=0)
        ratio = np.sqrt(LUMCOL_SHARE / (1.0 - LUMCOL_SHARE))
        scale = np.where((e_sd > 0) & (l_sd > 0), ratio * e_sd / np.maximum(l_sd, 1e-30), 1.0)
        w_lumcol[has_lc] *= scale[:, None]
    w_low = np.concatenate([w_energy, w_lumcol], axis=1)
    n_cat = len(spec.categories)
    w_sem = np.zeros((n, n_cat))
    floc = area == "floc"
    other = area == "other"
    w_sem[floc] = rng.uniform(0.0, 0.15, size=(int(floc.sum()), n_cat))
    for roi_file, cat in FLOC_CATEGORY.items():
        member = layout.roi_labels[roi_file] > 0
        w_sem[member, spec.categories.index(cat)] += 1.0
    w_sem[other] = rng.uniform(0.0, 0.5, size=(int(other.sum()), n_cat))
    # balance the weak low-level input of category and unlabelled voxels against their semantic drive
    mixed = floc | other
    if mixed.any():
        low_sd = (low_f.astype(np.float64) @ w_low[mixed].T).std(axis=0)
        sem_sd = (sem_f.astype(np.float64) @ w_sem[mixed].T).std(axis=0)
        share = np.where(floc[mixed], LOWLEVEL_SHARE["floc"], LOWLEVEL_SHARE["other"])
        scale = np.where((sem_sd > 0) & (low_sd > 0), share * sem_sd / np.maximum(low_sd, 1e-30), 1.0)
        w_low[mixed] *= scale[:, None]
    weights = np.concatenate([w_low, w_sem], axis=1).astype(np.float32)
    drive0 = feats.astype(np.float64) @ weights.astype(np.float64).T
    bias = (0.05 * drive0.mean(axis=0) + 1e-8).astype(np.float32)
    exponent = np.array([EXPONENTS[a] for a in area]) * np.exp(rng.normal(0.0, 0.05, n))
    exponent = exponent.astype(np.float32)
    model = EncodingModel(
        spec=spec,
        weights=weights,
        bias=bias,
        exponent=exponent,
        gain=np.ones(n, dtype=np.float64),
        center=np.zeros(n, dtype=np.float64),
        offset=np.asarray(mean_response, dtype=np.float32),
        registry_hashes=np.asarray(registry_hashes, dtype="<U40"),
        registry_semantics=sem_f.copy(),
    )
    compressed = model.compressed(feats)
    sd = compressed.std(axis=0)
    if np.any(sd <= 0):
        raise ShapeMismatchError(
            "encoding model calibration", "voxels whose drive varies over the stimuli", f"{int(np.sum(sd <= 0))} constant voxels"
        )
    # centring before the gain keeps float precision for voxels whose drive barely varies
    model.center = compressed.mean(axis=0)
    model.gain = np.asarray(signal_sd, dtype=np.float64) / sd
    return model
