"""Dual-guided Versatile Diffusion img2img (``brainrecon.latents.versatile.dual_guided``).

Everything runs on CPU with tiny random diffusers components; the published architecture is
checked on the ``meta`` device (no memory, no weights).
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from diffusers.models.transformers.dual_transformer_2d import DualTransformer2DModel  # noqa: E402
from diffusers.models.transformers.transformer_2d import Transformer2DModel  # noqa: E402
from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import (  # noqa: E402
    UNetFlatConditionModel,
)

from brainrecon.errors import ConfigError, DataFormatError, MissingWeightsError, ShapeMismatchError  # noqa: E402
from brainrecon.latents.versatile.dual_guided import (  # noqa: E402
    WEIGHTS_NAME,
    DualCrossAttention,
    DualGuidedImg2Img,
    DualGuidedUNet,
    _as_dtype,
    img2img_timesteps,
    load_dual_guided,
    load_unets,
    load_vae,
    published_image_unet_config,
    published_scheduler_config,
    published_text_unet_config,
    published_vae_config,
    reference_scheduler,
)

D = 16  # context feature size of the tiny models
LT, LV = 5, 7  # text / vision tokens


pytestmark = pytest.mark.usefixtures("tiny_torch_cpu")  # see tests/conftest.py


def tiny_image_unet_config() -> dict:
    return {
        "sample_size": 8, "in_channels": 4, "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "block_out_channels": (16, 32), "layers_per_block": 1, "cross_attention_dim": D,
        "attention_head_dim": 2, "norm_num_groups": 8,
    }


def tiny_text_unet_config() -> dict:
    return tiny_image_unet_config() | {
        "in_channels": (4, 1, 1), "out_channels": (4, 1, 1),
        "down_block_types": ("CrossAttnDownBlockFlat", "DownBlockFlat"),
        "up_block_types": ("UpBlockFlat", "CrossAttnUpBlockFlat"),
    }


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
        layers_per_block=1, norm_num_groups=8, sample_size=16, scaling_factor=0.5,
    )


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial values everywhere (diffusers zero-initialises some output projections).

    Small enough that activations stay clear of float32 denormals (which make CPU kernels ~100x slower).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module


def tiny_unets(seed: int = 0) -> tuple[UNet2DConditionModel, UNetFlatConditionModel]:
    return (randomize_(UNet2DConditionModel(**tiny_image_unet_config()), seed),
            randomize_(UNetFlatConditionModel(**tiny_text_unet_config()), seed + 1))


def tiny_pipe(seed: int = 0) -> DualGuidedImg2Img:
    image_unet, text_unet = tiny_unets(seed)
    vae = randomize_(tiny_vae(), seed + 2)
    return DualGuidedImg2Img(DualGuidedUNet(image_unet, text_unet), vae, reference_scheduler(), progress=False)


def contexts(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((n, LT, D)).astype(np.float32)
    vision = rng.standard_normal((n, LV, D)).astype(np.float32)
    uncond = (rng.standard_normal((1, LT, D)).astype(np.float32), rng.standard_normal((1, LV, D)).astype(np.float32))
    return text, vision, uncond


def images_uint8(n: int, size: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------- published architecture
def test_published_configs_have_the_checkpoint_key_names_and_shapes():
    with torch.device("meta"):
        image_unet = UNet2DConditionModel(**published_image_unet_config())
        text_unet = UNetFlatConditionModel(**published_text_unet_config())
        vae = AutoencoderKL(**published_vae_config())
    img = {k: tuple(v.shape) for k, v in image_unet.state_dict().items()}
    assert img["conv_in.weight"] == (320, 4, 3, 3)
    assert img["time_embedding.linear_1.weight"] == (1280, 320)
    assert img["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"] == (320, 768)
    assert img["down_blocks.0.attentions.0.proj_in.weight"] == (320, 320, 1, 1)  # conv projection
    assert img["mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight"] == (1280, 1280)
    assert img["up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_v.weight"] == (320, 768)
    assert img["conv_out.weight"] == (4, 320, 3, 3)
    assert round(sum(math.prod(s) for s in img.values()) / 1e6, 1) == 859.5  # the SD-1.x-sized UNet
    txt = {k: tuple(v.shape) for k, v in text_unet.state_dict().items()}
    assert txt["conv_in.weight"] == (1280, 768)  # LinearMultiDim (768,1,1) -> (320,4,1)
    assert txt["down_blocks.0.resnets.0.conv1.weight"] == (1280, 1280, 1, 1)
    assert txt["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"] == (320, 768)
    assert txt["down_blocks.0.downsamplers.0.weight"] == (1280, 1280)
    assert txt["conv_out.weight"] == (768, 1280)
    vk = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert vk["encoder.conv_in.weight"] == (128, 3, 3, 3)
    assert vk["decoder.conv_out.weight"] == (3, 128, 3, 3)
    assert vk["quant_conv.weight"] == (8, 8, 1, 1)
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    # every image-UNet transformer block gets its text partner, key names of both kept
    dual = DualGuidedUNet(image_unet, text_unet)
    assert len(dual.sites) == 16 and dual.cross_attention_dim == 768
    keys = set(dual.state_dict())
    assert "image_unet.down_blocks.0.attentions.0.text_transformer.proj_in.weight" in keys
    assert "image_unet.down_blocks.0.attentions.0.image_transformer.proj_in.weight" in keys
    with dual.plain_image_unet() as plain:
        assert {k: tuple(v.shape) for k, v in plain.state_dict().items()} == img


def test_reference_scheduler_reproduces_ldm_ddim():
    sched = reference_scheduler()
    cfg = published_scheduler_config()
    assert (cfg["beta_start"], cfg["beta_end"], cfg["num_train_timesteps"]) == (0.00085, 0.012, 1000)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2  # LDM "linear"
    assert torch.allclose(sched.betas.double(), betas, atol=1e-8)
    noise_t, ts = img2img_timesteps(sched, 50, 0.75)
    assert (noise_t, ts[0], ts[1], ts[-1], len(ts)) == (741, 721, 701, 1, 37)
    # the last step lands on alphas_cumprod[0] (LDM's ddim_alphas_prev), not on 1
    assert float(sched.final_alpha_cumprod) == pytest.approx(float(sched.alphas_cumprod[0]))
    noise_t, ts = img2img_timesteps(sched, 50, 1.0)
    assert noise_t == 999 and len(ts) == 50 and ts[0] == 981
    # a PNDM-style folder config: only its beta schedule is used
    pndm = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "skip_prk_steps": True}
    assert not reference_scheduler(pndm).config.clip_sample
    with pytest.raises(ConfigError):
        img2img_timesteps(sched, 50, 0.0)
    with pytest.raises(ConfigError):
        reference_scheduler(pndm | {"prediction_type": "v_prediction"})


# ---------------------------------------------------------------- dual conditioning
def _site_swap(unet: torch.nn.Module, sites: tuple[str, ...], source: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``unet`` whose transformer blocks are copies of ``source``'s at the same paths."""
    out = copy.deepcopy(unet)
    for name in sites:
        parent, index = name.rsplit(".", 1)
        out.get_submodule(parent)[int(index)] = copy.deepcopy(source.get_submodule(name))
    return out


