"""brainrecon.roi: ROI catalogue, ROI-optimal latents, closed loop, energy and weight analyses (unit level)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainrecon.decoding.ridge import RidgeDecoder
from brainrecon.errors import ConfigError, DataFormatError, ShapeMismatchError
from brainrecon.roi.closed_loop import (
    ClosedLoopResult,
    KernelRidgeReadout,
    closed_loop,
    percentile_of,
    roi_means,
    roi_response_correlation,
)
from brainrecon.roi.energy import (
    EnergyResult,
    contrast_energy,
    contrast_maps,
    energy_analysis,
    neighbours_text,
    ordering,
    prf_coverage,
    ring_profile,
)
from brainrecon.roi.explore import RoiExploration, chain_order
from brainrecon.roi.figures import draws_figure
from brainrecon.roi.masks import (
    ROI_SETS,
    RoiSpec,
    conditional_patterns,
    nifti_mask,
    resolve_rois,
    synthetic_patterns,
)
from brainrecon.roi.synthesis import (
    PUBLISHED_SCALING,
    RoiScaling,
    TargetStats,
    decoder_intercept,
    default_scaling,
    resolve_scalings,
    roi_latents,
)
from brainrecon.roi.weights import across_subjects, percentile_ranks, voxel_weight_norms, weight_analysis


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def nsd_labels():
    """Per-voxel NSD label files for 60 voxels: floc blobs, retinotopy and eccentricity bands."""
    n = 60
    lab = {name: np.zeros(n, dtype=np.int32) for name in
           ("nsdgeneral", "prf-visualrois", "prf-eccrois", "floc-faces", "floc-words", "floc-places", "floc-bodies")}
    lab["nsdgeneral"][:] = 1
    lab["nsdgeneral"][-2:] = 0  # two voxels outside nsdgeneral
    lab["prf-visualrois"][:28] = np.repeat(np.arange(1, 8), 4)
    lab["prf-eccrois"][:25] = np.repeat(np.arange(1, 6), 5)
    lab["floc-faces"][30:36] = [1, 2, 2, 3, 4, 5]
    lab["floc-faces"][0] = -1  # NSD: negative = outside the brain, never selected
    lab["floc-words"][36:40] = 1
    lab["floc-places"][40:46] = 2
    lab["floc-bodies"][46:52] = 1
    lab["floc-bodies"][58] = 1  # outside nsdgeneral
    return lab


@pytest.fixture(scope="module")
def ridge():
    """A small fitted decoder (dual form: more voxels than samples) and its data."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 60)).astype(np.float32)
    Y = (X[:, :6] @ rng.normal(size=(6, 12)) + 0.1 * rng.normal(size=(40, 12))).astype(np.float32) + 3.0
    return RidgeDecoder([1.0, 10.0, 100.0]).fit(X, Y), X, Y


# ------------------------------------------------------------------------------ masks
def test_brain_diffuser_set_reads_v1_to_v4_from_visualrois_not_floc(nsd_labels):
    specs, masks = resolve_rois(["brain_diffuser"], nsd_labels)
    assert [s.name for s in specs] == ["faces", "words", "places", "bodies", "V1", "V2", "V3", "V4",
                                      "ecc0pt5", "ecc1", "ecc2", "ecc4", "ecc4plus"]
    vis = nsd_labels["prf-visualrois"]
    np.testing.assert_array_equal(masks["V1"], np.isin(vis, (1, 2)))  # bug B1: the reference used floc-faces here
    np.testing.assert_array_equal(masks["V4"], vis == 7)
    np.testing.assert_array_equal(masks["ecc4plus"], nsd_labels["prf-eccrois"] == 5)
    assert masks["faces"].sum() == 6 and not masks["faces"][0]  # label -1 is not in the ROI
    assert {s.group for s in specs} == {"category", "visual", "eccentricity"}


def test_resolve_rois_names_files_aliases_and_restrict(nsd_labels):
    restrict = nsd_labels["nsdgeneral"] > 0
    specs, masks = resolve_rois(["bodies", "floc-words", "ecc0.5", "prf-eccrois"], nsd_labels, restrict=restrict)
    assert [s.name for s in specs] == ["bodies", "words", "ecc0pt5", "prf-eccrois"]
    assert masks["bodies"].sum() == 6  # the voxel outside nsdgeneral is dropped
    assert masks["prf-eccrois"].sum() == 25  # a label file: every label > 0
    with pytest.raises(ConfigError, match="unknown ROI 'FFA-9'"):
        resolve_rois(["FFA-9"], nsd_labels)
    with pytest.raises(ConfigError, match="given twice"):
        resolve_rois(["faces", "floc-faces"], nsd_labels)
    with pytest.raises(ConfigError, match="needs label file"):
        resolve_rois(["icgan"], nsd_labels)
    empty = {**nsd_labels, "floc-words": np.zeros(60, np.int32)}
    with pytest.raises(DataFormatError, match="'words'.*no voxel"):
        resolve_rois(["words"], empty)


def test_god_set_removes_loc_ffa_overlap():
    n = 20
    flags = {k: np.zeros(n, np.int8) for k in ("V1", "V2", "V3", "V4", "LOC", "FFA", "PPA", "VC")}
    for k, sl in (("V1", slice(0, 3)), ("V2", slice(3, 6)), ("V3", slice(6, 9)), ("V4", slice(9, 11)),
                  ("LOC", slice(11, 16)), ("FFA", slice(14, 18)), ("PPA", slice(18, 20))):
        flags[k][sl] = 1
    specs, masks = resolve_rois(["icgan"], flags)
    assert [s.name for s in specs] == ["V1", "V2", "V3", "V4", "LOC", "FFA", "PPA"]
    assert np.flatnonzero(masks["LOC"]).tolist() == [11, 12, 13]
    assert np.flatnonzero(masks["FFA"]).tolist() == [16, 17]
    assert [s.name for s in ROI_SETS["icgan"]] == [s.name for s in specs]


