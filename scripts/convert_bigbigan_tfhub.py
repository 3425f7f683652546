"""Convert the TF-Hub BigBiGAN module (``deepmind/bigbigan-resnet50/1``) to brainrecon's layouts.

Optional tool: it needs ``tensorflow`` (only ``tf.train.load_checkpoint``; no TF-Hub
runtime) to read the module's variables, or a ``.npz`` of ``{variable name: array}`` dumped
elsewhere. The library never imports this file.

Generator (mapping derived from public facts, table in ``docs/bigbigan.md``): every variable
under ``GenEncWrapper/Generator`` is mapped to the names of BigGAN-PyTorch's generator, the
layout of the public conversion ``BigBiGAN_x1.pth``; the EMA copies (``/ema_0.9999``) are
used when present, as in that conversion.

Encoder: no public conversion exists and the module's encoder variable names could not be
checked offline, so the mapping is supplied by the user as JSON ``{TF name: brainrecon key}``
after listing the variables (``--list``). Tensors are transposed by the kind of the target
key (4-D conv HWIO -> OIHW, 2-D dense (in, out) -> (out, in)); the result must fill the
encoder's state dict exactly.

Both outputs are loaded strictly into brainrecon's models before anything is written.

Usage
-----
1. Download and unpack the module (``https://tfhub.dev/deepmind/bigbigan-resnet50/1?tf-hub-format=compressed``)
   into ``MODULE_DIR`` (it holds ``variables/variables.index``).
2. ``python scripts/convert_bigbigan_tfhub.py MODULE_DIR --list > variables.txt``
3. ``python scripts/convert_bigbigan_tfhub.py MODULE_DIR --part generator --out-dir $BRAINRECON_WEIGHTS/bigbigan``
4. (encoder) write ``encoder_map.json`` from ``variables.txt`` and ``docs/bigbigan.md``, then
   ``python scripts/convert_bigbigan_tfhub.py MODULE_DIR --part encoder --encoder-map encoder_map.json --out-dir ...``
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

EMA_SUFFIX = "/ema_0.9999"
DEFAULT_SCOPE = "GenEncWrapper"


class ConversionError(RuntimeError):
    """The variables do not fit the expected layout (names every problem)."""


# --------------------------------------------------------------------------- reading
def read_tf_checkpoint(module_dir: str | Path) -> dict[str, np.ndarray]:
    """All variables of a TF-Hub module directory (or a checkpoint prefix) as numpy arrays."""
    try:
        import tensorflow as tf
    except ImportError as exc:  # optional dependency
        raise SystemExit(
            "reading a TF-Hub module needs tensorflow (pip install tensorflow), or pass a .npz dump"
        ) from exc
    path = Path(module_dir)
    prefix = path / "variables" / "variables" if path.is_dir() else path
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: np.asarray(reader.get_tensor(name)) for name in reader.get_variable_to_shape_map()}


def read_variables(source: str | Path) -> dict[str, np.ndarray]:
    """Variables from a module directory / checkpoint prefix, or from a ``.npz`` dump."""
    source = Path(source)
    if source.suffix == ".npz":
        with np.load(source, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    return read_tf_checkpoint(source)


def strip_module_prefix(variables: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop a leading ``module/`` (names as seen through ``hub.Module``) and a ``:0`` suffix."""
    out = {}
    for k, v in variables.items():
        k = k.removeprefix("module/")
        out[k.removesuffix(":0")] = v
    return out