@torch.no_grad()
def test_mix_zero_is_the_image_unet_with_vision_and_mix_one_uses_text_transformers():
    image_unet, text_unet = tiny_unets()
    plain_image, plain_text = copy.deepcopy(image_unet), copy.deepcopy(text_unet)
    dual = DualGuidedUNet(image_unet, text_unet)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    text, vision = torch.randn(2, LT, D, generator=g), torch.randn(2, LV, D, generator=g)
    t = torch.tensor([10, 500])
    vision_only = plain_image(x, t, encoder_hidden_states=vision).sample
    text_only = _site_swap(plain_image, dual.sites, plain_text)(x, t, encoder_hidden_states=text).sample
    assert torch.allclose(dual(x, t, text, vision, 0.0), vision_only, atol=1e-6)
    assert torch.allclose(dual(x, t, text, vision, 1.0), text_only, atol=1e-6)
    assert not torch.allclose(vision_only, text_only, atol=1e-3)
    # per-sample weights: sample 0 vision only, sample 1 text only
    per_sample = dual(x, t, text, vision, torch.tensor([0.0, 1.0]))
    assert torch.allclose(per_sample[0], vision_only[0], atol=1e-5)
    assert torch.allclose(per_sample[1], text_only[1], atol=1e-5)
    mixed = dual(x, t, text, vision, 0.4)
    assert not torch.allclose(mixed, vision_only, atol=1e-4) and not torch.allclose(mixed, text_only, atol=1e-4)