def test_nifti_mask_maps_volume_onto_voxel_columns(tmp_path, nsd_labels):
    nib = pytest.importorskip("nibabel")
    shape = (4, 5, 3)
    ijk = np.array([[0, 0, 0], [1, 2, 1], [3, 4, 2], [2, 2, 2]])
    vol = np.zeros(shape, np.int16)
    vol[1, 2, 1] = 1
    vol[3, 4, 2] = 3
    path = tmp_path / "my_roi.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(path))
    np.testing.assert_array_equal(nifti_mask(path, ijk, volume_shape=shape), [False, True, True, False])
    with pytest.raises(ShapeMismatchError):
        nifti_mask(path, ijk, volume_shape=(5, 5, 3))
    labels = {"nsdgeneral": np.ones(4, np.int32)}
    specs, masks = resolve_rois([str(path), {"name": "mine", "path": str(path)}], labels, voxel_ijk=ijk, volume_shape=shape)
    assert [s.name for s in specs] == ["my_roi", "mine"] and specs[0].group == "custom"
    with pytest.raises(ConfigError, match="voxel coordinates"):
        resolve_rois([str(path)], labels)


def test_synthetic_patterns_are_one_inside_zero_outside(nsd_labels):
    _, masks = resolve_rois(["faces", "V1"], nsd_labels)
    restrict = np.ones(60, bool)
    restrict[31] = False
    Q = synthetic_patterns(masks, restrict=restrict)
    assert Q.shape == (2, 60) and Q.dtype == np.float32
    expected = masks["faces"].astype(np.float32)
    expected[31] = 0
    np.testing.assert_array_equal(Q[0], expected)
    np.testing.assert_array_equal(synthetic_patterns(masks, value=2.0)[1], 2.0 * masks["V1"])



def test_contrast_patterns_weigh_each_peer_alike_and_sum_to_zero_at_one():
    n = 20
    a, b, c, lone = (np.zeros(n, bool) for _ in range(4))
    a[:4] = True
    b[3:5] = True  # voxel 3 shared with a: it stays positive in a's pattern
    c[10:18] = True
    lone[18:] = True
    groups = ["category", "category", "category", "custom"]
    Q = synthetic_patterns([a, b, c, lone], contrast=1.0, groups=groups, value=2.0)
    # a: +2 on its 4 voxels; each peer carries half of -2 * 4, spread over its own voxels not in a
    np.testing.assert_allclose(Q[0, :4], 2.0)
    np.testing.assert_allclose(Q[0, 4], -4.0)  # b's only voxel outside a
    np.testing.assert_allclose(Q[0, 10:18], -0.5)
    assert abs(Q[0].sum()) < 1e-5 and abs(Q[2].sum()) < 1e-5
    np.testing.assert_array_equal(Q[3], 2.0 * lone)  # alone in its group: the plain pattern
    half = synthetic_patterns([a, b, c, lone], contrast=0.5, groups=groups)
    np.testing.assert_allclose(half[2][half[2] < 0].sum(), -0.5 * c.sum())
    # contrast 0 is the references' pattern, and needs no groups
    np.testing.assert_array_equal(synthetic_patterns([a, b, c, lone]), np.stack([a, b, c, lone]).astype(np.float32))
    with pytest.raises(ConfigError, match="one group per mask"):
        synthetic_patterns([a, b], contrast=1.0)
    with pytest.raises(ConfigError, match=r"roi.contrast: expected a number in \[0, 1\]"):
        synthetic_patterns([a, b], contrast=1.5, groups=groups[:2])

# ------------------------------------------------------------------------------ scaling
def test_published_constants_and_their_transfer():
    assert PUBLISHED_SCALING["vdvae.z"] == RoiScaling("paper_vdvae", 50.0, 80.0, source=PUBLISHED_SCALING["vdvae.z"].source)
    assert default_scaling("versatile.clip_text", (77, 768)).scale == 9.0
    assert default_scaling("versatile.clip_vision", (257, 768)).scale == 15.0
    assert default_scaling("vdvae.z", (91168,)).norm == 80.0
    assert default_scaling("versatile.clip_text", (24, 64)).scale == pytest.approx(9 * np.sqrt(24 / 77))
    assert default_scaling("versatile.clip_vision", (65, 64)).scale == pytest.approx(15 * np.sqrt(65 / 257))
    assert default_scaling("vdvae.z", (8072,)).norm == pytest.approx(80 * np.sqrt(8072 / 91168))
    assert default_scaling("icgan.instance", (2048,)).method == "icgan_instance"
    assert default_scaling("icgan.dense", (1536, 4, 4)).method == "affine"
    assert default_scaling("pixels.z", (3, 8, 8)).method == "train_norm"


def test_resolve_scalings_overrides():
    shapes = {"vdvae.z": (8072,), "versatile.clip_text": (24, 64)}
    out = resolve_scalings(shapes, {"vdvae": {"z": {"method": "unit", "scale": 3}}, "versatile.clip_text": {"scale": 2.0}})
    assert out["vdvae.z"].method == "unit" and out["vdvae.z"].scale == 3.0 and out["vdvae.z"].source == "user"
    assert out["versatile.clip_text"].scale == 2.0 and out["versatile.clip_text"].method == "unit"
    # a new method starts from its own defaults, not from the constants of the scheme it replaces
    tn = resolve_scalings(shapes, {"vdvae.z": {"method": "train_norm"}})["vdvae.z"]
    assert (tn.method, tn.scale, tn.norm) == ("train_norm", 1.0, None)
    with pytest.raises(ConfigError, match="norm"):
        resolve_scalings({"pixels.z": (3, 8, 8)}, {"pixels.z": {"method": "paper_vdvae"}})
    with pytest.raises(ConfigError, match="unknown target"):
        resolve_scalings(shapes, {"icgan.noise": {"scale": 1}})
    with pytest.raises(ConfigError, match="unknown field"):
        resolve_scalings(shapes, {"vdvae.z": {"scael": 1}})
    with pytest.raises(ConfigError, match="method"):
        RoiScaling("magic")


