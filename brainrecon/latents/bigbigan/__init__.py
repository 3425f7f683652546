"""BigBiGAN (Donahue & Simonyan 2019): our generator and encoder, strict loaders, latent space.

Public API
----------
GeneratorConfig, EncoderConfig
    Architectures; ``.published()`` gives the TF-Hub ``bigbigan-resnet50`` release.
BigBiGANGenerator, BigBiGANEncoder
    The networks (``state_dict`` keys = the converted layouts of ``docs/bigbigan.md``).
load_generator, load_encoder, save_generator, save_encoder
    Strict loaders (``.pth`` via ``torch.load(weights_only=True)`` or ``.safetensors``) and
    ``.safetensors`` writers.
BigBiGANSpace, build_bigbigan_space
    The latent space (target ``bigbigan.z``, 120-d) and its configuration-file builder.
"""

from brainrecon.latents.bigbigan.checkpoint import (
    load_encoder,
    load_generator,
    read_state_dict,
    save_encoder,
    save_generator,
)
from brainrecon.latents.bigbigan.config import (
    ENCODER_FILE,
    GENERATOR_FILE,
    GENERATOR_URL,
    TFHUB_MODULE,
    EncoderConfig,
    GeneratorConfig,
)
from brainrecon.latents.bigbigan.encoder import BigBiGANEncoder
from brainrecon.latents.bigbigan.generator import BigBiGANGenerator
from brainrecon.latents.bigbigan.space import BigBiGANSpace, build_bigbigan_space, default_generator_path

__all__ = [
    "ENCODER_FILE",
    "GENERATOR_FILE",
    "GENERATOR_URL",
    "TFHUB_MODULE",
    "BigBiGANEncoder",
    "BigBiGANGenerator",
    "BigBiGANSpace",
    "EncoderConfig",
    "GeneratorConfig",
    "build_bigbigan_space",
    "default_generator_path",
    "load_encoder",
    "load_generator",
    "read_state_dict",
    "save_encoder",
    "save_generator",
]