@torch.no_grad()
def test_dual_block_is_diffusers_dual_transformer_with_text_first():
    """Same residual mixing as diffusers' DualTransformer2DModel, whose defaults take 77 text
    tokens then 257 vision tokens and route them to transformers[1] (text) and [0] (image)."""
    g = torch.Generator().manual_seed(3)
    image_t = randomize_(Transformer2DModel(2, 8, in_channels=16, cross_attention_dim=D, norm_num_groups=8), 4)
    text_t = randomize_(Transformer2DModel(2, 8, in_channels=16, cross_attention_dim=D, norm_num_groups=8), 5)
    lib = DualTransformer2DModel(2, 8, in_channels=16, cross_attention_dim=D, norm_num_groups=8)
    lib.transformers[0], lib.transformers[1] = image_t, text_t
    ours = DualCrossAttention(image_t, text_t)
    h = torch.randn(2, 16, 4, 4, generator=g)
    text, vision = torch.randn(2, 77, D, generator=g), torch.randn(2, 257, D, generator=g)
    ctx = torch.cat([text, vision], dim=1)
    expected = lib(h, ctx, return_dict=False)[0]  # mix_ratio 0.5 by default
    kw = {"brainrecon_dual_mix": 0.5, "brainrecon_dual_lengths": (77, 257)}
    assert torch.allclose(ours(h, ctx, cross_attention_kwargs=kw, return_dict=False)[0], expected, atol=1e-5)
    # and the weight is the text weight: linear between the two single flows
    at = {m: ours(h, ctx, cross_attention_kwargs=kw | {"brainrecon_dual_mix": m}, return_dict=False)[0]
          for m in (0.0, 0.4, 1.0)}
    assert torch.allclose(at[0.0], image_t(h, encoder_hidden_states=vision).sample, atol=1e-6)
    assert torch.allclose(at[0.4], 0.6 * at[0.0] + 0.4 * at[1.0], atol=1e-5)


def test_dual_unet_rejects_mismatched_inputs_and_partners():
    image_unet, text_unet = tiny_unets()
    dual = DualGuidedUNet(image_unet, text_unet)
    x = torch.zeros(2, 4, 8, 8)
    with pytest.raises(ShapeMismatchError, match="text_ctx"):
        dual(x, 1, torch.zeros(2, LT, D + 1), torch.zeros(2, LV, D), 0.4)
    with pytest.raises(ShapeMismatchError, match="vision_ctx"):
        dual(x, 1, torch.zeros(2, LT, D), torch.zeros(3, LV, D), 0.4)
    with pytest.raises(ShapeMismatchError, match="latents"):
        dual(torch.zeros(2, 3, 8, 8), 1, torch.zeros(2, LT, D), torch.zeros(2, LV, D), 0.4)
    with pytest.raises(ConfigError, match="mix"):
        dual(x, 1, torch.zeros(2, LT, D), torch.zeros(2, LV, D), 1.5)
    with pytest.raises(ConfigError, match="DualGuidedUNet.forward"):
        dual.image_unet(x, 1, encoder_hidden_states=torch.zeros(2, LT, D))
    with pytest.raises(ConfigError, match="already"):
        DualGuidedUNet(dual.image_unet, text_unet)
    wide = UNetFlatConditionModel(**(tiny_text_unet_config() | {"cross_attention_dim": D * 2}))
    with pytest.raises(ShapeMismatchError, match="cross_attention_dim"):
        DualGuidedUNet(UNet2DConditionModel(**tiny_image_unet_config()), wide)
    deeper = UNetFlatConditionModel(**(tiny_text_unet_config() | {"layers_per_block": 2}))
    with pytest.raises(ConfigError, match="different positions"):
        DualGuidedUNet(UNet2DConditionModel(**tiny_image_unet_config()), deeper)


