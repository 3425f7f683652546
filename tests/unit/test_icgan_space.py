"""Tests of the IC-GAN latent space (issue 8): configuration, encode (inversion), decode, shared check.

Weights files are written in the published layouts for small architectures: the generator as a
plain ``torch.save`` of its state dict (as the release's ``G_ema_best0.pth``), the encoder as
SwAV's release stores it (``module.`` prefix, projection head and prototypes beside the trunk),
under the file names the configuration expects below ``<weights_root>/icgan/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hydra import compose, initialize_config_dir  # noqa: E402

from brainrecon.errors import ConfigError, MissingWeightsError, ShapeMismatchError  # noqa: E402
from brainrecon.latents.base import Stimuli, check_latent_space  # noqa: E402
from brainrecon.latents.icgan import (  # noqa: E402
    IMAGENET256_DIR,
    IMAGENET256_FILE,
    SWAV_FILE,
    ICGANConfig,
    ICGANGenerator,
    ICGANSpace,
    SwAVConfig,
    SwAVEncoder,
    build_icgan_space,
)
from brainrecon.latents.inversion import InversionResult  # noqa: E402
from pipelines.config import build_spaces  # noqa: E402

pytestmark = pytest.mark.usefixtures("tiny_torch_cpu")

CONF = Path(__file__).resolve().parents[2] / "conf"
TINY_G = {
    "resolution": 32, "ch": 8, "dim_z": 20, "attention": "16", "shared_dim": 8, "n_classes": 10, "shared_dim_feat": 8,
}
TINY_E = {"layers": [1, 1, 1, 1], "width_per_group": 4, "input_size": 32}


def _hydra_dict(d: dict) -> str:
    """A flat dict as a Hydra override value: ``{a:1,b:[1,2],c:x}``."""
    items = ",".join(f"{k}:{list(v) if isinstance(v, (list, tuple)) else v}" for k, v in d.items())
    return "{" + items.replace(" ", "") + "}"


def write_weights(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Random tiny weights in the release layouts at the configured paths under ``root``."""
    torch.manual_seed(seed)
    g = ICGANGenerator(ICGANConfig(**TINY_G))
    e = SwAVEncoder(SwAVConfig(**TINY_E))
    with torch.no_grad():
        for k, v in g.state_dict().items():
            if k.endswith("stored_var"):
                v.uniform_(0.5, 2.0)
            elif k.endswith(("stored_mean", "gamma", "u0")):
                v.normal_()
    gpath = root / "icgan" / IMAGENET256_DIR / IMAGENET256_FILE
    epath = root / "icgan" / SWAV_FILE
    gpath.parent.mkdir(parents=True)
    torch.save(g.state_dict(), gpath)
    swav = {f"module.{k}": v for k, v in e.state_dict().items()}
    swav.update({
        "module.projection_head.0.weight": torch.randn(16, 2048),
        "module.projection_head.0.bias": torch.randn(16),
        "module.projection_head.1.weight": torch.randn(16),
        "module.projection_head.1.bias": torch.randn(16),
        "module.projection_head.1.running_mean": torch.randn(16),
        "module.projection_head.1.running_var": torch.rand(16),
        "module.projection_head.1.num_batches_tracked": torch.tensor(3),
        "module.projection_head.3.weight": torch.randn(8, 16),
        "module.projection_head.3.bias": torch.randn(8),
        "module.prototypes.weight": torch.randn(30, 8),
    })
    torch.save(swav, epath)
    return gpath, epath


def stand_in_invert(calls: list | None = None):
    """A fast stand-in of brainrecon.latents.inversion.invert: renders once, shifts init by 0.1."""

    def invert(render, init, targets, *, steps, lr, seed, batch_size, perceptual=None, progress=False, **kwargs):
        fixed = kwargs.get("fixed") or {}
        b = min(len(targets), batch_size)
        batch = {k: torch.as_tensor(v[:b]) for k, v in {**fixed, **init}.items()}
        img = render(batch)
        assert tuple(img.shape) == tuple(targets[:b].shape)
        if calls is not None:
            calls.append({"init": sorted(init), "fixed": sorted(fixed), "steps": steps, "lr": lr})
        lat = {k: torch.as_tensor(v).numpy().astype(np.float32) + 0.1 for k, v in init.items()}
        return InversionResult(latents=lat, loss=np.zeros(len(targets), np.float32), curve=np.zeros(steps, np.float32))

    return invert


