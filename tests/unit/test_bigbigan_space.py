"""Tests of the BigBiGAN latent space and its configuration (issue 8)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from brainrecon.errors import ConfigError, MissingWeightsError, ShapeMismatchError  # noqa: E402
from brainrecon.latents.base import Stimuli, check_latent_space  # noqa: E402
from brainrecon.latents.bigbigan import (  # noqa: E402
    ENCODER_FILE,
    GENERATOR_FILE,
    BigBiGANEncoder,
    BigBiGANGenerator,
    BigBiGANSpace,
    EncoderConfig,
    GeneratorConfig,
    save_encoder,
)
from pipelines.config import build_spaces  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
TINY_G = {"ch": 4, "in_mult": [4, 4, 2], "out_mult": [4, 2, 1], "attention": [16], "dim_z": 8,
          "shared_dim": 6, "n_classes": 1}
TINY_E = {"image_size": 32, "stem_width": 4, "widths": [2, 4], "blocks": [1, 1], "expansion": 2,
          "mlp": [16], "dim_z": 8}


def _stimuli(n: int = 5, h: int = 40, w: int = 48, seed: int = 0) -> Stimuli:
    return Stimuli(np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8))


@pytest.fixture
def nets(tiny_torch_cpu):
    torch.manual_seed(0)
    g = BigBiGANGenerator(GeneratorConfig.from_dict(TINY_G)).eval().requires_grad_(False)
    e = BigBiGANEncoder(EncoderConfig.from_dict(TINY_E)).eval().requires_grad_(False)
    return g, e


def test_check_latent_space_tiny(nets):
    g, e = nets
    space = BigBiGANSpace(g, e, batch_size=2, progress=False)
    assert space.name == "bigbigan" and space.targets["z"].shape == (8,)
    check_latent_space(space, _stimuli())
    img = space.decode(space.encode(_stimuli(2)))
    assert img.shape == (2, 3, 32, 32)


def test_encoder_path_follows_the_tfhub_preprocessing(nets):
    """Centre square crop, resize to the encoder's side, [-1, 1]: compare with the encoder called by hand."""
    g, e = nets
    stim = _stimuli(3, h=32, w=48)  # crop keeps columns 8..40, no resize needed
    z = BigBiGANSpace(g, e, progress=False).encode(stim)["z"]
    x = torch.from_numpy(stim.images[:, :, 8:40].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        mean, _ = e(x * 2 - 1)
    np.testing.assert_allclose(z, mean.numpy(), rtol=1e-5, atol=1e-6)


def test_truncation_and_output_size(nets):
    g, e = nets
    Z = np.random.default_rng(1).normal(scale=2.0, size=(4, 8)).astype(np.float32)
    plain = BigBiGANSpace(g, e, progress=False)
    clip = BigBiGANSpace(g, e, truncation=0.5, progress=False)
    np.testing.assert_allclose(clip.decode({"z": Z}), plain.decode({"z": np.clip(Z, -0.5, 0.5)}), atol=1e-6)
    res = BigBiGANSpace(g, e, truncation=0.5, truncation_mode="resample", batch_size=3, progress=False)
    a = res._truncate(Z, seed=3)
    assert np.abs(a).max() <= 0.5
    np.testing.assert_array_equal(a[np.abs(Z) <= 0.5], Z[np.abs(Z) <= 0.5])  # in-range values kept
    np.testing.assert_array_equal(a[:2], res._truncate(Z[:2], seed=3))  # per-image seeds: batch independent
    assert not np.array_equal(a, res._truncate(Z, seed=4))
    np.testing.assert_array_equal(res.decode({"z": Z}, seed=3), res.decode({"z": Z}, seed=3))
    big = BigBiGANSpace(g, e, output_size=48, progress=False).decode({"z": Z})
    assert big.shape == (4, 3, 48, 48) and big.dtype == np.float32 and 0 <= big.min() and big.max() <= 1


def test_inversion_encoding_moves_towards_the_stimulus(nets):
    """Stimuli rendered from planted latents: inversion reduces the pixel error from z = 0."""
    g, e = nets
    z_star = np.random.default_rng(2).normal(size=(3, 8)).astype(np.float32)
    base = BigBiGANSpace(g, None, encode_method="inversion", progress=False)
    images = base.generate(z_star)
    stim = Stimuli(np.rint(images.transpose(0, 2, 3, 1) * 255).astype(np.uint8))
    target = stim.images.transpose(0, 3, 1, 2) / 255.0

    def err(space):
        return float(((space.generate(space.encode(stim)["z"]) - target) ** 2).mean())

    start = float(((base.generate(np.zeros((3, 8), np.float32)) - target) ** 2).mean())
    inv = BigBiGANSpace(g, None, encode_method="inversion", inversion_steps=40, inversion_lr=0.1,
                        inversion_reg=0.0, progress=False)
    assert err(inv) < 0.5 * start
    both = BigBiGANSpace(g, e, encode_method="encoder+inversion", inversion_steps=5, progress=False)
    z_enc = BigBiGANSpace(g, e, progress=False).encode(stim)["z"]
    z_both = both.encode(stim)["z"]
    assert 0 < np.abs(z_both - z_enc).max() < 0.5  # 5 Adam steps of 0.05 start from the encoder's mean


def test_bad_options_and_inputs_raise(nets):
    g, e = nets
    with pytest.raises(ConfigError, match="encode_method"):
        BigBiGANSpace(g, e, encode_method="mean")
    with pytest.raises(ConfigError, match="needs the encoder"):
        BigBiGANSpace(g, None)
    with pytest.raises(ConfigError, match="truncation"):
        BigBiGANSpace(g, e, truncation=0.0)
    with pytest.raises(ConfigError, match="truncation_mode"):
        BigBiGANSpace(g, e, truncation_mode="cut")
    space = BigBiGANSpace(g, e, progress=False)
    with pytest.raises(ShapeMismatchError, match=r"\(n, 8\)"):
        space.decode({"z": np.zeros((2, 7), np.float32)})
    with pytest.raises(ConfigError, match="init"):
        space.decode({"z": np.zeros((1, 8), np.float32)}, init=np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ShapeMismatchError, match="uint8"):
        space.encode(Stimuli(np.zeros((1, 8, 8, 3), np.float32)))
    other = BigBiGANEncoder(EncoderConfig.from_dict({**TINY_E, "dim_z": 6}))
    with pytest.raises(ShapeMismatchError, match="latent size"):
        BigBiGANSpace(g, other)


# --------------------------------------------------------------------------- the user path
def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="run", overrides=overrides)