# ---------------------------------------------------------------- sampling
@torch.no_grad()
def test_guidance_one_is_the_conditional_prediction_and_cfg_is_batched():
    pipe = tiny_pipe()
    text, vision, (tu, vu) = contexts(3)
    text, vision, tu, vu = (torch.from_numpy(a) for a in (text, vision, tu, vu))
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = pipe.unet(z, 501, text, vision, 0.4)
    assert torch.allclose(pipe.predict_noise(z, 501, text, vision, mix=0.4, guidance=1.0), cond, atol=1e-6)
    assert torch.allclose(pipe.predict_noise(z, 501, text, vision, mix=0.4, guidance=1.0, uncond=(tu, vu)), cond,
                          atol=1e-6)
    unc = pipe.unet(z, 501, tu.expand(3, -1, -1), vu.expand(3, -1, -1), 0.4)
    guided = pipe.predict_noise(z, 501, text, vision, mix=0.4, guidance=7.5, uncond=(tu, vu))
    assert torch.allclose(guided, unc + 7.5 * (cond - unc), atol=1e-4)
    with pytest.raises(ConfigError, match="unconditional"):
        pipe.predict_noise(z, 501, text, vision, mix=0.4, guidance=7.5)


def test_one_denoising_step_runs_on_cpu():
    pipe = tiny_pipe()
    text, vision, uncond = contexts(2)
    # 4 steps at strength 0.25: int(0.25 * 4) = 1 denoising step
    out = pipe(images_uint8(2), text, vision, strength=0.25, steps=4, uncond=uncond)
    assert out.shape == (2, 3, pipe.image_size, pipe.image_size) == (2, 3, 16, 16)
    assert out.dtype == np.float32 and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    # float (n, 3, H, W) input gives the same as its uint8 form
    as_float = images_uint8(2).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    out_f = pipe(as_float, text, vision, strength=0.25, steps=4, uncond=uncond)
    assert np.allclose(out, out_f, atol=1e-5)


def test_seeded_runs_are_reproducible_and_independent_of_batch_size():
    pipe = tiny_pipe()
    text, vision, uncond = contexts(3)
    imgs = images_uint8(3)
    kw = {"strength": 0.75, "steps": 4, "uncond": uncond, "guidance": 3.0, "mix": 0.4}
    a = pipe(imgs, text, vision, seed=5, batch_size=3, **kw)
    b = pipe(imgs, text, vision, seed=5, batch_size=3, **kw)
    c = pipe(imgs, text, vision, seed=5, batch_size=2, **kw)
    d = pipe(imgs, text, vision, seed=6, batch_size=3, **kw)
    assert np.array_equal(a, b)
    assert np.allclose(a, c, atol=1e-5)  # per-image generators: batch composition does not matter
    assert not np.allclose(a, d, atol=1e-3)
    # the last image alone gets the noise it had as image 2 only if the index is the same: it is not
    alone = pipe(imgs[2:], text[2:], vision[2:], seed=5, **kw)
    assert not np.allclose(alone[0], a[2], atol=1e-3)