# --------------------------------------------------------------------------- generator
def generator_table(cfg) -> list[tuple[str, str, str]]:
    """``(TF name relative to <scope>/Generator, brainrecon key, transform)`` for every tensor.

    Transforms: ``conv`` (HWIO -> OIHW), ``u`` (-> (1, out)), ``vec``, ``scalar``,
    ``hyper`` (dense (cond, C) -> (C, cond) with the input order changed from
    [z chunk, embedding] to [embedding, z chunk]), ``glinear_w`` / ``glinear_b`` / ``glinear_u``
    (first linear layer: outputs reordered from TF's (h, w, c) to torch's (c, h, w)),
    ``embed`` (the single embedding repeated to ``n_classes`` rows).
    """
    t: list[tuple[str, str, str]] = [
        ("linear/w", "shared.weight", "embed"),
        ("GenZ/G_linear/w", "linear.weight", "glinear_w"),
        ("GenZ/G_linear/b", "linear.bias", "glinear_b"),
        ("GenZ/G_linear/u0", "linear.u0", "glinear_u"),
    ]
    n_att = 0
    for i, res in enumerate(cfg.block_resolutions):
        blk = "GBlock" if i == 0 else f"GBlock_{i}"
        for tf_conv, ours in (("conv0", "conv1"), ("conv1", "conv2"), ("conv_sc", "conv_sc")):
            t += [
                (f"{blk}/{tf_conv}/w", f"blocks.{i}.0.{ours}.weight", "conv"),
                (f"{blk}/{tf_conv}/b", f"blocks.{i}.0.{ours}.bias", "vec"),
                (f"{blk}/{tf_conv}/u0", f"blocks.{i}.0.{ours}.u0", "u"),
            ]
        for tf_bn, ours in (("BatchNorm", "bn1"), ("BatchNorm_1", "bn2")):
            t += [
                (f"{blk}/{tf_bn}/scale/w", f"blocks.{i}.0.{ours}.gain.weight", "hyper"),
                (f"{blk}/{tf_bn}/scale/u0", f"blocks.{i}.0.{ours}.gain.u0", "u"),
                (f"{blk}/{tf_bn}/offset/w", f"blocks.{i}.0.{ours}.bias.weight", "hyper"),
                (f"{blk}/{tf_bn}/offset/u0", f"blocks.{i}.0.{ours}.bias.u0", "u"),
                (f"{blk}/{tf_bn}/accumulated_mean", f"blocks.{i}.0.{ours}.stored_mean", "vec"),
                (f"{blk}/{tf_bn}/accumulated_var", f"blocks.{i}.0.{ours}.stored_var", "vec"),
            ]
        if res in cfg.attention:
            att = "attention" if n_att == 0 else f"attention_{n_att}"
            n_att += 1
            for tf_conv, ours in (("theta", "theta"), ("phi", "phi"), ("g", "g"), ("o_conv", "o")):
                t += [
                    (f"{att}/{tf_conv}/w", f"blocks.{i}.1.{ours}.weight", "conv"),
                    (f"{att}/{tf_conv}/u0", f"blocks.{i}.1.{ours}.u0", "u"),
                ]
            t.append((f"{att}/gamma", f"blocks.{i}.1.gamma", "scalar"))
    t += [
        ("BatchNorm/scale", "output_layer.0.gain", "vec"),
        ("BatchNorm/offset", "output_layer.0.bias", "vec"),
        ("BatchNorm/accumulated_mean", "output_layer.0.stored_mean", "vec"),
        ("BatchNorm/accumulated_var", "output_layer.0.stored_var", "vec"),
        ("conv_2d/w", "output_layer.2.weight", "conv"),
        ("conv_2d/b", "output_layer.2.bias", "vec"),
        ("conv_2d/u0", "output_layer.2.u0", "u"),
    ]
    return t


