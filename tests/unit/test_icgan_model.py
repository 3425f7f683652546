"""Tests of our IC-GAN generator and SwAV encoder (issue 8): architecture, key layout, strict loading.

The expected parameter table of the published generator (``icgan_biggan_imagenet_res256``,
``G_ema_best0.pth``) is derived here, independently of the package's code, from the facts of
facebookresearch/ic_gan:

* ``config_files/ImageNet/IC-GAN/icgan_res256.json``: resolution 256, ``G_ch`` 96, hierarchical
  noise, attention at 64, ``shared_dim`` 128, ``shared_dim_feat`` 512, instance- not class-conditioned;
  defaults of ``BigGAN_PyTorch/utils.py``: ``dim_z`` 120, shared class embedding on, one singular
  vector per spectral norm; ``trainer.py``: 1000 classes;
* ``BigGAN_PyTorch/BigGAN.py``: channel plan at 256 px ``96 * (16,16,8,8,4,2) -> 96 * (16,8,8,4,2,1)``;
  ``num_slots = 6 + 1``, chunk ``120 // 7 = 17`` (noise 119); ``linear``: 17 -> 1536 * 4 * 4;
  ``shared`` embedding (1000, 128); ``shared_feat``: SN linear 2048 -> 512; conditional BN input
  ``17 + 512 = 529``; ``output_layer`` = (BN, ReLU, SN conv 96 -> 3);
* ``BigGAN_PyTorch/layers.py``: SN layers hold ``u0`` (1, out) and ``sv0`` (1,) buffers; ``ccbn`` holds
  ``gain``/``bias`` SN linears without bias and ``stored_mean``/``stored_var``; ``bn`` holds
  ``gain``/``bias`` parameters and the two stored statistics; ``GBlock`` = conv1, conv2 (3x3),
  conv_sc (1x1, always: every block upsamples), bn1 (in), bn2 (out); ``Attention`` = theta, phi
  (C/8), g (C/2), o (C/2 -> C), 1x1 without bias, and a scalar ``gamma``.
"""

from __future__ import annotations

import math
import pickle

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from brainrecon.errors import DataFormatError, MissingWeightsError  # noqa: E402
from brainrecon.latents.icgan import (  # noqa: E402
    IMAGENET256_FILE,
    SWAV_FILE,
    ICGANConfig,
    ICGANGenerator,
    SwAVConfig,
    SwAVEncoder,
    load_encoder,
    load_generator,
)

pytestmark = pytest.mark.usefixtures("tiny_torch_cpu")

# Tiny architectures with the published naming scheme (32-px channel plan, attention at 16 px).
TINY_G = {
    "resolution": 32, "ch": 8, "dim_z": 20, "attention": "16", "shared_dim": 8, "n_classes": 10, "shared_dim_feat": 8,
}
TINY_E = {"layers": [1, 1, 1, 1], "width_per_group": 4, "input_size": 32}


# --------------------------------------------------------------------------- key tables
def _sn(prefix: str, weight: tuple, bias: bool = True) -> dict[str, tuple]:
    t = {f"{prefix}.weight": weight, f"{prefix}.u0": (1, weight[0]), f"{prefix}.sv0": (1,)}
    if bias:
        t[f"{prefix}.bias"] = (weight[0],)
    return t


def _ccbn(prefix: str, channels: int, cond: int) -> dict[str, tuple]:
    t = {f"{prefix}.stored_mean": (channels,), f"{prefix}.stored_var": (channels,)}
    t.update(_sn(f"{prefix}.gain", (channels, cond), bias=False))
    t.update(_sn(f"{prefix}.bias", (channels, cond), bias=False))
    return t