def _spaces(overrides: list[str]) -> dict:
    """Compose run.yaml with ``overrides`` and build its latent spaces as the pipeline does.

    The default experiment (sim) configures its own pixel space, which is dropped here so that
    only the BigBiGAN node is instantiated.
    """
    cfg = _compose(overrides)
    with open_dict(cfg):
        cfg.latents = {"bigbigan": cfg.latents.bigbigan}
    return build_spaces(cfg)


def _dict_override(d: dict) -> str:
    return "{" + ",".join(f"{k}:{v}".replace(" ", "") for k, v in d.items()) + "}"


def _write_tiny_weights(root: Path) -> dict:
    """A random generator in the converted file format (plain torch.save of the state dict, .pth) and a
    random encoder in the converter's format (.safetensors), under the names the config expects."""
    torch.manual_seed(4)
    folder = root / "bigbigan"
    folder.mkdir(parents=True)
    g = BigBiGANGenerator(GeneratorConfig.from_dict(TINY_G))
    sd = {k: v.clone() for k, v in g.state_dict().items()}
    torch.save(sd, folder / GENERATOR_FILE)
    e = BigBiGANEncoder(EncoderConfig.from_dict(TINY_E))
    save_encoder(e, folder / ENCODER_FILE)
    (folder / ENCODER_FILE).with_suffix(".json").unlink()  # the config below names the architecture
    return sd