def _transform(a: np.ndarray, kind: str, cfg) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    bw = cfg.bottom_width
    if kind == "conv":
        return a.transpose(3, 2, 0, 1)
    if kind == "u":
        return a.reshape(1, -1)
    if kind in ("vec", "scalar"):
        return a.reshape(()) if kind == "scalar" else a.reshape(-1)
    if kind == "hyper":
        w = a.T  # (C, z_chunk + shared_dim), TF input order [z chunk, embedding]
        return np.concatenate([w[:, cfg.z_chunk :], w[:, : cfg.z_chunk]], axis=1)
    if kind == "glinear_w":
        w = a.T  # (bw * bw * C, z_chunk), rows in TF (h, w, c) order
        return w.reshape(bw, bw, -1, w.shape[1]).transpose(2, 0, 1, 3).reshape(-1, w.shape[1])
    if kind in ("glinear_b", "glinear_u"):
        b = a.reshape(bw, bw, -1).transpose(2, 0, 1).reshape(-1)
        return b.reshape(1, -1) if kind == "glinear_u" else b
    if kind == "embed":
        e = a.reshape(-1, cfg.shared_dim)
        if len(e) == 1:
            return np.repeat(e, cfg.n_classes, axis=0)  # BigBiGAN's one embedding, BigGAN's 1000-row layout
        return e
    raise ValueError(f"unknown transform {kind!r}")


def convert_generator(
    variables: Mapping[str, np.ndarray],
    cfg,
    *,
    scope: str = DEFAULT_SCOPE,
    use_ema: bool = True,
    ignore: tuple[str, ...] = (),
) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """TF variables -> brainrecon generator state dict (numpy), plus a report.

    ``ignore`` holds regular expressions of generator variables known not to matter (checked
    against the full name); anything else left unused stops the conversion.

    Raises
    ------
    ConversionError
        A needed variable is missing, or a generator variable was left unused.
    """
    root = f"{scope}/Generator/"
    gen_vars = {k[len(root) :]: v for k, v in variables.items() if k.startswith(root)}
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    missing: list[str] = []
    n_ema = 0
    for tf_name, key, kind in generator_table(cfg):
        name = tf_name
        if use_ema and f"{tf_name}{EMA_SUFFIX}" in gen_vars:
            name = f"{tf_name}{EMA_SUFFIX}"
            n_ema += 1
            used.add(tf_name)  # the raw copy is consumed too (superseded by the EMA one)
        if name not in gen_vars:
            missing.append(root + tf_name)
            continue
        used.add(name)
        out[key] = _transform(gen_vars[name], kind, cfg)
    counters = sorted(k for k in gen_vars if k.endswith("accumulation_counter"))
    used.update(counters)  # read (reported) but not converted: the stored statistics are used as they are
    # The power iteration's right singular vectors (u1 beside u0): BigGAN-PyTorch recomputes v from u0.
    v_vectors = sorted(k for k in gen_vars if k.endswith("/u1") and k[:-3] + "/u0" in used)
    used.update(v_vectors)
    ignored = sorted(k for k in gen_vars if k not in used and any(re.search(p, root + k) for p in ignore))
    used.update(ignored)
    leftover = sorted(root + k for k in gen_vars if k not in used and not k.endswith(EMA_SUFFIX))
    leftover += sorted(root + k for k in gen_vars if k.endswith(EMA_SUFFIX) and k[: -len(EMA_SUFFIX)] not in used)
    if missing or leftover:
        raise ConversionError(
            f"generator variables do not fit the table: missing {missing[:5]} ({len(missing)}), "
            f"unused {leftover[:5]} ({len(leftover)})"
        )
    report = {
        "tensors": len(out),
        "from_ema": n_ema,
        "ignored": len(v_vectors) + len(ignored),
        "accumulation_counter": {k: float(np.asarray(gen_vars[k]).reshape(-1)[0]) for k in counters[:3]},
    }
    return out, report


