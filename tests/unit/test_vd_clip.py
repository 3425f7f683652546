"""CLIP text/vision features for Versatile Diffusion (``brainrecon.latents.versatile.clip``).

Tiny random CLIP towers are written with ``save_pretrained`` in the published diffusers
layout (``text_encoder/``, ``image_encoder/``, ``tokenizer/``) and loaded through
``load_clip(path)`` as a user would. Full-size ViT-L/14 configurations are only built on the
``meta`` device, to check parameter names and shapes against the published checkpoint.
"""

from __future__ import annotations

import json
import shutil
import string

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from brainrecon.errors import ConfigError, DataFormatError, MissingWeightsError, ShapeMismatchError
from brainrecon.latents.versatile import clip as C
from brainrecon.latents.versatile.clip import ClipEncoder, load_clip
from brainrecon.latents.versatile.words import EOS_ID, WordTokenizer, split_words
from brainrecon.paths import bundled_weights_dir

CTX, DIM, IMG, PATCH = 16, 24, 32, 8
LV = (IMG // PATCH) ** 2 + 1


def _bpe_files(folder):
    """A tiny byte-pair vocabulary in the published tokenizer's file format (vocab.json + merges.txt)."""
    folder.mkdir(parents=True, exist_ok=True)
    toks = ["<|startoftext|>", "<|endoftext|>", *string.ascii_lowercase, *(c + "</w>" for c in string.ascii_lowercase),
            "th", "the</w>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(toks)}))
    (folder / "merges.txt").write_text("#version: 0.2\nt h\nth e</w>\n")
    return len(toks), 1  # vocabulary size, <|endoftext|> id


def _vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=IMG, patch_size=PATCH, projection_dim=DIM)


def _text_config(vocab_size: int, eos: int, bos: int, pad: int) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=CTX, projection_dim=DIM,
                          eos_token_id=eos, bos_token_id=bos, pad_token_id=pad)


@pytest.fixture(scope="module")
def published_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("vd")
    n_tok, eos = _bpe_files(root / "tokenizer")
    torch.manual_seed(0)
    CLIPTextModelWithProjection(_text_config(n_tok, eos, 0, eos)).save_pretrained(root / "text_encoder")
    CLIPVisionModelWithProjection(_vision_config()).save_pretrained(root / "image_encoder")
    return root


@pytest.fixture(scope="module")
def enc(published_dir) -> ClipEncoder:
    return load_clip(str(published_dir))


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    """Our small layout: same towers, word tokenizer, reference.json."""
    root = tmp_path_factory.mktemp("clip_small")
    tok = WordTokenizer.build(["a large red ball on the left", "a small green tree and a cat"], CTX)
    tok.save(root / "tokenizer")
    torch.manual_seed(1)
    tc = _text_config(tok.vocab_size, tok.eos_token_id, tok.bos_token_id, tok.pad_token_id)
    CLIPTextModelWithProjection(tc).save_pretrained(root / "text_encoder")
    CLIPVisionModelWithProjection(_vision_config()).save_pretrained(root / "image_encoder")
    load_clip(str(root), check=False).write_reference()
    return root


def _images(n: int, h: int = 40, w: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- shapes and definitions
def test_shapes_and_dtypes(enc):
    assert (enc.text_tokens, enc.vision_tokens, enc.dim, enc.image_size) == (CTX, LV, DIM, IMG)
    assert enc.kind == "published" and enc.pre_resize == C.PUBLISHED_PRE_RESIZE
    v = enc.encode_images(_images(3), batch_size=2)
    t = enc.encode_texts(["the cat", "a dog", ""], batch_size=2)
    assert v.shape == (3, LV, DIM) and v.dtype == np.float32
    assert t.shape == (3, CTX, DIM) and t.dtype == np.float32
    ei, et = enc.embed_images(_images(2)), enc.embed_texts(["a", "b"])
    assert ei.shape == et.shape == (2, DIM) and ei.dtype == et.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ei, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(et, axis=1), 1.0, rtol=1e-5)
    ut, uv = enc.unconditional()
    assert ut.shape == (1, CTX, DIM) and uv.shape == (1, LV, DIM)


def test_vision_tokens_follow_the_reference_definition(enc):
    """post_layernorm + visual_projection on every token, divided by the class token's norm."""
    imgs = _images(2)
    v = enc.encode_images(imgs)
    np.testing.assert_allclose(np.linalg.norm(v[:, 0], axis=-1), 1.0, rtol=1e-5)
    px = C.preprocess_images(imgs, enc.image_size, enc.pre_resize)
    vm = enc.vision_model
    with torch.no_grad():
        out = vm(pixel_values=px)
        z = vm.visual_projection(vm.vision_model.post_layernorm(out.last_hidden_state))
    ref = (z / out.image_embeds.norm(dim=-1)[:, None, None]).numpy()
    np.testing.assert_allclose(v, ref, atol=1e-5)
    np.testing.assert_allclose(v[:, 0], enc.embed_images(imgs), atol=1e-6)
    assert not np.allclose(v[:, 1], v[:, 0])  # the patch tokens are not the class token


