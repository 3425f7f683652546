"""IC-GAN (Casanova et al. 2021) for fMRI decoding (Ozcelik et al. 2022): our implementation,
strict loaders of the published weights, latent space.

Public API
----------
ICGANConfig, SwAVConfig
    Architectures; presets ``ICGANConfig.imagenet256()`` and ``SwAVConfig.resnet50()`` (published).
ICGANGenerator
    BigGAN generator with instance conditioning and hierarchical noise (``state_dict`` keys equal
    the published ``G_ema`` checkpoint's).
SwAVEncoder
    ResNet-50 trunk giving L2-normalised 2048-d instance features.
ClipInstanceEncoder
    The small model's substitute: L2-normalised pooled embedding of a CLIP vision tower.
load_generator(path, config, device), load_encoder(path, config, device)
    Strict loaders (``torch.load(weights_only=True)``, or ``.safetensors`` for the generator).
save_generator(model, path)
    ``.safetensors`` + ``.json`` writer (the project's small model).
ICGANSpace, build_icgan_space
    The latent space (targets ``instance``, ``noise``, ``dense``) and its configuration builder.

Weights layout and file names: ``docs/icgan.md``.
"""

from brainrecon.latents.icgan.checkpoint import (
    SWAV_HEAD_PREFIXES,
    check_state_dict,
    load_encoder,
    load_generator,
    read_state_dict,
    save_generator,
)
from brainrecon.latents.icgan.config import (
    IMAGENET256_DIR,
    IMAGENET256_FILE,
    IMAGENET256_URL,
    SWAV_FILE,
    SWAV_URL,
    ICGANConfig,
    SwAVConfig,
)
from brainrecon.latents.icgan.encoder import ClipInstanceEncoder, SwAVEncoder
from brainrecon.latents.icgan.model import ICGANGenerator
from brainrecon.latents.icgan.space import (
    DECODE_FROM,
    INSTANCE_ENCODERS,
    TARGETS,
    ICGANSpace,
    InversionSettings,
    build_icgan_space,
    default_weights_dir,
)

__all__ = [
    "DECODE_FROM",
    "INSTANCE_ENCODERS",
    "IMAGENET256_DIR",
    "IMAGENET256_FILE",
    "IMAGENET256_URL",
    "SWAV_FILE",
    "SWAV_HEAD_PREFIXES",
    "SWAV_URL",
    "TARGETS",
    "ClipInstanceEncoder",
    "ICGANConfig",
    "ICGANGenerator",
    "ICGANSpace",
    "InversionSettings",
    "SwAVConfig",
    "SwAVEncoder",
    "build_icgan_space",
    "check_state_dict",
    "default_weights_dir",
    "load_encoder",
    "load_generator",
    "read_state_dict",
    "save_generator",
]