def test_roi_latents_follow_each_scheme(ridge):
    dec, X, Y = ridge
    rng = np.random.default_rng(1)
    Q = (rng.random((3, 60)) < 0.2).astype(np.float32)
    W = dec.coef_.astype(np.float64)
    b = decoder_intercept(dec)
    np.testing.assert_allclose(b, dec.predict(np.zeros((1, 60), np.float32))[0], rtol=1e-5)
    raw = Q @ W
    stats = TargetStats.from_latents(Y)
    np.testing.assert_allclose(stats.mean, Y.mean(0), rtol=1e-5)
    aff = roi_latents(dec, Q, RoiScaling("affine"))
    np.testing.assert_allclose(aff, raw + b, rtol=1e-4, atol=1e-4)
    uni = roi_latents(dec, Q, RoiScaling("unit", 9.0))
    np.testing.assert_allclose(np.linalg.norm(uni - b, axis=1), 9.0, rtol=1e-4)
    np.testing.assert_allclose((uni - b) / 9.0, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    inst = roi_latents(dec, Q, RoiScaling("icgan_instance"))
    np.testing.assert_allclose(np.linalg.norm(inst, axis=1), 1.0, rtol=1e-5)
    tn = roi_latents(dec, Q, RoiScaling("train_norm", 2.0), stats=stats)
    np.testing.assert_allclose(np.linalg.norm(tn - b, axis=1), 2.0 * stats.median_centred_norm, rtol=1e-4)
    pv = roi_latents(dec, Q, RoiScaling("paper_vdvae", 50.0, 7.0), stats=stats)
    np.testing.assert_allclose(np.linalg.norm(pv, axis=1), 7.0, rtol=1e-4)
    # reference: unit * 50 + b, z-score across ROIs, map to train mean/std, unit * norm
    v = raw / np.linalg.norm(raw, axis=1, keepdims=True) * 50 + b
    v = (v - v.mean(0)) / v.std(0) * Y.std(0) + Y.mean(0)
    np.testing.assert_allclose(pv, v / np.linalg.norm(v, axis=1, keepdims=True) * 7.0, rtol=1e-3, atol=1e-4)
    with pytest.raises(ConfigError, match="at least 2 ROIs"):
        roi_latents(dec, Q[:1], RoiScaling("paper_vdvae", 50.0, 7.0), stats=stats)
    with pytest.raises(ConfigError, match="statistics"):
        roi_latents(dec, Q, RoiScaling("train_norm"))
    with pytest.raises(DataFormatError, match="projects to nothing"):
        roi_latents(dec, np.zeros((2, 60), np.float32), RoiScaling("unit", 1.0), roi_names=["a", "b"])


# ------------------------------------------------------------------------------ closed loop
class _QuadrantModel:
    """Voxel v responds to the mean intensity of quadrant v % 4 (a toy encoding model)."""

    description = "toy quadrant model"

    def predict(self, images):
        x = np.asarray(images, np.float64).mean(-1) / 255.0
        h = x.shape[1] // 2
        q = np.stack([x[:, :h, :h].mean((1, 2)), x[:, :h, h:].mean((1, 2)), x[:, h:, :h].mean((1, 2)),
                      x[:, h:, h:].mean((1, 2))], 1)
        return np.repeat(q, 3, axis=1)  # 12 voxels, voxels 0-2 -> quadrant 0 ...


def _quadrant_images(rng, n):
    return rng.integers(60, 180, size=(n, 8, 8, 3)).astype(np.uint8)


def test_closed_loop_table_and_acceptance():
    rng = np.random.default_rng(0)
    masks = {f"q{k}": np.arange(12) // 3 == k for k in range(4)}
    roi_imgs = np.full((4, 8, 8, 3), 100, np.uint8)
    for k in range(4):  # each ROI image brightens its own quadrant
        r, c = divmod(k, 2)
        roi_imgs[k, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] = 250
    roi_imgs[3] = 100  # ... except the last, which is flat
    res = closed_loop(_QuadrantModel(), {"toy": roi_imgs}, masks, {k: "category" for k in masks},
                      natural_train=_quadrant_images(rng, 50), natural_test=_quadrant_images(rng, 40))
    rows = {r["roi"]: r for r in res.table("toy")}
    assert rows["q0"]["selective"] and rows["q0"]["percentile"] == 100.0 and rows["q0"]["specific"]
    assert not rows["q3"]["selective"] and rows["q3"]["percentile"] < 90
    acc = res.acceptance("toy")
    assert acc["per_roi"] == {"q0": True, "q1": True, "q2": True, "q3": False} and not acc["passed"]
    again = ClosedLoopResult.from_json(json.loads(json.dumps(res.to_json())))
    np.testing.assert_allclose(again.responses["toy"], res.responses["toy"])
    assert "q0" in res.format_table("toy")


def test_closed_loop_averages_samples_and_reports_them():
    rng = np.random.default_rng(1)
    masks = {f"q{k}": np.arange(12) // 3 == k for k in range(4)}
    groups = {k: "category" for k in masks}
    samples = np.full((3, 4, 8, 8, 3), 100, np.uint8)
    for k in range(4):
        r, c = divmod(k, 2)
        samples[:, k, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] = 250
    samples[2, 0] = 100  # one of q0's three samples brightens another quadrant instead
    samples[2, 0, 4:, 4:] = 250
    nat_tr, nat_te = _quadrant_images(rng, 50), _quadrant_images(rng, 40)
    res = closed_loop(_QuadrantModel(), {"toy": samples}, masks, groups, natural_train=nat_tr, natural_test=nat_te)
    each = [closed_loop(_QuadrantModel(), {"toy": x}, masks, groups, natural_train=nat_tr, natural_test=nat_te)
            for x in samples]
    np.testing.assert_allclose(res.responses["toy"], np.mean([e.responses["toy"] for e in each], axis=0))
    rows = {r["roi"]: r for r in res.table("toy")}
    assert rows["q0"]["samples"] == 3 and rows["q0"]["samples_selective"] == pytest.approx(2 / 3)
    assert rows["q1"]["samples_selective"] == 1.0 and rows["q0"]["samples_percentile_min"] < 90
    again = ClosedLoopResult.from_json(json.loads(json.dumps(res.to_json())))
    np.testing.assert_allclose(again.sample_responses["toy"], res.sample_responses["toy"])
    with pytest.raises(ShapeMismatchError):
        closed_loop(_QuadrantModel(), {"toy": samples[:, :3]}, masks, groups, natural_train=nat_tr, natural_test=nat_te)


def test_percentile_and_roi_means():
    assert percentile_of(5.0, np.array([1.0, 5.0, 9.0, 2.0])) == pytest.approx(62.5)
    Z = np.arange(12, dtype=float).reshape(2, 6)
    out = roi_means(Z, {"a": np.array([1, 1, 0, 0, 0, 0], bool), "b": np.array([0, 0, 0, 0, 1, 1], bool)})
    np.testing.assert_allclose(out, [[0.5, 4.5], [6.5, 10.5]])


def test_roi_response_correlation_tells_shared_from_separate_drive():
    rng = np.random.default_rng(0)
    shared, own = rng.normal(size=(400, 1)), rng.normal(size=(400, 1))
    X = np.concatenate([
        shared + 0.3 * rng.normal(size=(400, 20)),  # a: the shared signal
        shared * rng.uniform(1, 50, size=(1, 20)) + 0.3 * rng.normal(size=(400, 20)),  # b: same, voxels 50x louder
        own + 0.3 * rng.normal(size=(400, 20)),  # c: its own signal
        np.full((400, 1), 7.0),  # a constant voxel (in c's mask) must not turn r into NaN
    ], axis=1)
    idx = np.arange(X.shape[1])
    masks = {"a": idx < 20, "b": (idx >= 20) & (idx < 40), "c": idx >= 40}
    r = roi_response_correlation(X, masks)
    assert r.shape == (3, 3) and np.allclose(np.diag(r), 1.0)
    assert r[0, 1] > 0.99  # z-scoring per voxel: loudness does not matter
    assert abs(r[0, 2]) < 0.15 and abs(r[1, 2]) < 0.15
    with pytest.raises(ShapeMismatchError, match="ROI responses"):
        roi_response_correlation(X[:2], masks)
    with pytest.raises(ShapeMismatchError, match="'a' mask"):
        roi_response_correlation(X, {"a": np.ones(5, bool)})
    with pytest.raises(ConfigError, match=r"\['e'\] select no voxel"):
        roi_response_correlation(X, {"a": masks["a"], "e": np.zeros(X.shape[1], bool)})


def test_kernel_ridge_readout_recovers_a_smooth_function():
    rng = np.random.default_rng(0)
    F = rng.normal(size=(300, 5))
    Y = np.stack([np.maximum(F[:, 0], 0) + 0.5 * F[:, 1] ** 2, np.sin(F[:, 2])], 1) + 0.05 * rng.normal(size=(300, 2))
    rbf = KernelRidgeReadout(nonnegative=False).fit(F[:200], Y[:200])
    lin = KernelRidgeReadout("linear", nonnegative=False).fit(F[:200], Y[:200])
    err_rbf = ((rbf.predict(F[200:]) - Y[200:]) ** 2).mean()
    err_lin = ((lin.predict(F[200:]) - Y[200:]) ** 2).mean()
    assert err_rbf < 0.5 * err_lin
    assert min(rbf.cv_scores_.values()) == rbf.loo_mse_
    assert (KernelRidgeReadout().fit(F[:200], Y[:200]).predict(F[200:]) >= 0).all()
    with pytest.raises(ConfigError):
        KernelRidgeReadout("poly")
    with pytest.raises(ShapeMismatchError):
        rbf.predict(F[:, :3])


# ------------------------------------------------------------------------------ energy
def test_ring_profile_and_preferred_eccentricity_follow_a_ring():
    size, deg = 128, 8.4
    c = ((np.arange(size) + 0.5) / size - 0.5) * deg
    ecc = np.hypot(c[None, :], c[:, None])
    base = np.full((1, 3, size, size), 0.5, np.float32)
    imgs = np.repeat(base, 3, axis=0)
    for k, (lo, hi) in enumerate(((0.0, 0.5), (1.0, 2.0), (2.5, 4.0))):
        imgs[k, :, (ecc >= lo) & (ecc < hi)] = 0.9
    res = energy_analysis(imgs, base, ["a", "b", "c"], stimulus_deg=deg)
    assert res.profile.argmax(1).tolist() == [0, 2, 3]
    assert ordering(res.preferred_ecc)["strictly_increasing"]
    prof = ring_profile(np.ones((1, size, size)), deg)
    np.testing.assert_allclose(prof, 1.0)
    # a pRF blob correlates with an energy blob at the same place
    cov = prf_coverage(np.array([1.5]), np.array([1.0]), np.array([0.5]), size, deg)
    assert np.unravel_index(cov.argmax(), cov.shape) == (np.argmin(np.abs(-c - 1.0)), np.argmin(np.abs(c - 1.5)))


def test_energy_of_samples_is_the_mean_of_each_against_its_own_baseline():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 1, size=(2, 1, 3, 32, 32)).astype(np.float32)  # per-seed baselines differ
    imgs = np.repeat(base, 2, axis=1).copy()
    imgs[:, 0, :, 12:20, 12:20] += 0.3  # ROI a: a central change in every sample
    imgs[:, 1, :, :4, :4] += 0.3  # ROI b: a corner change
    res = energy_analysis(np.clip(imgs, 0, 1), base, ["a", "b"], size=32)
    single = energy_analysis(np.clip(imgs[0], 0, 1), base[0], ["a", "b"], size=32)
    assert res.preferred_ecc[0] < res.preferred_ecc[1]
    assert res.profile.shape == single.profile.shape == (2, 5)
    with pytest.raises(ShapeMismatchError):
        energy_analysis(imgs, base[:1], ["a", "b"], size=32)


def test_contrast_added_follows_texture_not_luminance():
    size, deg = 128, 8.4
    c = ((np.arange(size) + 0.5) / size - 0.5) * deg
    ecc = np.hypot(c[None, :], c[:, None])
    rng = np.random.default_rng(1)
    base = np.full((1, 3, size, size), 0.5, np.float32)
    imgs = np.repeat(base, 4, axis=0)
    noise = rng.uniform(-0.4, 0.4, size=(size, size)).astype(np.float32)  # fine texture, mean 0
    for k, (lo, hi) in enumerate(((0.0, 0.5), (1.0, 2.0), (2.5, 4.0))):
        ring = (ecc >= lo) & (ecc < hi)
        imgs[k, :, ring] += noise[ring][:, None]
    imgs[3, :, ecc < 1.5] = 0.9  # a flat bright disc: luminance change, contrast only at its edge
    res = energy_analysis(np.clip(imgs, 0, 1), base, ["a", "b", "c", "disc"], stimulus_deg=deg)
    assert res.contrast_profile.shape == (4, 5)
    assert res.contrast_profile[:3].argmax(1).tolist() == [0, 2, 3]
    assert ordering(res.contrast_preferred_ecc[:3])["strictly_increasing"]
    # the disc's squared difference is all inside 2 degrees, densest at its centre; the contrast it adds is at
    # its edge (1.5 degrees) and about none at its centre
    assert res.profile[3, 3:].max() == 0 and res.profile[3, 0] >= res.profile[3, 2]
    assert res.contrast_profile[3, 0] < 0.01 * res.contrast_profile[3, 2]
    # contrast removed from the baseline is not contrast added
    flat = np.full((1, 3, size, size), 0.5, np.float32)
    assert contrast_maps(flat, np.clip(imgs[:1], 0, 1)).max() == 0
    with pytest.raises(ShapeMismatchError):
        contrast_energy(imgs[:, :1])
    # saved and read back; an energy.json written before the measure existed reads as None
    back = EnergyResult.from_json(res.to_json())
    np.testing.assert_allclose(back.contrast_preferred_ecc, res.contrast_preferred_ecc)
    old = {k: v for k, v in res.to_json().items() if not k.startswith("contrast")}
    assert EnergyResult.from_json(old).contrast_profile is None


def test_ordering_over_draws_gives_each_neighbour_pair_a_verdict():
    rng = np.random.default_rng(0)
    # band 2 is clearly outside band 1; bands 2 and 3 are the same up to draw noise; band 4 is inside band 3
    centre = np.array([0.5, 1.0, 1.0, 0.7])
    draws = centre * np.exp(rng.normal(0, 0.05, size=(20, 4)))
    out = ordering(draws.mean(0), draws, seed=1)
    verdicts = [p["verdict"] for p in out["neighbours"]]
    assert verdicts == ["ordered", "unresolved", "reversed"]
    assert out["neighbours"][0]["ci"][0] > 1.0 and out["neighbours"][0]["fraction_increasing"] == 1.0
    assert out["neighbours"][0]["ratio"] == pytest.approx(2.0, rel=0.1)
    assert ordering(draws.mean(0), draws, seed=1) == out  # seeded
    assert "neighbours" not in ordering(draws.mean(0))  # without draws, no verdict
    assert "neighbours" not in ordering(draws[0], np.repeat(draws[:1], 5, 0))  # identical draws: no spread to judge
    text = neighbours_text({**out, "rois": ["a", "b", "c", "d"]})
    parts = text.split("; ")
    assert [p.split()[0] for p in parts] == ["b/a", "c/b", "d/c"]
    assert [p.split()[-1] for p in parts] == verdicts
    with pytest.raises(ShapeMismatchError):
        ordering(draws.mean(0), draws[:, :3])


def test_energy_analysis_keeps_each_draw_preferred_eccentricity():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, size=(3, 1, 3, 32, 32)).astype(np.float32)
    imgs = np.repeat(base, 2, axis=1).copy()
    imgs[:, 0, :, 14:18, 14:18] += rng.uniform(-0.3, 0.3, size=(3, 3, 4, 4))  # central texture, every draw
    imgs[:, 1, :, :6, :6] += rng.uniform(-0.3, 0.3, size=(3, 3, 6, 6))  # corner texture
    res = energy_analysis(np.clip(imgs, 0, 1), base, ["a", "b"], size=32)
    assert res.preferred_ecc_samples.shape == res.contrast_preferred_ecc_samples.shape == (3, 2)
    assert (res.contrast_preferred_ecc_samples[:, 0] < res.contrast_preferred_ecc_samples[:, 1]).all()
    back = EnergyResult.from_json(res.to_json())
    np.testing.assert_allclose(back.preferred_ecc_samples, res.preferred_ecc_samples)
    assert energy_analysis(np.clip(imgs[0], 0, 1), base[0], ["a", "b"], size=32).preferred_ecc_samples is None


# ------------------------------------------------------------------------------ weights
def test_voxel_weight_norms_and_semantic_index(ridge):
    dec, X, Y = ridge
    norms = voxel_weight_norms(dec, chunk=7)
    np.testing.assert_allclose(norms, np.abs(dec.coef_).sum(1), rtol=1e-4)
    pct = percentile_ranks(np.array([3.0, 1.0, 2.0, 2.0]))
    np.testing.assert_allclose(pct, [100.0, 25.0, 62.5, 62.5])
    masks = {"a": np.arange(60) < 6, "b": np.arange(60) >= 6}
    dec2 = RidgeDecoder(10.0).fit(X, np.ascontiguousarray(X[:, 30:33] * 2.0))  # leans on voxels 30-32 only
    wa = weight_analysis({"sem.t": dec, "low.t": dec2}, masks, semantic_pair=("sem.t", "low.t"))
    assert wa.percentiles["sem.t"]["a"] > wa.percentiles["sem.t"]["b"]  # Y depends on voxels 0-5
    assert wa.semantic_index["a"] == pytest.approx(wa.percentiles["sem.t"]["a"] - wa.percentiles["low.t"]["a"])
    assert weight_analysis({"sem.t": dec}, masks).semantic_index is None


def test_across_subjects_welch():
    from scipy.stats import ttest_ind

    vals = [{"A": 1.0 + d, "B": 0.0 - d, "C": 0.5 + d * d} for d in (0.0, 0.1, -0.1, 0.2, 0.05)]
    out = across_subjects(vals)
    assert out["n_subjects"] == 5 and out["mean"]["A"] == pytest.approx(1.05)
    ref = ttest_ind([v["A"] for v in vals], [v["B"] for v in vals], equal_var=False)
    assert out["tests"]["A vs B"]["p"] == pytest.approx(ref.pvalue) and out["tests"]["A vs B"]["significant"]
    from brainrecon.roi.explore import weights_across_subjects
    from brainrecon.roi.weights import WeightAnalysis

    subjects = []
    for n, v in enumerate(vals):
        low = {k: 50.0 + n * (j + 1) for j, k in enumerate(v)}
        wa = WeightAnalysis(list(v), {"sem.t": dict(v), "low.t": low}, ("sem.t", "low.t"), dict(v))
        subjects.append(RoiExploration([], np.zeros((0, 1), bool), {}, {}, {}, {}, weights=wa))
    agg = weights_across_subjects(subjects)
    assert agg["n_subjects"] == 5 and agg["semantic_index"]["tests"]["A vs B"]["p"] == pytest.approx(ref.pvalue)
    one = across_subjects(vals[:1])
    assert np.isnan(one["sem"]["A"]) and one["tests"] == {}
    with pytest.raises(ShapeMismatchError):
        across_subjects([{"A": 1.0}, {"B": 1.0}])


# ------------------------------------------------------------------------------ exploration container, stage
def test_exploration_save_load_roundtrip(tmp_path, nsd_labels):
    specs, masks = resolve_rois(["faces", "ecc0pt5", "ecc1"], nsd_labels)
    rng = np.random.default_rng(0)
    imgs = {"toy": rng.integers(0, 255, (3, 16, 16, 3)).astype(np.uint8)}
    base = {"toy": np.full((1, 16, 16, 3), 128, np.uint8)}
    ex = RoiExploration(specs, np.stack(list(masks.values())), {"toy.z": RoiScaling("unit", 2.0)},
                        {"toy": {"z": rng.normal(size=(3, 4)).astype(np.float32)}}, imgs, base)
    from brainrecon.images import to_float_chw

    ex.energy["toy"] = energy_analysis(to_float_chw(imgs["toy"]), to_float_chw(base["toy"]), ex.rois,
                                       nominal_ranges={s.name: s.ecc_range for s in specs if s.ecc_range})
    ex.info["roi_response_r"] = [[1.0, 0.1, 0.2], [0.1, 1.0, 0.96], [0.2, 0.96, 1.0]]  # faces, ecc0pt5, ecc1
    ex.save(tmp_path / "ex", figures=True)
    back = RoiExploration.load(tmp_path / "ex")
    assert back.rois == ex.rois and back.specs[1].ecc_range == (0.0, 0.5)
    assert back.eccentricity_ordering("toy")["neighbour_response_r"] == [0.96]
    assert len(back.eccentricity_ordering("toy")["contrast"]["values"]) == 2
    assert "contrast the band images add" in back.report_text()
    assert "ecc0pt5/ecc1 0.96" in back.report_text()
    np.testing.assert_array_equal(back.images["toy"], imgs["toy"])
    assert back.eccentricity_ordering("toy")["rois"] == ["ecc0pt5", "ecc1"]
    assert (tmp_path / "ex" / "images" / "toy" / "00_faces.png").is_file()
    assert (tmp_path / "ex" / "figures" / "roi_images.png").is_file()
    assert "toy.z" in back.report_text() and "0 elsewhere (the references)" in back.report_text()
    with pytest.raises(ConfigError, match="no samples"):
        draws_figure(ex, "toy")
    ex.samples = {"toy": np.stack([imgs["toy"], imgs["toy"][::-1]])}
    ex.baseline_samples = {"toy": np.stack([base["toy"], base["toy"]])}
    ex.save(tmp_path / "ex2", figures=True)
    assert (tmp_path / "ex2" / "figures" / "draws_toy.png").is_file()
    ex.info.update(pattern="partial", peer_groups=["category"])
    assert "Synthetic pattern (partial): the ROI 1 above its mean, its peers in category at their means" in ex.report_text()
    ex.info.update(pattern="mask")
    ex.info.update(contrast=0.5, peer_groups=["category"])
    assert "its peers in category below their mean (contrast 0.5)" in ex.report_text()


def test_chain_order():
    assert chain_order(["versatile", "pixels", "vdvae"], {"versatile": "vdvae"}) == ["pixels", "vdvae", "versatile"]
    with pytest.raises(ConfigError, match="cycle"):
        chain_order(["a", "b"], {"a": "b", "b": "a"})


def test_roi_stage_is_registered_and_hashes_mask_content(tmp_path):
    from brainrecon.latents.pixels import PixelSpace
    from brainrecon.stages.pipeline import STAGE_ORDER, build_stages

    assert STAGE_ORDER[-1] == "roi"
    mask = tmp_path / "m.nii.gz"
    mask.write_bytes(b"first")
    cfg = {"name": "toy", "subject": 1, "data": {"source": "toy"}, "latents": {"pixels": {}},
           "roi": {"rois": ["faces", str(mask)]}}
    stage = build_stages(cfg, {"pixels": PixelSpace(8, 4)})["roi"]
    assert set(stage.upstream) == {"data", "fit/pixels", "extract/pixels", "generate/pixels"}
    assert stage.params["rois"][1] == {"name": "m", "path": str(mask.resolve())}
    key = stage.key()
    mask.write_bytes(b"second")  # same path, new content: new key
    assert build_stages(cfg, {"pixels": PixelSpace(8, 4)})["roi"].key() != key
    with pytest.raises(ConfigError, match="unknown parameter"):
        build_stages({**cfg, "roi": {"roiz": []}}, {"pixels": PixelSpace(8, 4)})
    assert isinstance(RoiSpec("x", "f"), RoiSpec)


def test_roi_stage_keys_on_decode_settings_without_a_generate_stage_upstream():
    from brainrecon.latents.pixels import PixelSpace
    from brainrecon.stages.pipeline import build_stages

    class Decoded(PixelSpace):
        decode_params = ("strength",)

        def __init__(self, strength: float) -> None:
            super().__init__(8, 4)
            self.strength = strength

    cfg = {"name": "toy", "subject": 1, "data": {"source": "toy"}, "latents": {"pixels": {}},
           "roi": {"ceiling_check": False}}
    a = build_stages(cfg, {"pixels": Decoded(0.6)})["roi"]
    assert "generate/pixels" not in a.upstream and a.params["decode"] == {"pixels": {"strength": 0.6}}
    assert build_stages(cfg, {"pixels": Decoded(0.75)})["roi"].key() != a.key()
    assert build_stages(cfg, {"pixels": Decoded(0.6)})["roi"].key() == a.key()
    assert "decode" not in build_stages(cfg, {"pixels": PixelSpace(8, 4)})["roi"].params  # nothing to key on


def test_roi_stage_keys_on_guidance_only_when_it_is_on():
    from brainrecon.latents.pixels import PixelSpace
    from brainrecon.stages.pipeline import build_stages

    cfg = {"name": "toy", "subject": 1, "data": {"source": "toy"}, "latents": {"pixels": {}}, "roi": {}}

    def stage(guidance=None):
        roi = {} if guidance is None else {"guidance": guidance}
        return build_stages({**cfg, "roi": roi}, {"pixels": PixelSpace(8, 4)})["roi"]

    off = stage()
    assert "guidance" not in off.params
    assert stage({"scale": 0.0, "objective": "roi"}).key() == off.key()  # off: the settings do not matter
    on = stage({"scale": 1.0})
    assert on.params["guidance"] == {"scale": 1.0, "objective": "selective", "groups": ["visual", "eccentricity"]}
    assert on.key() != off.key()
    assert stage({"scale": 1.0, "objective": "roi"}).key() != on.key()
    assert stage({"scale": 1.0, "objective": "selective", "groups": ["visual", "eccentricity"]}).key() == on.key()
    with pytest.raises(ConfigError, match="unknown keys"):
        stage({"scale": 1.0, "weight": 2})


def test_clip_weights_auto_is_the_clip_of_the_run_latents():
    from brainrecon.latents.pixels import PixelSpace
    from brainrecon.stages.pipeline import build_stages
    from brainrecon.stages.roi import FALLBACK_CLIP, run_clip_weights

    class ClipSpace(PixelSpace):
        clip_weights = "bundled:some_clip"

    assert run_clip_weights({"pixels": PixelSpace(8, 4)}) == FALLBACK_CLIP
    assert run_clip_weights({"pixels": PixelSpace(8, 4), "vd": ClipSpace(8, 4)}) == "bundled:some_clip"
    cfg = {"name": "toy", "subject": 1, "data": {"source": "toy"}, "latents": {"pixels": {}}, "roi": {}}
    stage = build_stages(cfg, {"pixels": ClipSpace(8, 4)})["roi"]
    assert stage.params["clip_weights"] == "bundled:some_clip"  # resolved before hashing: the key names the CLIP
    given = build_stages({**cfg, "roi": {"clip_weights": "bundled:other"}}, {"pixels": ClipSpace(8, 4)})["roi"]
    assert given.params["clip_weights"] == "bundled:other" and given.key() != stage.key()


def test_latent_semantics_reads_the_roi_latent_before_generation():
    """The estimator reads token 0 of a CLIP-vision ROI latent only when the space's CLIP is the estimator's."""
    from types import SimpleNamespace

    from brainrecon.roi.closed_loop import SemanticEstimator
    from brainrecon.roi.explore import _latent_semantics

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    areas = np.clip(np.stack([emb[:, 0], emb[:, 1]], 1), 0, None)  # "face" grows with axis 0, "word" with axis 1
    est = SemanticEstimator(features=[], readout=KernelRidgeReadout(kernel="linear", alphas=(1e-3,)),
                            categories=["face", "word"])
    est.readout.fit(emb, areas)
    clip = SimpleNamespace(fingerprint=lambda: {"weights": "a"})
    feats = SimpleNamespace(clip=clip)
    specs = [RoiSpec("faces", "floc-faces", group="category"), RoiSpec("words", "floc-words", group="category")]
    z = np.zeros((2, 3, 8))
    z[0, 0, 0], z[1, 0, 1] = 5.0, 5.0  # token 0 points along each category's axis (norm is not 1: it is rescaled)
    def space(ident):  # reads token 0 of clip_vision, as VersatileSpace.clip_image_embedding does
        return SimpleNamespace(clip_image_embedding=lambda lat: (lat["clip_vision"][:, 0], ident))

    out = _latent_semantics({"vd": {"clip_vision": z}}, {"vd": space({"weights": "a"})}, feats, est, specs,
                            natural_est=est.readout.predict(emb))
    assert out["vd"]["faces"]["category"] == "face" and out["vd"]["words"]["category"] == "word"
    assert out["vd"]["faces"]["latent_area"] > 0.4 > out["vd"]["words"]["areas"]["face"]
    assert out["vd"]["faces"]["percentile_vs_test"] > 95 and out["vd"]["words"]["percentile_vs_test"] > 95
    natural = est.readout.predict(emb)
    assert _latent_semantics({"vd": {"clip_vision": z}}, {"vd": space({"weights": "b"})}, feats, est, specs, natural) == {}
    assert _latent_semantics({"vd": {"clip_vision": z}}, {"vd": SimpleNamespace()}, feats, est, specs, natural) == {}


def test_conditional_and_partial_patterns_are_regressions_on_the_roi_responses():
    rng = np.random.default_rng(0)
    n, p = 400, 30
    a, b = np.zeros(p, bool), np.zeros(p, bool)
    a[:5], b[5:10] = True, True
    shared = rng.normal(size=n)  # what both ROIs respond to (a content both share)
    ra, rb = shared + rng.normal(size=n), shared + rng.normal(size=n)
    X = rng.normal(scale=0.3, size=(n, p))
    X[:, a] += ra[:, None]
    X[:, b] += rb[:, None]
    X[:, 20] += 2.0 * ra  # a voxel outside both that follows ROI a
    X[:, 21] += 2.0 * shared  # one that follows what a and b share
    C = conditional_patterns([a, b], X, value=2.0)
    assert C.shape == (2, p) and C.dtype == np.float32
    assert C[0, a].mean() == pytest.approx(2.0, abs=1e-5) and C[1, b].mean() == pytest.approx(2.0, abs=1e-5)
    assert C[0, b].mean() > 0.5  # the peer follows: their responses are correlated
    P = conditional_patterns([a, b], X, value=2.0, groups=["category", "category"])
    assert P[0, a].mean() == pytest.approx(2.0, abs=1e-5)
    assert abs(P[0, b].mean()) < 1e-5  # the peer held at its mean
    assert P[0, 20] == pytest.approx(4.0, abs=0.3)  # ROI a's own follower keeps its slope
    # the shared voxel: E[shared | ra, rb] = (ra + rb) / 3, so its partial slope on ra is 1/3 against 1/2 alone
    assert P[0, 21] == pytest.approx(C[0, 21] * 2 / 3, rel=0.15)
    # no peer in its group: partial is conditional
    np.testing.assert_allclose(conditional_patterns([a, b], X, groups=["category", None])[1],
                               conditional_patterns([a, b], X)[1], rtol=1e-5, atol=1e-6)
    restrict = np.ones(p, bool)
    restrict[20] = False
    assert conditional_patterns([a, b], X, restrict=restrict)[0, 20] == 0
    with pytest.raises(ShapeMismatchError):
        conditional_patterns([a, b], X[:, :-1])
    with pytest.raises(DataFormatError, match="linearly dependent"):
        conditional_patterns([a, a.copy()], X, groups=["category", "category"])
    with pytest.raises(ConfigError, match="one group per mask"):
        conditional_patterns([a, b], X, groups=["category"])


def test_explore_rois_refuses_bad_pattern_settings():
    from brainrecon.roi.explore import explore_rois

    with pytest.raises(ConfigError, match=r"roi.pattern: expected 'mask', 'conditional' or 'partial', got 'flat'"):
        explore_rois(None, {}, {}, {}, pattern="flat")
    with pytest.raises(ConfigError, match="roi.contrast: applies to pattern 'mask' only"):
        explore_rois(None, {}, {}, {}, pattern="partial", contrast=0.5)
    with pytest.raises(ConfigError, match=r"roi.semantic_estimator: expected 'clip' or 'segmenter', got 'sam'"):
        explore_rois(None, {}, {}, {}, semantic_estimator="sam")


def test_explore_rois_refuses_bad_guidance_settings():
    from brainrecon.roi.explore import explore_rois
    from brainrecon.stages.roi import _guidance_args

    with pytest.raises(ConfigError, match=r"roi.guidance.scale: expected a finite value >= 0"):
        explore_rois(None, {}, {}, {}, guidance_scale=-1.0)
    with pytest.raises(ConfigError, match=r"roi.guidance.objective"):
        explore_rois(None, {}, {}, {}, guidance_scale=1.0, guidance_objective="max")
    with pytest.raises(ConfigError, match=r"roi.guidance.groups: expected names from .*got \['V1'\]"):
        explore_rois(None, {}, {}, {}, guidance_scale=1.0, guidance_groups=["V1"])

    class NoGuidance:  # a latent space without encoder guidance
        pass

    with pytest.raises(ConfigError, match="no latent space of this run supports encoder guidance"):
        explore_rois(None, {}, {}, {"vdvae": NoGuidance()}, guidance_scale=1.0)
    with pytest.raises(ConfigError, match=r"roi.guidance: unknown keys \['strength'\]"):
        _guidance_args({"strength": 1.0})
    assert _guidance_args({"scale": 2})["guidance_scale"] == 2.0


def test_explore_rois_refuses_unknown_peer_groups():
    from brainrecon.roi.explore import explore_rois

    with pytest.raises(ConfigError, match=r"roi.peer_groups: expected names from .*got \['faces'\]"):
        explore_rois(None, {}, {}, {}, contrast=0.5, peer_groups=["category", "faces"])
