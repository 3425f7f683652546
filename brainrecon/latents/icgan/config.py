"""Hyperparameters of the IC-GAN generator and of its SwAV instance encoder.

The generator is BigGAN (Brock et al. 2019, as in ajbrock/BigGAN-PyTorch) conditioned on an
instance feature instead of a class (Casanova et al. 2021, facebookresearch/ic_gan). Its
channel plan is fixed by the output resolution, as in the reference's architecture table:
at 256 px, six residual up-blocks take ``ch * (16, 16, 8, 8, 4, 2)`` channels to
``ch * (16, 8, 8, 4, 2, 1)`` while the feature map grows from 4x4 to 256x256.

With a hierarchical latent (``hier=True``) the noise is cut into ``n_blocks + 1`` equal
chunks: the first feeds the first linear layer (whose output is the "dense" vector), each
of the others joins the instance embedding in the conditional batch norms of one block.
The requested ``dim_z`` is rounded down to a multiple of the chunk count, as the reference
does: the published 256-px model asks for 120 and uses ``7 * 17 = 119`` values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from brainrecon.errors import ConfigError, DataFormatError

#: Folder (and tarball stem) of the published 256-px ImageNet IC-GAN (facebookresearch/ic_gan README).
IMAGENET256_DIR = "icgan_biggan_imagenet_res256"
#: The EMA generator inside it, as the reference's loader names it (``G_ema_<suffix>.pth``, suffix ``best0``).
IMAGENET256_FILE = "G_ema_best0.pth"
#: Where the tarball is published.
IMAGENET256_URL = "https://dl.fbaipublicfiles.com/ic_gan/icgan_biggan_imagenet_res256.tar.gz"
#: SwAV ResNet-50, 800 epochs: the instance feature extractor of IC-GAN (facebookresearch/swav README).
SWAV_FILE = "swav_800ep_pretrain.pth.tar"
SWAV_URL = "https://dl.fbaipublicfiles.com/deepcluster/" + SWAV_FILE

# Channel multipliers per output resolution (in -> out of each up-block), the reference's table.
_CHANNELS: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    32: ((4, 4, 4), (4, 4, 4)),
    64: ((16, 16, 8, 4), (16, 8, 4, 2)),
    128: ((16, 16, 8, 4, 2), (16, 8, 4, 2, 1)),
    256: ((16, 16, 8, 8, 4, 2), (16, 8, 8, 4, 2, 1)),
    512: ((16, 16, 8, 8, 4, 2, 1), (16, 8, 8, 4, 2, 1, 1)),
}


@dataclass(frozen=True)
class BlockPlan:
    """One generator up-block: channels in/out, the resolution it outputs, attention after it."""

    in_channels: int
    out_channels: int
    resolution: int
    attention: bool


@dataclass(frozen=True)
class ICGANConfig:
    """Architecture of an IC-GAN (BigGAN backbone) generator.

    Parameters
    ----------
    resolution : int
        Output side in pixels; one of 32, 64, 128, 256, 512 (the reference's table).
    ch : int
        Channel width multiplier (``G_ch``; 96 for the published model).
    dim_z : int
        Requested noise size; with ``hier`` it is rounded down to a multiple of
        ``n_blocks + 1`` (published: 120 -> 119).
    hier : bool
        Hierarchical noise: one chunk for the first linear layer, one per block.
    bottom_width : int
        Side of the first feature map (4).
    attention : str
        Resolutions followed by a self-attention block, joined by ``"_"`` (``"64"``).
    shared_dim : int
        Size of the class embedding ``shared`` (128). The instance-only IC-GAN never uses it,
        but the published checkpoint stores it, so it is part of the parameter table.
    n_classes : int
        Rows of that class embedding (1000).
    shared_dim_feat : int
        Size of the instance embedding (linear map of the instance feature; 512).
    feature_dim : int
        Size of the instance feature (2048 for SwAV ResNet-50).
    num_svs : int
        Singular vectors tracked by spectral norm (buffers ``u0..``, ``sv0..``); 1.
    sn_eps, bn_eps : float
        Epsilons of spectral norm (1e-6) and batch norm (1e-5), the reference's defaults.
    """

    resolution: int = 256
    ch: int = 96
    dim_z: int = 120
    hier: bool = True
    bottom_width: int = 4
    attention: str = "64"
    shared_dim: int = 128
    n_classes: int = 1000
    shared_dim_feat: int = 512
    feature_dim: int = 2048
    num_svs: int = 1
    sn_eps: float = 1e-6
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.resolution not in _CHANNELS:
            raise ConfigError(f"icgan model.resolution: expected one of {sorted(_CHANNELS)}, got {self.resolution}")
        sizes = ("ch", "dim_z", "bottom_width", "shared_dim", "n_classes", "shared_dim_feat", "feature_dim", "num_svs")
        for name in sizes:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"icgan model.{name}: expected a positive integer, got {value!r}")
        if self.hier and self.dim_z < self.n_slots:
            raise ConfigError(
                f"icgan model.dim_z: expected at least {self.n_slots} (one value per noise chunk), got {self.dim_z}"
            )
        allowed = {str(b.resolution) for b in self._raw_blocks()}
        for token in self.attention_resolutions_raw():
            if token not in allowed:
                raise ConfigError(
                    f"icgan model.attention: expected resolutions among {sorted(allowed, key=int)} joined by '_', "
                    f"got {self.attention!r}"
                )
        # Attention needs channels divisible by 8 (theta/phi have C/8) and even maps for pooling.
        for b in self.blocks():
            if b.attention and b.out_channels % 8:
                raise ConfigError(
                    f"icgan model: attention at {b.resolution} px needs channels divisible by 8, got {b.out_channels}"
                )

    # ---------------------------------------------------------------- derived sizes
    def attention_resolutions_raw(self) -> list[str]:
        return [t for t in str(self.attention).split("_") if t]

    def _raw_blocks(self) -> list[BlockPlan]:
        ins, outs = _CHANNELS[self.resolution]
        res = [self.bottom_width * 2 ** (i + 1) for i in range(len(ins))]
        return [BlockPlan(self.ch * a, self.ch * b, r, False) for a, b, r in zip(ins, outs, res)]

    def blocks(self) -> list[BlockPlan]:
        """The up-blocks in order, with their attention flags."""
        att = {int(t) for t in self.attention_resolutions_raw()}
        return [BlockPlan(b.in_channels, b.out_channels, b.resolution, b.resolution in att) for b in self._raw_blocks()]

    @property
    def n_blocks(self) -> int:
        return len(_CHANNELS[self.resolution][0])

    @property
    def n_slots(self) -> int:
        """Number of noise chunks (blocks + the first linear layer), 1 without ``hier``."""
        return self.n_blocks + 1 if self.hier else 1

    @property
    def chunk_size(self) -> int:
        """Values per noise chunk (17 for the published model); the whole noise without ``hier``."""
        return self.dim_z // self.n_slots

    @property
    def noise_dim(self) -> int:
        """Effective noise size (119 for the published model)."""
        return self.chunk_size * self.n_slots

    @property
    def dense_shape(self) -> tuple[int, int, int]:
        """Shape of the first linear layer's output once reshaped: ``(C0, 4, 4)``."""
        c0 = self._raw_blocks()[0].in_channels
        return (c0, self.bottom_width, self.bottom_width)

    @property
    def dense_dim(self) -> int:
        """Size of the dense vector (``16 * ch * 4 * 4`` = 24,576 for the published model)."""
        c, h, w = self.dense_shape
        return c * h * w

    @property
    def cond_dim(self) -> int:
        """Input size of the conditional batch norms: instance embedding + one noise chunk."""
        return self.shared_dim_feat + (self.chunk_size if self.hier else 0)

    # ---------------------------------------------------------------- presets and I/O
    @classmethod
    def imagenet256(cls) -> ICGANConfig:
        """The published 256-px ImageNet IC-GAN (``icgan_res256.json`` of facebookresearch/ic_gan)."""
        return cls()

    @classmethod
    def preset(cls, name: str) -> ICGANConfig:
        presets = {"imagenet256": cls.imagenet256}
        if name not in presets:
            raise ConfigError(f"icgan model preset: expected one of {sorted(presets)}, got {name!r}")
        return presets[name]()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ICGANConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"icgan model: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**dict(d))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> ICGANConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}: not valid JSON ({exc})") from exc


