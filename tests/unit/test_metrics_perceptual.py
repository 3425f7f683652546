"""Backbones: layer shapes (random init, tiny batch), weight loading, honest absence, Lite0 accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from brainrecon.errors import DataFormatError, MissingWeightsError
from brainrecon.metrics import perceptual
from brainrecon.paths import shared_data_dir

# (backbone, input size, {layer: flattened size}) as stated in the methods guide §5 / MindEye sizes
SHAPES = [
    ("alexnet", 224, {"features.4": 192 * 27 * 27, "features.11": 256 * 13 * 13}),
    ("alexnet", 256, {"features.4": 192 * 31 * 31, "features.11": 256 * 15 * 15}),
    ("inception_v3", 224, {"avgpool": 2048}),
    ("inception_v3", 342, {"avgpool": 2048}),
    ("efficientnet_b1", 224, {"avgpool": 1280}),
    ("efficientnet_b1", 255, {"avgpool": 1280}),
    ("swav_resnet50", 224, {"avgpool": 2048}),
    ("effnet_lite0", 224, {"avgpool": 1280}),
    # ViT-L/14 (304 M parameters) takes ~10-30 s to build and run on 2 CPU cores
    pytest.param("clip_vit_l14", 224, {"image_embeds": 768}, marks=pytest.mark.slow),
]

_MODULES: dict[str, torch.nn.Module] = {}


def _random_module(name: str) -> torch.nn.Module:
    # built once per test module: Inception and CLIP ViT-L take seconds to construct
    if name not in _MODULES:
        torch.manual_seed(0)
        _MODULES[name] = perceptual.build_architecture(name)
    return _MODULES[name]


@pytest.mark.parametrize(("name", "size", "layers"), SHAPES)
def test_layer_shapes_random_init(name: str, size: int, layers: dict[str, int]) -> None:
    mean, std = perceptual.normalization(name)
    ext = perceptual.FeatureExtractor(name, _random_module(name), size, mean, std)
    images = np.random.default_rng(0).random((2, 3, 40, 48)).astype(np.float32)
    out = ext(images)
    assert set(out) == set(layers) == set(perceptual.BACKBONE_LAYERS[name])
    for key, dim in layers.items():
        assert out[key].shape == (2, dim), key
        assert out[key].dtype == np.float32 and np.isfinite(out[key]).all()


@pytest.mark.parametrize("name", ["alexnet", "inception_v3", "efficientnet_b1", "swav_resnet50", "clip_vit_l14"])
def test_missing_weights_name_the_path(tmp_path: Path, name: str) -> None:
    with pytest.raises(MissingWeightsError) as info:
        perceptual.load_backbone(name, root=tmp_path)
    expected = perceptual.weights_path(perceptual.checkpoint_for(name), tmp_path)
    assert info.value.path == expected
    assert str(expected) in str(info.value)
    assert str(expected).startswith(str(tmp_path / "metrics"))


def test_effnet_b1_checkpoint_depends_on_version(tmp_path: Path) -> None:
    v1 = perceptual.weights_path(perceptual.checkpoint_for("efficientnet_b1", "v1"), tmp_path)
    v2 = perceptual.weights_path(perceptual.checkpoint_for("efficientnet_b1", "v2"), tmp_path)
    assert v1.name == "efficientnet_b1_rwightman-bac287d4.pth" and v2.name == "efficientnet_b1-c27df63c.pth"


def _save(sd: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)


def test_torchvision_checkpoint_round_trip(tmp_path: Path) -> None:
    # a checkpoint in the published layout (here random values, only to test the loader)
    src = perceptual.build_architecture("alexnet")
    _save(src.state_dict(), perceptual.weights_path("alexnet", tmp_path))
    loaded = perceptual.load_backbone("alexnet", root=tmp_path)
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert not loaded.training


def test_swav_hub_layout_is_stripped(tmp_path: Path) -> None:
    src = perceptual.build_architecture("swav_resnet50")
    sd = {f"module.{k}": v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    sd["module.projection_head.0.weight"] = torch.zeros(2048, 2048)
    sd["module.prototypes.weight"] = torch.zeros(3000, 128)
    _save(sd, perceptual.weights_path("swav_resnet50", tmp_path))
    loaded = perceptual.load_backbone("swav_resnet50", root=tmp_path)
    assert torch.equal(loaded.state_dict()["layer4.2.conv3.weight"], src.state_dict()["layer4.2.conv3.weight"])


def test_wrong_checkpoint_is_a_format_error(tmp_path: Path) -> None:
    _save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, perceptual.weights_path("alexnet", tmp_path))
    with pytest.raises(DataFormatError, match="does not match"):
        perceptual.load_backbone("alexnet", root=tmp_path)


def test_lite0_checkpoint_loads_strictly() -> None:
    model = perceptual.load_backbone("effnet_lite0")
    n_params = sum(p.numel() for p in model.parameters())
    assert 4.5e6 < n_params < 4.8e6  # EfficientNet-Lite0: 4.65 M parameters


def test_lite0_classifies_imagenet_samples() -> None:
    """Real-weights check: the packaged Lite0 recognises the ImageNet sample photos."""
    data = shared_data_dir()
    folder = None if data is None else data / "imagenet-samples-256"
    if folder is None or not folder.is_dir():
        pytest.skip("../shared/data/imagenet-samples-256 not available")
    from PIL import Image

    files = sorted(folder.glob("*.jpg"))
    classes = sorted({f.name.split("_")[0] for f in files})  # ImageNet index = sorted wnid order
    pick = files[::40]  # 25 photos spread over the classes
    images = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255 for f in pick])
    images = images.transpose(0, 3, 1, 2)[:, :, 16:240, 16:240]  # centre 224 crop
    labels = np.array([classes.index(f.name.split("_")[0]) for f in pick])
    model = perceptual.load_backbone("effnet_lite0")
    mean, std = perceptual.normalization("effnet_lite0")
    x = (torch.from_numpy(np.ascontiguousarray(images)) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(
        std
    ).view(1, 3, 1, 1)
    with torch.inference_mode():
        pred = model(x).argmax(1).numpy()
    acc = (pred == labels).mean()
    assert acc >= 0.65, acc  # ~0.86 measured on 300 photos; random weights give ~0.001
