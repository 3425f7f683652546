"""Versatile Diffusion dual-guided img2img (Brain-Diffuser stage 2), composed from diffusers parts.

Brain-Diffuser refines the stage-1 (VDVAE) reconstruction with Versatile Diffusion: the image
is encoded by the AutoencoderKL, noised to DDIM step ``int(strength * steps)`` and denoised
while every cross-attention block of the *image* UNet mixes two residuals,

``h + (1 - mix) * (T_image(h, vision tokens) - h) + mix * (T_text(h, text tokens) - h)``,

where ``T_image`` is the image UNet's own transformer block (the image-variation flow) and
``T_text`` is the transformer block at the same position of the *text* UNet (the flow that
Versatile Diffusion trained on text contexts). ``mix`` is the **text** weight: Brain-Diffuser's
``mix_str = 0.4`` gives 0.6 vision + 0.4 text (its sampler receives ``mixed_ratio = 1 - 0.4``
for the vision context). This equals diffusers' ``DualTransformer2DModel`` with condition order
``("text", "image")`` and ``mix_ratio = mix`` (diffusers' ``text_to_image_strength``).

Reference facts reproduced here (``ozcelikfu/brain-diffuser``, ``versatile_diffusion/lib``):

* DDIM, 50 steps, eta = 0, 1000 training steps, betas ``scaled_linear`` 0.00085 -> 0.012
  (LDM's "linear" schedule is linear in sqrt(beta)); timesteps 981, 961, ..., 1 (``leading``
  spacing, ``steps_offset = 1``); the last step goes to ``alphas_cumprod[0]``
  (``set_alpha_to_one = False``); predicted x0 not clipped.
* img2img: ``t_enc = int(strength * steps)`` (37); the latent is noised with the DDIM schedule's
  entry ``t_enc`` (timestep 741) and then denoised with its first ``t_enc`` entries in reverse
  (721, 701, ..., 1), i.e. 37 steps. (The noise level is one DDIM step above the first
  denoising step: LDM's ``stochastic_encode``/``decode`` convention, kept on purpose.)
* Classifier-free guidance 7.5 with the unconditional pair (CLIP text of ``""``, CLIP vision of
  a mid-grey image) batched with the conditional pair; the same ``mix`` in both halves.
* The initial latent is a *sample* of the VAE posterior times the scale factor 0.18215.

Deviation: the reference seeds the global RNG once (``torch.manual_seed(0)``) and draws noise
image after image, so an image's result depends on its position in the run. Here every image
has its own generator seeded from ``(seed, index of the image)``, so results do not depend on
the batch size or on the other images.

Loading never builds a part with random weights: every sub-model must come from a safetensors
file whose keys match the architecture exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainrecon.errors import ConfigError, DataFormatError, MissingWeightsError, ShapeMismatchError

#: Sub-folders of a diffusers-format Versatile Diffusion checkpoint used by dual-guided img2img.
SUBFOLDERS = ("image_unet", "text_unet", "vae", "scheduler")
#: Weights file name diffusers uses inside each model sub-folder (single file or sharded index).
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
#: Latent scale factor of the published Versatile Diffusion / Stable Diffusion 1.x VAE.
PUBLISHED_SCALING_FACTOR = 0.18215
#: DDIM settings of the reference sampler (LDM's DDIMSampler), applied whatever scheduler class a
#: checkpoint's ``scheduler/`` folder names (the published one may name PNDM): only the beta
#: schedule is read from the folder.
REFERENCE_DDIM = {
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
#: Keys of a scheduler config that define the training noise schedule.
_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")
#: Resolution Brain-Diffuser runs Versatile Diffusion at (used when the UNet config has no sample_size).
DEFAULT_IMAGE_SIZE = 512

# cross_attention_kwargs keys that carry the dual-conditioning parameters from DualGuidedUNet.forward
# through the image UNet's blocks to every DualCrossAttention (stateless: nothing is stored on modules).
_MIX_KEY = "brainrecon_dual_mix"
_LENGTHS_KEY = "brainrecon_dual_lengths"

_HINT = (
    "download the diffusers-format shi-labs/versatile-diffusion folder (image_unet/, text_unet/, vae/, "
    "scheduler/ with .safetensors weights), or use bundled:vd_small (scripts/train_vd_small.py)"
)


# --------------------------------------------------------------------------------------------
# Published architecture (values of diffusers' convert_versatile_diffusion_to_diffusers.py)
# --------------------------------------------------------------------------------------------
def published_image_unet_config() -> dict[str, Any]:
    """``UNet2DConditionModel`` config of the published image UNet (``image_unet/``)."""
    return {
        "sample_size": None,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    }


def published_text_unet_config() -> dict[str, Any]:
    """``UNetFlatConditionModel`` config of the published text UNet (``text_unet/``).

    Its inputs are 768-d text latents (Optimus); dual-guided img2img uses only its
    transformer blocks, which act on the image UNet's feature maps.
    """
    return {
        "sample_size": None,
        "in_channels": (768, 1, 1),
        "out_channels": (768, 1, 1),
        "down_block_types": (
            "CrossAttnDownBlockFlat", "CrossAttnDownBlockFlat", "CrossAttnDownBlockFlat", "DownBlockFlat",
        ),
        "up_block_types": ("UpBlockFlat", "CrossAttnUpBlockFlat", "CrossAttnUpBlockFlat", "CrossAttnUpBlockFlat"),
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    }


def published_vae_config() -> dict[str, Any]:
    """``AutoencoderKL`` config of the published VAE (``vae/``): 512x512x3 -> 64x64x4."""
    return {
        "sample_size": 256,
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "latent_channels": 4,
        "layers_per_block": 2,
        "scaling_factor": PUBLISHED_SCALING_FACTOR,
    }


def published_scheduler_config() -> dict[str, Any]:
    """``DDIMScheduler`` config reproducing the reference DDIM sampler."""
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        **REFERENCE_DDIM,
    }


def reference_scheduler(config: dict[str, Any] | None = None) -> Any:
    """A ``DDIMScheduler`` with the reference sampler's settings and ``config``'s beta schedule.

    Parameters
    ----------
    config : dict, optional
        A scheduler config (any diffusers scheduler class); only the keys that define the
        training noise schedule are used. Default: :func:`published_scheduler_config`.
    """
    from diffusers import DDIMScheduler

    cfg = published_scheduler_config() if config is None else dict(config)
    kwargs = {k: cfg[k] for k in _SCHEDULE_KEYS if cfg.get(k) is not None}
    if kwargs.get("prediction_type", "epsilon") != "epsilon":
        raise ConfigError(
            f"scheduler prediction_type: expected 'epsilon' (Versatile Diffusion), got {kwargs['prediction_type']!r}"
        )
    return DDIMScheduler(**kwargs, **REFERENCE_DDIM)


def img2img_timesteps(scheduler: Any, steps: int, strength: float) -> tuple[int, list[int]]:
    """Noise timestep and denoising timesteps of reference img2img.

    Parameters
    ----------
    scheduler : diffusers.DDIMScheduler
        Its ``set_timesteps`` is called (use a private copy when sharing it).
    steps : int
        DDIM steps of the full schedule (50).
    strength : float
        In (0, 1]; ``t_enc = int(strength * steps)`` steps are run.

    Returns
    -------
    noise_t : int
        Training timestep whose noise level the initial latent is brought to: the DDIM
        schedule's entry ``t_enc`` (one DDIM step above the first denoising step, as in the
        reference); at ``t_enc == steps`` (no such entry) the last training timestep.
    timesteps : list of int
        The ``t_enc`` denoising timesteps, descending.

    Examples
    --------
    >>> from brainrecon.latents.versatile.dual_guided import reference_scheduler, img2img_timesteps
    >>> t0, ts = img2img_timesteps(reference_scheduler(), 50, 0.75)
    >>> t0, ts[0], ts[-1], len(ts)
    (741, 721, 1, 37)
    """
    if not 0.0 < strength <= 1.0:
        raise ConfigError(f"strength: expected a value in (0, 1], got {strength}")
    if int(steps) < 1:
        raise ConfigError(f"steps: expected >= 1, got {steps}")
    steps = int(steps)
    t_enc = int(strength * steps)
    if t_enc < 1:
        raise ConfigError(f"strength * steps = {strength} * {steps} < 1: no denoising step would run")
    scheduler.set_timesteps(steps)
    all_ts = [int(t) for t in scheduler.timesteps]
    start = steps - t_enc
    noise_t = all_ts[start - 1] if start > 0 else int(scheduler.config.num_train_timesteps) - 1
    return noise_t, all_ts[start:]


# --------------------------------------------------------------------------------------------
# Dual cross-attention
# --------------------------------------------------------------------------------------------
class DualCrossAttention(nn.Module):
    """An image-UNet transformer block paired with the text-UNet block at the same position.

    Called by the image UNet's blocks in place of its ``Transformer2DModel``, with the text
    and vision tokens concatenated (text first) in ``encoder_hidden_states`` and the split
    lengths and the text weight in ``cross_attention_kwargs`` (set by
    :meth:`DualGuidedUNet.forward`).

    Parameters
    ----------
    image_transformer, text_transformer : diffusers Transformer2DModel
        Same ``in_channels`` and ``cross_attention_dim``.
    """

    def __init__(self, image_transformer: nn.Module, text_transformer: nn.Module) -> None:
        super().__init__()
        self.image_transformer = image_transformer
        self.text_transformer = text_transformer

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        added_cond_kwargs: dict | None = None,
        class_labels: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Any:
        """Mix the vision-conditioned and text-conditioned residuals (signature of Transformer2DModel)."""
        kwargs = dict(cross_attention_kwargs or {})
        if _MIX_KEY not in kwargs or _LENGTHS_KEY not in kwargs or encoder_hidden_states is None:
            raise ConfigError(
                "DualCrossAttention needs text and vision contexts: call DualGuidedUNet.forward, "
                "not the image UNet directly"
            )
        if encoder_attention_mask is not None:
            raise ConfigError("DualCrossAttention: encoder_attention_mask is not supported (contexts are unmasked)")
        mix = kwargs.pop(_MIX_KEY)
        n_text, n_vision = kwargs.pop(_LENGTHS_KEY)
        text = encoder_hidden_states[:, :n_text]
        vision = encoder_hidden_states[:, n_text : n_text + n_vision]
        common = {
            "timestep": timestep,
            "added_cond_kwargs": added_cond_kwargs,
            "class_labels": class_labels,
            "cross_attention_kwargs": kwargs or None,
            "attention_mask": attention_mask,
            "return_dict": False,
        }
        # A weight of exactly 0 or 1 skips the other path: the result is then exactly the single
        # flow (and training steps with mix in {0, 1} cost one transformer per block, not two).
        if isinstance(mix, float) and mix == 0.0:
            out = self.image_transformer(hidden_states, encoder_hidden_states=vision, **common)[0]
        elif isinstance(mix, float) and mix == 1.0:
            out = self.text_transformer(hidden_states, encoder_hidden_states=text, **common)[0]
        else:
            vision_out = self.image_transformer(hidden_states, encoder_hidden_states=vision, **common)[0]
            text_out = self.text_transformer(hidden_states, encoder_hidden_states=text, **common)[0]
            if isinstance(mix, torch.Tensor):  # one weight per sample, shape (B,)
                mix = mix.to(hidden_states).reshape(-1, *([1] * (hidden_states.ndim - 1)))
            # Same operation order as diffusers' DualTransformer2DModel (residuals, then add back).
            out = (text_out - hidden_states) * mix + (vision_out - hidden_states) * (1 - mix) + hidden_states
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=out)


def _transformer_class() -> type:
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    return Transformer2DModel


def _check_mix(mix: float | torch.Tensor, batch: int) -> float | torch.Tensor:
    if isinstance(mix, torch.Tensor):
        if mix.ndim == 0:
            mix = float(mix)
        else:
            if tuple(mix.shape) != (batch,):
                raise ShapeMismatchError("mix (per-sample text weights)", f"({batch},)", tuple(mix.shape))
            if bool(((mix < 0) | (mix > 1)).any()):
                raise ConfigError("mix: expected text weights in [0, 1]")
            return mix
    mix = float(mix)
    if not 0.0 <= mix <= 1.0:
        raise ConfigError(f"mix: expected the text weight in [0, 1], got {mix}")
    return mix


class DualGuidedUNet(nn.Module):
    """Image UNet whose transformer blocks are paired with the text UNet's (dual guidance).

    Parameters
    ----------
    image_unet : diffusers.UNet2DConditionModel
        Modified in place: each ``Transformer2DModel`` becomes a :class:`DualCrossAttention`
        holding it and the text UNet's block at the same module path (as diffusers'
        ``VersatileDiffusionDualGuidedPipeline`` pairs them). Use
        :meth:`plain_image_unet` to get the original structure back (e.g. to save it).
    text_unet : UNetFlatConditionModel
        Only its transformer blocks are kept (shared, not copied); its other layers process
        text latents and are not needed to generate images.

    Examples
    --------
    >>> eps = dual(latents, t, text_ctx, vision_ctx, mix=0.4)   # doctest: +SKIP
    """

    def __init__(self, image_unet: nn.Module, text_unet: nn.Module) -> None:
        super().__init__()
        transformer_cls = _transformer_class()
        if any(isinstance(m, DualCrossAttention) for m in image_unet.modules()):
            raise ConfigError("image_unet already has dual cross-attention blocks (pass the plain image UNet)")
        image_sites = [n for n, m in image_unet.named_modules() if isinstance(m, transformer_cls)]
        text_sites = [n for n, m in text_unet.named_modules() if isinstance(m, transformer_cls)]
        if not image_sites:
            raise ConfigError("image_unet has no Transformer2DModel blocks to pair")
        if sorted(image_sites) != sorted(text_sites):
            raise ConfigError(
                "image and text UNets have transformer blocks at different positions: "
                f"only in image UNet {sorted(set(image_sites) - set(text_sites))}, "
                f"only in text UNet {sorted(set(text_sites) - set(image_sites))}"
            )
        for name in image_sites:
            img_t = image_unet.get_submodule(name)
            txt_t = text_unet.get_submodule(name)
            for key in ("in_channels", "cross_attention_dim"):
                if img_t.config[key] != txt_t.config[key]:
                    raise ShapeMismatchError(f"text UNet {name} {key}", img_t.config[key], txt_t.config[key])
            parent_name, index = name.rsplit(".", 1)
            image_unet.get_submodule(parent_name)[int(index)] = DualCrossAttention(img_t, txt_t)
        self.image_unet = image_unet
        self.sites: tuple[str, ...] = tuple(image_sites)
        first = image_unet.get_submodule(image_sites[0]).image_transformer
        self.cross_attention_dim = int(first.config["cross_attention_dim"])

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def in_channels(self) -> int:
        return int(self.image_unet.config.in_channels)

    @contextlib.contextmanager
    def plain_image_unet(self) -> Iterator[nn.Module]:
        """The image UNet with its own transformer blocks back in place, for the ``with`` block.

        Its state dict then has the published key names (for ``save_pretrained``).
        """
        duals = [(name, self.image_unet.get_submodule(name)) for name in self.sites]
        try:
            for name, dual in duals:
                parent_name, index = name.rsplit(".", 1)
                self.image_unet.get_submodule(parent_name)[int(index)] = dual.image_transformer
            yield self.image_unet
        finally:
            for name, dual in duals:
                parent_name, index = name.rsplit(".", 1)
                self.image_unet.get_submodule(parent_name)[int(index)] = dual

    def forward(
        self,
        latents: torch.Tensor,
        t: int | float | torch.Tensor,
        text_ctx: torch.Tensor,
        vision_ctx: torch.Tensor,
        mix: float | torch.Tensor = 0.4,
    ) -> torch.Tensor:
        """Predicted noise.

        Parameters
        ----------
        latents : Tensor, shape (B, C, h, w)
        t : int or Tensor
            Training timestep (scalar or one per sample).
        text_ctx : Tensor, shape (B, Lt, D)
            Text tokens (e.g. CLIP-text 77 x 768).
        vision_ctx : Tensor, shape (B, Lv, D)
            Vision tokens (e.g. CLIP-vision 257 x 768).
        mix : float or Tensor of shape (B,)
            Text weight in [0, 1]: 0 = vision only (the image UNet alone), 1 = text only.

        Returns
        -------
        Tensor, shape (B, C, h, w)
        """
        if latents.ndim != 4 or latents.shape[1] != self.in_channels:
            raise ShapeMismatchError("latents", f"(B, {self.in_channels}, h, w)", tuple(latents.shape))
        b = latents.shape[0]
        for name, ctx in (("text_ctx", text_ctx), ("vision_ctx", vision_ctx)):
            if ctx.ndim != 3 or ctx.shape[0] != b or ctx.shape[2] != self.cross_attention_dim:
                raise ShapeMismatchError(name, f"({b}, L, {self.cross_attention_dim})", tuple(ctx.shape))
        mix = _check_mix(mix, b)
        context = torch.cat([text_ctx, vision_ctx], dim=1).to(self.dtype)
        kwargs = {_MIX_KEY: mix, _LENGTHS_KEY: (int(text_ctx.shape[1]), int(vision_ctx.shape[1]))}
        return self.image_unet(
            latents.to(self.dtype), t, encoder_hidden_states=context, cross_attention_kwargs=kwargs
        ).sample


# --------------------------------------------------------------------------------------------
# img2img
# --------------------------------------------------------------------------------------------
def _as_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        # fp16 on GPU as in the reference; CPU kernels are slow or missing in half precision.
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "float32": torch.float32,
             "fp32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if str(dtype) not in names:
        raise ConfigError(f"dtype: expected one of {sorted(names)} or None, got {dtype!r}")
    return names[str(dtype)]


def _context_array(x: Any, name: str, rows: int | None, dim: int) -> np.ndarray | torch.Tensor:
    """Validate a context ``(rows, L, dim)``; ``rows=None``: an unconditional one, ``(1, L, dim)`` or ``(L, dim)``.

    Returned unconverted (numpy stays numpy) so that large arrays are cast batch by batch.
    """
    arr = x if isinstance(x, torch.Tensor) else np.asarray(x)
    if rows is None and arr.ndim == 2:
        arr = arr[None]
    want_rows = 1 if rows is None else rows
    if arr.ndim != 3 or arr.shape[0] != want_rows or arr.shape[2] != dim:
        raise ShapeMismatchError(name, f"({want_rows}, L, {dim})", tuple(arr.shape))
    return arr


def _to_tensor(x: np.ndarray | torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, dtype=np.float32))
    t = t.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(t).all()):
        raise DataFormatError(f"{name}: contains non-finite values")
    return t


def _init_images(images: Any) -> np.ndarray:
    """uint8 (n, H, W, 3) or float (n, 3, H, W) in [0, 1] -> float32 (n, 3, H, W)."""
    from brainrecon.images import to_float_chw

    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.dtype == np.uint8:
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ShapeMismatchError("init_images (uint8)", "(n, H, W, 3)", arr.shape)
        return to_float_chw(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataFormatError(f"init_images: expected uint8 or float images, got dtype {arr.dtype}")
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ShapeMismatchError("init_images (float)", "(n, 3, H, W) in [0, 1]", arr.shape)
    if not np.isfinite(arr).all():
        raise DataFormatError("init_images: contains non-finite values")
    lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=1.0))
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise DataFormatError(f"init_images: expected float values in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


class DualGuidedImg2Img:
    """Brain-Diffuser's stage 2: dual-guided (text + vision) img2img with DDIM.

    Parameters
    ----------
    unet : DualGuidedUNet
    vae : diffusers.AutoencoderKL
    scheduler : diffusers.DDIMScheduler
        Copied at every call (its ``set_timesteps`` state is never shared).
    scaling_factor : float, optional
        Latent scale; default ``vae.config.scaling_factor`` (0.18215 published).
    image_size : int, optional
        Working resolution; initial images are resized to it (antialiased bicubic). Default:
        the UNet's ``sample_size`` times the VAE's downsampling, else 512 (Brain-Diffuser).
    batch_size : int
        Images per model call (CFG doubles the UNet batch).
    progress : bool
        Show a progress bar over denoising steps.

    Notes
    -----
    The models are used on the device and in the dtype they are in (see
    :func:`load_dual_guided`); the sampler state (latents, scheduler arithmetic) stays in
    float32 and only the network inputs are cast.
    """

    def __init__(
        self,
        unet: DualGuidedUNet,
        vae: nn.Module,
        scheduler: Any,
        *,
        scaling_factor: float | None = None,
        image_size: int | None = None,
        batch_size: int = 8,
        progress: bool = True,
    ) -> None:
        self.unet = unet.eval()
        self.vae = vae.eval()
        self.scheduler = scheduler
        self.scaling_factor = float(vae.config.scaling_factor if scaling_factor is None else scaling_factor)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        if int(vae.config.latent_channels) != unet.in_channels:
            raise ShapeMismatchError("VAE latent channels vs UNet input channels", unet.in_channels,
                                     int(vae.config.latent_channels))
        if image_size is None:
            sample = unet.image_unet.config.sample_size
            image_size = int(sample) * self.vae_scale if sample else DEFAULT_IMAGE_SIZE
        if int(image_size) % self.vae_scale:
            raise ConfigError(f"image_size {image_size} is not a multiple of the VAE downsampling {self.vae_scale}")
        self.image_size = int(image_size)
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size: expected >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.progress = progress

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def context_dim(self) -> int:
        """Feature size D the text and vision tokens must have."""
        return self.unet.cross_attention_dim

    # ------------------------------------------------------------------ pieces
    def predict_noise(
        self,
        latents: torch.Tensor,
        t: int | torch.Tensor,
        text_ctx: torch.Tensor,
        vision_ctx: torch.Tensor,
        *,
        mix: float | torch.Tensor,
        guidance: float,
        uncond: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Classifier-free-guided noise prediction (float32).

        ``guidance == 1`` runs the conditional branch only; otherwise the unconditional pair
        ``uncond = (text (1, Lt, D), vision (1, Lv, D))`` is batched in front of the
        conditional one, and ``eps_u + guidance * (eps_c - eps_u)`` is returned.
        """
        b = latents.shape[0]
        if guidance == 1.0:
            return self.unet(latents, t, text_ctx, vision_ctx, mix).float()
        if uncond is None:
            raise ConfigError("guidance != 1 needs the unconditional contexts uncond=(text, vision)")
        tu, vu = uncond
        if isinstance(mix, torch.Tensor) and mix.ndim == 1:  # per-sample weights: same in both halves
            mix = torch.cat([mix, mix])
        text = torch.cat([tu.expand(b, -1, -1), text_ctx])
        vision = torch.cat([vu.expand(b, -1, -1), vision_ctx])
        eps = self.unet(torch.cat([latents, latents]), t, text, vision, mix).float()
        eps_u, eps_c = eps.chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    def encode(self, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents of images in [-1, 1]: posterior mean + std * ``noise`` (a posterior sample)."""
        vae_dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode(images.to(self.device, vae_dtype)).latent_dist
        z = dist.mean.float() + dist.std.float() * noise.to(self.device)
        return z * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], float32 ``(B, 3, H, W)``, from scaled latents."""
        vae_dtype = next(self.vae.parameters()).dtype
        x = self.vae.decode((latents / self.scaling_factor).to(vae_dtype)).sample.float()
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    def _guidance_direction(self, z: torch.Tensor, eps: torch.Tensor, t: int, scheduler: Any,
                            guide: Callable[[torch.Tensor, np.ndarray], torch.Tensor],
                            rows: np.ndarray) -> torch.Tensor:
        """Gradient of ``guide`` w.r.t. the latent ``z`` (through the clean-latent estimate), unit RMS per image."""
        ab = scheduler.alphas_cumprod[int(t)].to(z.device, torch.float32)
        with torch.enable_grad():
            zz = z.detach().float().requires_grad_(True)
            x0 = (zz - (1.0 - ab).sqrt() * eps.detach()) / ab.sqrt()
            score = guide(self.decode(x0), rows)
            (g,) = torch.autograd.grad(score.sum(), zz)
        rms = g.flatten(1).pow(2).mean(1).sqrt().clamp(min=1e-12)
        return (g / rms[:, None, None, None]).to(eps.dtype)

    # ------------------------------------------------------------------ run
    @torch.no_grad()  # not inference_mode: encoder guidance takes gradients inside the loop
    def __call__(
        self,
        init_images: np.ndarray,
        text_ctx: np.ndarray | torch.Tensor,
        vision_ctx: np.ndarray | torch.Tensor,
        *,
        strength: float = 0.75,
        guidance: float = 7.5,
        mix: float = 0.4,
        steps: int = 50,
        seed: int = 0,
        uncond: Sequence[Any] | None = None,
        batch_size: int | None = None,
        guide: Callable[[torch.Tensor, np.ndarray], torch.Tensor] | None = None,
        guide_scale: float = 0.0,
    ) -> np.ndarray:
        """Refine ``init_images`` under text + vision guidance.

        Parameters
        ----------
        init_images : ndarray
            ``(n, H, W, 3)`` uint8 or ``(n, 3, H, W)`` float in [0, 1]; resized to
            ``image_size``.
        text_ctx : array, shape (n, Lt, D)
        vision_ctx : array, shape (n, Lv, D)
        strength : float
            In (0, 1]; ``int(strength * steps)`` DDIM steps are run (37 of 50).
        guidance : float
            Classifier-free guidance scale (>= 0; 1 = none).
        mix : float
            Text weight of the dual conditioning (Brain-Diffuser: 0.4, i.e. 0.6 vision).
        steps : int
            DDIM steps of the full schedule.
        seed : int
            Image ``i``'s noise comes from a generator seeded with ``(seed, i)``.
        uncond : (array (1, Lt, D), array (1, Lv, D))
            Unconditional text and vision contexts (CLIP of "" and of a mid-grey image);
            required unless ``guidance == 1``.
        batch_size : int, optional
            Overrides the instance's.
        guide : callable, optional
            Encoder guidance (:mod:`brainrecon.roi.guidance`): ``guide(images, rows)`` gives the
            objective ``(b,)`` of decoded images ``(b, 3, H, W)`` in [0, 1], ``rows`` their indices
            among the ``n`` inputs. At each step the noise prediction moves against the objective's
            gradient with respect to the latent, through the one-step estimate of the clean latent
            and the VAE decoder, normalised per image to unit RMS: ``eps - guide_scale * g / rms(g)``.
        guide_scale : float
            Size of that move in units of the noise's RMS (>= 0; 0 = no guidance).

        Returns
        -------
        ndarray, shape (n, 3, image_size, image_size), float32 in [0, 1]
        """
        from tqdm.auto import tqdm

        from brainrecon.images import resize
        from brainrecon.latents.vdvae.space import _PerImageNoise

        images = _init_images(init_images)
        n = len(images)
        dim = self.context_dim
        text_all = _context_array(text_ctx, "text_ctx", n, dim)
        vision_all = _context_array(vision_ctx, "vision_ctx", n, dim)
        mix = float(_check_mix(mix, n))
        guidance = float(guidance)
        if guidance < 0:
            raise ConfigError(f"guidance: expected >= 0, got {guidance}")
        unc: tuple[torch.Tensor, torch.Tensor] | None = None
        if guidance != 1.0:
            if uncond is None or len(uncond) != 2:
                raise ConfigError("guidance != 1 needs uncond=(text_uncond (1, Lt, D), vision_uncond (1, Lv, D))")
            tu = _context_array(uncond[0], "uncond text context", None, dim)
            vu = _context_array(uncond[1], "uncond vision context", None, dim)
            if tu.shape[1] != text_all.shape[1]:
                raise ShapeMismatchError("uncond text tokens", text_all.shape[1], tu.shape[1])
            if vu.shape[1] != vision_all.shape[1]:
                raise ShapeMismatchError("uncond vision tokens", vision_all.shape[1], vu.shape[1])
            unc = (_to_tensor(tu, "uncond text context", self.device),
                   _to_tensor(vu, "uncond vision context", self.device))
        bs = self.batch_size if batch_size is None else int(batch_size)
        if bs < 1:
            raise ConfigError(f"batch_size: expected >= 1, got {bs}")
        guide_scale = float(guide_scale)
        if not np.isfinite(guide_scale) or guide_scale < 0:
            raise ConfigError(f"guide_scale: expected a finite value >= 0, got {guide_scale}")
        if guide_scale > 0 and guide is None:
            raise ConfigError("guide_scale > 0 needs a guide (an objective of the decoded images)")

        scheduler = type(self.scheduler).from_config(self.scheduler.config)  # private timestep state
        noise_t, timesteps = img2img_timesteps(scheduler, steps, strength)
        images = resize(images, self.image_size) if n else images
        out = np.empty((n, 3, self.image_size, self.image_size), np.float32)
        h = self.image_size // self.vae_scale
        latent_shape = (self.unet.in_channels, h, h)
        bar = tqdm(total=n * len(timesteps), desc="dual-guided img2img", unit="img-step",
                   disable=not self.progress, mininterval=2.0)
        try:
            for i0 in range(0, n, bs):
                i1 = min(n, i0 + bs)
                # Two draws per image, always in this order: posterior sample, then forward noise.
                noise = _PerImageNoise(seed, range(i0, i1), self.device, torch.float32)
                post_noise = noise.normal((i1 - i0, *latent_shape))
                fwd_noise = noise.normal((i1 - i0, *latent_shape))
                x = torch.from_numpy(images[i0:i1]).to(self.device) * 2.0 - 1.0
                z0 = self.encode(x, post_noise)
                z = scheduler.add_noise(z0, fwd_noise, torch.tensor([noise_t], device=self.device))
                text = _to_tensor(text_all[i0:i1], "text_ctx", self.device)
                vision = _to_tensor(vision_all[i0:i1], "vision_ctx", self.device)
                for t in timesteps:
                    eps = self.predict_noise(z, t, text, vision, mix=mix, guidance=guidance, uncond=unc)
                    if guide is not None and guide_scale > 0:
                        eps = eps - guide_scale * self._guidance_direction(z, eps, t, scheduler, guide,
                                                                            np.arange(i0, i1))
                    z = scheduler.step(eps, t, z, eta=0.0).prev_sample
                    bar.update(i1 - i0)
                out[i0:i1] = self.decode(z).cpu().numpy()
        finally:
            bar.close()
        return out


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _check_folder(root: Path, sub: str, *, weights: bool) -> Path:
    folder = root / sub
    if not folder.is_dir():
        raise MissingWeightsError(folder, f"Versatile Diffusion {sub}/ (sub-folder of {root})", _HINT)
    cfg_name = "scheduler_config.json" if sub == "scheduler" else "config.json"
    if not (folder / cfg_name).is_file():
        raise MissingWeightsError(folder / cfg_name, f"Versatile Diffusion {sub} config", _HINT)
    if weights and not ((folder / WEIGHTS_NAME).is_file() or (folder / WEIGHTS_INDEX_NAME).is_file()):
        others = sorted(p.name for p in folder.glob("diffusion_pytorch_model*"))
        hint = (f"found {others}: only .safetensors are read (no pickled .bin); " if others else "") + _HINT
        raise MissingWeightsError(folder / WEIGHTS_NAME, f"Versatile Diffusion {sub} weights", hint)
    return folder


def _load_model(cls: type, root: Path, sub: str, dtype: torch.dtype) -> nn.Module:
    folder = _check_folder(root, sub, weights=True)
    try:
        model, info = cls.from_pretrained(
            root, subfolder=sub, use_safetensors=True, local_files_only=True, torch_dtype=dtype,
            low_cpu_mem_usage=False, output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError) as exc:  # diffusers' errors for bad files / shapes
        raise DataFormatError(f"{folder}: cannot load {cls.__name__} ({type(exc).__name__}: {exc})") from exc
    problems = {k: list(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems or info.get("error_msgs"):
        # diffusers only warns on missing keys (they would keep their random initialisation)
        detail = "; ".join(f"{k}: {v[:5]}{' ...' if len(v) > 5 else ''}" for k, v in problems.items())
        raise DataFormatError(
            f"{folder / WEIGHTS_NAME}: weights do not match the {cls.__name__} in config.json ({detail}"
            f"{'; ' + str(info['error_msgs'][:3]) if info.get('error_msgs') else ''})"
        )
    return model


def _model_folder(path: str | os.PathLike, what: str) -> Path:
    """``path`` resolved (``bundled:`` names included); a missing folder raises, naming ``what`` it should hold."""
    from brainrecon.paths import resolve_weights_path

    root = resolve_weights_path(path)
    if not root.is_dir():
        raise MissingWeightsError(root, what, _HINT)
    return root


def load_vae(path: str | os.PathLike, dtype: str | torch.dtype | None = None) -> nn.Module:
    """The ``vae/`` part alone of a diffusers-format Versatile Diffusion folder, on CPU.

    For reusing a trained model's autoencoder (``scripts/train_vd_small.py --vae-from``) without
    loading its UNets. ``path`` and the errors are as in :func:`load_dual_guided`; ``dtype``
    defaults to float32.
    """
    from diffusers import AutoencoderKL

    root = _model_folder(path, "Versatile Diffusion (diffusers layout with a vae/ sub-folder)")
    return _load_model(AutoencoderKL, root, "vae", _as_dtype(dtype, torch.device("cpu")))


def load_unets(path: str | os.PathLike, dtype: str | torch.dtype | None = None) -> tuple[nn.Module, nn.Module]:
    """The ``image_unet/`` and ``text_unet/`` parts of a diffusers-format folder, on CPU, unpaired.

    For continuing the training of a model (``scripts/train_vd_small.py --init-from``): the plain
    ``UNet2DConditionModel`` and ``UNetFlatConditionModel``, ready to be paired by
    :class:`DualGuidedUNet`. ``path`` and the errors are as in :func:`load_dual_guided`;
    ``dtype`` defaults to float32.
    """
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import UNetFlatConditionModel

    root = _model_folder(path, "Versatile Diffusion (diffusers layout with image_unet/ and text_unet/)")
    dt = _as_dtype(dtype, torch.device("cpu"))
    return (_load_model(UNet2DConditionModel, root, "image_unet", dt),
            _load_model(UNetFlatConditionModel, root, "text_unet", dt))


def load_dual_guided(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    *,
    batch_size: int = 8,
    progress: bool = True,
    image_size: int | None = None,
) -> DualGuidedImg2Img:
    """Dual-guided img2img from a diffusers-format Versatile Diffusion folder.

    Parameters
    ----------
    path : str or path
        Folder with ``image_unet/``, ``text_unet/``, ``vae/`` (each ``config.json`` +
        ``diffusion_pytorch_model.safetensors``) and ``scheduler/scheduler_config.json``
        (the published ``shi-labs/versatile-diffusion`` layout), or ``"bundled:vd_small"``
        for the small model trained by the project.
    device : str
        One device for all parts.
    dtype : str or torch.dtype, optional
        Default float16 on CUDA (as the reference), float32 elsewhere.
    batch_size, progress, image_size
        See :class:`DualGuidedImg2Img`.

    Raises
    ------
    MissingWeightsError
        A folder, config or safetensors file is absent (the error names it).
    DataFormatError
        A weights file does not match its config (missing, unexpected or mis-shaped keys).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import UNetFlatConditionModel

    root = _model_folder(path, "Versatile Diffusion (diffusers layout: image_unet/, text_unet/, vae/, scheduler/)")
    for sub in SUBFOLDERS:  # report the first absent part before loading gigabytes of the others
        _check_folder(root, sub, weights=sub != "scheduler")
    dev = torch.device(device)
    dt = _as_dtype(dtype, dev)
    image_unet = _load_model(UNet2DConditionModel, root, "image_unet", dt)
    text_unet = _load_model(UNetFlatConditionModel, root, "text_unet", dt)
    vae = _load_model(AutoencoderKL, root, "vae", dt)
    sched_file = root / "scheduler" / "scheduler_config.json"
    try:
        sched_cfg = json.loads(sched_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{sched_file}: not a readable JSON scheduler config ({exc})") from exc
    unet = DualGuidedUNet(image_unet, text_unet)
    del text_unet  # its non-transformer layers (text-latent flow) are not needed for images
    return DualGuidedImg2Img(
        unet.to(dev), vae.to(dev), reference_scheduler(sched_cfg),
        batch_size=batch_size, progress=progress, image_size=image_size,
    )
