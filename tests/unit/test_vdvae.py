"""Tests of the VDVAE latent space (issue 6).

The expected parameter table of the published ImageNet-64 checkpoint is derived here,
independently of the model code, from the facts of the reference implementation
(openai/vdvae): the ``imagenet64`` hyperparameters of ``hps.py`` (width 512, zdim 16,
bottleneck multiple 0.25, 10 mixture components, no custom widths, learned initial states
for resolutions <= 64, the two block strings) and the layer layout of ``vae.py``:

* encoder: ``in_conv`` 3x3 (3 -> W); per block ``c1`` 1x1 (W -> W/4), ``c2``/``c3`` 3x3 (1x1 at
  resolutions <= 2) on W/4, ``c4`` 1x1 (W/4 -> W);
* decoder block: ``enc`` (2W -> W/4 -> 2*zdim), ``prior`` (W -> W/4 -> 2*zdim + W), ``z_proj``
  1x1 (zdim -> W), ``resnet`` (W -> W/4 -> W), each with the same c1..c4 pattern;
* ``bias_xs.<j>`` of shape (1, W, r, r) for the sorted decoder resolutions r <= 64;
* ``out_net.out_conv`` 1x1 (W -> 10 * n_mixtures); ``gain``/``bias`` of shape (1, W, 1, 1).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from brainrecon.errors import ConfigError, DataFormatError, MissingWeightsError  # noqa: E402
from brainrecon.latents.base import Stimuli, check_latent_space  # noqa: E402
from brainrecon.latents.vdvae import (  # noqa: E402
    IMAGENET64_FILE,
    VDVAE,
    VDVAEConfig,
    VDVAESpace,
    load_vdvae,
    save_vdvae,
)
from brainrecon.latents.vdvae import dmol  # noqa: E402
from brainrecon.latents.vdvae.config import parse_blocks  # noqa: E402
from brainrecon.latents.vdvae.model import gaussian_kl  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

# Facts of the reference (hps.py, set "imagenet64").
I64_ENC = "64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5"
I64_DEC = "1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12"

# A tiny architecture with the same naming scheme (and the same resolutions 1..S).
TINY = {
    "image_size": 16,
    "width": 16,
    "zdim": 4,
    "enc_blocks": "16x1,16d2,8x1,8d2,4x1,4d4,1x1",
    "dec_blocks": "1x1,4m1,4x1,8m4,16m8,16x1",
    "bottleneck_multiple": 0.25,
    "no_bias_above": 64,
    "num_mixtures": 2,
    "target_groups": 3,
}


# --------------------------------------------------------------------------- key table
def _block_resolutions(spec: str) -> list[int]:
    """Resolution of every block of a block string (independent of the package's parser)."""
    out = []
    for tok in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:([xdm])(\d+))?", tok)
        assert m, tok
        res, op, num = int(m.group(1)), m.group(2), m.group(3)
        out += [res] * (int(num) if op == "x" else 1)
    return out


def _bottleneck(prefix: str, c_in: int, c_mid: int, c_out: int, res: int) -> dict[str, tuple]:
    k = 3 if res > 2 else 1
    return {
        f"{prefix}.c1.weight": (c_mid, c_in, 1, 1),
        f"{prefix}.c1.bias": (c_mid,),
        f"{prefix}.c2.weight": (c_mid, c_mid, k, k),
        f"{prefix}.c2.bias": (c_mid,),
        f"{prefix}.c3.weight": (c_mid, c_mid, k, k),
        f"{prefix}.c3.bias": (c_mid,),
        f"{prefix}.c4.weight": (c_out, c_mid, 1, 1),
        f"{prefix}.c4.bias": (c_out,),
    }


