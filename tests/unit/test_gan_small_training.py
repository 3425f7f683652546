"""Smoke tests of the small-GAN training scripts (issue 8): a few steps at tiny size, then the pipeline's loaders.

Each script is run in-process on 40 procedural scenes made here (so nothing depends on ``/tmp``),
for a few optimiser steps of a tiny architecture at 32 px, into ``tmp_path``; the written files are
then loaded by the latent spaces' builders exactly as ``conf/latents/*_small.yaml`` loads the
bundled ones, and encode/decode a few scenes. The real trainings are documented in
``scripts/README.md``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from brainrecon.latents.base import Stimuli  # noqa: E402
from brainrecon.paths import bundled_weights_dir  # noqa: E402
from brainrecon.sim.stimuli import procedural_stimuli  # noqa: E402

pytestmark = pytest.mark.usefixtures("tiny_torch_cpu")

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
N_HELDOUT = 8


def _script(name: str):
    """Import ``scripts/<name>.py`` as a module (the scripts are not a package)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))  # train_icgan_small imports helpers from train_bigbigan_small
    spec = importlib.util.spec_from_file_location(f"_smoke_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """40 procedural scenes at 64 px with captions, in the layout of scripts/sim_training_images.py."""
    folder = tmp_path_factory.mktemp("scenes")
    stim = procedural_stimuli(40, 64, np.random.default_rng(1234))
    np.save(folder / "images.npy", stim.images, allow_pickle=False)
    np.save(folder / "images_captions.npy", stim.captions, allow_pickle=False)
    return folder / "images.npy"


def test_bigbigan_small_training_writes_what_the_space_loads(scenes, tmp_path):
    from brainrecon.latents.bigbigan import BigBiGANSpace, build_bigbigan_space

    out = tmp_path / "bigbigan_small"
    report = _script("train_bigbigan_small").main([
        "--images", str(scenes), "--out", str(out), "--iters", "3", "--minutes", "1", "--seed", "0",
        "--n-heldout", str(N_HELDOUT), "--batch-size", "4", "--prior-batch", "2", "--resolution", "32",
        "--ch", "2", "--attention", "16", "--enc-stem", "4", "--enc-widths", "4,4,4,4", "--enc-mlp", "16",
        "--disc-ch", "4", "--disc-hidden", "8", "--adv-start", "0", "--adv-ramp", "1", "--log-every", "1",
        "--standing-batches", "2", "--eval-n", "4",
    ])
    assert report["iters"] == 3 and len(report["trace"]) == 3
    assert "adv" in report["trace"][-1] and "loss_d" in report["trace"][-1]  # the adversarial term ran
    assert {p.name for p in out.iterdir()} == {
        "generator.safetensors", "generator.json", "encoder.safetensors", "encoder.json",
        "bigbigan_small.training.json",
    }
    saved = json.loads((out / "bigbigan_small.training.json").read_text())
    images = np.load(scenes)
    assert saved["data"]["images_sha256"] == _script("train_bigbigan_small").sha256_array(images)
    assert saved["data"]["n_train"] == 40 - N_HELDOUT
    assert math.isfinite(saved["heldout"]["reconstruction"]["pixcorr"])
    assert set(saved["heldout"]["noisy_latents"]) == {"r=0.75", "r=0.5", "r=0.25"}

    # The converted layout, loaded strictly with the architectures from the .json files (as the yaml does).
    space = build_bigbigan_space(
        out / "generator.safetensors", out / "encoder.safetensors", generator=None, encoder=None, progress=False
    )
    assert isinstance(space, BigBiGANSpace) and space.targets["z"].shape == (120,)
    Z = space.encode(Stimuli(images[-2:]))["z"]
    assert Z.shape == (2, 120) and np.isfinite(Z).all()
    recon = space.decode({"z": Z})
    assert recon.shape == (2, 3, 32, 32) and 0.0 <= recon.min() and recon.max() <= 1.0
    # The saved generator runs on stored (standing) statistics: an image does not depend on its batch.
    np.testing.assert_allclose(space.decode({"z": Z[:1]}), recon[:1], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(
    not (bundled_weights_dir() / "clip_small").is_dir(), reason="the bundled small CLIP (instance encoder) is absent"
)
def test_icgan_small_training_writes_what_the_space_loads(scenes, tmp_path):
    from brainrecon.latents.icgan import ClipInstanceEncoder, ICGANSpace, build_icgan_space

    out = tmp_path / "icgan_small"
    report = _script("train_icgan_small").main([
        "--images", str(scenes), "--out", str(out), "--iters", "3", "--minutes", "1", "--seed", "0",
        "--n-heldout", str(N_HELDOUT), "--batch-size", "4", "--resolution", "32", "--ch", "2", "--attention", "16",
        "--dim-z", "8", "--shared-dim-feat", "8", "--disc-ch", "4", "--k", "3", "--adv-start", "0",
        "--adv-ramp", "1", "--log-every", "1", "--standing-batches", "2", "--eval-n", "4", "--invert-n", "2",
        "--invert-steps", "2", "--invert-dense-steps", "2", "--invert-long-steps", "0",
    ])
    assert report["iters"] == 3 and "adv" in report["trace"][-1]
    assert {p.name for p in out.iterdir()} == {"generator.safetensors", "generator.json", "icgan_small.training.json"}
    saved = json.loads((out / "icgan_small.training.json").read_text())
    inv = saved["heldout"]["inversion"]
    assert set(inv) >= {"before", "after_noise", "after_dense", "seconds_per_image"}
    assert inv["settings"]["steps"] == 2 and inv["settings"]["dense_steps"] == 2
    assert math.isfinite(inv["after_dense"]["pixcorr"])
    assert saved["instance_encoder"]["kind"] == "clip" and saved["instance_encoder"]["fingerprint"]["weights"]

    # As conf/latents/icgan_small.yaml loads it: safetensors + generator.json, CLIP instance encoder.
    space = build_icgan_space(
        out / "generator.safetensors", "bundled:clip_small", model=None, instance_encoder="clip", progress=False,
        inversion={"steps": 2, "dense_steps": 2, "batch_size": 2},
    )
    assert isinstance(space, ICGANSpace) and isinstance(space.encoder, ClipInstanceEncoder)
    assert {k: s.shape for k, s in space.targets.items()} == {"instance": (64,), "noise": (8,), "dense": (128,)}
    Z = space.encode(Stimuli(np.load(scenes)[-2:]))
    np.testing.assert_allclose(np.linalg.norm(Z["instance"], axis=1), 1.0, rtol=1e-5)
    images = space.decode(Z)
    assert images.shape == (2, 3, 32, 32) and 0.0 <= images.min() and images.max() <= 1.0
    # the instance is the CLIP image embedding: ROI diagnostics read it with estimators of the same CLIP
    from brainrecon.latents.versatile.clip import load_clip

    emb, ident = space.clip_image_embedding(Z)
    np.testing.assert_array_equal(emb, Z["instance"])
    assert ident == load_clip("bundled:clip_small").fingerprint()


def test_icgan_builder_names_what_is_missing(tmp_path):
    from brainrecon.errors import ConfigError, MissingWeightsError
    from brainrecon.latents.icgan import ICGANConfig, ICGANGenerator, build_icgan_space, save_generator

    with pytest.raises(MissingWeightsError) as exc:
        build_icgan_space(tmp_path / "g.safetensors", "bundled:clip_small", model=None, instance_encoder="clip")
    assert exc.value.path == tmp_path / "g.safetensors"
    path = save_generator(ICGANGenerator(ICGANConfig(resolution=32, ch=2, dim_z=8, attention="", feature_dim=64,
                                                     shared_dim=8, n_classes=1, shared_dim_feat=8)),
                          tmp_path / "g.safetensors")
    path.with_suffix(".json").unlink()
    with pytest.raises(ConfigError, match="g.json"):
        build_icgan_space(path, "bundled:clip_small", model=None, instance_encoder="clip")
    with pytest.raises(ConfigError, match="instance_encoder"):
        build_icgan_space(path, "bundled:clip_small", model=None, instance_encoder="vit")


def test_icgan_script_evaluates_the_inversion_the_yaml_configures():
    """The inversion figures recorded at training time describe what the extract stage runs."""
    from omegaconf import OmegaConf

    yaml = OmegaConf.load(SCRIPTS.parent / "conf" / "latents" / "icgan_small.yaml").icgan.inversion
    defaults = _script("train_icgan_small").DEFAULT_INVERSION
    assert {k: yaml[k] for k in defaults} == defaults
    assert yaml.dense_lr is None and yaml.noise_reg == 0.0 and yaml.perceptual == "none"
