"""Architecture hyperparameters of BigBiGAN's generator and encoder.

Facts behind the published presets (sources in ``docs/bigbigan.md``):

* Generator (TF-Hub ``deepmind/bigbigan-resnet50/1``, signature ``generate``): 120-d
  standard-normal latent in, 128x128 RGB in [-1, 1] out. Its variables are those of
  the BigGAN-128 TF-Hub generator except for the class embedding, which BigBiGAN
  (unconditional) holds for a single class. The public PyTorch conversion
  (``BigBiGAN_x1.pth`` of anvoynov/BigGANsAreWatching, reused by
  lukemelas/pytorch-pretrained-gans) is a state dict of BigGAN-PyTorch's
  ``Generator`` built with: ``G_ch=96``, ``dim_z=120``, hierarchical latent
  (``hier=True``: 6 chunks of 20), ``G_shared=True`` with ``shared_dim=128`` and
  ``n_classes=1000`` (the single embedding repeated 1000 times), attention at 64x64,
  ``BN_eps=1e-4``, ``SN_eps=1e-4``, one power iteration and one singular vector.
* Encoder (signature ``encode``): 256x256 RGB in [-1, 1] in; outputs ``z_mean``,
  ``z_sample`` (120-d), ``avepool_feat``, ``bn_crelu_feat``. The small model's
  encoder is a ResNet-50 (the other release uses a RevNet-50 x4, not implemented).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from brainrecon.errors import ConfigError, DataFormatError

#: File name of the public PyTorch conversion of the BigBiGAN generator.
GENERATOR_FILE = "BigBiGAN_x1.pth"
#: Where that file is published (``download_all.sh`` of anvoynov/BigGANsAreWatching).
GENERATOR_URL = "https://www.dropbox.com/s/9w2i45h455k3b4p/BigBiGAN_x1.pth"
#: File the converter script writes for the ResNet-50 encoder (no public conversion exists).
ENCODER_FILE = "bigbigan-resnet50-encoder.safetensors"
#: TF-Hub module both files derive from.
TFHUB_MODULE = "https://tfhub.dev/deepmind/bigbigan-resnet50/1"


def _from_mapping(cls: type, d: Mapping[str, Any], what: str) -> Any:
    """Build a frozen config dataclass from a mapping; unknown keys and bad types raise."""
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"unknown {what} config keys {unknown}; known: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        default = names[key].default
        if isinstance(default, tuple) or (default is MISSING and isinstance(value, list)):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class GeneratorConfig:
    """BigGAN-style generator (BigBiGAN's), in BigGAN-PyTorch's parameterisation.

    Parameters
    ----------
    ch : int
        Channel width unit (BigGAN-PyTorch ``G_ch``).
    in_mult, out_mult : tuple of int
        Input and output channels of each up-sampling residual block, in units of ``ch``;
        ``in_mult[i + 1] == out_mult[i]``. Each block doubles the resolution.
    bottom_width : int
        Side of the first feature map (the first linear layer outputs ``in_mult[0] * ch``
        channels of ``bottom_width ** 2`` pixels).
    attention : tuple of int
        Output resolutions after whose block a self-attention layer is inserted.
    dim_z : int
        Latent size; split into ``len(in_mult) + 1`` equal chunks (hierarchical latent):
        the first feeds the linear layer, the others condition one block each.
    shared_dim : int
        Size of the (class) embedding concatenated with each latent chunk.
    n_classes : int
        Rows of the embedding table; BigBiGAN is unconditional and uses row 0 (the
        converted file repeats its single embedding 1000 times, BigGAN's layout).
    bn_eps : float
        Epsilon of the conditional batch norms in the blocks.
    out_bn_eps : float
        Epsilon of the final batch norm (BigGAN-PyTorch does not pass ``BN_eps`` to it, so
        it keeps torch's default 1e-5).
    sn_eps : float
        Epsilon of the normalisations in the spectral-norm power iteration.
    """

    ch: int = 96
    in_mult: tuple[int, ...] = (16, 16, 8, 4, 2)
    out_mult: tuple[int, ...] = (16, 8, 4, 2, 1)
    bottom_width: int = 4
    attention: tuple[int, ...] = (64,)
    dim_z: int = 120
    shared_dim: int = 128
    n_classes: int = 1000
    bn_eps: float = 1e-4
    out_bn_eps: float = 1e-5
    sn_eps: float = 1e-4

    def __post_init__(self) -> None:
        if len(self.in_mult) != len(self.out_mult) or not self.in_mult:
            raise ConfigError(
                f"generator in_mult and out_mult must be non-empty and of equal length, got "
                f"{self.in_mult} and {self.out_mult}"
            )
        for i in range(len(self.in_mult) - 1):
            if self.in_mult[i + 1] != self.out_mult[i]:
                raise ConfigError(
                    f"generator block {i + 1} takes in_mult={self.in_mult[i + 1]} but block {i} outputs "
                    f"out_mult={self.out_mult[i]}"
                )
        if self.dim_z % self.n_slots:
            raise ConfigError(
                f"generator dim_z={self.dim_z} must split into {self.n_slots} equal chunks "
                f"(one per block plus one for the linear layer)"
            )
        bad = [r for r in self.attention if r not in self.block_resolutions]
        if bad:
            raise ConfigError(f"generator attention at {bad}: not a block output resolution {self.block_resolutions}")
        for r in self.attention:
            c = self.ch * self.out_mult[self.block_resolutions.index(r)]
            if c % 8:
                raise ConfigError(f"generator attention at {r}px needs channels divisible by 8, got {c}")
        if min(self.ch, self.bottom_width, self.shared_dim, self.n_classes) < 1:
            raise ConfigError("generator ch, bottom_width, shared_dim and n_classes must be >= 1")

    @property
    def n_slots(self) -> int:
        """Number of latent chunks (blocks + the linear layer)."""
        return len(self.in_mult) + 1

    @property
    def z_chunk(self) -> int:
        """Size of one latent chunk."""
        return self.dim_z // self.n_slots

    @property
    def block_resolutions(self) -> tuple[int, ...]:
        """Output resolution of every block."""
        return tuple(self.bottom_width * 2 ** (i + 1) for i in range(len(self.in_mult)))

    @property
    def resolution(self) -> int:
        """Side of the generated images."""
        return self.block_resolutions[-1]

    @classmethod
    def published(cls) -> GeneratorConfig:
        """The BigBiGAN generator of the TF-Hub release (128 px, 120-d latent)."""
        return cls()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GeneratorConfig:
        """Build from a mapping; ``{"preset": "published", ...}`` overrides a preset."""
        d = dict(d)
        preset = d.pop("preset", None)
        if preset is not None:
            if preset != "published":
                raise ConfigError(f"generator preset must be 'published', got {preset!r}")
            d = {**asdict(cls.published()), **d}
        return _from_mapping(cls, d, "bigbigan generator")


@dataclass(frozen=True)
class EncoderConfig:
    """Pre-activation (v2) bottleneck ResNet followed by an MLP that outputs z's mean and scale.

    Parameters
    ----------
    image_size : int
        Side of the (square) input images; the release takes 256.
    stem_width : int
        Channels of the 7x7 stride-2 stem convolution (followed by 3x3 stride-2 max pooling).
    widths : tuple of int
        Bottleneck (inner) width of each stage; a unit outputs ``expansion`` times more.
    blocks : tuple of int
        Units per stage (ResNet-50: 3, 4, 6, 3).
    expansion : int
        Output/inner width ratio of a bottleneck unit.
    mlp : tuple of int
        Hidden sizes of the MLP head on the pooled features.
    dim_z : int
        Latent size; the head outputs ``2 * dim_z`` values: mean, then pre-softplus scale.
    bn_eps : float
        Batch-norm epsilon.
    """

    image_size: int = 256
    stem_width: int = 64
    widths: tuple[int, ...] = (64, 128, 256, 512)
    blocks: tuple[int, ...] = (3, 4, 6, 3)
    expansion: int = 4
    mlp: tuple[int, ...] = (4096, 4096, 4096)
    dim_z: int = 120
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ConfigError(f"encoder widths {self.widths} and blocks {self.blocks} must have equal, non-zero length")
        if min(self.blocks) < 1 or min(self.widths) < 1 or self.stem_width < 1 or self.dim_z < 1:
            raise ConfigError("encoder widths, blocks, stem_width and dim_z must be >= 1")
        if self.image_size < 2 ** (len(self.widths) + 1):
            raise ConfigError(f"encoder image_size {self.image_size} is too small for {len(self.widths)} stages")

    @property
    def feature_dim(self) -> int:
        """Size of the globally pooled features (``avepool_feat``)."""
        return self.widths[-1] * self.expansion

    @classmethod
    def published(cls) -> EncoderConfig:
        """The ResNet-50 encoder of ``bigbigan-resnet50`` (see ``docs/bigbigan.md`` for what is verified)."""
        return cls()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EncoderConfig:
        """Build from a mapping; ``{"preset": "published", ...}`` overrides a preset."""
        d = dict(d)
        preset = d.pop("preset", None)
        if preset is not None:
            if preset != "published":
                raise ConfigError(f"encoder preset must be 'published', got {preset!r}")
            d = {**asdict(cls.published()), **d}
        return _from_mapping(cls, d, "bigbigan encoder")


def as_generator_config(cfg: GeneratorConfig | Mapping[str, Any] | str | os.PathLike) -> GeneratorConfig:
    """Accept a config, a mapping, ``"published"``, or a ``.json`` path."""
    return _as_config(cfg, GeneratorConfig)


def as_encoder_config(cfg: EncoderConfig | Mapping[str, Any] | str | os.PathLike) -> EncoderConfig:
    """Accept a config, a mapping, ``"published"``, or a ``.json`` path."""
    return _as_config(cfg, EncoderConfig)


def _as_config(cfg: Any, cls: type) -> Any:
    if isinstance(cfg, cls):
        return cfg
    if isinstance(cfg, Mapping):
        return cls.from_dict(cfg)
    text = os.fspath(cfg)
    if text == "published":
        return cls.published()
    if text.endswith(".json"):
        return config_from_json(text, cls)
    raise ConfigError(f"{cls.__name__}: expected 'published', a mapping or a .json path, got {cfg!r}")


def config_to_json(cfg: GeneratorConfig | EncoderConfig, path: str | os.PathLike) -> None:
    """Write a config as JSON (beside the weights it describes)."""
    Path(path).write_text(json.dumps(asdict(cfg), indent=2) + "\n")


def config_from_json(path: str | os.PathLike, cls: type) -> Any:
    """Read a config written by :func:`config_to_json`."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{path}: cannot read a {cls.__name__} JSON ({exc})") from exc
    if not isinstance(d, dict):
        raise DataFormatError(f"{path}: expected a JSON object")
    return cls.from_dict(d)