def images(n: int, seed: int = 0, h: int = 40, w: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 5, 6, 3)).astype(np.float32)
    # smooth-ish images (upsampled blocks) so that a tiny generator can approach them
    big = np.repeat(np.repeat(base, h // 5, axis=1), w // 6, axis=2)
    return big.astype(np.uint8)


def tiny_space(tmp_path: Path, **kwargs) -> ICGANSpace:
    gpath, epath = write_weights(tmp_path / "w")
    return build_icgan_space(gpath, epath, model=TINY_G, encoder=TINY_E, **kwargs)


# --------------------------------------------------------------------------- as a user would
def test_yaml_config_builds_space_from_release_layout_and_runs(tmp_path):
    write_weights(tmp_path / "weights")
    overrides = [
        "experiment=icgan_god",
        f"paths.weights_root={tmp_path / 'weights'}",
        f"latents.icgan.model={_hydra_dict(TINY_G)}",
        f"latents.icgan.encoder={_hydra_dict(TINY_E)}",
        "latents.icgan.inversion.steps=2",
        "latents.icgan.inversion.batch_size=2",
        "progress=false",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="run", overrides=overrides)
    assert cfg.decoder.targets.icgan.instance.alphas == 500.0
    assert cfg.decoder.targets.icgan.noise.alphas == 1.0
    assert cfg.decoder.targets.icgan.dense.alphas == 100.0
    space = build_spaces(cfg)["icgan"]
    assert isinstance(space, ICGANSpace) and space.name == "icgan"
    assert {k: s.shape for k, s in space.targets.items()} == {"instance": (2048,), "noise": (20,), "dense": (512,)}
    assert set(space.fingerprint()["weights"]) == {"generator", "encoder"}
    Z = space.encode(Stimuli(images(3)))
    assert {k: v.shape for k, v in Z.items()} == {"instance": (3, 2048), "noise": (3, 20), "dense": (3, 512)}
    np.testing.assert_allclose(np.linalg.norm(Z["instance"], axis=1), 1.0, rtol=1e-5)
    out = space.decode(Z, seed=0)
    assert out.shape == (3, 3, 32, 32) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_published_config_paths_and_missing_weights_message(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="run", overrides=["experiment=icgan_god", f"paths.weights_root={tmp_path}"])
    node = cfg.latents.icgan
    assert node.weights_path == str(tmp_path / "icgan" / IMAGENET256_DIR / IMAGENET256_FILE)
    assert node.encoder_path == str(tmp_path / "icgan" / SWAV_FILE)
    assert node.decode_from == "dense" and node.truncation is None
    with pytest.raises(MissingWeightsError) as exc:
        build_spaces(cfg)
    assert exc.value.path == tmp_path / "icgan" / IMAGENET256_DIR / IMAGENET256_FILE
    assert "icgan_biggan_imagenet_res256.tar.gz" in str(exc.value) and IMAGENET256_FILE in str(exc.value)
    # with the generator present, the encoder file is the one named
    gpath = tmp_path / "icgan" / IMAGENET256_DIR / IMAGENET256_FILE
    gpath.parent.mkdir(parents=True)
    with torch.device("meta"):
        sd = ICGANGenerator(ICGANConfig(**TINY_G)).state_dict()
    torch.save({k: torch.zeros(v.shape) for k, v in sd.items()}, gpath)
    with pytest.raises(MissingWeightsError, match=SWAV_FILE) as exc:
        build_icgan_space(gpath, tmp_path / "icgan" / SWAV_FILE, model=TINY_G, encoder=TINY_E)
    assert exc.value.path == tmp_path / "icgan" / SWAV_FILE


# --------------------------------------------------------------------------- protocol
def test_check_latent_space_with_stand_in_inversion(tmp_path):
    calls: list = []
    space = tiny_space(tmp_path, invert_fn=stand_in_invert(calls), inversion={"steps": 7, "lr": 0.2, "dense_lr": 0.3})
    check_latent_space(space, Stimuli(images(3)))
    # noise first (instance fixed), then dense (instance and noise fixed)
    assert calls[0] == {"init": ["noise"], "fixed": ["instance"], "steps": 7, "lr": 0.2}
    assert calls[1] == {"init": ["dense"], "fixed": ["instance", "noise"], "steps": 7, "lr": 0.3}


def test_check_latent_space_instance_noise_only(tmp_path):
    calls: list = []
    space = tiny_space(
        tmp_path, invert_fn=stand_in_invert(calls), targets=["instance", "noise"], decode_from="instance_noise"
    )
    assert set(space.targets) == {"instance", "noise"}
    check_latent_space(space, Stimuli(images(2)))
    assert [c["init"] for c in calls] == [["noise"]]  # one encode, no dense inversion


def test_instance_only_skips_inversion(tmp_path):
    calls: list = []
    space = tiny_space(tmp_path, invert_fn=stand_in_invert(calls), targets=["instance"], decode_from="instance_noise")
    Z = space.encode(Stimuli(images(2)))
    assert set(Z) == {"instance"} and calls == []
    a, b = space.decode(Z, seed=1), space.decode(Z, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, space.decode(Z, seed=2))


# --------------------------------------------------------------------------- inversion with the real optimiser
def test_inversion_lowers_reconstruction_error(tmp_path):
    space = tiny_space(tmp_path, decode_from="instance_noise", inversion={"steps": 0, "batch_size": 4})
    stim = Stimuli(images(2, seed=4))
    from brainrecon.latents.icgan.space import stimuli_to_tensor

    target = stimuli_to_tensor(stim.images, 32).numpy()
    Z0 = space.encode(stim)
    err0 = float(((space.decode(Z0) - target) ** 2).mean())
    space.inversion = type(space.inversion)(steps=25, lr=0.1, batch_size=4)
    Z = space.encode(stim)
    err = float(((space.decode(Z) - target) ** 2).mean())
    assert err < 0.9 * err0
    np.testing.assert_array_equal(Z["instance"], Z0["instance"])
    space.decode_from = "dense"
    err_dense = float(((space.decode(Z) - target) ** 2).mean())
    assert err_dense < err  # the dense vector has more freedom than the first noise chunk


def test_zero_dense_steps_gives_first_linear_layer_output(tmp_path):
    space = tiny_space(tmp_path, inversion={"steps": 3, "dense_steps": 0, "batch_size": 4})
    Z = space.encode(Stimuli(images(2, seed=1)))
    with torch.no_grad():
        want = space.generator.dense_from_noise(torch.from_numpy(Z["noise"])).numpy()
    np.testing.assert_allclose(Z["dense"], want, rtol=1e-6, atol=1e-6)
    dense_img = space.decode(Z)
    space.decode_from = "instance_noise"
    np.testing.assert_allclose(dense_img, space.decode(Z), rtol=1e-5, atol=1e-6)


def test_targets_of_an_image_do_not_depend_on_its_batch(tmp_path):
    space = tiny_space(tmp_path, inversion={"steps": 3, "batch_size": 2})
    imgs = images(3, seed=2)
    Z_all = space.encode(Stimuli(imgs))
    Z_last = space.encode(Stimuli(imgs[2:]))
    for key in Z_all:
        np.testing.assert_allclose(Z_all[key][2:], Z_last[key], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- decode options and errors
def test_truncation_clamps_noise(tmp_path):
    space = tiny_space(tmp_path, invert_fn=stand_in_invert(), decode_from="instance_noise", truncation=0.5)
    Z = space.encode(Stimuli(images(2)))
    big = {**Z, "noise": Z["noise"] * 10}
    clamped = {**Z, "noise": np.clip(big["noise"], -1.0, 1.0)}
    np.testing.assert_array_equal(space.decode(big), space.decode(clamped))
    sampled = space._sample_noise(50, seed=0)
    assert float(sampled.abs().max()) <= 1.0


def test_decode_errors(tmp_path):
    space = tiny_space(tmp_path, invert_fn=stand_in_invert())
    Z = space.encode(Stimuli(images(2)))
    with pytest.raises(ConfigError, match="dense"):
        space.decode({"instance": Z["instance"], "noise": Z["noise"]})
    with pytest.raises(ConfigError, match="instance"):
        space.decode({"noise": Z["noise"], "dense": Z["dense"]})
    with pytest.raises(ConfigError, match="init"):
        space.decode(Z, init=np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ShapeMismatchError, match=r"latents\['dense'\]"):
        space.decode({**Z, "dense": Z["dense"][:, :10]})


def test_constructor_errors(tmp_path):
    space = tiny_space(tmp_path, invert_fn=stand_in_invert())
    g, e = space.generator, space.encoder
    with pytest.raises(ConfigError, match="decode_from"):
        ICGANSpace(g, e, decode_from="latent")
    with pytest.raises(ConfigError, match="'dense' target"):
        ICGANSpace(g, e, targets=["instance", "noise"])
    with pytest.raises(ConfigError, match="'instance' is required"):
        ICGANSpace(g, e, targets=["noise", "dense"])
    with pytest.raises(ConfigError, match="unknown keys"):
        ICGANSpace(g, e, inversion={"step": 3})
    with pytest.raises(ConfigError, match="perceptual"):
        ICGANSpace(g, e, inversion={"perceptual": "vgg"})
    with pytest.raises(ConfigError, match="truncation"):
        ICGANSpace(g, e, truncation=-1.0)
    with pytest.raises(ShapeMismatchError, match="uint8"):
        space.encode(Stimuli(images(1).astype(np.float32)))