def test_text_tokens_have_unit_norm_at_end_of_text(enc):
    texts = ["the cat", "a", "", "the the the"]
    t = enc.encode_texts(texts)
    ids = enc.tokenize(texts)
    eot = (ids == 1).argmax(1)  # first <|endoftext|> (the pad token is the same id)
    norms = np.linalg.norm(t[np.arange(len(texts)), eot], axis=-1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    np.testing.assert_allclose(t[np.arange(len(texts)), eot], enc.embed_texts(texts), atol=1e-6)


def test_caption_averaging_drops_empty_captions(enc):
    caps = [["the cat", "", "a dog"], ["  ", "xyz"], ["a dog"]]
    out = enc.encode_captions(caps, batch_size=2)
    assert out.shape == (3, CTX, DIM) and out.dtype == np.float32
    per = enc.encode_texts(["the cat", "a dog", "xyz"])
    np.testing.assert_allclose(out[0], per[:2].mean(0), atol=1e-6)
    np.testing.assert_allclose(out[1], per[2], atol=1e-6)
    np.testing.assert_allclose(out[2], per[1], atol=1e-6)


def test_image_without_caption_is_named(enc):
    with pytest.raises(DataFormatError, match="image 1"):
        enc.encode_captions([["a cat"], ["", " "], ["a dog"]])


def test_unconditional_contexts(enc):
    ut, uv = enc.unconditional()
    np.testing.assert_allclose(ut, enc.encode_texts([""]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(uv[0, 0]), 1.0, rtol=1e-5)
    # Mid-grey 0.5 lies between the 8-bit levels 127 and 128: close to their features,
    # far from those of a random image.
    grey = enc.encode_images(np.full((1, 20, 20, 3), 128, dtype=np.uint8))[0]
    other = enc.encode_images(_images(1))[0]
    assert np.abs(uv[0] - grey).max() < 0.1 * np.abs(other - grey).max()


def test_bad_inputs(enc):
    with pytest.raises(DataFormatError, match="uint8"):
        enc.encode_images(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ShapeMismatchError):
        enc.encode_images(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ConfigError):
        enc.encode_texts("a single string")


def test_fingerprint_is_content_based(published_dir, enc, tmp_path):
    fp = enc.fingerprint()
    assert fp["weights"] and fp["kind"] == "published" and fp["pre_resize"] == 512
    copy = tmp_path / "copy"
    shutil.copytree(published_dir, copy)
    assert load_clip(str(copy)).fingerprint() == fp  # moving the folder keeps cache keys
    torch.manual_seed(5)
    CLIPVisionModelWithProjection(_vision_config()).save_pretrained(copy / "image_encoder")
    assert load_clip(str(copy)).fingerprint()["weights"] != fp["weights"]


def test_dtype_option(published_dir):
    with pytest.raises(ConfigError, match="dtype"):
        load_clip(str(published_dir), dtype="int8")
    half = load_clip(str(published_dir), dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    assert half.encode_images(_images(1)).dtype == np.float32


# ---------------------------------------------------------------- missing / wrong files
def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(MissingWeightsError, match="nowhere"):
        load_clip(str(tmp_path / "nowhere"))


@pytest.mark.parametrize(
    "remove, expected",
    [
        ("image_encoder/model.safetensors", "image_encoder/model.safetensors"),
        ("text_encoder/config.json", "text_encoder/config.json"),
        ("text_encoder", "text_encoder"),
        ("tokenizer/vocab.json", "tokenizer/vocab.json"),
        ("tokenizer/merges.txt", "tokenizer/merges.txt"),
    ],
)
def test_missing_file_names_the_file(published_dir, tmp_path, remove, expected):
    root = tmp_path / "vd"
    shutil.copytree(published_dir, root)
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(MissingWeightsError) as err:
        load_clip(str(root))
    assert str(root / expected) in str(err.value)


def test_pickled_weights_only_are_refused_with_a_hint(published_dir, tmp_path):
    root = tmp_path / "vd"
    shutil.copytree(published_dir, root)
    (root / "image_encoder" / "model.safetensors").rename(root / "image_encoder" / "pytorch_model.bin")
    with pytest.raises(MissingWeightsError, match="safetensors only"):
        load_clip(str(root))


def test_incomplete_weights_are_never_randomly_filled(published_dir, tmp_path):
    root = tmp_path / "vd"
    shutil.copytree(published_dir, root)
    f = root / "text_encoder" / "model.safetensors"
    sd = load_file(f)
    del sd["text_projection.weight"]
    sd["extra.weight"] = torch.zeros(2)
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(DataFormatError, match="text_projection.weight"):
        load_clip(str(root))


def test_bundled_prefix_resolves_to_the_package_weights(monkeypatch, tmp_path):
    import brainrecon.paths

    monkeypatch.setattr(brainrecon.paths, "bundled_weights_dir", lambda: tmp_path)
    with pytest.raises(MissingWeightsError) as err:
        load_clip("bundled:clip_missing")
    assert str(tmp_path / "clip_missing") in str(err.value)


# ---------------------------------------------------------------- preprocessing
def test_preprocessing_geometry_and_reference_check():
    img = _images(2, 30, 60)
    x = C.preprocess_images(img, 24)
    assert tuple(x.shape) == (2, 3, 24, 24) and x.dtype == torch.float32
    xf = C.preprocess_images(torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255.0, 24)
    torch.testing.assert_close(x, xf)
    # A square image at the model size is only normalised.
    sq = _images(1, 24, 24)
    mean, std = torch.tensor(C.CLIP_MEAN).view(3, 1, 1), torch.tensor(C.CLIP_STD).view(3, 1, 1)
    expected = (torch.from_numpy(sq[0]).permute(2, 0, 1).float() / 255 - mean) / std
    torch.testing.assert_close(C.preprocess_images(sq, 24)[0], expected)
    C.reference_check(224, 512)
    C.reference_check(64, None)
    C.reference_check(32, None)  # unknown geometry: checks the frozen ones


def test_reference_check_catches_double_rescaling(monkeypatch):
    """brain-diffuser#9: an image processor that divides [0, 1] floats by 255 again."""
    orig = C.preprocess_images

    def rescaled_twice(images, *args, **kwargs):
        x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255.0 / 255.0
        return orig(x, *args, **kwargs)

    monkeypatch.setattr(C, "preprocess_images", rescaled_twice)
    with pytest.raises(DataFormatError, match="reference check failed"):
        C.reference_check(224, 512)


def test_reference_check_catches_a_different_resampling(monkeypatch):
    orig = torch.nn.functional.interpolate

    def no_antialias(x, size=None, mode="nearest", antialias=False, align_corners=None):
        return orig(x, size=size, mode=mode, antialias=False, align_corners=align_corners)

    monkeypatch.setattr(torch.nn.functional, "interpolate", no_antialias)
    with pytest.raises(DataFormatError):
        C.reference_check(64, None)


# ---------------------------------------------------------------- small layout, word tokenizer
def test_word_tokenizer_ids_and_roundtrip(tmp_path):
    tok = WordTokenizer.build(["A red ball, a red tree.", "a \"BLHT\" word"], context_length=6, min_count=2)
    assert tok.words == ["a", "red"]  # counts 3 and 2; the rest occur once
    assert EOS_ID != 2  # transformers treats eos_token_id == 2 as legacy (pools at the largest id)
    ids = tok(["a red cat", "", "a a a a a a a"])
    assert ids.tolist()[0] == [2, 4, 5, 1, 3, 0]
    assert ids.tolist()[1] == [2, 3, 0, 0, 0, 0]
    assert ids.tolist()[2] == [2, 4, 4, 4, 4, 3]  # truncated, <eos> kept
    assert split_words('A "BLHT" word, here.') == ["a", "blht", "word", "here"]
    back = WordTokenizer.load(tok.save(tmp_path))
    assert back.vocab == tok.vocab and back.context_length == 6


def test_small_layout_pools_at_end_of_text(small_dir):
    enc = load_clip(str(small_dir))  # also checks reference.json
    assert enc.kind == "small" and enc.pre_resize is None
    texts = ["a large red ball", "a small green tree and a cat on the left"]
    ids = torch.from_numpy(enc.tokenize(texts))
    with torch.no_grad():
        out = enc.text_model(input_ids=ids)
    eos = (ids == EOS_ID).int().argmax(1)
    rows = torch.arange(len(texts))
    torch.testing.assert_close(out.text_embeds, enc.text_model.text_projection(out.last_hidden_state[rows, eos]))
    assert not torch.allclose(out.text_embeds, enc.text_model.text_projection(out.last_hidden_state[:, -1]))
    t = enc.encode_texts(texts)
    np.testing.assert_allclose(np.linalg.norm(t[rows.numpy(), eos.numpy()], axis=-1), 1.0, rtol=1e-5)


def test_small_layout_refuses_legacy_eos_id(small_dir, tmp_path):
    root = tmp_path / "small"
    shutil.copytree(small_dir, root)
    cfg = json.loads((root / "text_encoder" / "config.json").read_text())
    cfg["eos_token_id"] = 2
    (root / "text_encoder" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataFormatError, match="eos_token_id"):
        load_clip(str(root))


def test_stored_reference_features_catch_drift(small_dir, tmp_path):
    root = tmp_path / "small"
    shutil.copytree(small_dir, root)
    ref = json.loads((root / "reference.json").read_text())
    ref["image_embed"][0] += 0.01
    (root / "reference.json").write_text(json.dumps(ref))
    with pytest.raises(DataFormatError, match="image_embed"):
        load_clip(str(root))
    assert load_clip(str(root), check=False).kind == "small"


# ---------------------------------------------------------------- published size (meta device)
def _full_size_models():
    vc = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                          patch_size=14, image_size=224, projection_dim=768, hidden_act="quick_gelu")
    tc = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, max_position_embeddings=77, projection_dim=768,
                        hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    with torch.device("meta"):
        return CLIPTextModelWithProjection(tc), CLIPVisionModelWithProjection(vc)


def test_full_size_configs_match_the_published_checkpoint_names():
    text, vision = _full_size_models()
    vs = {k: tuple(v.shape) for k, v in vision.state_dict().items()}
    ts = {k: tuple(v.shape) for k, v in text.state_dict().items()}
    expected_vision = {
        "vision_model.embeddings.class_embedding": (1024,),
        "vision_model.embeddings.patch_embedding.weight": (1024, 3, 14, 14),
        "vision_model.embeddings.position_embedding.weight": (257, 1024),
        "vision_model.pre_layrnorm.weight": (1024,),  # sic: the published name
        "vision_model.encoder.layers.23.self_attn.q_proj.weight": (1024, 1024),
        "vision_model.encoder.layers.23.mlp.fc1.weight": (4096, 1024),
        "vision_model.post_layernorm.weight": (1024,),
        "visual_projection.weight": (768, 1024),
    }
    expected_text = {
        "text_model.embeddings.token_embedding.weight": (49408, 768),
        "text_model.embeddings.position_embedding.weight": (77, 768),
        "text_model.encoder.layers.11.self_attn.out_proj.weight": (768, 768),
        "text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        "text_model.final_layer_norm.weight": (768,),
        "text_projection.weight": (768, 768),
    }
    for k, shape in expected_vision.items():
        assert vs.get(k) == shape, k
    for k, shape in expected_text.items():
        assert ts.get(k) == shape, k
    assert "vision_model.encoder.layers.24.mlp.fc1.weight" not in vs
    # CLIP ViT-L/14 has 427,616,513 parameters with the logit scale (one scalar, not used here).
    n = sum(p.numel() for p in text.parameters()) + sum(p.numel() for p in vision.parameters())
    assert n == 427_616_512


def test_full_size_token_counts():
    text, vision = _full_size_models()
    enc = ClipEncoder(text, vision, lambda t: np.zeros((len(t), 77), np.int64), kind="published",
                      root=bundled_weights_dir(), files=[], pre_resize=C.PUBLISHED_PRE_RESIZE)
    assert (enc.text_tokens, enc.vision_tokens, enc.dim, enc.image_size) == (77, 257, 768, 224)


# ---------------------------------------------------------------- the trained small CLIP
# clip_small was trained on scenes with stick-figure bodies, clip_small_solid on solid bodies (scripts/README.md)
SMALL = {"clip_small": "stick", "clip_small_solid": "solid"}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_trained_small_clip_identifies_held_out_scenes(name):
    """Fresh scenes (seed 4242: neither the training scenes' 1000 nor the experiments' 0)."""
    from brainrecon.sim.stimuli import procedural_stimuli

    folder = bundled_weights_dir() / name
    if not (folder / "image_encoder" / "model.safetensors").is_file():
        pytest.skip(f"trained weights absent: {folder} (scripts/train_clip_small.py)")
    enc = load_clip(f"bundled:{name}")
    stim = procedural_stimuli(120, 128, np.random.default_rng(4242), body_shape=SMALL[name])
    img = enc.embed_images(stim.images)
    caps = np.asarray(stim.captions)
    txt = enc.embed_texts(list(caps.ravel())).reshape(len(caps), caps.shape[1], -1).mean(1)
    sim = img @ (txt / np.linalg.norm(txt, axis=1, keepdims=True)).T
    two_way = (sim.diagonal()[:, None] > sim)[~np.eye(len(sim), dtype=bool)].mean()
    print(f"{name}: held-out 2-way identification image vs captions: {two_way:.3f}")
    assert two_way > 0.9
    v, t = enc.encode_images(stim.images[:2]), enc.encode_captions(stim.captions[:2])
    assert v.shape == (2, enc.vision_tokens, enc.dim) and t.shape == (2, enc.text_tokens, enc.dim)
