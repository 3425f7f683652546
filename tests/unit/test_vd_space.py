"""VersatileSpace (Brain-Diffuser stage 2) through the user's path: a folder in the published layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_vd_clip import _bpe_files  # tiny byte-pair tokenizer files in the published format
from test_vd_dual_guided import D, write_checkpoint  # tiny random diffusion parts, context width D
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModelWithProjection

from brainrecon.errors import ConfigError, MissingDataError, MissingWeightsError, ShapeMismatchError
from brainrecon.latents.base import LatentSpace, Stimuli, check_latent_space
from brainrecon.latents.versatile import VersatileSpace


pytestmark = pytest.mark.usefixtures("tiny_torch_cpu")  # see tests/conftest.py


@pytest.fixture(scope="module")
def vd_dir(tmp_path_factory):
    """Every part of shi-labs/versatile-diffusion's layout, tiny and random-valued."""
    root = tmp_path_factory.mktemp("versatile")
    n_tok, eos = _bpe_files(root / "tokenizer")
    torch.manual_seed(0)
    common = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, projection_dim=D)
    CLIPTextModelWithProjection(
        CLIPTextConfig(vocab_size=n_tok, max_position_embeddings=12, eos_token_id=eos, bos_token_id=0, pad_token_id=eos, **common)
    ).save_pretrained(root / "text_encoder")
    CLIPVisionModelWithProjection(CLIPVisionConfig(image_size=16, patch_size=8, **common)).save_pretrained(root / "image_encoder")
    write_checkpoint(root)
    return root


def _stimuli(n: int = 3) -> Stimuli:
    rng = np.random.default_rng(0)
    caps = [["the cat", "a hat"], ["the dog", ""], ["the end"]][:n]
    return Stimuli(rng.integers(0, 256, (n, 24, 24, 3), dtype=np.uint8), caps)


def test_space_honours_the_contract(vd_dir):
    space = VersatileSpace(str(vd_dir), steps=3, image_size=16, batch_size=2, progress=False)
    assert isinstance(space, LatentSpace)
    assert space.targets["clip_text"].shape == (12, D) and space.targets["clip_vision"].shape == (5, D)
    check_latent_space(space, _stimuli())
    fp = space.fingerprint()
    assert set(fp) == {"clip", "diffusion"} and fp["diffusion"] != "missing"
    # a training record beside the weights describes them; writing one keeps the cache keys
    record = Path(vd_dir) / "m.training.json"
    record.write_text('{"note": "provenance"}')
    try:
        assert VersatileSpace(str(vd_dir), progress=False).fingerprint() == fp
    finally:
        record.unlink()


def test_init_images_are_resized_and_optional(vd_dir):
    space = VersatileSpace(str(vd_dir), steps=4, strength=0.5, image_size=16, progress=False)
    Z = space.encode(_stimuli(2))
    small = np.full((2, 3, 16, 16), 0.8, np.float32)
    large = np.full((2, 3, 40, 40), 0.8, np.float32)  # resized to image_size first
    a, b = space.decode(Z, init=small, seed=0), space.decode(Z, init=large, seed=0)
    assert a.shape == b.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(a, b, atol=1e-6)
    c = space.decode(Z, init=None, seed=0)  # no stage-1 image: mid-grey start at strength 1
    assert c.shape == (2, 3, 16, 16) and np.isfinite(c).all()


def test_errors_name_what_is_wrong(vd_dir, tmp_path):
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "nothing")):
        VersatileSpace(str(tmp_path / "nothing"))
    space = VersatileSpace(str(vd_dir), steps=2, image_size=16, progress=False)
    with pytest.raises(MissingDataError, match="captions"):
        space.encode(Stimuli(np.zeros((1, 8, 8, 3), np.uint8)))
    Z = space.encode(_stimuli(2))
    with pytest.raises(ShapeMismatchError, match="clip_vision"):
        space.decode({"clip_text": Z["clip_text"], "clip_vision": Z["clip_vision"][:, :3]})
    with pytest.raises(ShapeMismatchError, match="init"):
        space.decode(Z, init=np.zeros((3, 3, 16, 16), np.float32))
    for bad in (dict(strength=0.0), dict(mix=1.5), dict(guidance=0.5), dict(steps=0)):
        with pytest.raises(Exception, match="versatile"):
            VersatileSpace(str(vd_dir), **bad)


def test_published_layout_loads_through_the_experiment_config(vd_dir, tmp_path):
    """The user's path: brain_diffuser_nsd's config -> build_spaces -> <weights_root>/versatile-diffusion."""
    import shutil
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from pipelines.config import build_spaces

    weights = tmp_path / "weights"
    shutil.copytree(vd_dir, weights / "versatile-diffusion")
    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="run", overrides=[
            "experiment=brain_diffuser_nsd", "~latents.vdvae", f"paths.weights_root={weights}",
            "latents.versatile.image_size=16", "latents.versatile.steps=2",
        ])
    space = build_spaces(cfg)["versatile"]
    assert isinstance(space, VersatileSpace) and space.weights == weights / "versatile-diffusion"
    assert (space.strength, space.guidance, space.mix) == (0.75, 7.5, 0.4)  # Brain-Diffuser's values
    Z = space.encode(_stimuli(2))
    img = space.decode(Z, init=np.full((2, 3, 16, 16), 0.5, np.float32), seed=0)
    assert img.shape == (2, 3, 16, 16) and np.isfinite(img).all()


def test_with_strength_shares_the_models_and_changes_only_the_strength(vd_dir):
    space = VersatileSpace(str(vd_dir), steps=4, strength=0.75, image_size=16, progress=False)
    Z = space.encode(_stimuli(2))
    init = np.full((2, 3, 16, 16), 0.8, np.float32)
    low = space.with_strength(0.25)
    assert (low.strength, space.strength) == (0.25, 0.75)
    assert low.pipeline() is space.pipeline()
    np.testing.assert_array_equal(space.with_strength(0.75).decode(Z, init=init, seed=1), space.decode(Z, init=init, seed=1))
    assert not np.allclose(low.decode(Z, init=init, seed=1), space.decode(Z, init=init, seed=1))
    with pytest.raises(ConfigError, match="versatile.strength"):
        space.with_strength(0.0)
    emb, ident = space.clip_image_embedding(Z)  # token 0, with the identity of the CLIP that made it
    np.testing.assert_array_equal(emb, Z["clip_vision"][:, 0])
    assert ident == space.clip.fingerprint() and space.clip_image_embedding({}) is None
    # decode-only settings stay out of the extract cache key: a new strength re-decodes, never re-encodes
    assert {"strength", "guidance", "mix", "steps"} <= set(VersatileSpace.decode_params)