def test_encoder_guidance_moves_only_the_guided_rows_towards_the_objective():
    pipe = tiny_pipe()
    text, vision, uncond = contexts(3)
    imgs = images_uint8(3)
    kw = {"strength": 0.75, "steps": 4, "uncond": uncond, "guidance": 3.0, "mix": 0.4, "seed": 5}
    calls = []

    def brightness(images: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        # rows 0 and 2 want a brighter image, row 1 is not guided (zero objective)
        calls.append(list(rows))
        w = torch.tensor([1.0, 0.0, 1.0])[torch.as_tensor(rows)]
        return images.mean(dim=(1, 2, 3)) * w

    plain = pipe(imgs, text, vision, **kw)
    assert np.array_equal(pipe(imgs, text, vision, guide=brightness, guide_scale=0.0, **kw), plain)
    assert not calls  # scale 0: the guide is never evaluated
    guided = pipe(imgs, text, vision, guide=brightness, guide_scale=2.0, batch_size=2, **kw)
    assert calls and calls[0] == [0, 1] and calls[-1] == [2]  # rows are indices among the inputs, per batch
    assert np.allclose(guided[1], plain[1], atol=1e-5)  # a zero objective has a zero (normalised) gradient
    assert guided[0].mean() > plain[0].mean() and guided[2].mean() > plain[2].mean()
    with pytest.raises(ConfigError, match="needs a guide"):
        pipe(imgs, text, vision, guide_scale=1.0, **kw)
    with pytest.raises(ConfigError, match="guide_scale"):
        pipe(imgs, text, vision, guide=brightness, guide_scale=-1.0, **kw)


def test_img2img_rejects_bad_inputs():
    pipe = tiny_pipe()
    text, vision, uncond = contexts(2)
    imgs = images_uint8(2)
    with pytest.raises(ShapeMismatchError, match="text_ctx"):
        pipe(imgs, text[..., :-1], vision, uncond=uncond, steps=4)
    with pytest.raises(ShapeMismatchError, match="vision_ctx"):
        pipe(imgs, text, vision[:1], uncond=uncond, steps=4)
    with pytest.raises(ShapeMismatchError, match="uncond text tokens"):
        pipe(imgs, text, vision, uncond=(uncond[0][:, :-1], uncond[1]), steps=4)
    with pytest.raises(ShapeMismatchError, match="uncond vision"):
        pipe(imgs, text, vision, uncond=(uncond[0], uncond[1][..., :-1]), steps=4)
    with pytest.raises(ShapeMismatchError, match="uint8"):
        pipe(imgs.transpose(0, 3, 1, 2), text, vision, uncond=uncond, steps=4)
    with pytest.raises(ShapeMismatchError, match="float"):
        pipe(imgs.astype(np.float32) / 255, text, vision, uncond=uncond, steps=4)  # channels last
    with pytest.raises(DataFormatError, match=r"\[0, 1\]"):
        pipe(imgs.transpose(0, 3, 1, 2).astype(np.float32), text, vision, uncond=uncond, steps=4)
    with pytest.raises(ConfigError, match="uncond"):
        pipe(imgs, text, vision, steps=4)
    with pytest.raises(ConfigError, match="strength"):
        pipe(imgs, text, vision, uncond=uncond, strength=1.2)
    with pytest.raises(ConfigError, match="mix"):
        pipe(imgs, text, vision, uncond=uncond, mix=-0.1)
    bad = text.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataFormatError, match="non-finite"):
        pipe(imgs, bad, vision, uncond=uncond, steps=4)


def test_default_dtype_is_half_on_cuda_and_float_elsewhere():
    assert _as_dtype(None, torch.device("cuda")) == torch.float16
    assert _as_dtype(None, torch.device("cpu")) == torch.float32
    assert _as_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ConfigError):
        _as_dtype("float8", torch.device("cpu"))


# ---------------------------------------------------------------- checkpoints
def write_checkpoint(root, seed: int = 0) -> None:
    """A random-valued checkpoint in the published diffusers layout (tiny config)."""
    image_unet, text_unet = tiny_unets(seed)
    image_unet.save_pretrained(root / "image_unet", safe_serialization=True)
    text_unet.save_pretrained(root / "text_unet", safe_serialization=True)
    randomize_(tiny_vae(), seed + 2).save_pretrained(root / "vae", safe_serialization=True)
    reference_scheduler().save_pretrained(root / "scheduler")


def test_checkpoint_in_published_layout_loads_and_runs(tmp_path):
    write_checkpoint(tmp_path)
    assert (tmp_path / "image_unet" / WEIGHTS_NAME).is_file()
    pipe = load_dual_guided(tmp_path, progress=False)
    assert pipe.image_size == 16 and pipe.context_dim == D and pipe.scaling_factor == 0.5
    assert next(pipe.unet.parameters()).dtype == torch.float32
    text, vision, uncond = contexts(2)
    out = pipe(images_uint8(2), text, vision, steps=4, uncond=uncond)
    # identical to the same components built in memory: nothing was re-initialised on loading
    expected = tiny_pipe(0)(images_uint8(2), text, vision, steps=4, uncond=uncond)
    assert np.allclose(out, expected, atol=1e-5)
    # reduced precision (float16 is the CUDA default): models cast, sampler state and output float32
    half = load_dual_guided(tmp_path, dtype="bfloat16", progress=False)
    assert next(half.unet.parameters()).dtype == torch.bfloat16
    out_half = half(images_uint8(2), text, vision, steps=4, uncond=uncond)
    assert out_half.dtype == np.float32 and np.abs(out_half - out).max() < 0.05


