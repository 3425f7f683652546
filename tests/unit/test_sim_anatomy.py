"""Voxel placement, ROI label conventions and retinotopy of the simulated subject."""

from __future__ import annotations

import numpy as np
import pytest

from brainrecon.errors import ConfigError
from brainrecon.sim.anatomy import ECC_EDGES, FLOC_LABELS, PRF_SIZE_LAW, place_voxels


@pytest.fixture(scope="module")
def vox():
    return place_voxels(1500, np.random.default_rng(7))


def test_voxels_unique_inside_the_mni_brain(vox):
    from nilearn.datasets import load_mni152_brain_mask

    assert vox.n_voxels == 1500
    assert len(np.unique(vox.ijk, axis=0)) == vox.n_voxels
    mni = load_mni152_brain_mask(resolution=2)
    # map the cropped indices back to the template grid through the affines
    world = vox.ijk @ vox.affine[:3, :3].T + vox.affine[:3, 3]
    np.testing.assert_allclose(world, vox.mni, atol=1e-4)
    full = np.linalg.solve(mni.affine, np.c_[world, np.ones(len(world))].T)[:3].T.round().astype(int)
    assert np.asarray(mni.dataobj)[tuple(full.T)].all()
    # early visual voxels are occipital, category voxels occipito-temporal
    area = vox.area()
    early = np.isin(area, ["V1", "V2", "V3", "hV4"])
    assert vox.mni[early, 1].max() <= -68
    floc = area == "floc"
    assert np.all(vox.mni[floc, 1] < 0) and np.all(vox.mni[floc, 2] < 40)
    # voxel order is C order in the volume
    flat = np.ravel_multi_index(vox.ijk.T, vox.volume_shape)
    assert np.all(np.diff(flat) > 0)


def test_roi_label_conventions(vox):
    lab = vox.roi_labels
    assert set(lab) == {"nsdgeneral", "prf-visualrois", "prf-eccrois", *FLOC_LABELS}
    assert np.all(lab["nsdgeneral"] == 1)
    names = {1: "V1v", 2: "V1d", 3: "V2v", 4: "V2d", 5: "V3v", 6: "V3d", 7: "hV4"}
    vis = lab["prf-visualrois"]
    assert set(np.unique(vis)) == {0, *names}
    for v, name in names.items():
        assert np.all(vox.roi_class[vis == v] == name)
    # eccentricity labels recomputed from the pRF centres with NSD's bins
    ecc = np.hypot(vox.prf_x, vox.prf_y)
    expected = np.select([ecc < 0.5, ecc < 1, ecc < 2, ecc < 4], [1, 2, 3, 4], 5)
    early = vis > 0
    np.testing.assert_array_equal(lab["prf-eccrois"][early], expected[early])
    assert np.all(lab["prf-eccrois"][~early] == 0)
    assert set(np.unique(lab["prf-eccrois"][early])) == {1, 2, 3, 4, 5}
    assert ECC_EDGES == (0.5, 1.0, 2.0, 4.0)
    for roi, sub in FLOC_LABELS.items():
        vals = set(np.unique(lab[roi])) - {0}
        assert vals == set(range(1, len(sub) + 1)), roi
        # category ROIs contain no early visual voxels
        assert not np.any((lab[roi] > 0) & early)
    # words are left-lateralised
    assert np.all(vox.hemisphere[lab["floc-words"] > 0] == "L")
    # volumes: -1 outside the brain, 0 inside but not in the ROI
    vol = vox.volume(lab["prf-visualrois"], -1, np.int16, fill_brain=0)
    assert set(np.unique(vol)) == {-1, 0, *names}
    np.testing.assert_array_equal(vol >= 0, vox.brain)


def test_retinotopy_halves_and_hemispheres(vox):
    cls = vox.roi_class
    early = np.isin(cls, ["V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4"])
    # each hemisphere maps the contralateral visual field
    assert np.all(vox.prf_x[early & (vox.hemisphere == "L")] > 0)
    assert np.all(vox.prf_x[early & (vox.hemisphere == "R")] < 0)
    # dorsal halves: lower field; ventral halves: upper field (angle jitter allows a few near
    # the horizontal meridian to cross)
    dorsal = np.char.endswith(cls.astype(str), "d") & early
    ventral = np.isin(cls, ["V1v", "V2v", "V3v"])
    assert np.mean(vox.prf_y[dorsal] < 0) > 0.9
    assert np.mean(vox.prf_y[ventral] > 0) > 0.9
    # eccentricity grows from the occipital pole (posterior) forwards
    for c in ["V1d", "V2v", "V3d"]:
        m = cls == c
        assert np.corrcoef(vox.mni[m, 1], np.log(vox.prf_ecc[m]))[0, 1] > 0.8


def test_prf_size_grows_with_eccentricity_and_hierarchy(vox):
    area = vox.area()
    slopes, at2 = {}, {}
    for a in ["V1", "V2", "V3", "hV4"]:
        m = area == a
        slope, intercept = np.polyfit(vox.prf_ecc[m], vox.prf_sigma[m], 1)
        slopes[a] = slope
        at2[a] = intercept + 2.0 * slope
        assert slope > 0, a
        # within each area, larger eccentricity bins have larger median pRFs
        lo = np.median(vox.prf_sigma[m & (vox.prf_ecc < 1)])
        hi = np.median(vox.prf_sigma[m & (vox.prf_ecc > 3)])
        assert hi > 2 * lo, a
    assert slopes["V1"] < slopes["V2"] < slopes["V3"] < slopes["hV4"]
    assert at2["V1"] < at2["V2"] < at2["V3"] < at2["hV4"]
    # the documented law is what the voxels follow (jitter is multiplicative, s.d. 0.1 in log)
    m = area == "V1"
    a, b = PRF_SIZE_LAW["V1"]
    ratio = vox.prf_sigma[m] / (a + b * vox.prf_ecc[m])
    assert 0.9 < np.median(ratio) < 1.1


def test_deterministic_and_validated():
    a = place_voxels(200, np.random.default_rng(1))
    b = place_voxels(200, np.random.default_rng(1))
    np.testing.assert_array_equal(a.ijk, b.ijk)
    np.testing.assert_array_equal(a.prf_sigma, b.prf_sigma)
    with pytest.raises(ConfigError, match="n_voxels"):
        place_voxels(10, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="early_fraction"):
        place_voxels(200, np.random.default_rng(0), early_fraction=0.9, category_fraction=0.3)
