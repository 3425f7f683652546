"""The simulator's encoding model: Gabor energy and luminance/colour features, pRFs, category
selectivity, I/O."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from brainrecon.errors import DataFormatError, MissingDataError, ShapeMismatchError
from brainrecon.sim import CATEGORIES, FLOC_CATEGORY, EncodingModel, FeatureSpec
from brainrecon.sim.anatomy import place_voxels
from brainrecon.sim.encoding import (
    build_encoding_model,
    gabor_energy_features,
    image_hashes,
    lowlevel_features,
    lumcol_features,
    prf_cell_weights,
)
from brainrecon.sim.stimuli import procedural_stimuli

SPEC = FeatureSpec()
N = 64


def grating(cpi: float, orientation_deg: float, size: int = N, window=None) -> np.ndarray:
    """Grey RGB uint8 image with a sinusoidal grating; orientation 0 = luminance varies along x."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    th = np.deg2rad(orientation_deg)
    g = 0.5 + 0.4 * np.sin(2 * np.pi * cpi * (xx * np.cos(th) + yy * np.sin(th)))
    if window is not None:
        g = np.where(window, g, 0.5)
    return np.repeat(np.round(g * 255).astype(np.uint8)[..., None], 3, axis=2)


def block(feats: np.ndarray, scale: int) -> np.ndarray:
    """(n, n_orientations, g, g) energy block of one scale."""
    start = sum(SPEC.n_orientations * g * g for g in SPEC.grids[:scale])
    g = SPEC.grids[scale]
    return feats[:, start : start + SPEC.n_orientations * g * g].reshape(-1, SPEC.n_orientations, g, g)


@pytest.fixture(scope="module")
def model_and_stimuli():
    rng = np.random.default_rng(11)
    vox = place_voxels(400, rng)
    stim = procedural_stimuli(120, N, rng)
    feats = np.concatenate([lowlevel_features(stim.images, SPEC), stim.semantics], axis=1)
    sd = np.full(vox.n_voxels, 1.5)
    mean = np.full(vox.n_voxels, 1.0)
    model = build_encoding_model(vox, feats, sd, mean, rng, SPEC, image_hashes(stim.images))
    model.roi_labels = dict(vox.roi_labels)
    model.voxels = {"roi_class": vox.roi_class, "prf_x": vox.prf_x, "prf_y": vox.prf_y, "prf_sigma": vox.prf_sigma}
    return model, stim, feats, vox


def test_feature_spec_names():
    # low-level = Gabor energy (4 orientations x 3 grids) + luminance/colour (3 channels x ON/OFF x 8x8)
    assert SPEC.n_energy == 4 * (16 * 16 + 8 * 8 + 4 * 4)
    assert SPEC.n_lumcol == 3 * 2 * 8 * 8
    assert SPEC.n_lowlevel == SPEC.n_energy + SPEC.n_lumcol
    assert SPEC.n_features == SPEC.n_lowlevel + len(CATEGORIES)
    names = SPEC.feature_names()
    assert len(names) == len(set(names)) == SPEC.n_features
    assert names[0] == "energy/cpi16/ori0/r0c0" and names[-1] == "semantic/ball"
    assert names[SPEC.n_energy - 1] == "energy/cpi4/ori135/r3c3"
    assert names[SPEC.lumcol_slice][0] == "lumcol/lum/on/r0c0"
    assert names[SPEC.lumcol_slice][64 + 8 + 2] == "lumcol/lum/off/r1c2"
    assert names[SPEC.lumcol_slice][-1] == "lumcol/by/off/r7c7"
    assert names[SPEC.semantic_slice][0] == "semantic/face"
    assert FeatureSpec.from_json(SPEC.to_json()) == SPEC
    with pytest.raises(ShapeMismatchError):
        FeatureSpec(grids=(16, 8))
    with pytest.raises(ShapeMismatchError):
        FeatureSpec(lumcol_grid=6)  # not a divisor of model_size=64


