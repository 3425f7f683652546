"""Versatile Diffusion (Brain-Diffuser stage 2): CLIP targets and dual-guided img2img.

Public API
----------
VersatileSpace
    The latent space: targets ``clip_text`` and ``clip_vision``; decoding is dual-guided img2img.
load_clip, ClipEncoder
    CLIP text/vision features as Brain-Diffuser computes them (:mod:`.clip`).
load_dual_guided, DualGuidedImg2Img, DualGuidedUNet
    The diffusion model composed from diffusers components, and our sampling loop (:mod:`.dual_guided`).
"""

from brainrecon.latents.versatile.clip import ClipEncoder, load_clip
from brainrecon.latents.versatile.dual_guided import DualGuidedImg2Img, DualGuidedUNet, load_dual_guided
from brainrecon.latents.versatile.space import VersatileSpace

__all__ = ["ClipEncoder", "DualGuidedImg2Img", "DualGuidedUNet", "VersatileSpace", "load_clip", "load_dual_guided"]
