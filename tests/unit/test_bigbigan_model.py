"""Tests of BigBiGAN's networks and checkpoint loading (issue 8).

The expected parameter table of the converted generator is derived here, independently of the
model code, from the public facts (docs/bigbigan.md):

* BigGAN-PyTorch's ``Generator`` naming, as in the public conversion ``BigBiGAN_x1.pth``:
  ``shared`` (embedding, n_classes x shared_dim), ``linear`` (SN linear z_chunk -> 16ch*4*4),
  ``blocks.<i>.0`` (GBlock: ``conv1``/``conv2`` 3x3, ``conv_sc`` 1x1, ``bn1``/``bn2`` with SN linear
  ``gain``/``bias`` without bias from shared_dim + z_chunk and ``stored_mean``/``stored_var``),
  ``blocks.<i>.1`` (attention: ``theta``/``phi`` ch->ch/8, ``g`` ch->ch/2, ``o`` ch/2->ch, all 1x1 without
  bias, scalar ``gamma``), ``output_layer.0`` (BN ``gain``/``bias``/stats) and ``output_layer.2`` (3x3 -> RGB);
  every SN layer has a ``u0`` buffer of shape (1, out);
* the 128-px configuration: ch 96, channel multipliers 16,16,8,4,2 -> 16,8,4,2,1, attention at 64 px,
  dim_z 120 in 6 chunks of 20, shared_dim 128, 1000 rows;
* compare_gan's test of the same BigGAN-128 generator asserts 70,433,988 trainable weights
  (google/compare_gan, compare_gan/architectures/resnet_biggan_test.py).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from brainrecon.errors import ConfigError, DataFormatError, MissingWeightsError, ShapeMismatchError  # noqa: E402
from brainrecon.latents.bigbigan import (  # noqa: E402
    ENCODER_FILE,
    GENERATOR_FILE,
    BigBiGANEncoder,
    BigBiGANGenerator,
    EncoderConfig,
    GeneratorConfig,
    load_encoder,
    load_generator,
    save_encoder,
    save_generator,
)
from brainrecon.latents.bigbigan.layers import ConditionalBatchNorm, SNLinear  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

TINY_G = {"ch": 4, "in_mult": [4, 4, 2], "out_mult": [4, 2, 1], "attention": [16], "dim_z": 8,
          "shared_dim": 6, "n_classes": 3}
TINY_E = {"image_size": 32, "stem_width": 4, "widths": [2, 4], "blocks": [1, 2], "expansion": 2,
          "mlp": [16], "dim_z": 8}


# --------------------------------------------------------------------------- expected tables
def _sn(prefix: str, shape: tuple, out: int, bias: bool = True) -> dict[str, tuple]:
    t = {f"{prefix}.weight": shape, f"{prefix}.u0": (1, out)}
    if bias:
        t[f"{prefix}.bias"] = (out,)
    return t


def expected_generator_table(ch, in_mult, out_mult, attention, dim_z, shared_dim, n_classes, bw=4) -> dict:
    """Parameter table of BigGAN-PyTorch's generator (module docstring), by hand."""
    chunk = dim_z // (len(in_mult) + 1)
    cond = shared_dim + chunk
    t: dict[str, tuple] = {"shared.weight": (n_classes, shared_dim)}
    t.update(_sn("linear", (in_mult[0] * ch * bw * bw, chunk), in_mult[0] * ch * bw * bw))
    res = bw
    for i, (a, b) in enumerate(zip(in_mult, out_mult)):
        c_in, c_out = a * ch, b * ch
        res *= 2
        p = f"blocks.{i}.0"
        t.update(_sn(f"{p}.conv1", (c_out, c_in, 3, 3), c_out))
        t.update(_sn(f"{p}.conv2", (c_out, c_out, 3, 3), c_out))
        t.update(_sn(f"{p}.conv_sc", (c_out, c_in, 1, 1), c_out))
        for bn, c in (("bn1", c_in), ("bn2", c_out)):
            t.update(_sn(f"{p}.{bn}.gain", (c, cond), c, bias=False))
            t.update(_sn(f"{p}.{bn}.bias", (c, cond), c, bias=False))
            t[f"{p}.{bn}.stored_mean"] = (c,)
            t[f"{p}.{bn}.stored_var"] = (c,)
        if res in attention:
            q = f"blocks.{i}.1"
            t.update(_sn(f"{q}.theta", (c_out // 8, c_out, 1, 1), c_out // 8, bias=False))
            t.update(_sn(f"{q}.phi", (c_out // 8, c_out, 1, 1), c_out // 8, bias=False))
            t.update(_sn(f"{q}.g", (c_out // 2, c_out, 1, 1), c_out // 2, bias=False))
            t.update(_sn(f"{q}.o", (c_out, c_out // 2, 1, 1), c_out, bias=False))
            t[f"{q}.gamma"] = ()
    c = out_mult[-1] * ch
    t.update({f"output_layer.0.{k}": (c,) for k in ("gain", "bias", "stored_mean", "stored_var")})
    t.update(_sn("output_layer.2", (3, c, 3, 3), 3))
    return t


def expected_encoder_table(stem, widths, blocks, expansion, mlp, dim_z) -> dict:
    """brainrecon's converted encoder layout (docs/bigbigan.md), by hand."""
    bn = ("weight", "bias", "running_mean", "running_var")
    t: dict[str, tuple] = {"stem.weight": (stem, 3, 7, 7)}
    c_in = stem
    for s, (w, n) in enumerate(zip(widths, blocks)):
        for u in range(n):
            p = f"stages.{s}.{u}"
            t.update({f"{p}.preact.{k}": (c_in,) for k in bn})
            t[f"{p}.conv1.weight"] = (w, c_in, 1, 1)
            t.update({f"{p}.bn1.{k}": (w,) for k in bn})
            t[f"{p}.conv2.weight"] = (w, w, 3, 3)
            t.update({f"{p}.bn2.{k}": (w,) for k in bn})
            t[f"{p}.conv3.weight"] = (w * expansion, w, 1, 1)
            if u == 0:
                t[f"{p}.shortcut.weight"] = (w * expansion, c_in, 1, 1)
            c_in = w * expansion
    t.update({f"post_norm.{k}": (c_in,) for k in bn})
    sizes = [c_in, *mlp, 2 * dim_z]
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        t[f"head.{k}.weight"] = (b, a)
        t[f"head.{k}.bias"] = (b,)
    return t


def _shapes(model) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_published_generator_matches_the_converted_checkpoint_table():
    table = expected_generator_table(96, [16, 16, 8, 4, 2], [16, 8, 4, 2, 1], [64], 120, 128, 1000)
    with torch.device("meta"):
        model = BigBiGANGenerator(GeneratorConfig.published())
    got = _shapes(model)
    assert sorted(set(table) - set(got)) == [] and sorted(set(got) - set(table)) == []
    assert {k: v for k, v in got.items() if table[k] != v} == {}
    assert len(got) == 125  # 1 + 3 + 5 blocks x 22 + attention 9 + output 7
    # Spot values worked out by hand.
    assert got["linear.weight"] == (16 * 96 * 16, 20)  # 24,576 x 20
    assert got["blocks.0.0.bn1.gain.weight"] == (1536, 148)  # 128-d embedding + 20-d chunk
    assert got["blocks.3.1.theta.weight"] == (24, 192, 1, 1)  # attention after the 64-px block (2 x 96 ch)
    assert got["blocks.4.0.conv_sc.weight"] == (96, 192, 1, 1)
    assert got["output_layer.2.u0"] == (1, 3)
    # compare_gan asserts 70,433,988 trainable weights for this BigGAN-128 generator; u0 and the
    # batch-norm statistics are buffers (not trainable) there too.
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 70_433_988
    buffers = sum(math.prod(s) for k, s in table.items() if k.endswith(("u0", "stored_mean", "stored_var")))
    assert sum(math.prod(s) for s in table.values()) == n_params + buffers


def test_published_encoder_is_a_resnet50_with_a_4096_mlp():
    table = expected_encoder_table(64, [64, 128, 256, 512], [3, 4, 6, 3], 4, [4096] * 3, 120)
    with torch.device("meta"):
        model = BigBiGANEncoder(EncoderConfig.published())
    got = _shapes(model)
    assert got == table
    assert model.cfg.feature_dim == 2048  # avepool_feat of the ResNet-50 release
    assert got["stages.3.0.shortcut.weight"] == (2048, 1024, 1, 1)
    assert got["head.3.weight"] == (240, 4096)  # mean and scale of the 120-d z
    assert len([k for k in got if k.endswith("conv2.weight")]) == 16  # 3 + 4 + 6 + 3 units


def test_tiny_configs_match_their_tables():
    g = BigBiGANGenerator(GeneratorConfig.from_dict(TINY_G))
    e = BigBiGANEncoder(EncoderConfig.from_dict(TINY_E))
    assert _shapes(g) == expected_generator_table(**TINY_G)
    assert _shapes(e) == expected_encoder_table(4, [2, 4], [1, 2], 2, [16], 8)


# --------------------------------------------------------------------------- forward passes
@pytest.fixture
def tiny_gen(tiny_torch_cpu):
    torch.manual_seed(0)
    return BigBiGANGenerator(GeneratorConfig.from_dict(TINY_G)).eval()


def test_tiny_generator_runs_and_every_latent_chunk_matters(tiny_gen):
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = tiny_gen(z)
        assert x.shape == (3, 3, 32, 32) and x.abs().max() <= 1
        for chunk in range(4):  # 8 = 4 chunks of 2: the linear layer and three blocks
            z2 = z.clone()
            z2[:, 2 * chunk : 2 * chunk + 2] += 2.0
            assert (tiny_gen(z2) - x).abs().max() > 1e-4, chunk
        # Unconditional: row 0 of the embedding table is the one used.
        tiny_gen.shared.weight[1:].normal_()
        assert torch.equal(tiny_gen(z), x)
    with pytest.raises(ShapeMismatchError, match=r"\(n, 8\)"):
        tiny_gen(torch.zeros(2, 7))


def test_spectral_normalisation_by_hand():
    """Started at the true top singular vector, the power iteration gives exactly sigma_max."""
    layer = SNLinear(5, 4, bias=False, eps=1e-12)
    torch.manual_seed(3)
    w = torch.randn(4, 5, dtype=torch.float64)
    layer.weight.data = w.float()
    u, s, _ = torch.linalg.svd(w)
    layer.u0.copy_(u[:, 0].float()[None])
    x = torch.randn(2, 5)
    np.testing.assert_allclose(layer(x).detach().numpy(), (x @ (w / s[0]).T.float()).numpy(), rtol=1e-5, atol=1e-6)


def test_conditional_batch_norm_by_hand():
    bn = ConditionalBatchNorm(2, 3, eps=1e-4, sn_eps=1e-4).eval()
    with torch.no_grad():
        bn.gain.weight.zero_()
        bn.bias.weight.zero_()
        bn.gain.weight[0, 0] = 1.0  # sigma of a one-entry matrix is its value: normalised gain weight = 1
        bn.bias.weight[1, 2] = 0.5  # normalised to 1 as well
        bn.stored_mean.copy_(torch.tensor([1.0, -1.0]))
        bn.stored_var.copy_(torch.tensor([4.0, 0.25]))
    x = torch.tensor([3.0, 0.0]).view(1, 2, 1, 1)
    y = torch.tensor([[0.5, 0.0, 2.0]])
    out = bn(x, y).detach().flatten()
    want0 = (3.0 - 1.0) / math.sqrt(4.0 + 1e-4) * (1 + 0.5)
    want1 = (0.0 + 1.0) / math.sqrt(0.25 + 1e-4) * 1.0 + 2.0
    np.testing.assert_allclose(out.numpy(), [want0, want1], rtol=1e-5)


def test_tiny_encoder_outputs_mean_and_positive_scale(tiny_torch_cpu):
    torch.manual_seed(0)
    e = BigBiGANEncoder(EncoderConfig.from_dict(TINY_E)).eval()
    with torch.no_grad():
        mean, scale = e(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert mean.shape == (2, 8) and scale.shape == (2, 8) and (scale > 0).all()
    with pytest.raises(ShapeMismatchError, match=r"\(n, 3, 32, 32\)"):
        e(torch.zeros(1, 3, 16, 16))


# --------------------------------------------------------------------------- checkpoint files
def _random_state(table: dict[str, tuple], seed: int = 0) -> dict[str, "torch.Tensor"]:
    g = torch.Generator().manual_seed(seed)
    sd = {k: 0.05 * torch.randn(s, generator=g) for k, s in table.items()}
    for k in sd:
        if k.endswith(("stored_var", "running_var")):
            sd[k] = sd[k].abs() + 0.5
    return sd


def test_random_checkpoint_in_converted_layout_loads_exactly(tmp_path, tiny_torch_cpu):
    table = expected_generator_table(**TINY_G)
    sd = _random_state(table)
    # BigGAN-PyTorch's logging buffers may be in the file (saved from a model) or not (converter output).
    with_sv = {**sd, **{k[:-3] + ".sv0": torch.ones(1) for k in table if k.endswith(".u0")}}
    for name, content in (("BigBiGAN_tiny.pth", sd), ("with_sv0.pth", with_sv)):
        torch.save(content, tmp_path / name)  # the public file is a plain torch.save of the state dict
        model = load_generator(tmp_path / name, TINY_G)
        loaded = model.state_dict()
        assert set(loaded) == set(sd)
        assert all(torch.equal(loaded[k], v) for k, v in sd.items())
        assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_checkpoint_of_another_architecture_is_rejected_naming_keys(tmp_path):
    table = expected_generator_table(**TINY_G)
    sd = _random_state(table)
    sd["blocks.1.0.conv1.weight"] = torch.zeros(8, 12, 3, 3)
    del sd["output_layer.0.gain"]
    sd["blocks.9.0.conv1.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "wrong.pth")
    with pytest.raises(DataFormatError) as e:
        load_generator(tmp_path / "wrong.pth", TINY_G)
    msg = str(e.value)
    assert "wrong.pth" in msg
    assert "blocks.1.0.conv1.weight: expected (8, 16, 3, 3), got (8, 12, 3, 3)" in msg
    assert "1 missing (e.g. output_layer.0.gain (4,))" in msg
    assert "1 unexpected (e.g. blocks.9.0.conv1.weight (1,))" in msg
    # A shape mismatch names both shapes.
    sd = _random_state(table)
    sd["linear.weight"] = torch.zeros(256, 3)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(DataFormatError, match=r"linear\.weight: expected \(256, 2\), got \(256, 3\)"):
        load_generator(tmp_path / "shape.pth", TINY_G)
    # sv0 is tolerated only beside an SN layer's u0.
    sd = _random_state(table)
    sd["output_layer.0.sv0"] = torch.ones(1)
    torch.save(sd, tmp_path / "sv.pth")
    with pytest.raises(DataFormatError, match=r"unexpected.*output_layer\.0\.sv0"):
        load_generator(tmp_path / "sv.pth", TINY_G)


def test_pickled_objects_and_missing_files(tmp_path):
    torch.save({"shared.weight": torch.ones(1), "obj": Path("x")}, tmp_path / "evil.pth")
    with pytest.raises(DataFormatError, match="evil.pth"):
        load_generator(tmp_path / "evil.pth", TINY_G)
    (tmp_path / "broken.safetensors").write_bytes(b"not a file")
    with pytest.raises(DataFormatError, match="broken.safetensors"):
        load_encoder(tmp_path / "broken.safetensors", TINY_E)
    path = tmp_path / "nowhere" / GENERATOR_FILE
    with pytest.raises(MissingWeightsError) as e:
        load_generator(path)
    assert e.value.path == path and GENERATOR_FILE in str(e.value) and "dropbox" in str(e.value)
    with pytest.raises(MissingWeightsError, match=re.escape(ENCODER_FILE)):
        load_encoder(tmp_path / ENCODER_FILE)


def test_safetensors_round_trip_with_config_beside_it(tmp_path, tiny_torch_cpu):
    torch.manual_seed(0)
    g = BigBiGANGenerator(GeneratorConfig.from_dict(TINY_G)).eval()
    e = BigBiGANEncoder(EncoderConfig.from_dict(TINY_E)).eval()
    save_generator(g, tmp_path / "g.safetensors")
    save_encoder(e, tmp_path / "e.safetensors")
    g2 = load_generator(tmp_path / "g.safetensors", str(tmp_path / "g.json"))
    e2 = load_encoder(tmp_path / "e.safetensors", str(tmp_path / "e.json"))
    assert g2.cfg == g.cfg and e2.cfg == e.cfg
    z = torch.randn(2, 8)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        # Same values; not asserted bit for bit, as kernels may take other paths for other buffers.
        torch.testing.assert_close(g2(z), g(z), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(e2(x)[0], e(x)[0], rtol=1e-6, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(g2.state_dict().values(), g.state_dict().values()))


def test_config_validation():
    assert GeneratorConfig.from_dict({"preset": "published"}) == GeneratorConfig.published()
    assert GeneratorConfig.published().resolution == 128 and GeneratorConfig.published().z_chunk == 20
    with pytest.raises(ConfigError, match="equal chunks"):
        GeneratorConfig.from_dict({**TINY_G, "dim_z": 9})
    with pytest.raises(ConfigError, match="block 1"):
        GeneratorConfig.from_dict({**TINY_G, "in_mult": [4, 3, 2]})
    with pytest.raises(ConfigError, match="attention"):
        GeneratorConfig.from_dict({**TINY_G, "attention": [12]})
    with pytest.raises(ConfigError, match="unknown"):
        EncoderConfig.from_dict({**TINY_E, "widht": 3})


# --------------------------------------------------------------------------- converter script
def _converter():
    spec = importlib.util.spec_from_file_location("convert_bigbigan_tfhub", REPO / "scripts" / "convert_bigbigan_tfhub.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _as_tf_variables(sd: dict, cfg: GeneratorConfig) -> dict[str, np.ndarray]:
    """The TF-Hub module's generator variables, built by hand from the mapping table of docs/bigbigan.md.

    TF layouts: conv kernels HWIO, dense kernels (in, out), hyper-BN input order [z chunk, embedding],
    first linear layer's outputs in (h, w, c) order, BigBiGAN's single embedding row, u0 flat.
    """
    a = {k: v.numpy() for k, v in sd.items()}
    root, bw, k = "GenEncWrapper/Generator/", cfg.bottom_width, cfg.z_chunk
    tf: dict[str, np.ndarray] = {root + "linear/w": a["shared.weight"][:1]}
    w = a["linear.weight"].reshape(-1, bw, bw, k).transpose(1, 2, 0, 3).reshape(-1, k)
    tf[root + "GenZ/G_linear/w"] = w.T
    tf[root + "GenZ/G_linear/b"] = a["linear.bias"].reshape(-1, bw, bw).transpose(1, 2, 0).reshape(-1)
    tf[root + "GenZ/G_linear/u0"] = a["linear.u0"].reshape(-1, bw, bw).transpose(1, 2, 0).reshape(1, -1)
    for i in range(len(cfg.in_mult)):
        blk = root + ("GBlock" if i == 0 else f"GBlock_{i}")
        for t, o in (("conv0", "conv1"), ("conv1", "conv2"), ("conv_sc", "conv_sc")):
            tf[f"{blk}/{t}/w"] = a[f"blocks.{i}.0.{o}.weight"].transpose(2, 3, 1, 0)
            tf[f"{blk}/{t}/b"] = a[f"blocks.{i}.0.{o}.bias"]
            tf[f"{blk}/{t}/u0"] = a[f"blocks.{i}.0.{o}.u0"]
        for t, o in (("BatchNorm", "bn1"), ("BatchNorm_1", "bn2")):
            for tf_lin, lin in (("scale", "gain"), ("offset", "bias")):
                m = a[f"blocks.{i}.0.{o}.{lin}.weight"]  # (C, [embedding, z])
                tf[f"{blk}/{t}/{tf_lin}/w"] = np.concatenate([m[:, -k:], m[:, :-k]], axis=1).T
                tf[f"{blk}/{t}/{tf_lin}/u0"] = a[f"blocks.{i}.0.{o}.{lin}.u0"]
            tf[f"{blk}/{t}/accumulated_mean"] = a[f"blocks.{i}.0.{o}.stored_mean"]
            tf[f"{blk}/{t}/accumulated_var"] = a[f"blocks.{i}.0.{o}.stored_var"]
            tf[f"{blk}/{t}/accumulation_counter"] = np.float32(1.0)
    j = cfg.block_resolutions.index(cfg.attention[0])
    for t, o in (("theta", "theta"), ("phi", "phi"), ("g", "g"), ("o_conv", "o")):
        tf[f"{root}attention/{t}/w"] = a[f"blocks.{j}.1.{o}.weight"].transpose(2, 3, 1, 0)
        tf[f"{root}attention/{t}/u0"] = a[f"blocks.{j}.1.{o}.u0"]
    tf[root + "attention/gamma"] = a[f"blocks.{j}.1.gamma"]
    tf[root + "BatchNorm/scale"] = a["output_layer.0.gain"]
    tf[root + "BatchNorm/offset"] = a["output_layer.0.bias"]
    tf[root + "BatchNorm/accumulated_mean"] = a["output_layer.0.stored_mean"]
    tf[root + "BatchNorm/accumulated_var"] = a["output_layer.0.stored_var"]
    tf[root + "conv_2d/w"] = a["output_layer.2.weight"].transpose(2, 3, 1, 0)
    tf[root + "conv_2d/b"] = a["output_layer.2.bias"]
    tf[root + "conv_2d/u0"] = a["output_layer.2.u0"]
    return tf


def test_converter_maps_tf_variables_to_the_converted_layout(tmp_path, tiny_torch_cpu):
    conv = _converter()
    cfg = GeneratorConfig.from_dict(TINY_G)
    sd = _random_state(expected_generator_table(**TINY_G), seed=5)
    sd["shared.weight"] = sd["shared.weight"][:1].repeat(3, 1)  # BigBiGAN: one embedding, repeated
    tf = _as_tf_variables(sd, cfg)
    # EMA copies win over the raw weights; the raw copies are consumed, not reported as unused.
    ema = {f"{k}/ema_0.9999": v for k, v in tf.items() if k.endswith(("/w", "/b", "scale", "offset", "gamma"))}
    raw = {k: np.zeros_like(v) for k, v in tf.items() if f"{k}/ema_0.9999" in ema}
    # The power iteration's v vectors (u1) exist in TF and are not needed.
    v1 = {k[:-2] + "u1": np.ones(3, np.float32) for k in tf if k.endswith("/u0")}
    variables = conv.strip_module_prefix({**{f"module/{k}": v for k, v in tf.items()}, **raw, **ema, **v1})
    out, report = conv.convert_generator(variables, cfg)
    assert report["from_ema"] == len(ema) and report["ignored"] == len(v1)
    assert set(out) == set(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(out[k], v.numpy(), err_msg=k)
    # The converted tensors load strictly and reproduce the original model's images.
    np.savez(tmp_path / "vars.npz", **tf)
    out2, _ = conv.convert_generator(conv.read_variables(tmp_path / "vars.npz"), cfg)
    ref = BigBiGANGenerator(cfg).eval()
    ref.load_state_dict(sd)
    got = BigBiGANGenerator(cfg).eval()
    got.load_state_dict({k: torch.from_numpy(v) for k, v in out2.items()})
    z = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(got(z), ref(z))
    # The command line writes a file that the library loads strictly.
    (tmp_path / "tiny.json").write_text(json.dumps(TINY_G))
    assert conv.main([str(tmp_path / "vars.npz"), "--config", str(tmp_path / "tiny.json"), "--out-dir", str(tmp_path)]) == 0
    written = load_generator(tmp_path / "bigbigan-generator.safetensors", str(tmp_path / "bigbigan-generator.json"))
    assert all(torch.equal(written.state_dict()[k], v) for k, v in sd.items())
    # A missing or an unexpected variable stops the conversion, naming it.
    bad = dict(tf)
    del bad["GenEncWrapper/Generator/GBlock_1/conv0/u0"]
    bad["GenEncWrapper/Generator/extra/w"] = np.zeros(1)
    with pytest.raises(conv.ConversionError, match=r"GBlock_1/conv0/u0.*extra/w"):
        conv.convert_generator(bad, cfg)
    del bad["GenEncWrapper/Generator/extra/w"]
    bad["GenEncWrapper/Generator/GBlock_1/conv0/u0"] = tf["GenEncWrapper/Generator/GBlock_1/conv0/u0"]
    bad["GenEncWrapper/Generator/step"] = np.zeros(())
    with pytest.raises(conv.ConversionError, match=r"unused \['GenEncWrapper/Generator/step'\]"):
        conv.convert_generator(bad, cfg)
    assert set(conv.convert_generator(bad, cfg, ignore=(r"/step$",))[0]) == set(sd)


def test_converter_encoder_mapping_is_checked(tiny_torch_cpu):
    conv = _converter()
    e = BigBiGANEncoder(EncoderConfig.from_dict(TINY_E))
    want = {k: tuple(v.shape) for k, v in e.state_dict().items()}
    variables = {f"enc/{k}": (v.numpy().transpose(2, 3, 1, 0) if v.ndim == 4 else v.numpy().T if v.ndim == 2 else v.numpy())
                 for k, v in e.state_dict().items()}
    mapping = {f"enc/{k}": k for k in want}
    out = conv.convert_encoder(variables, mapping, want)
    assert all(np.array_equal(out[k], v.numpy()) for k, v in e.state_dict().items())
    del mapping["enc/stem.weight"]
    mapping["enc/head.0.bias"] = "head.0.weight"
    with pytest.raises(conv.ConversionError, match=r"head\.0\.weight: mapped twice.*stem\.weight"):
        conv.convert_encoder(variables, mapping, want)