def test_gabor_energy_orientation_frequency_and_position():
    vertical = gabor_energy_features(grating(8, 0)[None], SPEC)
    horizontal = gabor_energy_features(grating(8, 90)[None], SPEC)
    b_v, b_h = block(vertical, 1)[0], block(horizontal, 1)[0]  # scale 1 = 8 cycles/image
    assert b_v[0].mean() > 5 * b_v[2].mean()  # orientation 0 channel sees vertical stripes
    assert b_h[2].mean() > 5 * b_h[0].mean()
    # spatial-frequency selectivity: a 16 cycles/image grating drives the finest scale most
    fine = gabor_energy_features(grating(16, 0)[None], SPEC)
    assert block(fine, 0)[0, 0].mean() > 5 * block(fine, 2)[0, 0].mean()
    # localisation: a grating confined to the top-left quadrant puts its energy there
    yy, xx = np.mgrid[0:N, 0:N]
    patch = gabor_energy_features(grating(8, 0, window=(yy < N // 2) & (xx < N // 2))[None], SPEC)
    e = block(patch, 1)[0, 0]
    assert e[:3, :3].mean() > 10 * e[5:, 5:].mean()


def test_gabor_energy_inputs():
    img = grating(8, 45, size=128)
    f_u8 = gabor_energy_features(img[None], SPEC)
    f_float = gabor_energy_features(img[None].astype(np.float32) / 255.0, SPEC)
    np.testing.assert_allclose(f_u8, f_float, rtol=1e-5, atol=1e-7)
    # resolution independence: 128 px box-averaged to the model's 64 px equals the 64 px render
    small = img.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3)) / 255.0
    np.testing.assert_allclose(gabor_energy_features(small[None], SPEC), f_float, rtol=1e-4, atol=1e-6)
    # a single image (H, W, 3) is accepted; other sizes are resized
    assert gabor_energy_features(img, SPEC).shape == (1, SPEC.n_energy)
    assert gabor_energy_features(grating(8, 0, size=50)[None], SPEC).shape == (1, SPEC.n_energy)
    assert lowlevel_features(grating(8, 0, size=50)[None], SPEC).shape == (1, SPEC.n_lowlevel)
    with pytest.raises(ShapeMismatchError):
        gabor_energy_features(np.zeros((2, 32, 32), np.uint8), SPEC)
    with pytest.raises(DataFormatError):
        gabor_energy_features(np.full((1, 32, 32, 3), 2.0), SPEC)


def lumcol_block(feats: np.ndarray) -> np.ndarray:
    """(n, 3 channels, 2 polarities, 8, 8) view of the luminance/colour block."""
    return feats.reshape(-1, 3, 2, SPEC.lumcol_grid, SPEC.lumcol_grid)


def test_lumcol_features_hand_worked():
    # an image whose left half is pure red (1, 0, 0) and right half mid grey (0.5, 0.5, 0.5),
    # and whose top-left 8x8 pixels (one cell) are pure blue (0, 0, 1)
    img = np.full((N, N, 3), 0.5, np.float32)
    img[:, : N // 2] = (1.0, 0.0, 0.0)
    img[:8, :8] = (0.0, 0.0, 1.0)
    f = lumcol_block(lumcol_features(img, SPEC))[0]
    assert np.all(f >= 0)
    red_lum, blue_lum = 0.299 - 0.5, 0.114 - 0.5  # both darker than mid grey
    # luminance: OFF only on the left, nothing on the grey right half
    np.testing.assert_allclose(f[0, 1, 1:, :4], -red_lum, rtol=1e-5)
    np.testing.assert_allclose(f[0, 1, 0, 0], -blue_lum, rtol=1e-5)
    assert np.all(f[0, 0] == 0) and np.all(f[:, :, :, 4:] == 0)
    # red-green: R - G = 1 on red cells (ON), 0 on the blue cell
    np.testing.assert_allclose(f[1, 0, 1:, :4], 1.0, rtol=1e-6)
    assert f[1, 0, 0, 0] == 0 and np.all(f[1, 1] == 0)
    # blue-yellow: B - (R + G) / 2 = -0.5 on red (OFF), +1 on blue (ON)
    np.testing.assert_allclose(f[2, 1, 1:, :4], 0.5, rtol=1e-6)
    np.testing.assert_allclose(f[2, 0, 0, 0], 1.0, rtol=1e-6)
    # uint8, larger images (box-averaged) and a different size (resized) give the same block
    big = np.repeat(np.repeat(np.round(img * 255).astype(np.uint8), 2, axis=0), 2, axis=1)
    np.testing.assert_allclose(lumcol_features(big, SPEC), lumcol_features(np.round(img * 255) / 255, SPEC), atol=1e-6)
    assert lumcol_features(big[:100, :100], SPEC).shape == (1, SPEC.n_lumcol)
    # the energy block ignores the mean luminance: a uniform image has zero energy, but
    # luminance features
    flat = lowlevel_features(np.full((1, N, N, 3), 0.9, np.float32), SPEC)[0]
    np.testing.assert_allclose(flat[SPEC.energy_slice], 0.0, atol=1e-5)
    np.testing.assert_allclose(lumcol_block(flat[SPEC.lumcol_slice])[0, 0, 0], 0.4, rtol=1e-5)


def test_prf_cell_weights_against_numerical_integration():
    x0, y0, s = np.array([1.0, -2.5]), np.array([0.5, 3.9]), np.array([0.7, 1.5])
    w = prf_cell_weights(x0, y0, s, 4, 8.4)
    # independent: sample the Gaussian densely over the image, sum per cell
    n = 800
    c = (np.arange(n) + 0.5) / n * 8.4 - 4.2
    X, Y = np.meshgrid(c, c[::-1])  # rows top (y = +4.2) to bottom
    for v in range(2):
        dens = np.exp(-((X - x0[v]) ** 2 + (Y - y0[v]) ** 2) / (2 * s[v] ** 2)) / (2 * np.pi * s[v] ** 2)
        cells = dens.reshape(4, n // 4, 4, n // 4).sum(axis=(1, 3)) * (8.4 / n) ** 2
        np.testing.assert_allclose(w[v].reshape(4, 4), cells, atol=2e-4)
    assert w[1].sum() < 0.75  # the second pRF hangs over the top edge


def test_responses_are_retinotopic_and_compressive(model_and_stimuli):
    model, stim, feats, vox = model_and_stimuli
    area = vox.area()
    # a V1 voxel with a pRF well inside the image prefers a patch at its pRF to the mirrored patch
    cand = np.flatnonzero((area == "V1") & (vox.prf_ecc > 1.5) & (vox.prf_ecc < 3.0))
    assert len(cand) > 5
    yy, xx = (np.mgrid[0:N, 0:N] + 0.5) / N * 8.4 - 4.2
    yy = -yy
    wins = 0
    for v in cand:
        px, py = vox.prf_x[v], vox.prf_y[v]
        r = 1.0
        at = grating(8, 0, window=(xx - px) ** 2 + (yy - py) ** 2 < r**2)
        away = grating(8, 0, window=(xx + px) ** 2 + (yy + py) ** 2 < r**2)
        zeros = np.zeros((2, len(CATEGORIES)), np.float32)
        pred = model.predict(np.stack([at, away]), semantics=zeros)
        wins += pred[0, v] > pred[1, v]
    assert wins == len(cand)
    # compressive: doubling the contrast doubles the drive but less than doubles the response
    f1 = feats[:5].copy()
    f2 = f1.copy()
    f2[:, : SPEC.n_lowlevel] *= 2
    early = np.isin(area, ["V1", "V2", "V3", "hV4"])
    d1, d2 = model.drive(f1)[:, early] - model.bias[early], model.drive(f2)[:, early] - model.bias[early]
    np.testing.assert_allclose(d2, 2 * d1, rtol=1e-6)
    ratio = model.compressed(f2)[:, early] / model.compressed(f1)[:, early]
    assert np.all(ratio > 1.0) and np.all(ratio < 2.0)
    assert np.all(model.exponent < 1)
    # gains are positive, so the response rises with contrast, sub-linearly
    assert np.all(model.gain > 0)
    r1, r2 = model.predict_from_features(f1)[:, early], model.predict_from_features(f2)[:, early]
    assert np.all(r2 > r1)


def test_early_voxels_carry_signed_local_luminance(model_and_stimuli):
    model, stim, feats, vox = model_and_stimuli
    area = vox.area()
    early = np.isin(area, ["V1", "V2", "V3", "hV4"])
    w = model.weights
    assert np.all(w >= 0)
    # only early visual voxels weight the luminance/colour block
    assert np.all(w[~early][:, SPEC.lumcol_slice] == 0)
    assert np.all(w[early][:, SPEC.lumcol_slice].sum(axis=1) > 0)
    # per voxel the block holds LUMCOL_SHARE of the low-level drive variance (independent recomputation)
    f = feats.astype(np.float64)
    d_e = f[:, SPEC.energy_slice] @ w[early][:, SPEC.energy_slice].T.astype(np.float64)
    d_l = f[:, SPEC.lumcol_slice] @ w[early][:, SPEC.lumcol_slice].T.astype(np.float64)
    np.testing.assert_allclose(d_l.var(0) / (d_l.var(0) + d_e.var(0)), 0.4, rtol=1e-3)
    # a uniform grey field above or below mid grey: no energy, so only luminance drives the
    # voxels; ON- and OFF-dominant voxels respond with opposite signs (a signed code)
    lum = w[:, SPEC.lumcol_slice].reshape(-1, 3, 2, 64)[:, 0].sum(axis=2)  # (n, on/off)
    on_dom = early & (lum[:, 0] > 1.5 * lum[:, 1]) & (vox.prf_ecc < 3)
    off_dom = early & (lum[:, 1] > 1.5 * lum[:, 0]) & (vox.prf_ecc < 3)
    assert on_dom.sum() > 5 and off_dom.sum() > 5
    zeros = np.zeros((2, len(CATEGORIES)), np.float32)
    bright, dark = np.full((N, N, 3), 0.8, np.float32), np.full((N, N, 3), 0.2, np.float32)
    pred = model.predict(np.stack([bright, dark]), semantics=zeros)
    assert np.all(pred[0, on_dom] > pred[1, on_dom])
    assert np.all(pred[0, off_dom] < pred[1, off_dom])


def test_category_rois_prefer_their_category(model_and_stimuli):
    model, stim, feats, vox = model_and_stimuli
    base = feats[:40].copy()
    base[:, SPEC.semantic_slice] = 0
    for roi, cat in FLOC_CATEGORY.items():
        members = model.roi_labels[roi] > 0
        assert members.sum() > 5
        means = {}
        for c, name in enumerate(CATEGORIES):
            f = base.copy()
            f[:, SPEC.n_lowlevel + c] = 0.15  # the category covers 15 % of every image
            means[name] = model.predict_from_features(f)[:, members].mean()
        best = max(means, key=means.get)
        assert best == cat, (roi, means)
        others = max(v for k, v in means.items() if k != cat)
        assert means[cat] - others > 0.5  # percent signal change
    # and on the real stimuli: images that contain the category drive the ROI more
    pred = model.predict(stim.images)
    for roi, cat in FLOC_CATEGORY.items():
        has = stim.semantics[:, CATEGORIES.index(cat)] > 0
        r = pred[:, model.roi_labels[roi] > 0].mean(axis=1)
        assert r[has].mean() > r[~has].mean() + 0.5 * r.std(), roi


def test_calibration_and_semantic_registry(model_and_stimuli):
    model, stim, feats, vox = model_and_stimuli
    pred = model.predict(stim.images)
    np.testing.assert_allclose(pred.std(axis=0), 1.5, rtol=1e-3)
    np.testing.assert_allclose(pred.mean(axis=0), 1.0, atol=1e-3)
    np.testing.assert_allclose(model.features(stim.images), feats, rtol=1e-6)
    # float images in [0, 1] find the same registry entries
    np.testing.assert_allclose(model.features(stim.images[:3] / 255.0)[:, -len(CATEGORIES) :], stim.semantics[:3])
    # an unknown image gets zero semantics and a warning
    new = procedural_stimuli(1, N, np.random.default_rng(999))
    with pytest.warns(UserWarning, match="not simulated stimuli"):
        f = model.features(new.images)
    assert np.all(f[:, SPEC.semantic_slice] == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f = model.features(new.images, semantics=new.semantics)
    np.testing.assert_array_equal(f[:, SPEC.semantic_slice], new.semantics)
    with pytest.raises(ShapeMismatchError):
        model.features(new.images, semantics=np.zeros((2, 3)))
    with pytest.raises(ShapeMismatchError):
        model.predict_from_features(np.zeros((2, 5)))


def test_save_load_round_trip(model_and_stimuli, tmp_path):
    model, stim, feats, vox = model_and_stimuli
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.npz"]
    loaded = EncodingModel.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict(stim.images[:4]), model.predict(stim.images[:4]))
    assert loaded.spec == model.spec
    assert set(loaded.roi_labels) == set(model.roi_labels)
    np.testing.assert_array_equal(loaded.voxels["prf_x"], vox.prf_x)
    with pytest.raises(MissingDataError):
        EncodingModel.load(tmp_path / "missing")


def test_spatial_sensitivity_is_where_the_voxel_looks(model_and_stimuli):
    """Effective receptive fields: peaks at the pRF, sum to 1, move with eccentricity; a weight planted on one
    luminance cell maps onto that cell's pixels only."""
    model, stim, feats, vox = model_and_stimuli
    area = vox.area()
    early = np.flatnonzero(np.isin(area, ["V1", "V2", "V3", "hV4"]))
    maps = model.spatial_sensitivity(feats, early, size=64)
    assert maps.shape == (len(early), 64, 64)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0)
    c = (np.arange(64) + 0.5) / 64 * SPEC.stimulus_deg - SPEC.stimulus_deg / 2
    ecc_px = np.hypot(c[None, :], -c[:, None])
    centre_ecc = (maps * ecc_px).sum(axis=(1, 2))  # sensitivity-weighted eccentricity
    assert np.corrcoef(centre_ecc, vox.prf_ecc[early])[0, 1] > 0.8
    floc = np.flatnonzero(area == "floc")[:3]
    assert np.all(model.spatial_sensitivity(feats, floc)[:, :, :].sum(axis=(1, 2)) >= 0)
    toy = EncodingModel(SPEC, np.zeros((1, SPEC.n_features), np.float32), *(np.zeros(1) for _ in range(5)))
    g = SPEC.lumcol_grid
    toy.weights[0, SPEC.n_energy + 2 * g + 5] = 1.0  # lum-on, cell row 2, column 5
    m = toy.spatial_sensitivity(feats, size=SPEC.model_size)[0]
    k = SPEC.model_size // g
    assert m[2 * k:3 * k, 5 * k:6 * k].sum() == pytest.approx(1.0) and m.max() == pytest.approx(1 / k**2)
    with pytest.raises(ShapeMismatchError):
        toy.spatial_sensitivity(feats[:, :10])