def generator_table(ch, ins, outs, attn_blocks, chunk, n_classes, shared_dim, shared_feat, feat=2048, bottom=4):
    """Parameter table of a reference IC-GAN generator (see module docstring)."""
    cond = chunk + shared_feat
    t: dict[str, tuple] = {"shared.weight": (n_classes, shared_dim)}
    t.update(_sn("shared_feat", (shared_feat, feat)))
    t.update(_sn("linear", (ch * ins[0] * bottom * bottom, chunk)))
    for i, (a, b) in enumerate(zip(ins, outs)):
        cin, cout, p = ch * a, ch * b, f"blocks.{i}.0"
        t.update(_sn(f"{p}.conv1", (cout, cin, 3, 3)))
        t.update(_sn(f"{p}.conv2", (cout, cout, 3, 3)))
        t.update(_sn(f"{p}.conv_sc", (cout, cin, 1, 1)))
        t.update(_ccbn(f"{p}.bn1", cin, cond))
        t.update(_ccbn(f"{p}.bn2", cout, cond))
        if i in attn_blocks:
            q = f"blocks.{i}.1"
            t[f"{q}.gamma"] = ()
            t.update(_sn(f"{q}.theta", (cout // 8, cout, 1, 1), bias=False))
            t.update(_sn(f"{q}.phi", (cout // 8, cout, 1, 1), bias=False))
            t.update(_sn(f"{q}.g", (cout // 2, cout, 1, 1), bias=False))
            t.update(_sn(f"{q}.o", (cout, cout // 2, 1, 1), bias=False))
    last = ch * outs[-1]
    t.update({f"output_layer.0.{k}": (last,) for k in ("stored_mean", "stored_var", "gain", "bias")})
    t.update(_sn("output_layer.2", (3, last, 3, 3)))
    return t


def published_generator_table() -> dict[str, tuple]:
    # 256 px: blocks output 8, 16, 32, 64, 128, 256 px; attention "64" -> block index 3.
    return generator_table(
        96, (16, 16, 8, 8, 4, 2), (16, 8, 8, 4, 2, 1), {3},
        chunk=120 // 7, n_classes=1000, shared_dim=128, shared_feat=512,
    )


def _shapes(module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _tiny_generator(seed: int = 0) -> ICGANGenerator:
    torch.manual_seed(seed)
    g = ICGANGenerator(ICGANConfig(**TINY_G))
    with torch.no_grad():  # non-trivial statistics, gains and attention so every path matters
        for k, v in g.state_dict().items():
            if k.endswith("stored_var"):
                v.uniform_(0.5, 2.0)
            elif k.endswith(("stored_mean", "gamma", "u0")):
                v.normal_()
    return g.eval()


def _tiny_encoder(seed: int = 0) -> SwAVEncoder:
    torch.manual_seed(seed)
    e = SwAVEncoder(SwAVConfig(**TINY_E))
    with torch.no_grad():
        for k, v in e.state_dict().items():
            if k.endswith("running_var"):
                v.uniform_(0.5, 2.0)
            elif k.endswith("running_mean"):
                v.normal_(0, 0.1)
    return e.eval()


def _swav_file_dict(encoder: SwAVEncoder, hidden: int = 16, out: int = 8, protos: int = 12) -> dict:
    """The SwAV release layout: DDP ``module.`` prefix, trunk + projection head + prototypes."""
    sd = {f"module.{k}": v.clone() for k, v in encoder.state_dict().items()}
    sd.update({
        "module.projection_head.0.weight": torch.randn(hidden, 2048),
        "module.projection_head.0.bias": torch.randn(hidden),
        "module.projection_head.1.weight": torch.randn(hidden),
        "module.projection_head.1.bias": torch.randn(hidden),
        "module.projection_head.1.running_mean": torch.randn(hidden),
        "module.projection_head.1.running_var": torch.rand(hidden),
        "module.projection_head.1.num_batches_tracked": torch.tensor(7),
        "module.projection_head.3.weight": torch.randn(out, hidden),
        "module.projection_head.3.bias": torch.randn(out),
        "module.prototypes.weight": torch.randn(protos, out),
    })
    return sd


# --------------------------------------------------------------------------- published layouts
def test_published_config_sizes():
    cfg = ICGANConfig.imagenet256()
    assert (cfg.noise_dim, cfg.chunk_size, cfg.n_slots) == (119, 17, 7)
    assert cfg.dense_shape == (1536, 4, 4) and cfg.dense_dim == 24_576 == 16 * 96 * 4 * 4
    assert cfg.cond_dim == 529


def test_full_size_generator_matches_published_key_table():
    table = published_generator_table()
    with torch.device("meta"):
        g = ICGANGenerator(ICGANConfig.imagenet256())
    got = _shapes(g)
    assert sorted(set(table) - set(got)) == []
    assert sorted(set(got) - set(table)) == []
    assert {k: v for k, v in got.items() if table[k] != v} == {}
    # Spot values worked out by hand.
    assert got["linear.weight"] == (24_576, 17) and got["linear.u0"] == (1, 24_576)
    assert got["shared.weight"] == (1000, 128)
    assert got["shared_feat.weight"] == (512, 2048) and got["shared_feat.bias"] == (512,)
    assert got["blocks.0.0.conv1.weight"] == (1536, 1536, 3, 3)
    assert got["blocks.0.0.bn1.gain.weight"] == (1536, 529)
    assert got["blocks.1.0.conv_sc.weight"] == (768, 1536, 1, 1)
    assert got["blocks.3.1.theta.weight"] == (48, 384, 1, 1) and got["blocks.3.1.o.weight"] == (384, 192, 1, 1)
    assert got["blocks.3.1.gamma"] == ()
    assert got["blocks.5.0.bn2.stored_var"] == (96,)
    assert got["output_layer.2.weight"] == (3, 96, 3, 3) and got["output_layer.0.gain"] == (96,)
    # Attention (the second module of a block's list) only after the 64-px block.
    assert {k.split(".")[1] for k in got if k.startswith("blocks.") and k.split(".")[2] == "1"} == {"3"}
    # shared 1, shared_feat 4, linear 4; per block 3 convs x 4 + 2 cond. BNs x (2 + 3 + 3) = 28;
    # attention 4 convs x 3 + gamma = 13; output BN 4 + conv 4.
    assert len(got) == 1 + 4 + 4 + 6 * 28 + 13 + 4 + 4 == 198
    n_params = sum(math.prod(s) for k, s in table.items() if not k.endswith(("u0", "sv0", "stored_mean", "stored_var")))
    assert sum(p.numel() for p in g.parameters()) == n_params


def test_full_size_encoder_matches_torchvision_resnet50_without_fc():
    with torch.device("meta"):
        ours = SwAVEncoder(SwAVConfig.resnet50())
        ref = torchvision.models.resnet50(weights=None)
    want = {k: v for k, v in _shapes(ref).items() if not k.startswith("fc.")}
    assert _shapes(ours) == want
    assert len(want) == 318
    got = _shapes(ours)
    assert got["conv1.weight"] == (64, 3, 7, 7)
    assert got["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert got["layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert got["layer4.2.bn3.running_var"] == (2048,)


# --------------------------------------------------------------------------- behaviour
def test_tiny_generator_forward_and_dense_path_reproduces_it():
    g = _tiny_generator()
    cfg = g.cfg
    inst = torch.nn.functional.normalize(torch.randn(3, 2048), dim=1)
    z = torch.randn(3, cfg.noise_dim)
    with torch.no_grad():
        img = g(inst, z)
        dense = g.dense_from_noise(z)
        again = g(inst, z, dense)
    assert img.shape == (3, 3, 32, 32)
    assert float(img.abs().max()) <= 1.0 and float(img.std()) > 0.01
    assert dense.shape == (3, cfg.dense_dim)
    assert torch.equal(img, again)
    # With the dense vector given, the first noise chunk is unused; the others still matter.
    z2 = z.clone()
    z2[:, : cfg.chunk_size] += 1.0
    z3 = z.clone()
    z3[:, cfg.chunk_size :] += 1.0
    with torch.no_grad():
        assert torch.equal(g(inst, z2, dense), img)
        assert not torch.allclose(g(inst, z3, dense), img)
        assert not torch.allclose(g(inst, z2), img)


def test_generator_images_do_not_depend_on_batch():
    g = _tiny_generator()
    inst = torch.nn.functional.normalize(torch.randn(4, 2048), dim=1)
    z = torch.randn(4, g.cfg.noise_dim)
    with torch.no_grad():
        whole = g(inst, z)
        single = torch.cat([g(inst[i : i + 1], z[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(whole, single, rtol=1e-4, atol=1e-5)


def test_spectral_norm_divides_by_power_iteration_estimate():
    g = _tiny_generator()
    layer = g.blocks[0][0].conv1
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    v = torch.nn.functional.normalize(layer.u0 @ w, eps=1e-6)
    u = torch.nn.functional.normalize(v @ w.t(), eps=1e-6)
    sigma = float(v @ w.t() @ u.t())
    torch.testing.assert_close(layer.normalised_weight().detach(), layer.weight.detach() / sigma)
    # Started from the true top singular vector, the estimate is the largest singular value.
    U, S, _ = torch.linalg.svd(w, full_matrices=False)
    with torch.no_grad():
        layer.u0.copy_(U[:, 0][None])
    top = float(torch.linalg.matrix_norm(layer.normalised_weight().detach().reshape(w.shape), ord=2))
    assert top == pytest.approx(1.0, rel=1e-4) and float(S[0]) > 0


def test_wrong_input_shapes_raise():
    from brainrecon.errors import ShapeMismatchError

    g = _tiny_generator()
    inst = torch.randn(2, 2048)
    with pytest.raises(ShapeMismatchError, match="noise"):
        g(inst, torch.randn(2, 7))
    with pytest.raises(ShapeMismatchError, match="dense"):
        g(inst, torch.randn(2, g.cfg.noise_dim), torch.randn(2, 5))
    with pytest.raises(ShapeMismatchError, match="instance"):
        g(torch.randn(2, 100), torch.randn(2, g.cfg.noise_dim))


def test_encoder_features_are_unit_norm_and_match_torchvision():
    e = _tiny_encoder()
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        f = e(x)
        ref = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 1, 1], width_per_group=4)
        ref.fc = torch.nn.Identity()
        ref.load_state_dict(e.state_dict())
        ref.eval()
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        xin = torch.nn.functional.interpolate((x - mean) / std, size=32, mode="bicubic", align_corners=True)
        want = torch.nn.functional.normalize(ref(xin), dim=1)
    assert f.shape == (2, 2048)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(f, want)


# --------------------------------------------------------------------------- loading
def test_generator_checkpoint_round_trip(tmp_path):
    g = _tiny_generator(seed=3)
    path = tmp_path / IMAGENET256_FILE
    torch.save(g.state_dict(), path)  # the release's format: a plain torch.save of G_ema.state_dict()
    loaded = load_generator(path, TINY_G)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    inst, z = torch.randn(2, 2048), torch.randn(2, g.cfg.noise_dim)
    with torch.no_grad():
        assert torch.equal(loaded(inst, z), g(inst, z))


def test_generator_checkpoint_errors_name_key_and_shapes(tmp_path):
    sd = _tiny_generator().state_dict()
    missing = dict(sd)
    del missing["blocks.1.0.bn2.gain.u0"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(DataFormatError, match=r"missing: blocks\.1\.0\.bn2\.gain\.u0 \(expected \(1, 32\)\)"):
        load_generator(tmp_path / "missing.pth", TINY_G)
    wrong = dict(sd)
    wrong["linear.weight"] = torch.zeros(3, 3)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(DataFormatError, match=r"linear\.weight: expected \(512, 5\), got \(3, 3\)"):
        load_generator(tmp_path / "wrong.pth", TINY_G)
    extra = {**sd, "blocks.9.0.conv1.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(DataFormatError, match=r"unexpected: blocks\.9\.0\.conv1\.weight"):
        load_generator(tmp_path / "extra.pth", TINY_G)
    # The full-size architecture refuses a tiny file, naming the first mismatches.
    torch.save(sd, tmp_path / "tiny.pth")
    with pytest.raises(DataFormatError, match="with another shape"):
        load_generator(tmp_path / "tiny.pth", "imagenet256")


def test_missing_or_pickled_files(tmp_path):
    with pytest.raises(MissingWeightsError, match=IMAGENET256_FILE) as exc:
        load_generator(tmp_path / "nowhere.pth", TINY_G)
    assert exc.value.path == tmp_path / "nowhere.pth"
    with pytest.raises(MissingWeightsError, match=SWAV_FILE):
        load_encoder(tmp_path / "nowhere.pth.tar", TINY_E)
    # weights_only=True refuses anything but tensors and plain containers.
    (tmp_path / "obj.pth").write_bytes(pickle.dumps(_Opaque(), protocol=2))
    with pytest.raises(DataFormatError, match="not a plain torch state dict"):
        load_generator(tmp_path / "obj.pth", TINY_G)


class _Opaque:
    """An arbitrary object: a pickle of it is not a state dict."""


def test_swav_release_layout_loads_and_heads_are_dropped(tmp_path):
    e = _tiny_encoder(seed=5)
    sd = _swav_file_dict(e)
    path = tmp_path / SWAV_FILE
    torch.save(sd, path)
    loaded = load_encoder(path, TINY_E)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), e(x))
    # Counters are training-only: a file without them still loads.
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, tmp_path / "nocount.pth.tar")
    load_encoder(tmp_path / "nocount.pth.tar", TINY_E)
    # Any other unknown key is refused (only the two SwAV heads are dropped).
    torch.save({**sd, "module.fc.weight": torch.zeros(3, 2048)}, tmp_path / "fc.pth.tar")
    with pytest.raises(DataFormatError, match=r"unexpected: fc\.weight"):
        load_encoder(tmp_path / "fc.pth.tar", TINY_E)
    bad = dict(sd)
    bad["module.layer4.0.conv3.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(bad, tmp_path / "bad.pth.tar")
    msg = r"layer4\.0\.conv3\.weight: expected \(2048, 32, 1, 1\), got \(1, 1, 1, 1\)"
    with pytest.raises(DataFormatError, match=msg):
        load_encoder(tmp_path / "bad.pth.tar", TINY_E)
