"""Versatile Diffusion as a :class:`~brainrecon.latents.base.LatentSpace` (Brain-Diffuser stage 2).

Targets
-------
``versatile.clip_text``
    CLIP text tokens ``(Lt, D)`` of the image's captions, each caption normalised by its
    pooled (end-of-text) embedding's norm, then averaged over the captions (77 x 768 for
    the published CLIP ViT-L/14).
``versatile.clip_vision``
    CLIP vision tokens ``(Lv, D)`` normalised by the class token's norm (257 x 768).

Decoding runs dual-guided img2img (:mod:`brainrecon.latents.versatile.dual_guided`) from
an initial image (Brain-Diffuser: the VDVAE reconstruction; in a pipeline set
``generate.init_from.versatile: vdvae``), with predicted text and vision tokens mixed in
every cross-attention block (``mix`` is the text weight, 0.4 in the paper). Without an
initial image it starts from a mid-grey image at strength 1 (text/vision-to-image).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError, MissingDataError, MissingWeightsError, ShapeMismatchError
from brainrecon.latents.base import Stimuli, TargetSpec
from brainrecon.paths import resolve_weights_path


class VersatileSpace:
    """CLIP text/vision targets and dual-guided img2img decoding.

    Parameters
    ----------
    weights_path : str
        Diffusers-format Versatile Diffusion folder (``image_unet/``, ``text_unet/``,
        ``vae/``, ``scheduler/``; the published one also holds the CLIP parts), or
        ``bundled:vd_small`` for the small model the project trained
        (``scripts/train_vd_small.py``).
    clip_path : str, optional
        Folder of the CLIP encoders (``text_encoder/``, ``image_encoder/``, ``tokenizer/``);
        default: ``weights_path`` (the published layout). ``bundled:clip_small`` for ours.
    strength, guidance, mix, steps : float, float, float, int
        img2img strength (0.75), classifier-free guidance scale (7.5), text weight of the
        dual conditioning (0.4) and DDIM steps (50): Brain-Diffuser's values.
    image_size : int
        Resolution the diffusion model works at (512 published, 64 for ``vd_small``);
        initial images are resized to it.
    batch_size : int
        Images per model call.
    device, dtype : str
        ``dtype=None`` picks float16 on CUDA and float32 on CPU.
    """

    name = "versatile"
    #: Settings used only by ``decode``: left out of the extract cache key (see ExtractStage.key),
    #: so that a change of strength or guidance regenerates images without re-encoding stimuli.
    decode_params: tuple[str, ...] = ("strength", "guidance", "mix", "steps")

    def __init__(
        self,
        weights_path: str = "bundled:vd_small",
        clip_path: str | None = None,
        *,
        strength: float = 0.75,
        guidance: float = 7.5,
        mix: float = 0.4,
        steps: int = 50,
        image_size: int = 512,
        batch_size: int = 8,
        device: str = "cpu",
        dtype: str | None = None,
        progress: bool = True,
    ) -> None:
        from brainrecon.latents.versatile.clip import load_clip

        if not 0.0 < strength <= 1.0:
            raise ConfigError(f"versatile.strength: expected a value in (0, 1], got {strength}")
        if not 0.0 <= mix <= 1.0:
            raise ConfigError(f"versatile.mix: expected the text weight in [0, 1], got {mix}")
        if guidance < 1.0:
            raise ConfigError(f"versatile.guidance: expected >= 1 (1 = no guidance), got {guidance}")
        if steps < 1 or batch_size < 1 or image_size < 8:
            raise ConfigError(
                f"versatile: expected steps >= 1, batch_size >= 1, image_size >= 8; got {steps}, {batch_size}, {image_size}"
            )
        self.weights = resolve_weights_path(weights_path)
        self.clip_dir = resolve_weights_path(clip_path) if clip_path is not None else self.weights
        #: The CLIP folder as configured (portable, e.g. ``"bundled:clip_small_solid"``); the roi stage's
        #: ``clip_weights: auto`` reads ROI latents with it.
        self.clip_weights = str(clip_path if clip_path is not None else weights_path)
        if not self.weights.is_dir():
            raise MissingWeightsError(
                self.weights, "Versatile Diffusion (diffusers layout: image_unet/, text_unet/, vae/, scheduler/)",
                "download shi-labs/versatile-diffusion to this folder, or use bundled:vd_small",
            )
        self.strength, self.guidance, self.mix, self.steps = float(strength), float(guidance), float(mix), int(steps)
        self.image_size, self.batch_size = int(image_size), int(batch_size)
        self.device, self.dtype, self.progress = device, dtype, progress
        self.clip = load_clip(str(self.clip_dir), device=device)
        self.targets: dict[str, TargetSpec] = {
            "clip_text": TargetSpec((self.clip.text_tokens, self.clip.dim), "CLIP text tokens, caption-averaged"),
            "clip_vision": TargetSpec((self.clip.vision_tokens, self.clip.dim), "CLIP vision tokens"),
        }
        self._pipe: Any = None
        self._uncond: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> dict[str, Any]:
        """Digests of the CLIP and diffusion weights (the extract/generate cache keys use them).

        The diffusion folder's training record (``*.training.json``) is left out: rewriting
        a model's provenance must not invalidate the images it generated.
        """
        from brainrecon.fingerprint import path_fingerprint

        return {"clip": self.clip.fingerprint(),
                "diffusion": path_fingerprint(self.weights, ignore=("*.training.json",))}

    def clip_image_embedding(self, latents: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The CLIP image embedding held in ``latents`` and the identity of that CLIP.

        Token 0 of ``clip_vision`` is the projected class token, the image embedding up to its norm
        (diagnostics read ROI latents with estimators trained on the same CLIP's embeddings).
        """
        z = latents.get("clip_vision")
        if z is None:
            return None
        return np.asarray(z, dtype=np.float64)[:, 0], self.clip.fingerprint()

    # ------------------------------------------------------------------ encode
    def encode(self, stimuli: Stimuli) -> dict[str, np.ndarray]:
        """CLIP text tokens of the captions and vision tokens of the images."""
        if stimuli.captions is None:
            raise MissingDataError(
                "captions", "captions of the stimuli (needed for versatile.clip_text)",
                "the data source has no captions; NSD reads them from COCO annotations, byo from captions.json",
            )
        text = self.clip.encode_captions(stimuli.captions)
        vision = self.clip.encode_images(stimuli.images)
        return {"clip_text": np.asarray(text, np.float32), "clip_vision": np.asarray(vision, np.float32)}

    # ------------------------------------------------------------------ decode
    def with_strength(self, strength: float) -> VersatileSpace:
        """The same space decoding at another img2img ``strength`` (shares the loaded models)."""
        if not 0.0 < strength <= 1.0:
            raise ConfigError(f"versatile.strength: expected a value in (0, 1], got {strength}")
        self.pipeline()  # load once here, so that every copy shares the models
        other = copy.copy(self)
        other.strength = float(strength)
        return other

    def pipeline(self) -> Any:
        """The dual-guided img2img model, loaded on first use."""
        if self._pipe is None:
            from brainrecon.latents.versatile.dual_guided import load_dual_guided

            self._pipe = load_dual_guided(
                str(self.weights), device=self.device, dtype=self.dtype, batch_size=self.batch_size,
                progress=self.progress, image_size=self.image_size,
            )
            self._uncond = self.clip.unconditional()
        return self._pipe

    #: ``decode`` accepts ``guide``/``guide_scale`` (encoder guidance, :mod:`brainrecon.roi.guidance`).
    supports_guidance = True

    def decode(
        self, latents: Mapping[str, np.ndarray], *, init: np.ndarray | None = None, seed: int = 0,
        guide: Any = None, guide_scale: float = 0.0,
    ) -> np.ndarray:
        """Images ``(n, 3, image_size, image_size)`` in [0, 1] from predicted CLIP tokens.

        ``init`` (n, 3, H, W) float in [0, 1] is the starting image (the img2img model resizes
        it to ``image_size``). ``guide``/``guide_scale``: encoder guidance of the diffusion
        (:meth:`~brainrecon.latents.versatile.dual_guided.DualGuidedImg2Img.__call__`); off by default.
        """
        for key, spec in self.targets.items():
            if key not in latents:
                raise ShapeMismatchError("versatile.decode latents", sorted(self.targets), sorted(latents))
            arr = latents[key]
            if tuple(arr.shape[1:]) != spec.shape:
                raise ShapeMismatchError(f"versatile.{key}", f"(n, {spec.shape[0]}, {spec.shape[1]})", arr.shape)
        text = np.asarray(latents["clip_text"], np.float32)
        vision = np.asarray(latents["clip_vision"], np.float32)
        n = len(text)
        if len(vision) != n:
            raise ShapeMismatchError("versatile.clip_vision rows", n, len(vision))
        strength = self.strength
        if init is None:
            init = np.full((n, 3, self.image_size, self.image_size), 0.5, dtype=np.float32)
            strength = 1.0
        elif init.ndim != 4 or init.shape[0] != n or init.shape[1] != 3:
            raise ShapeMismatchError("versatile.decode init images", f"({n}, 3, H, W)", init.shape)
        pipe = self.pipeline()
        out = pipe(
            init, text, vision,
            strength=strength, guidance=self.guidance, mix=self.mix, steps=self.steps, seed=int(seed),
            uncond=self._uncond, batch_size=self.batch_size, guide=guide, guide_scale=guide_scale,
        )
        return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)

