"""CLIP text and vision token features: the targets of Brain-Diffuser's stage 2.

Versatile Diffusion is conditioned on CLIP ViT-L/14 token features, and Brain-Diffuser
regresses fMRI onto exactly those features:

``clip_vision`` (257 x 768)
    All tokens of the vision tower's ``last_hidden_state`` passed through
    ``post_layernorm`` and ``visual_projection``, divided by the L2 norm of the
    projected class token (token 0), so the class token has norm 1.
``clip_text`` (77 x 768)
    All 77 tokens (padded to 77) of the text tower's ``last_hidden_state`` passed through
    ``text_projection``, divided by the L2 norm of the projected pooled (end-of-text)
    embedding; averaged over an image's captions (empty captions dropped).

Classifier-free guidance uses the features of the empty text ``""`` and of a mid-grey
image (all zeros in [-1, 1]) as unconditional contexts (:meth:`ClipEncoder.unconditional`).

Both towers are transformers' ``CLIPTextModelWithProjection`` and
``CLIPVisionModelWithProjection``; the published Versatile Diffusion folder
(``shi-labs/versatile-diffusion``, diffusers layout) holds them in ``text_encoder/`` and
``image_encoder/`` with a byte-pair ``CLIPTokenizer`` in ``tokenizer/``. The small CLIP the
project trains (``scripts/train_clip_small.py``, ``bundled:clip_small``) has the same layout
and classes with a small configuration and a word-level tokenizer
(:mod:`brainrecon.latents.versatile.words`).

Image preprocessing is our own, in torch, rather than transformers' ``CLIPImageProcessor``:
newer image processors rescale float inputs in [0, 1] by 1/255 a second time, which silently
changes the features (brain-diffuser issue #9; transformers 4.19.2 reproduces the paper).
The steps follow the reference: (published model only) resize to 512 x 512 and keep 8-bit
levels, as the reference stored its stimuli; resize the shortest side to the model's input
size (bicubic, antialiased, like PIL); centre crop; normalise with CLIP's mean and standard
deviation. :func:`reference_check` runs this on a procedural image and compares it with
statistics frozen in this module, so a library change that alters the result raises
:class:`~brainrecon.errors.DataFormatError` instead of producing different targets; it runs
on every :func:`load_clip`. Weight folders may also hold ``reference.json`` (the small
model ships one): features of the same image and of a fixed text, checked on load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError, DataFormatError, MissingWeightsError, ShapeMismatchError

#: CLIP's normalisation (OpenAI CLIP training statistics), used by every CLIP in brainrecon.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

#: Brain-Diffuser resizes stimuli to 512 x 512 before CLIP (the Versatile Diffusion input size).
PUBLISHED_PRE_RESIZE = 512

#: Text whose features ``reference.json`` stores (words the small model's vocabulary has).
REFERENCE_TEXT = "A large red ball on the left and a small green tree"

REFERENCE_FORMAT = "brainrecon-clip-reference"

_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}

# Statistics of preprocess_images(reference_image(), ...) computed once from the definition
# (torch 2.x, CPU, float32) and frozen. Keys: "<image_size>/<pre_resize>". Per channel:
# mean and std over the output; "probe": channel-0 values at _PROBE_POINTS (relative rows, cols).
_PROBE_POINTS: tuple[tuple[float, float], ...] = ((0.0, 0.0), (0.25, 0.75), (0.5, 0.5), (0.8, 0.1), (1.0, 1.0))
_REFERENCE_STATS: dict[str, dict[str, list[float]]] = {
    "224/512": {
        "mean": [0.06185, 0.154358, 0.332839],
        "std": [1.078934, 1.116168, 1.339235],
        "probe": [-1.792263, 0.987692, 0.070082, -1.431495, 1.930336],
    },
    "64/None": {
        "mean": [0.039762, 0.154347, 0.332839],
        "std": [0.812198, 1.116116, 1.341518],
        "probe": [-1.344682, 0.721571, 0.061737, -1.080926, 1.425229],
    },
}
# Normalised units. CPU and CUDA agree to ~1e-6; dropping the antialiasing of the bicubic
# resize moves these statistics by ~3e-3, and the double 1/255 rescaling by ~1.8.
_REFERENCE_ATOL = 5e-4


# ---------------------------------------------------------------------- preprocessing
def reference_image() -> np.ndarray:
    """Deterministic ``(1, 96, 128, 3)`` uint8 test image: colour gradients and a checkerboard.

    Not square, so the shortest-side resize and the centre crop are both exercised; sharp
    checkerboard edges make the interpolation kernel (bicubic, antialias) visible in the output.
    """
    y, x = np.mgrid[0:96, 0:128]
    r = x * 255 // 127
    g = y * 255 // 95
    b = np.where((x // 8 + y // 8) % 2 == 0, 230, 25)
    return np.stack([r, g, b], axis=-1).astype(np.uint8)[None]


def preprocess_images(
    images: Any,
    image_size: int,
    pre_resize: int | None = None,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    device: Any = None,
) -> Any:
    """CLIP input tensor ``(n, 3, image_size, image_size)`` float32 from images.

    Parameters
    ----------
    images : ndarray or Tensor, (n, H, W, 3) uint8, or Tensor (n, 3, H, W) float in [0, 1]
        Images; float tensors skip the uint8 conversion (used for the exact mid-grey image
        of the unconditional context, which 8 bits cannot represent).
    image_size : int
        Side of the model input.
    pre_resize : int, optional
        First resize to ``pre_resize x pre_resize`` (bilinear, antialiased) and round to
        8-bit levels, as Brain-Diffuser did (stimuli resized to 512 and handed to the CLIP
        processor as 8-bit images). ``None`` skips it.
    mean, std : sequence of 3 floats
        Normalisation after scaling to [0, 1].
    device : torch device, optional
        Where to compute (default: the input's device).
    """
    import torch
    import torch.nn.functional as F

    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = np.array(images)  # e.g. a memory-mapped stage artifact; torch wants writable memory
    x = torch.as_tensor(images)
    if device is not None:
        x = x.to(device)
    if x.dtype == torch.uint8:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ShapeMismatchError("images for CLIP", "(n, H, W, 3) uint8", tuple(x.shape))
        x = x.permute(0, 3, 1, 2).float() / 255.0
    elif x.is_floating_point():
        if x.ndim != 4 or x.shape[1] != 3:
            raise ShapeMismatchError("float images for CLIP", "(n, 3, H, W) in [0, 1]", tuple(x.shape))
        x = x.float()
    else:
        raise DataFormatError(f"images for CLIP: expected uint8 (n, H, W, 3), got dtype {x.dtype}")
    if pre_resize is not None:
        x = F.interpolate(x, size=(pre_resize, pre_resize), mode="bilinear", antialias=True, align_corners=False)
        x = (x.clamp(0.0, 1.0) * 255.0).round() / 255.0
    h, w = x.shape[-2:]
    if min(h, w) != image_size:
        # Shortest side to image_size; the long side is truncated like transformers' resize.
        short, long = (h, w) if h <= w else (w, h)
        new_long = int(image_size * long / short)
        size = (image_size, new_long) if h <= w else (new_long, image_size)
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
    h, w = x.shape[-2:]
    top, left = (h - image_size) // 2, (w - image_size) // 2
    x = x[:, :, top : top + image_size, left : left + image_size]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous()


def _stats(x: Any) -> dict[str, list[float]]:
    """Statistics compared by :func:`reference_check` (see ``_REFERENCE_STATS``)."""
    x = x[0].double().cpu()
    n = x.shape[-1] - 1
    probe = [float(x[0, round(r * n), round(c * n)]) for r, c in _PROBE_POINTS]
    return {"mean": x.mean((1, 2)).tolist(), "std": x.std((1, 2), correction=0).tolist(), "probe": probe}


def reference_check(image_size: int | None = None, pre_resize: int | None = None, device: Any = None) -> None:
    """Check that :func:`preprocess_images` still gives the frozen result on :func:`reference_image`.

    Parameters
    ----------
    image_size, pre_resize : int or None
        Geometry to check. Frozen statistics exist for the published (224, 512) and the small
        (64, None) geometries; any other geometry (or ``image_size=None``) checks both, since
        they run the same resampling code.
    device : torch device, optional
        Where to run the preprocessing (the encoder's device, so device-specific kernels are checked).

    Raises
    ------
    DataFormatError
        If a statistic differs by more than ``_REFERENCE_ATOL`` (e.g. torch changed its
        resampling, or someone swapped in an image processor that rescales twice).
    """
    key = f"{image_size}/{pre_resize}"
    keys = [key] if key in _REFERENCE_STATS else list(_REFERENCE_STATS)
    for k in keys:
        size_s, pre_s = k.split("/")
        size, pre = int(size_s), (None if pre_s == "None" else int(pre_s))
        got = _stats(preprocess_images(reference_image(), size, pre, device=device))
        for name, ref in _REFERENCE_STATS[k].items():
            diff = float(np.max(np.abs(np.asarray(got[name]) - np.asarray(ref))))
            if not diff <= _REFERENCE_ATOL:
                raise DataFormatError(
                    f"CLIP preprocessing reference check failed (image_size/pre_resize {k}, {name}): expected "
                    f"{np.round(ref, 5).tolist()}, got {np.round(got[name], 5).tolist()} (max difference {diff:.2e} "
                    f"> {_REFERENCE_ATOL}); image resampling differs from the one the CLIP targets were defined "
                    "with, so features would not match the model's"
                )


# ---------------------------------------------------------------------- encoder
class ClipEncoder:
    """CLIP text and vision towers with the Brain-Diffuser feature definitions.

    Build with :func:`load_clip`. Attributes: ``text_tokens`` (77 published),
    ``vision_tokens`` (257), ``dim`` (768), ``image_size`` (224), ``pre_resize`` (512 for
    the published model, ``None`` for ours), ``device``, ``dtype``, ``kind``
    (``"published"`` byte-pair tokenizer or ``"small"`` word tokenizer), ``root``.
    """

    def __init__(
        self,
        text_model: Any,
        vision_model: Any,
        tokenize: Callable[[Sequence[str]], np.ndarray],
        *,
        kind: str,
        root: Path,
        files: Sequence[Path],
        pre_resize: int | None,
        progress: bool = False,
    ) -> None:
        import torch

        self.text_model = text_model.eval().requires_grad_(False)
        self.vision_model = vision_model.eval().requires_grad_(False)
        self.tokenize = tokenize
        self.kind = kind
        self.root = Path(root)
        self.files = [Path(f) for f in files]
        self.pre_resize = pre_resize
        self.progress = progress
        tc, vc = text_model.config, vision_model.config
        if tc.projection_dim != vc.projection_dim:
            raise DataFormatError(
                f"{self.root}: text_encoder projection_dim {tc.projection_dim} != image_encoder projection_dim "
                f"{vc.projection_dim}; the two towers must share the embedding space"
            )
        self.text_tokens: int = int(tc.max_position_embeddings)
        self.vision_tokens: int = int((vc.image_size // vc.patch_size) ** 2 + 1)
        self.dim: int = int(vc.projection_dim)
        self.image_size: int = int(vc.image_size)
        self.device: torch.device = next(vision_model.parameters()).device
        self.dtype: torch.dtype = next(vision_model.parameters()).dtype
        self._digest: str | None = None

    def __repr__(self) -> str:
        return (
            f"ClipEncoder({self.kind}, {self.root}, text {self.text_tokens}x{self.dim}, "
            f"vision {self.vision_tokens}x{self.dim}, image {self.image_size}, device {self.device})"
        )

    # ------------------------------------------------------------------ vision
    def _vision_batch(self, pixels: Any) -> tuple[Any, Any]:
        """Normalised tokens ``(b, Lv, D)`` and unit ``image_embeds`` ``(b, D)`` of preprocessed pixels."""
        import torch

        vm = self.vision_model
        with torch.inference_mode():
            out = vm.vision_model(pixel_values=pixels.to(self.device, self.dtype))
            # The reference applies post_layernorm to every token; transformers applies it to
            # the class token only (pooler_output), so it is repeated here for all tokens.
            z = vm.visual_projection(vm.vision_model.post_layernorm(out.last_hidden_state)).float()
            norm = z[:, 0:1].norm(dim=-1, keepdim=True)
            return z / norm, z[:, 0] / norm[:, 0]

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        arr = np.asarray(images)
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ShapeMismatchError("images for CLIP", "(n, H, W, 3) uint8", arr.shape)
        if arr.dtype != np.uint8:
            raise DataFormatError(
                f"images for CLIP: expected uint8 (n, H, W, 3), got dtype {arr.dtype} "
                "(convert float images in [0, 1] with brainrecon.images.to_uint8_hwc)"
            )
        return arr

    def _run_images(self, images: np.ndarray, batch_size: int, tokens: bool) -> np.ndarray:
        arr = self._check_images(images)
        if batch_size < 1:
            raise ConfigError(f"CLIP batch_size: expected >= 1, got {batch_size}")
        shape = (len(arr), self.vision_tokens, self.dim) if tokens else (len(arr), self.dim)
        out = np.empty(shape, dtype=np.float32)
        for start in self._range(len(arr), batch_size, "CLIP vision"):
            px = preprocess_images(np.ascontiguousarray(arr[start : start + batch_size]), self.image_size,
                                   self.pre_resize, device=self.device)
            z, pooled = self._vision_batch(px)
            out[start : start + len(px)] = (z if tokens else pooled).cpu().numpy()
        return out

    def encode_images(self, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """CLIP-vision tokens ``(n, vision_tokens, dim)`` float32 of ``(n, H, W, 3)`` uint8 images.

        Token 0 (the projected class token) has norm 1 in every row.
        """
        return self._run_images(images, batch_size, tokens=True)

    def embed_images(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """L2-normalised CLIP image embeddings ``(n, dim)`` (``image_embeds``), for metrics."""
        return self._run_images(images, batch_size, tokens=False)

    # ------------------------------------------------------------------ text
    def _text_batch(self, texts: Sequence[str]) -> tuple[Any, Any]:
        """Normalised tokens ``(b, Lt, D)`` and unit ``text_embeds`` ``(b, D)`` of texts."""
        import torch

        ids = torch.as_tensor(self.tokenize(list(texts)), dtype=torch.long, device=self.device)
        if ids.shape[1] != self.text_tokens:
            raise ShapeMismatchError("CLIP token ids per text", self.text_tokens, ids.shape[1])
        tm = self.text_model
        with torch.inference_mode():
            # No attention mask, as in the reference: the text tower is causal, so the tokens up
            # to end-of-text never see the padding; padding tokens see everything before them.
            out = tm(input_ids=ids)
            z = tm.text_projection(out.last_hidden_state).float()
            pooled = out.text_embeds.float()
            norm = pooled.norm(dim=-1, keepdim=True)
            return z / norm[:, None], pooled / norm

    def _run_texts(self, texts: Sequence[str], batch_size: int, tokens: bool) -> np.ndarray:
        if isinstance(texts, str):
            raise ConfigError("CLIP texts: expected a sequence of strings, got a single string")
        texts = [str(t) for t in texts]
        if batch_size < 1:
            raise ConfigError(f"CLIP batch_size: expected >= 1, got {batch_size}")
        shape = (len(texts), self.text_tokens, self.dim) if tokens else (len(texts), self.dim)
        out = np.empty(shape, dtype=np.float32)
        for start in self._range(len(texts), batch_size, "CLIP text"):
            z, pooled = self._text_batch(texts[start : start + batch_size])
            out[start : start + len(z)] = (z if tokens else pooled).cpu().numpy()
        return out

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """CLIP-text tokens ``(n, text_tokens, dim)`` float32, each text normalised by its pooled norm."""
        return self._run_texts(texts, batch_size, tokens=True)

    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """L2-normalised pooled CLIP text embeddings ``(n, dim)`` (``text_embeds``)."""
        return self._run_texts(texts, batch_size, tokens=False)

    def encode_captions(self, captions: Sequence[Sequence[str]], batch_size: int = 64) -> np.ndarray:
        """Per image, the mean of :meth:`encode_texts` over its non-empty captions.

        Returns ``(n, text_tokens, dim)`` float32. Captions that are empty or only white
        space are dropped (NSD pads COCO's captions with empty strings).

        Raises
        ------
        DataFormatError
            If an image has no non-empty caption (its index is named).
        """
        if isinstance(captions, str):
            raise ConfigError("captions: expected one sequence of strings per image, got a single string")
        flat: list[str] = []
        owner: list[int] = []
        for i, caps in enumerate(captions):
            if isinstance(caps, str):
                caps = [caps]
            kept = [str(c) for c in caps if str(c).strip()]
            if not kept:
                raise DataFormatError(
                    f"captions of image {i}: no non-empty caption (got {list(caps)!r}); "
                    "CLIP-text targets need at least one caption per image"
                )
            flat.extend(kept)
            owner.extend([i] * len(kept))
        # Accumulate in float32 in place: the output alone is 2 GB for 9,000 NSD images at 77 x 768.
        out = np.zeros((len(captions), self.text_tokens, self.dim), dtype=np.float32)
        counts = np.bincount(np.asarray(owner, dtype=np.int64), minlength=len(captions)).astype(np.float32)
        for start in self._range(len(flat), batch_size, "CLIP captions"):
            z = self.encode_texts(flat[start : start + batch_size], batch_size=batch_size)
            for row, i in enumerate(owner[start : start + batch_size]):
                out[i] += z[row]
        out /= np.maximum(counts, 1.0)[:, None, None]
        return out

    # ------------------------------------------------------------------ guidance
    def unconditional(self) -> tuple[np.ndarray, np.ndarray]:
        """Unconditional contexts ``(text of "", vision of a mid-grey image)``, ``(1, Lt, D), (1, Lv, D)``.

        The grey image is 0.5 exactly (zero in Versatile Diffusion's [-1, 1] range); it is
        built in float because 8-bit levels cannot represent 0.5.
        """
        import torch

        text = self.encode_texts([""])
        side = self.pre_resize or self.image_size
        grey = torch.full((1, 3, side, side), 0.5, device=self.device)
        z, _ = self._vision_batch(preprocess_images(grey, self.image_size, None, device=self.device))
        return text, z.cpu().numpy().astype(np.float32)

    # ------------------------------------------------------------------ identity / checks
    def fingerprint(self) -> dict[str, Any]:
        """Content digest of the weight, config and tokenizer files plus the preprocessing settings."""
        from brainrecon.fingerprint import files_fingerprint

        if self._digest is None:
            self._digest = files_fingerprint(self.files, base=self.root)
        return {"weights": self._digest, "kind": self.kind, "image_size": self.image_size,
                "pre_resize": self.pre_resize, "text_tokens": self.text_tokens, "dim": self.dim}

    def reference_features(self) -> dict[str, Any]:
        """Features of :func:`reference_image` and :data:`REFERENCE_TEXT` (what ``reference.json`` stores)."""
        img = reference_image()
        return {
            "format": REFERENCE_FORMAT,
            "version": 1,
            "text": REFERENCE_TEXT,
            "image": "brainrecon.latents.versatile.clip.reference_image()",
            "image_embed": self.embed_images(img)[0].tolist(),
            "text_embed": self.embed_texts([REFERENCE_TEXT])[0].tolist(),
            "vision_tokens_mean": self.encode_images(img)[0].mean(0).tolist(),
            "text_tokens_mean": self.encode_texts([REFERENCE_TEXT])[0].mean(0).tolist(),
        }

    def write_reference(self, folder: str | os.PathLike | None = None) -> Path:
        """Store :meth:`reference_features` as ``reference.json`` (default: in the weights folder)."""
        path = Path(folder if folder is not None else self.root) / "reference.json"
        path.write_text(json.dumps(self.reference_features(), indent=1) + "\n")
        return path

    def check_reference(self, path: str | os.PathLike) -> None:
        """Compare :meth:`reference_features` with a stored ``reference.json``.

        Tolerance: absolute 1e-3 for float32 on CPU, 2e-2 in half precision or on an
        accelerator (CUDA convolutions default to TF32), on unit-norm vectors; a change of
        tokenizer or weights moves them far more, and the preprocessing has its own, tighter
        check (:func:`reference_check`).

        Raises
        ------
        DataFormatError
            If a stored vector differs, or the file is not a reference file.
        """
        path = Path(path)
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(stored, dict) or stored.get("format") != REFERENCE_FORMAT:
            raise DataFormatError(f"{path}: expected a {REFERENCE_FORMAT!r} file")
        if stored.get("text") != REFERENCE_TEXT:
            raise DataFormatError(f"{path}: stored for text {stored.get('text')!r}, expected {REFERENCE_TEXT!r}")
        import torch

        atol = 1e-3 if self.dtype == torch.float32 and self.device.type == "cpu" else 2e-2
        got = self.reference_features()
        for key in ("image_embed", "text_embed", "vision_tokens_mean", "text_tokens_mean"):
            a, b = np.asarray(got[key]), np.asarray(stored[key])
            if a.shape != b.shape:
                raise DataFormatError(f"{path}: {key} has shape {b.shape}, the loaded model gives {a.shape}")
            diff = float(np.max(np.abs(a - b)))
            if not diff <= atol:
                raise DataFormatError(
                    f"{path}: {key} of the reference image/text differs from the stored one by {diff:.2e} "
                    f"(> {atol}); preprocessing, tokenizer or library behaviour changed since the weights were saved"
                )

    # ------------------------------------------------------------------ helpers
    def _range(self, n: int, batch_size: int, desc: str) -> Any:
        steps = range(0, n, batch_size)
        if self.progress and n > batch_size:
            from tqdm.auto import tqdm

            return tqdm(steps, desc=desc, unit="batch", mininterval=2.0)
        return steps


# ---------------------------------------------------------------------- loading
def _weight_files(folder: Path, what: str) -> list[Path]:
    """``config.json`` and the safetensors file(s) of one tower; MissingWeightsError naming what is absent."""
    if not folder.is_dir():
        raise MissingWeightsError(folder, what, "expected a folder with config.json and model.safetensors")
    config = folder / "config.json"
    if not config.is_file():
        raise MissingWeightsError(config, f"{what} config")
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return [config, single]
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise DataFormatError(f"{index}: not a safetensors index ({e})") from e
        for s in shards:
            if not (folder / s).is_file():
                raise MissingWeightsError(folder / s, f"{what} weight shard")
        return [config, index, *(folder / s for s in shards)]
    hint = ""
    if any((folder / n).is_file() for n in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        hint = ("only a pickled pytorch_model.bin is there; brainrecon loads safetensors only "
                "(download the model.safetensors of the same release, or convert it once with safetensors)")
    raise MissingWeightsError(single, what, hint)


def _load_tower(cls: Any, folder: Path, files: list[Path], what: str, device: str, dtype: Any) -> Any:
    """``from_pretrained`` from a local folder, safetensors only; refuse any randomly initialised weight."""
    try:
        model, info = cls.from_pretrained(
            folder, use_safetensors=True, local_files_only=True, output_loading_info=True, dtype=dtype
        )
    except (OSError, ValueError) as e:
        raise DataFormatError(f"{folder}: could not load {what} ({e})") from e
    problems = {k: sorted(info.get(k) or ()) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {k: v for k, v in problems.items() if v}
    if problems or info.get("error_msgs"):
        detail = "; ".join(f"{k}: {v[:5]}{' ...' if len(v) > 5 else ''}" for k, v in problems.items())
        raise DataFormatError(
            f"{files[-1]}: weights do not match {cls.__name__} of {files[0]} ({detail or info.get('error_msgs')}); "
            "brainrecon never runs with randomly initialised parameters"
        )
    return model.to(device)


def _torch_dtype(dtype: str) -> Any:
    import torch

    name = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ConfigError(f"CLIP dtype: expected one of float32, float16, bfloat16; got {dtype!r}")
    return getattr(torch, name)


def load_clip(
    path: str | os.PathLike,
    device: str = "cpu",
    dtype: str = "float32",
    *,
    pre_resize: int | None | str = "auto",
    progress: bool = False,
    check: bool = True,
) -> ClipEncoder:
    """Load CLIP text and vision towers from a diffusers-layout folder.

    Parameters
    ----------
    path : str
        A Versatile Diffusion folder (``shi-labs/versatile-diffusion`` layout), a folder with
        the same ``text_encoder/``, ``image_encoder/`` and ``tokenizer/`` subfolders holding
        the project's small CLIP, or ``"bundled:clip_small"``.
    device : str
        Torch device of the models and of the preprocessing.
    dtype : str
        ``float32``, ``float16`` or ``bfloat16`` weights; outputs are float32 either way.
    pre_resize : int, None or "auto"
        Resize to ``pre_resize x pre_resize`` before CLIP's own resize (see
        :func:`preprocess_images`); ``"auto"``: 512 for the published model (Brain-Diffuser),
        none for the small one.
    progress : bool
        Progress bars when encoding many images or texts.
    check : bool
        Run :func:`reference_check` and, where the folder has ``reference.json``,
        :meth:`ClipEncoder.check_reference`. Leave on outside tests.

    Raises
    ------
    MissingWeightsError
        Naming the folder or file that is absent (config, safetensors weights, tokenizer).
    DataFormatError
        Weights that do not fill the model exactly, an unreadable tokenizer, or a failed
        reference check.
    """
    import torch
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    from brainrecon.latents.versatile.words import WordTokenizer, is_word_vocab
    from brainrecon.paths import resolve_weights_path

    root = resolve_weights_path(path)
    if not root.is_dir():
        raise MissingWeightsError(
            root, "CLIP encoders (folder with text_encoder/, image_encoder/, tokenizer/)",
            "download shi-labs/versatile-diffusion to this folder, or use bundled:clip_small "
            "(trained by scripts/train_clip_small.py)",
        )
    tdtype = _torch_dtype(dtype)
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"CLIP device: {device!r} is not a torch device ({e})") from e
    text_files = _weight_files(root / "text_encoder", "CLIP text encoder (text_encoder/)")
    vision_files = _weight_files(root / "image_encoder", "CLIP image encoder (image_encoder/)")

    tok_dir = root / "tokenizer"
    if not tok_dir.is_dir():
        raise MissingWeightsError(tok_dir, "CLIP tokenizer (tokenizer/ with vocab.json)")
    vocab_file = tok_dir / "vocab.json"
    vocab: Any = None
    if vocab_file.is_file():
        try:
            vocab = json.loads(vocab_file.read_text())
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{vocab_file}: not valid JSON ({e})") from e
    elif not (tok_dir / "tokenizer.json").is_file():
        # The published folder has vocab.json + merges.txt; transformers 5 saves tokenizer.json.
        raise MissingWeightsError(vocab_file, "CLIP tokenizer vocabulary (tokenizer/vocab.json)")
    if not is_word_vocab(vocab) and not (tok_dir / "merges.txt").is_file() and not (tok_dir / "tokenizer.json").is_file():
        raise MissingWeightsError(tok_dir / "merges.txt", "CLIP byte-pair tokenizer merges (tokenizer/merges.txt)")

    text_model = _load_tower(CLIPTextModelWithProjection, root / "text_encoder", text_files,
                             "CLIP text encoder", device, tdtype)
    vision_model = _load_tower(CLIPVisionModelWithProjection, root / "image_encoder", vision_files,
                               "CLIP image encoder", device, tdtype)
    tc = text_model.config
    context = int(tc.max_position_embeddings)

    if is_word_vocab(vocab):
        kind = "small"
        words = WordTokenizer.load(vocab_file)
        if words.context_length != context:
            raise DataFormatError(
                f"{vocab_file}: context_length {words.context_length} != text_encoder max_position_embeddings {context}"
            )
        if words.vocab_size > tc.vocab_size:
            raise DataFormatError(f"{vocab_file}: {words.vocab_size} ids, text_encoder has only {tc.vocab_size}")
        if tc.eos_token_id != words.eos_token_id or tc.eos_token_id == 2:
            # eos_token_id == 2 switches transformers to legacy pooling (largest id), which is
            # wrong for a word vocabulary; any other value pools at the first <eos>.
            raise DataFormatError(
                f"{root / 'text_encoder' / 'config.json'}: eos_token_id {tc.eos_token_id} must equal the word "
                f"tokenizer's <eos> id {words.eos_token_id} (and must not be 2) so the text is pooled at <eos>"
            )
        tokenize: Callable[[Sequence[str]], np.ndarray] = words
        tok_files = [vocab_file]
    else:
        kind = "published"
        from transformers import CLIPTokenizer

        try:
            bpe = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
        except (OSError, ValueError) as e:
            raise DataFormatError(f"{tok_dir}: could not load the CLIP tokenizer ({e})") from e
        if len(bpe) > tc.vocab_size:
            raise DataFormatError(f"{tok_dir}: {len(bpe)} tokens, text_encoder has only {tc.vocab_size}")
        eos = bpe.eos_token_id
        # transformers pools the text at the first id equal to eos_token_id, except for the
        # legacy value 2 (configs saved before transformers PR #24773, as in published
        # folders), where it pools at the largest id: right for CLIP's vocabulary, whose
        # end-of-text token has the largest id (49407).
        pooled_ok = eos == tc.eos_token_id if tc.eos_token_id != 2 else eos == len(bpe) - 1
        if eos is None or not pooled_ok:
            raise DataFormatError(
                f"{root / 'text_encoder' / 'config.json'}: eos_token_id {tc.eos_token_id} does not select the "
                f"tokenizer's end-of-text token (id {eos}, vocabulary of {len(bpe)}); the pooled text embedding "
                "would be taken at the wrong position"
            )

        def tokenize(texts: Sequence[str]) -> np.ndarray:
            # As the reference: pad to the full context (77), truncate longer captions.
            enc = bpe(list(texts), padding="max_length", max_length=context, truncation=True, return_tensors="np")
            return enc["input_ids"]

        tok_files = [p for p in tok_dir.iterdir() if p.is_file()]

    if pre_resize == "auto":
        pre = PUBLISHED_PRE_RESIZE if kind == "published" else None
    elif pre_resize is None or (isinstance(pre_resize, int) and pre_resize >= 8):
        pre = pre_resize
    else:
        raise ConfigError(f"CLIP pre_resize: expected 'auto', None or a size >= 8, got {pre_resize!r}")
    enc = ClipEncoder(
        text_model, vision_model, tokenize, kind=kind, root=root,
        files=[*text_files, *vision_files, *tok_files], pre_resize=pre, progress=progress,
    )
    if check:
        reference_check(enc.image_size, enc.pre_resize, device=enc.device)
        ref = root / "reference.json"
        if ref.is_file():
            enc.check_reference(ref)
    return enc