def expected_key_shapes(width, zdim, enc, dec, n_mix, bottleneck=0.25, no_bias_above=64) -> dict[str, tuple]:
    """Parameter table of a reference VDVAE without custom widths (see module docstring)."""
    W, mid = width, int(width * bottleneck)
    t: dict[str, tuple] = {"encoder.in_conv.weight": (W, 3, 3, 3), "encoder.in_conv.bias": (W,)}
    for i, r in enumerate(_block_resolutions(enc)):
        t.update(_bottleneck(f"encoder.enc_blocks.{i}", W, mid, W, r))
    dec_res = _block_resolutions(dec)
    for i, r in enumerate(dec_res):
        p = f"decoder.dec_blocks.{i}"
        t.update(_bottleneck(f"{p}.enc", 2 * W, mid, 2 * zdim, r))
        t.update(_bottleneck(f"{p}.prior", W, mid, 2 * zdim + W, r))
        t[f"{p}.z_proj.weight"] = (W, zdim, 1, 1)
        t[f"{p}.z_proj.bias"] = (W,)
        t.update(_bottleneck(f"{p}.resnet", W, mid, W, r))
    for j, r in enumerate(r for r in sorted(set(dec_res)) if r <= no_bias_above):
        t[f"decoder.bias_xs.{j}"] = (1, W, r, r)
    t["decoder.out_net.out_conv.weight"] = (10 * n_mix, W, 1, 1)
    t["decoder.out_net.out_conv.bias"] = (10 * n_mix,)
    t["decoder.gain"] = (1, W, 1, 1)
    t["decoder.bias"] = (1, W, 1, 1)
    return t


def _tiny_table() -> dict[str, tuple]:
    return expected_key_shapes(
        TINY["width"], TINY["zdim"], TINY["enc_blocks"], TINY["dec_blocks"], TINY["num_mixtures"]
    )


def test_full_size_model_matches_published_parameter_table():
    table = expected_key_shapes(512, 16, I64_ENC, I64_DEC, n_mix=10)
    with torch.device("meta"):
        model = VDVAE(VDVAEConfig.imagenet64())
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(table) - set(got)) == []
    assert sorted(set(got) - set(table)) == []
    assert {k: v for k, v in got.items() if table[k] != v} == {}
    # Spot values worked out by hand: last decoder block (res 64) and a 1x1-resolution encoder block.
    assert got["decoder.dec_blocks.74.prior.c4.weight"] == (544, 128, 1, 1)
    assert got["decoder.dec_blocks.74.enc.c1.weight"] == (128, 1024, 1, 1)
    assert got["encoder.enc_blocks.64.c2.weight"] == (128, 128, 1, 1)
    assert got["decoder.bias_xs.5"] == (1, 512, 64, 64)
    assert len([k for k in got if k.endswith("z_proj.weight")]) == 75  # 75 latent groups
    # README of openai/vdvae: "125M parameter model".
    n_params = sum(math.prod(s) for s in table.values())
    assert round(n_params / 1e6) == 125
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_top_31_groups_of_published_model_hold_91168_values():
    cfg = VDVAEConfig.imagenet64()
    shapes = cfg.group_shapes()
    assert len(shapes) == 75
    # methods.md 4.1: 2x(16*1*1) + 4x(16*4*4) + 8x(16*8*8) + 16x(16*16*16) + 1x(16*32*32)
    hand = 2 * 16 + 4 * 16 * 16 + 8 * 16 * 64 + 16 * 16 * 256 + 1 * 16 * 1024
    assert hand == 91_168
    assert sum(math.prod(s) for s in shapes[:31]) == hand
    assert [s[1] for s in shapes[:31]] == [1] * 2 + [4] * 4 + [8] * 8 + [16] * 16 + [32]
    assert cfg.target_groups == 31


# --------------------------------------------------------------------------- published-format file
def _random_checkpoint(path: Path, table: dict[str, tuple], seed: int = 0, prefix: str = "") -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {prefix + k: 0.05 * torch.randn(s, generator=g) for k, s in table.items()}
    torch.save(sd, path)  # the published files are a plain torch.save of the state dict
    return sd


