"""The digit VAE latent space (``brainrecon.latents.digits``) on a tiny random-weight model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainrecon.errors import ConfigError, DataFormatError, MissingWeightsError, ShapeMismatchError
from brainrecon.latents.base import Stimuli, check_latent_space
from brainrecon.latents.digits import (
    DigitSpace,
    DigitVAEConfig,
    build_digit_space,
    build_digit_vae,
    load_digit_vae,
    save_digit_vae,
    to_gray28,
)
from brainrecon.paths import bundled_weights_dir

torch = pytest.importorskip("torch")
TINY = DigitVAEConfig(latent_dim=4, channels=(2, 4), hidden=8)


@pytest.fixture
def model(tiny_torch_cpu):
    torch.manual_seed(0)
    return build_digit_vae(TINY).eval()


def _stimuli(n: int = 3, size: int = 28) -> Stimuli:
    rng = np.random.default_rng(0)
    return Stimuli(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def test_shapes_and_contract(model):
    space = DigitSpace(model, steps=3)
    assert space.targets["z"].shape == (4,)
    check_latent_space(space, _stimuli())
    z = space.encode(_stimuli(2, size=40))["z"]  # other sizes are resized to 28
    assert z.shape == (2, 4) and z.dtype == np.float32
    img = space.decode({"z": z})
    assert img.shape == (2, 3, 28, 28)
    assert np.array_equal(img[:, 0], img[:, 2])  # grey, repeated over the channels


@pytest.mark.parametrize("mode", ["blend", "prior"])
def test_combining_modes_use_init_and_stay_in_range(model, mode):
    space = DigitSpace(model, mode=mode, blend=0.5, steps=3)
    check_latent_space(DigitSpace(model, mode="latent"), _stimuli())
    z = space.encode(_stimuli())["z"]
    init = np.zeros((3, 3, 28, 28), np.float32)
    a = space.decode({"z": z}, init=init)
    b = space.decode({"z": z}, init=init + 1.0)
    assert a.shape == (3, 3, 28, 28) and 0 <= a.min() and a.max() <= 1
    assert not np.allclose(a, b)  # the pixel reconstruction matters
    assert np.array_equal(a, space.decode({"z": z}, init=init))  # deterministic
    with pytest.raises(ConfigError, match="init_from"):
        space.decode({"z": z})


def test_blend_one_equals_latent_decoding(model):
    z = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    lat = DigitSpace(model).decode({"z": z})
    bl = DigitSpace(model, mode="blend", blend=1.0).decode({"z": z}, init=np.zeros((2, 3, 28, 28), np.float32))
    np.testing.assert_allclose(lat, bl, atol=1e-6)


def test_bad_arguments(model):
    with pytest.raises(ConfigError, match="mode"):
        DigitSpace(model, mode="magic")
    with pytest.raises(ConfigError, match="blend"):
        DigitSpace(model, blend=1.5)
    with pytest.raises(ShapeMismatchError):
        DigitSpace(model).decode({"z": np.zeros((2, 5), np.float32)})
    with pytest.raises(ShapeMismatchError):
        to_gray28(np.zeros((2, 28), np.uint8))


def test_save_load_roundtrip(model, tmp_path):
    path = save_digit_vae(model, tmp_path / "vae.safetensors")
    assert path.is_file() and (tmp_path / "vae.json").is_file()
    assert json.loads((tmp_path / "vae.json").read_text())["latent_dim"] == 4
    assert not list(tmp_path.glob("*.partial"))
    stim = _stimuli()
    a = DigitSpace(model)
    b = build_digit_space(str(path))
    np.testing.assert_array_equal(a.encode(stim)["z"], b.encode(stim)["z"])
    np.testing.assert_array_equal(a.decode(a.encode(stim)), b.decode(b.encode(stim)))
    assert b.fingerprint()["weights"]
    with pytest.raises(ConfigError, match="safetensors"):
        save_digit_vae(model, tmp_path / "vae.pt")


def test_missing_weights_name_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "digit_vae.safetensors"
    with pytest.raises(MissingWeightsError) as exc:
        build_digit_space(str(missing))
    assert str(missing) in str(exc.value)
    with pytest.raises(MissingWeightsError) as exc:
        build_digit_space("bundled:no_such_digit_vae.safetensors")
    assert str(bundled_weights_dir() / "no_such_digit_vae.safetensors") in str(exc.value)


def test_missing_config_and_mismatched_tensors(model, tmp_path):
    path = save_digit_vae(model, tmp_path / "vae.safetensors")
    (tmp_path / "vae.json").write_text(json.dumps({"latent_dim": 5, "channels": [2, 4], "hidden": 8}))
    with pytest.raises(DataFormatError, match="do not match"):
        load_digit_vae(path)
    (tmp_path / "vae.json").unlink()
    with pytest.raises(MissingWeightsError, match="vae.json"):
        load_digit_vae(path)
