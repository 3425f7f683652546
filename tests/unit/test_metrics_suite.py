"""The evaluation suite: presets, honest absence of weights, consistency with the metric functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from brainrecon.errors import ConfigError, ShapeMismatchError
from brainrecon.metrics import lowlevel, perceptual
from brainrecon.metrics.suite import ALL_METRICS, PRESETS, evaluate, evaluate_methods

PUBLISHED = ["AlexNet(2) 2-way", "AlexNet(5) 2-way", "Inception 2-way", "CLIP 2-way", "EffNet-B distance",
             "SwAV distance"]


def _images(n: int = 8, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, 3, size // 8, size // 8))
    return np.kron(coarse, np.ones((1, 1, 8, 8))).astype(np.float32)


@pytest.fixture(scope="module")
def identical_result(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("no_weights")
    gt = _images()
    return root, gt, evaluate(gt, gt.copy(), preset="brain_diffuser", weights_root=root, n_perm=200, n_boot=200)


def test_missing_backbones_are_unavailable_with_path(identical_result) -> None:  # noqa: ANN001
    root, _, res = identical_result
    for name in PUBLISHED:
        v = res.metrics[name]
        assert v.mean is None and v.per_image is None and v.p_value is None
        assert v.unavailable.startswith("unavailable: ")
        assert v.unavailable.removeprefix("unavailable: ").startswith(str(Path(root) / "metrics"))
    assert res.metrics["EffNet-B distance"].unavailable.endswith("efficientnet_b1_rwightman-bac287d4.pth")
    assert res.metrics["CLIP 2-way"].unavailable.endswith("clip-vit-large-patch14/model.safetensors")
    assert list(res.metrics) == list(ALL_METRICS)
    assert res.preset == "brain_diffuser" and res.to_dict()["preset"] == "brain_diffuser"


def test_identical_reconstructions_are_perfect(identical_result) -> None:  # noqa: ANN001
    _, _, res = identical_result
    m = res.metrics
    assert m["PixCorr"].mean == pytest.approx(1.0) and m["SSIM"].mean == pytest.approx(1.0)
    assert m["MSE"].mean == pytest.approx(0.0, abs=1e-12)
    assert m["EffNet-Lite0 2-way"].mean == 1.0 and m["EffNet-Lite0 2-way"].chance == 0.5
    assert m["EffNet-Lite0 distance"].mean == pytest.approx(0.0, abs=1e-5)
    for name in ("PixCorr", "SSIM", "MSE", "EffNet-Lite0 2-way", "EffNet-Lite0 distance"):
        assert m[name].p_value == pytest.approx(1 / 201), name
        lo, hi = m[name].ci
        assert lo <= m[name].mean + 1e-12 and m[name].mean <= hi + 1e-12
        assert m[name].per_image.shape == (8,)


def test_lowlevel_uses_preset_resize_and_matches_functions(tmp_path: Path) -> None:
    gt = _images(6, 32, seed=1)
    rng = np.random.default_rng(2)
    rec = np.clip(gt + 0.2 * rng.standard_normal(gt.shape), 0, 1).astype(np.float32)
    res = evaluate(gt, rec, preset="brain_diffuser", metrics=["PixCorr", "SSIM", "MSE"], n_perm=50, n_boot=50)
    assert set(res.metrics) == {"PixCorr", "SSIM", "MSE"}
    a = lowlevel.resize_images(gt, 425, mode="bicubic")
    b = lowlevel.resize_images(rec, 425, mode="bicubic")
    want = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)]
    np.testing.assert_allclose(res.metrics["PixCorr"].per_image, want, rtol=1e-5)
    np.testing.assert_allclose(res.metrics["SSIM"].per_image, lowlevel.ssim(a, b), rtol=1e-10)
    native = evaluate(gt, rec, preset="native", metrics=["PixCorr"], n_perm=10, n_boot=10)
    np.testing.assert_allclose(native.metrics["PixCorr"].per_image,
                               [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(gt, rec)], rtol=1e-5)


def test_native_preset_needs_equal_sizes() -> None:
    gt = _images(4, 32)
    with pytest.raises(ShapeMismatchError, match="native"):
        evaluate(gt, _images(4, 16), preset="native", metrics=["SSIM"], n_perm=5, n_boot=5)


def test_config_errors() -> None:
    gt = _images(4)
    with pytest.raises(ConfigError, match="preset"):
        evaluate(gt, gt, preset="nope")
    with pytest.raises(ConfigError, match="unknown"):
        evaluate(gt, gt, metrics=["FID"])
    with pytest.raises(ShapeMismatchError):
        evaluate(gt, gt[:3])


def test_mindeye_preset_uses_default_effnet_weights(tmp_path: Path) -> None:
    gt = _images(4)
    res = evaluate(gt, gt, preset="mindeye", metrics=["EffNet-B distance"], weights_root=tmp_path,
                   n_perm=5, n_boot=5)
    assert res.metrics["EffNet-B distance"].unavailable.endswith("efficientnet_b1-c27df63c.pth")
    assert PRESETS["mindeye"].feature_sizes["inception_v3"] == 342


def test_latent_metrics_and_several_methods() -> None:
    gt = _images(12, 16)
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((12, 10))
    noisy = Z + 3.0 * rng.standard_normal(Z.shape)
    res = evaluate_methods(
        gt, {"good": gt, "noise": rng.random(gt.shape).astype(np.float32)},
        preset="native", metrics=["PixCorr"], latents={"good": {"z": (Z, Z)}, "noise": {"z": (noisy, Z)}},
        n_perm=100, n_boot=100,
    )
    good, noise = res["good"].metrics, res["noise"].metrics
    assert good["Latent 2-way (z)"].mean == 1.0
    assert good["Image retrieval top-1 (z)"].mean == 1.0 and good["Brain retrieval top-1 (z)"].mean == 1.0
    assert good["Image retrieval top-1 (z)"].chance == pytest.approx(1 / 12)
    assert noise["Latent 2-way (z)"].mean < 1.0
    assert noise["PixCorr"].mean < 0.2 < good["PixCorr"].mean


def test_backbone_cache_reuses_loaded_module(tmp_path: Path) -> None:
    from brainrecon.metrics import suite

    suite.clear_backbone_cache()
    a = suite._get_module("effnet_lite0", tmp_path, "v1")
    b = suite._get_module("effnet_lite0", tmp_path, "v1")
    assert a is b and isinstance(perceptual.lite0_weights_path(), Path)


def test_mindeye_lowlevel_resizes_to_256_then_425() -> None:
    gt = _images(4, 32, seed=5)
    rec = _images(4, 32, seed=6)
    res = evaluate(gt, rec, preset="mindeye", metrics=["PixCorr", "SSIM"], n_perm=10, n_boot=10)
    a = lowlevel.resize_images(lowlevel.resize_images(gt, 256), 425, mode="bilinear")
    b = lowlevel.resize_images(lowlevel.resize_images(rec, 256), 425, mode="bilinear")
    np.testing.assert_allclose(res.metrics["PixCorr"].per_image,
                               [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)], rtol=1e-5)
    np.testing.assert_allclose(res.metrics["SSIM"].per_image, lowlevel.ssim(a, b), rtol=1e-6)
    assert res.preset == "mindeye" and "256" in res.settings["preset_description"]
