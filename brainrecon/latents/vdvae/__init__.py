"""VDVAE (Child 2021): our implementation, loader of the published weights, latent space.

Public API
----------
VDVAEConfig
    Architecture + normalisation; presets ``VDVAEConfig.imagenet64()`` (published) and
    ``VDVAEConfig.small()`` (trained by the project, ``scripts/train_vdvae_small.py``).
VDVAE
    The network (``state_dict`` keys equal the published checkpoint's).
load_vdvae(path, config, device="cpu")
    Strict loader for ``.th`` (published format) and ``.safetensors``.
save_vdvae(model, path)
    ``.safetensors`` + ``.json`` config beside it.
VDVAESpace
    The latent space (target ``z`` = top latent groups, flattened).
"""

from brainrecon.latents.vdvae.checkpoint import load_vdvae, read_state_dict, save_vdvae
from brainrecon.latents.vdvae.config import IMAGENET64_FILE, IMAGENET64_URL, VDVAEConfig
from brainrecon.latents.vdvae.model import VDVAE
from brainrecon.latents.vdvae.space import VDVAESpace, build_vdvae_space, default_imagenet64_path

__all__ = [
    "IMAGENET64_FILE",
    "IMAGENET64_URL",
    "VDVAE",
    "VDVAEConfig",
    "VDVAESpace",
    "build_vdvae_space",
    "default_imagenet64_path",
    "load_vdvae",
    "read_state_dict",
    "save_vdvae",
]