def _stimuli(n: int = 5, size: int = 24, seed: int = 0) -> Stimuli:
    rng = np.random.default_rng(seed)
    return Stimuli(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def test_random_checkpoint_in_published_layout_loads_through_user_path(tmp_path):
    path = tmp_path / "tiny-model-ema.th"
    sd = _random_checkpoint(path, _tiny_table())
    space = VDVAESpace.from_config({"weights": str(path), "model": dict(TINY), "batch_size": 2, "progress": False})
    loaded = space.model.state_dict()
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        assert torch.equal(loaded[k], v), k
    # Top 3 groups of "1x1,4m1,4x1,...": 4*1*1 + 4*4*4 + 4*4*4
    assert space.targets["z"].shape == (4 + 64 + 64,)
    stim = _stimuli()
    Z = space.encode(stim)["z"]
    assert Z.shape == (5, 132) and Z.dtype == np.float32 and np.isfinite(Z).all()
    img = space.decode({"z": Z}, seed=1)
    assert img.shape == (5, 3, 16, 16) and img.dtype == np.float32
    assert img.min() >= 0 and img.max() <= 1


def test_ddp_prefixed_checkpoint_loads(tmp_path):
    path = tmp_path / "tiny-model.th"
    sd = _random_checkpoint(path, _tiny_table(), prefix="module.")
    model = load_vdvae(path, TINY)
    assert torch.equal(model.state_dict()["decoder.gain"], sd["module.decoder.gain"])


def test_checkpoint_of_other_architecture_is_rejected_naming_the_parameter(tmp_path):
    table = _tiny_table()
    table["decoder.gain"] = (1, 8, 1, 1)
    del table["decoder.bias"]
    path = tmp_path / "wrong.th"
    _random_checkpoint(path, table)
    with pytest.raises(DataFormatError, match=r"decoder\.gain.*\(1, 16, 1, 1\).*\(1, 8, 1, 1\)") as e:
        load_vdvae(path, TINY)
    assert "decoder.bias" in str(e.value) and "wrong.th" in str(e.value)


def test_pickled_object_file_is_refused(tmp_path):
    path = tmp_path / "evil.th"
    torch.save({"decoder.gain": torch.ones(1), "obj": Path("x")}, path)
    with pytest.raises(DataFormatError, match="evil.th"):
        load_vdvae(path, TINY)


def test_missing_weights_name_the_path_and_the_file_to_get(tmp_path):
    path = tmp_path / "nowhere" / IMAGENET64_FILE
    with pytest.raises(MissingWeightsError) as e:
        load_vdvae(path, "imagenet64")
    assert e.value.path == path
    assert str(path) in str(e.value) and IMAGENET64_FILE in str(e.value)
    with pytest.raises(MissingWeightsError, match=re.escape(str(path))):
        VDVAESpace.from_config({"weights": str(path), "model": "imagenet64"})


def test_safetensors_round_trip_with_config_beside_it(tmp_path):
    cfg = VDVAEConfig.from_dict(TINY)
    torch.manual_seed(0)
    model = VDVAE(cfg)
    save_vdvae(model, tmp_path / "m.safetensors")
    assert json.loads((tmp_path / "m.json").read_text())["dec_blocks"] == TINY["dec_blocks"]
    space = VDVAESpace.from_config({"weights": tmp_path / "m.safetensors", "progress": False})
    assert space.cfg == cfg
    ref = VDVAESpace(model.eval(), progress=False)
    stim = _stimuli(3)
    np.testing.assert_array_equal(space.encode(stim)["z"], ref.encode(stim)["z"])


# --------------------------------------------------------------------------- latent space contract
@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return VDVAE(VDVAEConfig.from_dict(TINY)).eval()


@pytest.mark.parametrize("posterior,output", [("mean", "mean"), ("sample", "sample")])
def test_check_latent_space_tiny(tiny_model, posterior, output):
    space = VDVAESpace(tiny_model, posterior=posterior, output=output, batch_size=3, progress=False)
    check_latent_space(space, _stimuli(4, size=20))


def test_check_latent_space_small_preset():
    torch.manual_seed(0)
    space = VDVAESpace(VDVAE(VDVAEConfig.small()).eval(), batch_size=4, progress=False)
    check_latent_space(space, _stimuli(3, size=64))


def test_decode_does_not_depend_on_batch_size_and_depends_on_seed(tiny_model):
    Z = VDVAESpace(tiny_model, progress=False).encode(_stimuli(5))["z"]
    kw = dict(output="sample", progress=False)
    a = VDVAESpace(tiny_model, batch_size=5, **kw).decode({"z": Z}, seed=7)
    b = VDVAESpace(tiny_model, batch_size=2, **kw).decode({"z": Z}, seed=7)
    c = VDVAESpace(tiny_model, batch_size=2, **kw).decode({"z": Z}, seed=8)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(a - c).max() > 0.1


def test_posterior_sampling_is_seeded_and_differs_from_mean(tiny_model):
    stim = _stimuli(4)
    m = VDVAESpace(tiny_model, progress=False).encode(stim)["z"]
    s0 = VDVAESpace(tiny_model, posterior="sample", encode_seed=0, progress=False).encode(stim)["z"]
    s0b = VDVAESpace(tiny_model, posterior="sample", encode_seed=0, batch_size=1, progress=False).encode(stim)["z"]
    s1 = VDVAESpace(tiny_model, posterior="sample", encode_seed=1, progress=False).encode(stim)["z"]
    np.testing.assert_allclose(s0, s0b, atol=1e-6)
    assert not np.allclose(s0, s1) and not np.allclose(s0, m)


def test_zero_temperature_mean_output_ignores_seed(tiny_model):
    Z = np.random.default_rng(0).normal(size=(3, 132)).astype(np.float32)
    space = VDVAESpace(tiny_model, temperature=0.0, output="mean", progress=False)
    np.testing.assert_array_equal(space.decode({"z": Z}, seed=0), space.decode({"z": Z}, seed=99))


def test_fixed_groups_are_used_by_the_decoder(tiny_model):
    """With all groups given, decoding is deterministic; changing one group changes the image."""
    space = VDVAESpace(tiny_model, n_groups=tiny_model.cfg.n_groups(), progress=False)
    Z = np.random.default_rng(1).normal(size=(2, space.targets["z"].size)).astype(np.float32)
    a = space.decode({"z": Z}, seed=0)
    np.testing.assert_array_equal(a, space.decode({"z": Z}, seed=5))
    Z2 = Z.copy()
    Z2[:, :4] += 3.0  # the top (1x1) group
    assert np.abs(space.decode({"z": Z2}, seed=0) - a).max() > 1e-3


def test_bad_options_raise(tiny_model):
    with pytest.raises(ConfigError, match="n_groups"):
        VDVAESpace(tiny_model, n_groups=99)
    with pytest.raises(ConfigError, match="posterior"):
        VDVAESpace(tiny_model, posterior="mode")
    space = VDVAESpace(tiny_model, progress=False)
    with pytest.raises(ConfigError, match="init"):
        space.decode({"z": np.zeros((1, 132), np.float32)}, init=np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="132"):
        space.decode({"z": np.zeros((1, 131), np.float32)})
    with pytest.raises(ConfigError, match="unknown"):
        VDVAESpace.from_config({"weights": "x.th", "model": TINY, "temprature": 1.0})


# --------------------------------------------------------------------------- config
def test_block_string_parsing_by_hand():
    b = parse_blocks("4x2,4d4,1", "enc")
    assert [(x.res, x.down) for x in b] == [(4, None), (4, None), (4, 4), (1, None)]
    d = parse_blocks("1x1,4m1,4x2", "dec")
    assert [(x.res, x.mixin) for x in d] == [(1, None), (4, 1), (4, None), (4, None)]
    with pytest.raises(ConfigError, match="enc_blocks"):
        parse_blocks("4m1", "enc")
    with pytest.raises(ConfigError, match="dec_blocks"):
        parse_blocks("4xa", "dec")


def test_config_validation_and_presets():
    assert VDVAEConfig.from_dict({"preset": "imagenet64"}) == VDVAEConfig.imagenet64()
    c = VDVAEConfig.from_dict({"preset": "small", "target_groups": 4})
    assert c.target_groups == 4 and c.width == VDVAEConfig.small().width
    with pytest.raises(ConfigError, match="mix"):
        VDVAEConfig.from_dict({**TINY, "dec_blocks": "1x1,8m4,16m8,16x1"})
    with pytest.raises(ConfigError, match="encoder has no activation"):
        VDVAEConfig.from_dict({**TINY, "dec_blocks": "1x1,2m1,16m2"})
    with pytest.raises(ConfigError, match="unknown"):
        VDVAEConfig.from_dict({**TINY, "widht": 3})
    p = VDVAEConfig.imagenet64()
    assert p.shift == pytest.approx(-115.92961967) and p.scale == pytest.approx(1 / 69.37404)


# --------------------------------------------------------------------------- mixture of logistics
def _random_out(n_mix, h=1, w=1, seed=0, scale_shift=-3.0):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(1, 10 * n_mix, h, w, generator=g, dtype=torch.float64)
    out[:, n_mix:] *= 0.4
    rest = out[:, n_mix:].view(1, 3, 3, n_mix, h, w)
    rest[:, :, 1] += scale_shift  # log-scales around e^-3: peaked but several bins wide
    return out


def test_mixture_probabilities_sum_to_one_over_all_colours():
    """Two sharp, coupled components; one at the R=0 edge, one at the B=255 edge.

    Each component's mass lies within a box of 8-bit values around its (coupled) mean, worked
    out here by hand; the boxes are disjoint, so summing the mixture over both gives ~1.
    """
    n_mix, log_s = 2, -5.0  # scale e^-5 ~ 0.86 bins: mass beyond 12 bins ~ e^-14
    logits = [0.3, -0.4]
    mu = [[-1.02, 0.9], [0.1, -0.3], [0.2, 0.995]]  # [colour][component]
    raw = [[0.5, -0.6], [-0.3, 0.2], [0.4, 0.7]]  # G|R in the R run, B|R in the G run, B|G in the B run
    out = torch.zeros(1, 10 * n_mix, 1, 1, dtype=torch.float64)
    for m in range(n_mix):
        out[0, m] = logits[m]
        for c in range(3):
            base = n_mix + c * 3 * n_mix
            out[0, base + m], out[0, base + n_mix + m], out[0, base + 2 * n_mix + m] = mu[c][m], log_s, raw[c][m]
    total = 0.0
    for m in range(n_mix):
        a, b, c = (math.tanh(raw[k][m]) for k in range(3))
        r = min(max(mu[0][m], -1), 1)
        g = mu[1][m] + a * r
        bl = mu[2][m] + b * r + c * g

        def window(v, half):
            centre = int(round((min(max(v, -1), 1) + 1) * 127.5))
            return torch.arange(max(0, centre - half), min(255, centre + half) + 1, dtype=torch.float64)

        R, G, B = window(r, 12), window(g, 24), window(bl, 36)
        grid = torch.stack(torch.meshgrid(R, G, B, indexing="ij")).reshape(3, -1) / 127.5 - 1.0
        x = grid.view(1, 3, 1, -1)
        total += float(dmol.log_prob(out.expand(1, -1, 1, x.shape[-1]), x, n_mix).exp().sum())
    assert total == pytest.approx(1.0, abs=1e-4)


def test_single_logistic_bin_probability_by_hand():
    out = torch.zeros(1, 10, 1, 1, dtype=torch.float64)
    mu, log_s = [0.1, -0.2, 0.3], [-2.0, -2.5, -3.0]
    for c in range(3):
        out[0, 1 + 3 * c, 0, 0] = mu[c]  # means, then log-scales, then coeffs (zero: no coupling)
        out[0, 1 + 3 * c + 1, 0, 0] = log_s[c]
    vals = [140, 90, 170]
    x = torch.tensor([(v / 127.5 - 1.0) for v in vals], dtype=torch.float64).view(1, 3, 1, 1)

    def sig(t):
        return 1 / (1 + math.exp(-t))

    want = 0.0
    for c in range(3):
        xc, s = vals[c] / 127.5 - 1.0, math.exp(log_s[c])
        want += math.log(sig((xc + 1 / 255 - mu[c]) / s) - sig((xc - 1 / 255 - mu[c]) / s))
    assert float(dmol.log_prob(out, x, 1)) == pytest.approx(want, rel=1e-9)
    assert float(dmol.nll(out, x, 1)) == pytest.approx(-want / 3, rel=1e-9)


def test_mixture_mean_matches_average_of_samples():
    n_mix = 3
    out = _random_out(n_mix, h=2, w=2, seed=3, scale_shift=-4.0)
    out[:, n_mix:].view(1, 3, 3, n_mix, 2, 2)[:, :, 0] *= 0.5  # means well inside [-1, 1]: clipping negligible
    g = torch.Generator().manual_seed(0)
    k = 200_000
    u = torch.rand(k, n_mix + 3, 2, 2, generator=g, dtype=torch.float64)
    draws = dmol.sample(out.expand(k, -1, -1, -1), n_mix, u)
    np.testing.assert_allclose(draws.mean(0).numpy(), dmol.mean(out, n_mix)[0].numpy(), atol=4e-3)


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    qm, pm, qs, ps = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(4))
    want = torch.distributions.kl_divergence(
        torch.distributions.Normal(qm, qs.exp()), torch.distributions.Normal(pm, ps.exp())
    )
    torch.testing.assert_close(gaussian_kl(qm, pm, qs, ps), want)