def test_random_checkpoint_loads_exactly_through_the_yaml_config(tmp_path, monkeypatch, tiny_torch_cpu):
    monkeypatch.setenv("BRAINRECON_WEIGHTS", str(tmp_path / "w"))
    sd = _write_tiny_weights(tmp_path / "w")
    space = _spaces([
        "latents=bigbigan",
        f"latents.bigbigan.generator={_dict_override(TINY_G)}",
        f"latents.bigbigan.encoder={_dict_override(TINY_E)}",
        "latents.bigbigan.batch_size=2",
        "progress=false",
    ])["bigbigan"]
    assert isinstance(space, BigBiGANSpace)
    loaded = space.generator.state_dict()
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], v) for k, v in sd.items())
    assert space.fingerprint()["weights"]["generator"] and space.fingerprint()["weights"]["encoder"]
    stim = _stimuli(3)
    Z = space.encode(stim)["z"]
    assert Z.shape == (3, 8) and Z.dtype == np.float32
    img = space.decode({"z": Z})
    assert img.shape == (3, 3, 32, 32) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1

    # The inversion variant needs the generator file only.
    (tmp_path / "w" / "bigbigan" / ENCODER_FILE).unlink()
    space = _spaces(["latents=bigbigan_inversion", f"latents.bigbigan.generator={_dict_override(TINY_G)}",
                     "latents.bigbigan.inversion_steps=2", "progress=false"])["bigbigan"]
    assert space.encoder is None and space.encode(stim)["z"].shape == (3, 8)


def test_missing_weights_name_the_path_and_the_file_to_get(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINRECON_WEIGHTS", str(tmp_path / "w"))
    with pytest.raises(MissingWeightsError) as e:
        _spaces(["latents=bigbigan"])
    assert e.value.path == tmp_path / "w" / "bigbigan" / GENERATOR_FILE
    assert GENERATOR_FILE in str(e.value) and str(tmp_path / "w") in str(e.value)
    _write_tiny_weights(tmp_path / "w")
    (tmp_path / "w" / "bigbigan" / ENCODER_FILE).unlink()
    with pytest.raises(MissingWeightsError, match=re.escape(ENCODER_FILE)) as e:
        _spaces(["latents=bigbigan", f"latents.bigbigan.generator={_dict_override(TINY_G)}"])
    assert "encode_method='inversion'" in str(e.value)


def test_unknown_config_key_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINRECON_WEIGHTS", str(tmp_path / "w"))
    with pytest.raises(ConfigError, match="truncaton"):
        _spaces(["latents=bigbigan", "+latents.bigbigan.truncaton=1.0"])


def test_bigbigan_god_experiment_composes(tmp_path, monkeypatch):
    if not (CONF / "data" / "god.yaml").is_file():
        pytest.skip("conf/data/god.yaml (the GOD data config) is not in this checkout")
    monkeypatch.setenv("BRAINRECON_WEIGHTS", str(tmp_path / "w"))
    from pipelines.config import to_plain

    plain = to_plain(_compose(["experiment=bigbigan_god"]))
    assert plain["name"] == "bigbigan_god" and plain["data"]["source"] == "god"
    assert list(plain["latents"]) == ["bigbigan"]
    assert plain["decoder"]["targets"]["bigbigan"]["z"]["alphas"] == plain["decoder"]["alphas"]
    assert plain["predict"]["rescale"] == "train_stats"
    plain = to_plain(_compose(["experiment=bigbigan_god", "predict.rescale=paper",
                               "decoder.targets.bigbigan.z.alphas=1000"]))
    assert plain["predict"]["rescale"] == "paper" and plain["decoder"]["targets"]["bigbigan"]["z"]["alphas"] == 1000
