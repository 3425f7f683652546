"""Hyperparameters of a VDVAE and the parsing of its block strings.

The architecture is described, as in the reference implementation (openai/vdvae,
``hps.py``), by two comma-separated block strings:

* encoder: ``"64x11,64d2,32x20"`` = eleven residual blocks at 64x64, one block at 64x64
  followed by 2x average pooling, twenty blocks at 32x32 ...
* decoder: ``"1x2,4m1,4x3"`` = two top-down blocks at 1x1, one block at 4x4 that first
  mixes in (nearest-upsamples) the 1x1 state, three more blocks at 4x4 ...

Every decoder block holds one latent group of shape ``(zdim, res, res)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from brainrecon.errors import ConfigError, DataFormatError

#: File name of the published EMA checkpoint of the ImageNet-64 model.
IMAGENET64_FILE = "imagenet64-iter-1600000-model-ema.th"
#: Where OpenAI publishes it (README of openai/vdvae).
IMAGENET64_URL = (
    "https://openaipublic.blob.core.windows.net/very-deep-vaes-assets/vdvae-assets-2/" + IMAGENET64_FILE
)


@dataclass(frozen=True)
class BlockSpec:
    """One entry of a parsed block string.

    Parameters
    ----------
    res : int
        Spatial resolution the block works at.
    down : int or None
        Encoder only: average-pooling factor applied after the block.
    mixin : int or None
        Decoder only: lower resolution whose state is upsampled and added first.
    """

    res: int
    down: int | None = None
    mixin: int | None = None


def parse_blocks(spec: str, kind: str) -> list[BlockSpec]:
    """Parse an encoder (``kind="enc"``) or decoder (``kind="dec"``) block string.

    Tokens: ``RxN`` = N blocks at resolution R; ``RdK`` (encoder) = one block at R then
    K-fold pooling; ``RmL`` (decoder) = one block at R mixing in resolution L; ``R`` = one
    block at R.
    """
    if kind not in ("enc", "dec"):
        raise ValueError(f"kind must be 'enc' or 'dec', got {kind!r}")
    out: list[BlockSpec] = []
    field = f"{kind}_blocks"
    for token in (t.strip() for t in spec.split(",")):
        try:
            if "x" in token:
                res, count = (int(a) for a in token.split("x"))
                out += [BlockSpec(res) for _ in range(count)]
            elif "d" in token:
                if kind != "enc":
                    raise ConfigError(f"{field}: 'd' (downsample) token {token!r} is only valid in enc_blocks")
                res, down = (int(a) for a in token.split("d"))
                out.append(BlockSpec(res, down=down))
            elif "m" in token:
                if kind != "dec":
                    raise ConfigError(f"{field}: 'm' (mix-in) token {token!r} is only valid in dec_blocks")
                res, mixin = (int(a) for a in token.split("m"))
                out.append(BlockSpec(res, mixin=mixin))
            else:
                out.append(BlockSpec(int(token)))
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{field}: cannot parse token {token!r} of {spec!r}") from exc
    if not out:
        raise ConfigError(f"{field}: empty block string")
    return out


def parse_widths(width: int, custom: str) -> dict[int, int]:
    """Per-resolution widths: ``custom`` is ``"res:width,..."``; others get ``width``."""
    table: dict[int, int] = {}
    for token in (t for t in custom.split(",") if t.strip()):
        try:
            res, w = (int(a) for a in token.split(":"))
        except ValueError as exc:
            raise ConfigError(f"custom_width_str: cannot parse {token!r} (expected 'res:width')") from exc
        table[res] = w
    return table


@dataclass(frozen=True)
class VDVAEConfig:
    """Architecture, input normalisation and training hyperparameters of a VDVAE.

    Parameters
    ----------
    image_size : int
        Side of the square RGB images the model works on.
    width : int
        Channel width of the residual stream (per resolution unless overridden).
    zdim : int
        Channels of every latent group.
    enc_blocks, dec_blocks : str
        Block strings (see module docstring).
    bottleneck_multiple : float
        Inner width of each residual block relative to its outer width.
    custom_width_str : str
        ``"res:width,..."`` overrides of ``width``.
    no_bias_above : int
        Learned initial decoder states exist for resolutions ``<=`` this value.
    num_mixtures : int
        Components of the discretised logistic mixture per pixel.
    shift, scale : float
        Encoder input normalisation ``(x_uint8 + shift) * scale``.
    target_groups : int
        Default number of top latent groups forming the regression target.
    grad_clip, skip_threshold : float
        Training: gradient-norm clip and the norm above which an update is skipped
        (``-1`` disables skipping).
    """

    image_size: int
    width: int
    zdim: int
    enc_blocks: str
    dec_blocks: str
    bottleneck_multiple: float = 0.25
    custom_width_str: str = ""
    no_bias_above: int = 64
    num_mixtures: int = 10
    shift: float = -115.92961967
    scale: float = 1.0 / 69.37404
    target_groups: int = 31
    grad_clip: float = 200.0
    skip_threshold: float = 400.0

    def __post_init__(self) -> None:
        for name in ("image_size", "width", "zdim", "num_mixtures", "target_groups"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"VDVAEConfig.{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.bottleneck_multiple <= 1:
            raise ConfigError(f"VDVAEConfig.bottleneck_multiple must be in (0, 1], got {self.bottleneck_multiple}")
        if self.scale <= 0:
            raise ConfigError(f"VDVAEConfig.scale must be positive, got {self.scale}")
        enc, dec = self.encoder_blocks(), self.decoder_blocks()
        if enc[0].res != self.image_size:
            raise ConfigError(f"enc_blocks must start at image_size={self.image_size}, starts at {enc[0].res}")
        if dec[-1].res != self.image_size:
            raise ConfigError(f"dec_blocks must end at image_size={self.image_size}, ends at {dec[-1].res}")
        if self.width_at(self.image_size) != self.width:
            # The output head and the final gain/bias are built with `width` channels.
            raise ConfigError(
                f"custom_width_str sets width {self.width_at(self.image_size)} at image_size={self.image_size}, "
                f"but the output head uses width={self.width}; they must agree"
            )
        enc_res = set(self.encoder_resolutions())
        seen: set[int] = set()
        for i, b in enumerate(dec):
            if b.res not in enc_res:
                raise ConfigError(
                    f"dec_blocks[{i}] works at {b.res}x{b.res}, but the encoder has no activation there "
                    f"(encoder resolutions {sorted(enc_res)})"
                )
            if b.mixin is not None:
                if b.mixin not in seen:
                    raise ConfigError(f"dec_blocks[{i}] mixes in resolution {b.mixin} before any block produced it")
                if b.res % b.mixin:
                    raise ConfigError(f"dec_blocks[{i}]: {b.res} is not a multiple of mix-in resolution {b.mixin}")
            seen.add(b.res)
        if self.target_groups > len(dec):
            raise ConfigError(f"target_groups={self.target_groups} exceeds the {len(dec)} latent groups of dec_blocks")

    # ----------------------------------------------------------------- structure
    def encoder_blocks(self) -> list[BlockSpec]:
        """Parsed ``enc_blocks``."""
        return parse_blocks(self.enc_blocks, "enc")

    def decoder_blocks(self) -> list[BlockSpec]:
        """Parsed ``dec_blocks``; one latent group per entry."""
        return parse_blocks(self.dec_blocks, "dec")

    def encoder_resolutions(self) -> list[int]:
        """Resolutions at which the encoder leaves an activation (input conv included)."""
        res = [self.image_size]
        for b in self.encoder_blocks():
            r = b.res // b.down if b.down else b.res
            if r not in res:
                res.append(r)
        return res

    def width_at(self, res: int) -> int:
        """Channel width at resolution ``res``."""
        return parse_widths(self.width, self.custom_width_str).get(res, self.width)

    def group_shapes(self) -> list[tuple[int, int, int]]:
        """Shape ``(zdim, res, res)`` of every latent group, top of the hierarchy first."""
        return [(self.zdim, b.res, b.res) for b in self.decoder_blocks()]

    def n_groups(self) -> int:
        """Number of latent groups (decoder blocks)."""
        return len(self.decoder_blocks())

    # ----------------------------------------------------------------- presets
    @classmethod
    def imagenet64(cls) -> VDVAEConfig:
        """The published ImageNet-64 model (``hps.py`` set ``imagenet64``; 125M parameters).

        Width 512, zdim 16, 75 latent groups, 10 mixture components, input normalisation
        ``(x - 115.92961967) / 69.37404``; Brain-Diffuser regresses the top 31 groups.
        """
        return cls(
            image_size=64,
            width=512,
            zdim=16,
            enc_blocks="64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5",
            dec_blocks="1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12",
            bottleneck_multiple=0.25,
            custom_width_str="",
            no_bias_above=64,
            num_mixtures=10,
            shift=-115.92961967,
            scale=1.0 / 69.37404,
            target_groups=31,
            grad_clip=220.0,
            skip_threshold=380.0,
        )

    @classmethod
    def small(cls, shift: float = -127.5, scale: float = 1.0 / 64.0) -> VDVAEConfig:
        """The small 64x64 model the project trains on CPU (about 0.43M parameters, 1.7 MB).

        Same hierarchy of resolutions as the published model (1, 4, 8, 16, 32, 64) with far
        fewer blocks, width 64 (32 at 64x64, where a block costs 4x more than at 32x32) and
        zdim 8. Its 10 target groups cover resolutions 1-16 (layout and colour; 8,072 values).
        ``shift``/``scale`` are replaced by the training script with the statistics of the
        training images.
        """
        return cls(
            image_size=64,
            width=32,
            zdim=8,
            enc_blocks="64d2,32x2,32d2,16x2,16d2,8x2,8d2,4x2,4d4,1x2",
            dec_blocks="1x1,4m1,4x2,8m4,8x2,16m8,16x2,32m16,32x1,64m32",
            bottleneck_multiple=0.25,
            custom_width_str="32:64,16:64,8:64,4:64,1:64",
            no_bias_above=32,
            num_mixtures=5,
            shift=shift,
            scale=scale,
            target_groups=10,
            grad_clip=200.0,
            skip_threshold=-1.0,
        )

    @classmethod
    def preset(cls, name: str) -> VDVAEConfig:
        """A named preset: ``"imagenet64"`` or ``"small"``."""
        presets = {"imagenet64": cls.imagenet64, "small": cls.small}
        if name not in presets:
            raise ConfigError(f"unknown VDVAE preset {name!r}; expected one of {sorted(presets)}")
        return presets[name]()

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VDVAEConfig:
        """Build from a mapping; ``{"preset": name, **overrides}`` starts from a preset."""
        d = dict(d)
        known = {f.name for f in fields(cls)}
        preset = d.pop("preset", None)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown VDVAE config keys {unknown}; known keys are {sorted(known)}")
        if preset is not None:
            base = cls.preset(str(preset)).to_dict()
            base.update(d)
            d = base
        missing = sorted(f.name for f in fields(cls) if f.default is MISSING and f.name not in d)
        if missing:
            raise ConfigError(f"VDVAE config lacks {missing} (give them or a 'preset')")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> VDVAEConfig:
        """Read a config written by :meth:`to_json`."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(d)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the config as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def as_config(config: VDVAEConfig | Mapping[str, Any] | str) -> VDVAEConfig:
    """Accept a config, a mapping (see :meth:`VDVAEConfig.from_dict`) or a preset name."""
    if isinstance(config, VDVAEConfig):
        return config
    if isinstance(config, str):
        return VDVAEConfig.preset(config)
    if isinstance(config, Mapping):
        return VDVAEConfig.from_dict(config)
    raise ConfigError(f"VDVAE config must be a VDVAEConfig, a mapping or a preset name, got {type(config).__name__}")