# --------------------------------------------------------------------------- training script
def test_training_script_runs_and_writes_loadable_weights(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (10, 64, 64, 3), dtype=np.uint8)
    np.save(tmp_path / "stim.npy", imgs)
    out = tmp_path / "w" / "vdvae_small.safetensors"
    cmd = [sys.executable, str(REPO / "scripts" / "train_vdvae_small.py"), "--images", str(tmp_path / "stim.npy"),
           "--out", str(out), "--iters", "2", "--batch-size", "2", "--log-every", "1", "--threads", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(out.with_suffix(".training.json").read_text())
    assert report["iters"] == 2 and len(report["trace"]) == 2
    assert all(np.isfinite(r["elbo"]) for r in report["trace"])
    cfg = json.loads(out.with_suffix(".json").read_text())
    # encoder normalisation from the training images only (the held-out one excluded)
    train = np.delete(imgs, report["data"]["val_index"], axis=0).astype(np.float64)
    assert len(train) == 9
    assert cfg["shift"] == pytest.approx(-train.mean(), rel=1e-5)
    assert cfg["scale"] == pytest.approx(1 / train.std(), rel=1e-3)
    space = VDVAESpace.from_config({"weights": str(out), "progress": False})
    check_latent_space(space, _stimuli(2, size=64))


# --------------------------------------------------------------------------- full size (opt-in)
@pytest.mark.slow
def test_check_latent_space_full_size_random_model():
    """The published architecture, randomly initialised, honours the contract (about a minute on CPU)."""
    torch.manual_seed(0)
    space = VDVAESpace(VDVAE(VDVAEConfig.imagenet64()).eval(), batch_size=2, progress=False)
    assert space.targets["z"].size == 91_168
    check_latent_space(space, _stimuli(2, size=80))


@pytest.mark.weights
def test_published_checkpoint_if_present():
    from brainrecon.latents.vdvae import default_imagenet64_path

    path = default_imagenet64_path()
    if not path.is_file():
        pytest.skip(f"published VDVAE checkpoint not found at {path}")
    space = VDVAESpace.from_config({"weights": str(path), "model": "imagenet64", "batch_size": 2, "progress": False})
    check_latent_space(space, _stimuli(2, size=64))