# --------------------------------------------------------------------------- encoder
def convert_encoder(variables: Mapping[str, np.ndarray], mapping: Mapping[str, str], want: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """Apply a user mapping ``{TF name: brainrecon key}``; transposes by the target's rank.

    ``want`` is ``{key: shape}`` of the encoder's state dict; every key must be produced
    once with that shape.
    """
    out: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for tf_name, key in mapping.items():
        if tf_name not in variables:
            problems.append(f"{tf_name}: not a variable of the module")
            continue
        if key not in want:
            problems.append(f"{key}: not an encoder key")
            continue
        if key in out:
            problems.append(f"{key}: mapped twice")
            continue
        a = np.asarray(variables[tf_name], dtype=np.float32)
        shape = tuple(want[key])
        if len(shape) == 4 and a.ndim == 4:
            a = a.transpose(3, 2, 0, 1)
        elif len(shape) == 2 and a.ndim == 2:
            a = a.T
        a = a.reshape(shape) if a.size == int(np.prod(shape)) and a.ndim != len(shape) else a
        if tuple(a.shape) != shape:
            problems.append(f"{key}: expected {shape}, got {tuple(a.shape)} from {tf_name}")
            continue
        out[key] = a
    missing = sorted(set(want) - set(out))
    if missing:
        problems.append(f"{len(missing)} encoder keys not mapped (e.g. {missing[:3]})")
    if problems:
        raise ConversionError("encoder mapping: " + "; ".join(problems[:10]))
    return out


# --------------------------------------------------------------------------- main
def _write(state: Mapping[str, np.ndarray], model, path: Path) -> None:
    """Load strictly into ``model`` (as the library would) and write ``.safetensors`` + ``.json``."""
    import torch

    from brainrecon.latents.bigbigan.checkpoint import check_state_dict, save_encoder, save_generator
    from brainrecon.latents.bigbigan.generator import BigBiGANGenerator

    # np.array, not np.ascontiguousarray: the latter turns 0-d arrays (attention gamma) into 1-d ones.
    sd = {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in state.items()}
    check_state_dict(sd, model, str(path), type(model).__name__)
    model.load_state_dict(sd, strict=True)
    (save_generator if isinstance(model, BigBiGANGenerator) else save_encoder)(model, path)
    print(f"wrote {path} ({len(sd)} tensors) and {path.with_suffix('.json').name}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="TF-Hub module directory, checkpoint prefix, or .npz of variables")
    p.add_argument("--list", action="store_true", help="print every variable name and shape, then exit")
    p.add_argument("--part", choices=["generator", "encoder"], default="generator")
    p.add_argument("--out-dir", type=Path, default=Path("."))
    p.add_argument("--scope", default=DEFAULT_SCOPE, help="variable scope of the BigBiGAN wrapper")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA copies")
    p.add_argument("--encoder-map", type=Path, help="JSON {TF variable name: brainrecon encoder key}")
    p.add_argument("--config", type=Path, help="architecture JSON (GeneratorConfig/EncoderConfig fields); default: published")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX",
                   help="generator variables to skip knowingly (repeatable); others left unused are an error")
    args = p.parse_args(argv)

    variables = strip_module_prefix(read_variables(args.source))
    if args.list:
        for name in sorted(variables):
            print(f"{name}\t{tuple(variables[name].shape)}")
        return 0

    import torch

    from brainrecon.latents.bigbigan import (
        ENCODER_FILE,
        BigBiGANEncoder,
        BigBiGANGenerator,
        EncoderConfig,
        GeneratorConfig,
    )

    if args.part == "generator":
        cfg = GeneratorConfig.from_dict(json.loads(args.config.read_text())) if args.config else GeneratorConfig.published()
        state, report = convert_generator(
            variables, cfg, scope=args.scope, use_ema=not args.no_ema, ignore=tuple(args.ignore)
        )
        print(json.dumps(report, indent=2))
        torch.manual_seed(0)
        _write(state, BigBiGANGenerator(cfg), args.out_dir / "bigbigan-generator.safetensors")
        return 0
    if args.encoder_map is None:
        p.error("--part encoder needs --encoder-map (see docs/bigbigan.md)")
    cfg_e = EncoderConfig.from_dict(json.loads(args.config.read_text())) if args.config else EncoderConfig.published()
    model = BigBiGANEncoder(cfg_e)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = convert_encoder(variables, json.loads(args.encoder_map.read_text()), want)
    _write(state, model, args.out_dir / ENCODER_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