def test_missing_parts_raise_naming_the_path(tmp_path):
    with pytest.raises(MissingWeightsError, match="nowhere"):
        load_dual_guided(tmp_path / "nowhere")
    with pytest.raises(MissingWeightsError) as err:
        load_dual_guided("bundled:no_such_model")
    assert "no_such_model" in str(err.value)
    write_checkpoint(tmp_path)
    (tmp_path / "text_unet" / WEIGHTS_NAME).rename(tmp_path / "text_unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(MissingWeightsError) as err:
        load_dual_guided(tmp_path)
    assert str(tmp_path / "text_unet" / WEIGHTS_NAME) in str(err.value) and ".bin" in str(err.value)
    (tmp_path / "text_unet" / "diffusion_pytorch_model.bin").rename(tmp_path / "text_unet" / WEIGHTS_NAME)
    (tmp_path / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(MissingWeightsError, match="scheduler_config.json"):
        load_dual_guided(tmp_path)
    reference_scheduler().save_pretrained(tmp_path / "scheduler")
    for p in sorted((tmp_path / "vae").iterdir()):
        p.unlink()
    (tmp_path / "vae").rmdir()
    with pytest.raises(MissingWeightsError, match="vae"):
        load_dual_guided(tmp_path)
    with pytest.raises(MissingWeightsError) as err:
        load_vae(tmp_path)
    assert str(tmp_path / "vae") in str(err.value)
    with pytest.raises(MissingWeightsError, match="nowhere"):
        load_vae(tmp_path / "nowhere")


def test_load_vae_needs_no_unets(tmp_path):
    write_checkpoint(tmp_path)
    expected = load_dual_guided(tmp_path, progress=False).vae.state_dict()
    for sub in ("image_unet", "text_unet"):
        (tmp_path / sub / WEIGHTS_NAME).unlink()
    vae = load_vae(tmp_path)
    assert next(vae.parameters()).dtype == torch.float32
    got = vae.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_load_unets_gives_the_pipeline_weights_unpaired(tmp_path):
    write_checkpoint(tmp_path)
    image_unet, text_unet = load_unets(tmp_path)
    assert isinstance(image_unet, UNet2DConditionModel) and isinstance(text_unet, UNetFlatConditionModel)
    assert next(image_unet.parameters()).dtype == torch.float32
    expected = load_dual_guided(tmp_path, progress=False).unet.state_dict()
    got = DualGuidedUNet(image_unet, text_unet).state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    (tmp_path / "text_unet" / WEIGHTS_NAME).unlink()
    with pytest.raises(MissingWeightsError, match="text_unet"):
        load_unets(tmp_path)


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    write_checkpoint(tmp_path)
    f = tmp_path / "image_unet" / WEIGHTS_NAME
    sd = load_file(f)
    sd.pop("conv_in.bias")
    save_file(sd, f)
    with pytest.raises(DataFormatError, match="conv_in.bias"):
        load_dual_guided(tmp_path)
    cfg = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert cfg["_class_name"] == "AutoencoderKL"


# ---------------------------------------------------------------- training script
def _train_script():
    """``scripts/train_vd_small.py`` as a module (skips outside the source checkout)."""
    import importlib.util

    from brainrecon.paths import repo_root

    root = repo_root()
    if root is None:
        pytest.skip("needs the source checkout (scripts/)")
    spec = importlib.util.spec_from_file_location("train_vd_small", root / "scripts" / "train_vd_small.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_training_script_writes_the_published_layout(tmp_path):
    script = _train_script()
    # a step count alone is not cut short by a default wall-time budget (it once was: session 7's vd_small)
    assert script.budget_minutes(3995, None, 25.0) == float("inf")
    assert script.budget_minutes(3995, 30.0, 25.0) == 30.0 and script.budget_minutes(None, None, 25.0) == 25.0
    rng = np.random.default_rng(0)
    np.save(tmp_path / "scenes.npy", rng.integers(0, 256, (10, 24, 24, 3), dtype=np.uint8))
    np.save(tmp_path / "scenes_captions.npy", np.array([[f"scene {i}", f"picture {i}"] for i in range(10)]))
    out = tmp_path / "w" / "vd_tiny"
    report = script.main([
        "--images", str(tmp_path / "scenes.npy"), "--clip", "stand-in", "--out", str(out),
        "--cache-dir", str(tmp_path / "cache"), "--n-heldout", "3", "--image-size", "16", "--threads", "1",
        "--vae-channels", "8,16", "--unet-channels", "8,16", "--vae-iters", "2", "--unet-iters", "3",
        "--vae-batch-size", "2", "--batch-size", "2", "--log-every", "1", "--eval-n", "2", "--eval-steps", "4",
    ])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["image_unet", "scheduler", "text_unet", "vae", "vd_tiny.training.json"]
    assert report["unet"]["iters"] == 3 and all(np.isfinite(r["loss"]) for r in report["unet"]["trace"])
    assert report["data"]["n_train"] == 7 and report["heldout"]["n_heldout"] == 3
    pipe = load_dual_guided(out, progress=False)
    assert pipe.image_size == 16 and pipe.context_dim == script.STAND_IN_SHAPES[2]
    assert pipe.scaling_factor == pytest.approx(report["vae"]["scaling_factor"], rel=1e-3)
    # the text UNet's own (text-latent) layers are stored as zeros, its transformer blocks trained
    from safetensors.torch import load_file

    text_sd = load_file(out / "text_unet" / WEIGHTS_NAME)
    assert all(float(v.abs().max()) == 0 for k, v in text_sd.items() if ".attentions." not in k)
    assert any(float(v.abs().max()) > 0 for k, v in text_sd.items() if ".attentions." in k)
    with pytest.raises(ConfigError, match="stand-in"):
        script.main(["--images", str(tmp_path / "scenes.npy"), "--clip", "stand-in"])  # never into the package

    # --vae-from: the diffusion is trained on a trained model's VAE, which is saved unchanged
    common = ["--images", str(tmp_path / "scenes.npy"), "--clip", "stand-in", "--cache-dir", str(tmp_path / "cache"),
              "--n-heldout", "3", "--threads", "1", "--unet-channels", "8,16", "--unet-iters", "2",
              "--batch-size", "2", "--eval-n", "2", "--eval-steps", "4", "--vae-from", str(out)]
    again = script.main(common + ["--image-size", "16", "--out", str(tmp_path / "w" / "vd_again")])
    assert again["vae"]["iters"] == 0 and again["vae"]["from"] == str(out)
    assert again["vae"]["scaling_factor"] == pytest.approx(report["vae"]["scaling_factor"], rel=1e-6)
    assert again["vae"]["trained"]["iters"] == 2  # the reused VAE's own training record travels with it
    first, second = (load_file(tmp_path / "w" / name / "vae" / WEIGHTS_NAME) for name in ("vd_tiny", "vd_again"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    with pytest.raises(ConfigError, match="--vae-from.*16 px.*--image-size is 32"):
        script.main(common + ["--image-size", "32", "--out", str(tmp_path / "w" / "vd_bad")])
    with pytest.raises(ConfigError, match="--vae-from reuses a trained VAE"):
        script.main(common + ["--image-size", "16", "--vae-iters", "5", "--out", str(tmp_path / "w" / "vd_bad")])

    # --init-from: training continues from a trained model's UNets, in its latent space, with Min-SNR weights
    common = common[:-2] + ["--image-size", "16"]
    cont = script.main(common + ["--init-from", str(out), "--loss-weighting", "min_snr", "--log-every", "1",
                                 "--out", str(tmp_path / "w" / "vd_cont")])
    assert cont["unet"]["init"]["iters_before"] == 3 and cont["unet"]["iters"] == 2
    assert cont["unet"]["image_unet_config"]["block_out_channels"] == [8, 16]
    assert cont["vae"]["from"] == str(out) and cont["args"]["loss_weighting"] == "min_snr"
    # weighted loss <= unweighted MSE: Min-SNR weights are at most 1
    assert len(cont["unet"]["trace"]) == 2 and all(r["loss"] <= r["mse"] + 1e-7 for r in cont["unet"]["trace"])
    again = script.main(common + ["--init-from", str(tmp_path / "w" / "vd_cont"), "--unet-iters", "1",
                                  "--out", str(tmp_path / "w" / "vd_cont2")])
    assert again["unet"]["init"]["iters_before"] == 5  # 3 + 2: the count runs through a chain of continuations
    start = load_file(out / "image_unet" / WEIGHTS_NAME)
    moved = load_file(tmp_path / "w" / "vd_cont" / "image_unet" / WEIGHTS_NAME)
    assert start.keys() == moved.keys() and not all(torch.equal(start[k], moved[k]) for k in start)
    # zero steps re-evaluates a model as it is (same weights, fresh held-out figures)
    same = script.main(common + ["--init-from", str(out), "--unet-iters", "0", "--out", str(tmp_path / "w" / "vd_same")])
    assert same["unet"]["iters"] == 0 and same["unet"]["init"]["iters_before"] == 3 and "img2img" in same["heldout"]
    kept = load_file(tmp_path / "w" / "vd_same" / "image_unet" / WEIGHTS_NAME)
    assert kept.keys() == start.keys() and all(torch.equal(start[k], kept[k]) for k in start)
    with pytest.raises(SystemExit):  # argparse: 0 steps only continue a model
        script.main(common + ["--unet-iters", "0", "--out", str(tmp_path / "w" / "vd_bad")])
    with pytest.raises(ConfigError, match="drop --vae-from"):
        script.main(common + ["--init-from", str(out), "--vae-from", str(tmp_path / "w" / "vd_again"),
                              "--out", str(tmp_path / "w" / "vd_bad")])
    record = out / "vd_tiny.training.json"
    rec = json.loads(record.read_text())
    record.write_text(json.dumps({**rec, "clip": {"weights": "0123456789abcdef"}}))
    with pytest.raises(ConfigError, match="trained on CLIP weights 0123456789abcdef"):
        script.main(common + ["--init-from", str(out), "--out", str(tmp_path / "w" / "vd_bad")])
    record.unlink()
    with pytest.raises(ConfigError, match="no \\*.training.json"):
        script.main(common + ["--init-from", str(out), "--out", str(tmp_path / "w" / "vd_bad")])


def test_min_snr_weights_down_weight_only_the_nearly_clean_steps():
    from brainrecon.latents.versatile.dual_guided import reference_scheduler

    script = _train_script()
    abar = reference_scheduler().alphas_cumprod
    t = torch.arange(0, 1000)
    assert torch.equal(script.timestep_weights(abar, t, "none", 5.0), torch.ones(1000))
    w = script.timestep_weights(abar, t, "min_snr", 5.0)
    snr = (abar / (1 - abar)).double()
    # 1 where SNR <= gamma (the noisier steps); gamma / SNR where the image is nearly clean
    assert torch.all(w[snr <= 5.0] == 1.0)
    assert torch.allclose(w[snr > 5.0].double(), 5.0 / snr[snr > 5.0], rtol=1e-5)
    assert 0 < float(w[0]) < 0.01 and bool((w[1:] >= w[:-1]).all())  # SNR falls with t: weights rise to 1
    with pytest.raises(ConfigError, match="--loss-weighting"):
        script.timestep_weights(abar, t, "snr", 5.0)


# ---------------------------------------------------------------- the shipped small model
def _vd_small_dir():
    from brainrecon.paths import bundled_weights_dir

    return bundled_weights_dir() / "vd_small"


@pytest.mark.skipif(not (_vd_small_dir() / "image_unet").is_dir(), reason="bundled vd_small not trained yet")
def test_bundled_vd_small_loads_strictly_and_runs():
    folder = _vd_small_dir()
    report = json.loads((folder / "vd_small.training.json").read_text())
    pipe = load_dual_guided("bundled:vd_small", progress=False)
    assert pipe.image_size == report["args"]["image_size"] == 64
    lt, d = report["context_shapes"]["text"]
    lv, _ = report["context_shapes"]["vision"]
    assert pipe.context_dim == d
    rng = np.random.default_rng(0)
    text = rng.standard_normal((2, lt, d)).astype(np.float32) * 0.1
    vision = rng.standard_normal((2, lv, d)).astype(np.float32) * 0.1
    out = pipe(images_uint8(2, 64), text, vision, steps=4, strength=0.25, guidance=1.0)
    assert out.shape == (2, 3, 64, 64) and np.isfinite(out).all()
    # held-out figures recorded by the training run: the VAE reconstructs unseen scenes
    assert report["heldout"]["vae_pixcorr_mean"] > report["heldout"]["vae_pixcorr_vs_shuffled_mean"] + 0.3