@dataclass(frozen=True)
class SwAVConfig:
    """Architecture and input of the SwAV ResNet instance encoder.

    Parameters
    ----------
    layers : tuple of int
        Bottleneck blocks per stage; ``(3, 4, 6, 3)`` is ResNet-50 (published).
    width_per_group : int
        Inner width of the bottlenecks of the first stage (64 for ResNet-50); smaller values
        give the small test configurations. The pooled feature has 2048 values whatever it is.
    input_size : int
        Side of the images the network reads (224): IC-GAN resizes its 256-px images to it with
        bicubic interpolation (``align_corners=True``) after ImageNet normalisation.
    mean, std : tuple of float
        ImageNet normalisation.
    """

    layers: tuple[int, ...] = (3, 4, 6, 3)
    width_per_group: int = 64
    input_size: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    feature_dim: int = field(default=2048, init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(n) for n in self.layers))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.layers) != 4 or any(n < 1 for n in self.layers):
            raise ConfigError(f"icgan encoder.layers: expected 4 positive block counts, got {self.layers}")
        if self.width_per_group < 1 or self.input_size < 32:
            raise ConfigError(
                f"icgan encoder: width_per_group >= 1 and input_size >= 32 expected, "
                f"got {self.width_per_group} and {self.input_size}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"icgan encoder: mean/std need 3 values (std > 0), got {self.mean} / {self.std}")

    @classmethod
    def resnet50(cls) -> SwAVConfig:
        """SwAV's published ResNet-50."""
        return cls()

    @classmethod
    def preset(cls, name: str) -> SwAVConfig:
        presets = {"swav_resnet50": cls.resnet50, "resnet50": cls.resnet50}
        if name not in presets:
            raise ConfigError(f"icgan encoder preset: expected one of {sorted(presets)}, got {name!r}")
        return presets[name]()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SwAVConfig:
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"icgan encoder: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**dict(d))


def as_generator_config(config: ICGANConfig | Mapping[str, Any] | str) -> ICGANConfig:
    """A config, a mapping of its fields, a preset name or a ``.json`` path -> :class:`ICGANConfig`."""
    if isinstance(config, ICGANConfig):
        return config
    if isinstance(config, Mapping):
        return ICGANConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        text = os.fspath(config)
        return ICGANConfig.from_json(text) if text.endswith(".json") else ICGANConfig.preset(text)
    raise ConfigError(f"icgan model: expected a preset name, mapping or ICGANConfig, got {type(config).__name__}")


def as_encoder_config(config: SwAVConfig | Mapping[str, Any] | str) -> SwAVConfig:
    """A config, a mapping of its fields or a preset name -> :class:`SwAVConfig`."""
    if isinstance(config, SwAVConfig):
        return config
    if isinstance(config, Mapping):
        return SwAVConfig.from_dict(config)
    if isinstance(config, str):
        return SwAVConfig.preset(config)
    raise ConfigError(f"icgan encoder: expected a preset name, mapping or SwAVConfig, got {type(config).__name__}")
