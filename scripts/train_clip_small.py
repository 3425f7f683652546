"""Train the small CLIP (text and vision towers) contrastively on simulated scenes and their captions.

Usage::

    python scripts/train_clip_small.py --images /tmp/vd_train/images.npy [--iters 800] [--threads 2]

``images.npy`` holds ``(n, H, W, 3)`` uint8 scenes and ``images_captions.npy`` beside it (or
``--captions``) ``(n, k)`` unicode captions, as written by ``scripts/sim_training_images.py``.
The last ``--n-heldout`` scenes are never trained on; the run ends with held-out retrieval
figures computed from the saved weights, loaded through
:func:`brainrecon.latents.versatile.clip.load_clip` exactly as the pipeline loads them.

Model: transformers' ``CLIPTextModelWithProjection`` and ``CLIPVisionModelWithProjection``
(the classes of the published CLIP ViT-L/14) in a small configuration: 64 x 64 input,
8-pixel patches (65 vision tokens), width 96, 4 layers, word-level tokenizer
(:mod:`brainrecon.latents.versatile.words`) with a context of 24 tokens, 64-d shared space.
Objective as CLIP: symmetric cross-entropy over the in-batch image-text similarity matrix
of L2-normalised embeddings, scaled by a learnable temperature (initialised to 1/0.07,
capped at 100); one caption drawn at random per image and step. AdamW, linear warm-up
then cosine decay; weight decay only on matrices.

Outputs (default ``brainrecon/weights/clip_small/``, written to a temporary folder then
renamed): ``text_encoder/`` and ``image_encoder/`` (``config.json`` + ``model.safetensors``),
``tokenizer/vocab.json``, ``reference.json`` (features of a procedural reference image and
text, checked on every load) and ``clip_small.training.json`` (arguments, SHA-256 of the
training arrays, loss trace, timings, held-out figures).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from brainrecon.sim.stimuli import load_scene_arrays  # noqa: E402
from brainrecon.errors import DataFormatError  # noqa: E402
from brainrecon.paths import replace_directory  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, help=".npy of (n, H, W, 3) uint8 training scenes")
    p.add_argument("--captions", default=None, help=".npy of (n, k) captions (default: <images>_captions.npy)")
    p.add_argument("--out", default=str(REPO / "brainrecon" / "weights" / "clip_small"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=3600, help="optimiser steps (the cosine schedule spans them)")
    p.add_argument("--max-minutes", type=float, default=30.0, help="stop early (and save) after this wall time")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-iters", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--n-heldout", type=int, default=600, help="the last scenes, never trained on")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--width", type=int, default=96, help="hidden size of both towers")
    p.add_argument("--layers", type=int, default=4, help="transformer layers of each tower")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=24, help="text tokens (<bos> + words + <eos> + padding)")
    p.add_argument("--proj-dim", type=int, default=64, help="dimension of the shared embedding space")
    p.add_argument("--min-images", type=int, default=5,
                   help="a word enters the vocabulary if the captions of at least this many training scenes use it")
    p.add_argument("--shift", type=int, default=3, help="random translation in pixels of the model input (augmentation)")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=600,
                   help="record held-out 2-way identification in the trace every this many steps (0: never); "
                        "for the record only, nothing is selected on it")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (fixed for reproducibility)")
    return p.parse_args(argv)


def sha256_array(a: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()


def retrieval(img: np.ndarray, txt: np.ndarray) -> dict[str, float]:
    """Image->text top-1 accuracy among all rows, and 2-way accuracy over all pairs (cosine similarity).

    2-way: for image i and every other scene j, whether i's text is more similar to image i
    than j's text is (chance 0.5).
    """
    a = img / np.linalg.norm(img, axis=1, keepdims=True)
    b = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    sim = a @ b.T
    n = len(sim)
    top1 = float(np.mean(sim.argmax(1) == np.arange(n)))
    two_way = float((sim.diagonal()[:, None] > sim)[~np.eye(n, dtype=bool)].mean())
    return {"top1": top1, "top1_chance": 1.0 / n, "two_way": two_way, "n": n}


def evaluate(enc, images: np.ndarray, captions: np.ndarray, seed: int) -> dict:
    """Held-out figures from a loaded :class:`~brainrecon.latents.versatile.clip.ClipEncoder`."""
    rng = np.random.default_rng(seed)
    n, k = captions.shape
    img_emb = enc.embed_images(images)
    cap_emb = enc.embed_texts(list(captions.ravel())).reshape(n, k, -1)
    one = cap_emb[np.arange(n), rng.integers(0, k, n)]
    # Token features (the regression targets): vision tokens and caption-averaged text tokens.
    vis_tok = enc.encode_images(images, batch_size=64)
    txt_tok = enc.encode_captions([list(c) for c in captions])
    return {
        "embeds_one_caption": retrieval(img_emb, one),
        "embeds_caption_mean": retrieval(img_emb, cap_emb.mean(1)),
        # The regression targets themselves (not only the pooled embeddings): the vision target's
        # class token, or the mean over its tokens, against the mean over tokens of the
        # caption-averaged text target. Whether the token arrays carry the correspondence.
        "tokens_cls_vs_text_mean": retrieval(vis_tok[:, 0], txt_tok.mean(1)),
        "tokens_mean_vs_text_mean": retrieval(vis_tok.mean(1), txt_tok.mean(1)),
        "note": "retrieval uses cosine similarity; chance: top1 = 1/n, two_way = 0.5",
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import safetensors
    import torch
    import transformers
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from brainrecon.latents.versatile.clip import load_clip, preprocess_images
    from brainrecon.latents.versatile.words import BOS_ID, EOS_ID, PAD_ID, WordTokenizer, split_words

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t_all = time.perf_counter()

    images_path = Path(args.images)
    captions_path = Path(args.captions) if args.captions else images_path.with_name(images_path.stem + "_captions.npy")
    images, captions = load_scene_arrays(images_path, captions_path)
    if args.eval_every and args.eval_every % args.log_every:
        raise DataFormatError(f"--eval-every {args.eval_every} must be a multiple of --log-every {args.log_every}")
    n = len(images)
    if not 0 < args.n_heldout < n - args.batch_size:
        raise DataFormatError(f"--n-heldout {args.n_heldout}: need 0 < n_heldout < {n - args.batch_size} for {n} scenes")
    n_train = n - args.n_heldout
    tr_img, tr_cap = images[:n_train], captions[:n_train]
    ho_img, ho_cap = images[n_train:], captions[n_train:]

    # Vocabulary from the training captions only; a word counts once per scene.
    per_scene = [" ".join(sorted({w for c in caps for w in split_words(str(c))})) for caps in tr_cap]
    tok = WordTokenizer.build(per_scene, context_length=args.context, min_count=args.min_images)
    longest = max(len(split_words(str(c))) for c in captions.ravel())
    if longest > args.context - 2:
        print(f"warning: the longest caption has {longest} words; it is truncated to {args.context - 2}", flush=True)
    print(f"vocabulary: {tok.vocab_size} ids; held-out words unknown: {tok.unknown_fraction(ho_cap.ravel()):.3%}; "
          f"longest caption {longest} words", flush=True)
    ids = torch.from_numpy(tok(list(tr_cap.ravel()))).view(n_train, tr_cap.shape[1], args.context)

    # Inputs preprocessed once, exactly as ClipEncoder does at encoding time.
    px = torch.cat([preprocess_images(tr_img[i : i + 500], args.image_size) for i in range(0, n_train, 500)])

    tcfg = CLIPTextConfig(
        vocab_size=tok.vocab_size, hidden_size=args.width, intermediate_size=4 * args.width,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, max_position_embeddings=args.context,
        projection_dim=args.proj_dim, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
    )
    vcfg = CLIPVisionConfig(
        hidden_size=args.width, intermediate_size=4 * args.width, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, image_size=args.image_size, patch_size=args.patch_size,
        projection_dim=args.proj_dim,
    )
    text_model = CLIPTextModelWithProjection(tcfg)
    vision_model = CLIPVisionModelWithProjection(vcfg)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = list(text_model.parameters()) + list(vision_model.parameters())
    n_params = sum(p.numel() for p in params)
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2] + [logit_scale]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-6,
    )

    def lr_factor(it: int) -> float:
        if it < args.warmup_iters:
            return (it + 1) / args.warmup_iters
        t = (it - args.warmup_iters) / max(1, args.iters - args.warmup_iters)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    print(f"small CLIP: {n_params:,} parameters; {n_train} train / {args.n_heldout} held-out scenes", flush=True)

    ho_px = preprocess_images(ho_img, args.image_size)
    ho_ids = torch.from_numpy(tok(list(ho_cap.ravel())))

    def monitor() -> float:
        """Held-out 2-way identification (image vs caption-mean embedding) of the current weights."""
        text_model.eval()
        vision_model.eval()
        with torch.no_grad():
            a = torch.cat([vision_model(pixel_values=ho_px[i : i + 200]).image_embeds for i in range(0, len(ho_px), 200)])
            b = torch.cat([text_model(input_ids=ho_ids[i : i + 1000]).text_embeds for i in range(0, len(ho_ids), 1000)])
        text_model.train()
        vision_model.train()
        b = torch.nn.functional.normalize(b, dim=-1).view(len(ho_cap), ho_cap.shape[1], -1).mean(1)
        sim = (torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T).numpy()
        return float((sim.diagonal()[:, None] > sim)[~np.eye(len(sim), dtype=bool)].mean())

    trace: list[dict] = []
    window: list[dict] = []
    t_start = time.perf_counter()
    deadline = t_start + 60.0 * args.max_minutes
    labels = torch.arange(args.batch_size)
    it = 0
    text_model.train()
    vision_model.train()
    for it in range(args.iters):
        t0 = time.perf_counter()
        idx = torch.from_numpy(rng.choice(n_train, args.batch_size, replace=False))
        which = torch.from_numpy(rng.integers(0, ids.shape[1], args.batch_size))
        batch_ids = ids[idx, which]
        x = px[idx]
        if args.shift > 0:
            # Small random translations (reflect padding); no flips, captions name left and right.
            s = args.shift
            xp = torch.nn.functional.pad(x, (s, s, s, s), mode="reflect")
            dy, dx = rng.integers(0, 2 * s + 1, 2)
            x = xp[:, :, dy : dy + args.image_size, dx : dx + args.image_size]
        img = vision_model(pixel_values=x).image_embeds
        txt = text_model(input_ids=batch_ids).text_embeds
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        logits = logit_scale.exp() * img @ txt.T
        loss = 0.5 * (torch.nn.functional.cross_entropy(logits, labels)
                      + torch.nn.functional.cross_entropy(logits.T, labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        opt.step()
        sched.step()
        with torch.no_grad():
            logit_scale.clamp_(0.0, math.log(100.0))  # CLIP caps the temperature at 100
        acc = float((logits.argmax(1) == labels).float().mean())
        window.append({"loss": float(loss.detach()), "batch_top1": acc, "grad_norm": gnorm, "sec": time.perf_counter() - t0})
        if (it + 1) % args.log_every == 0 or it + 1 == args.iters:
            row = {"iter": it + 1, **{k: float(np.mean([w[k] for w in window])) for k in window[0]},
                   "logit_scale": float(logit_scale.detach().exp()), "lr": float(sched.get_last_lr()[0])}
            if args.eval_every and ((it + 1) % args.eval_every == 0 or it + 1 == args.iters):
                row["heldout_two_way"] = monitor()
            trace.append(row)
            window = []
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        if time.perf_counter() > deadline:
            print(f"stopping at iteration {it + 1}: --max-minutes {args.max_minutes} reached", flush=True)
            break
    n_iters = it + 1
    train_seconds = time.perf_counter() - t_start

    # Save to a temporary folder beside the output, check it loads, then rename into place.
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    text_model.eval()
    vision_model.eval()
    text_model.save_pretrained(tmp / "text_encoder", safe_serialization=True)
    vision_model.save_pretrained(tmp / "image_encoder", safe_serialization=True)
    tok.save(tmp / "tokenizer" / "vocab.json")
    enc = load_clip(str(tmp), check=False)
    enc.write_reference(tmp)
    enc = load_clip(str(tmp))  # runs the preprocessing and stored-feature checks
    heldout = evaluate(enc, ho_img, ho_cap, args.seed)
    weight_bytes = sum(f.stat().st_size for f in tmp.rglob("*.safetensors"))
    report = {
        "args": vars(args),
        "data": {
            "images": str(images_path), "images_sha256": sha256_array(images),
            "captions": str(captions_path), "captions_sha256": sha256_array(captions),
            "n_train": n_train, "n_heldout": args.n_heldout, "heldout": f"the last {args.n_heldout} scenes",
        },
        "vocab_size": tok.vocab_size,
        "heldout_unknown_word_fraction": tok.unknown_fraction(ho_cap.ravel()),
        "n_params": n_params,
        "weights_bytes": weight_bytes,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "safetensors": safetensors.__version__, "numpy": np.__version__},
        "iters": n_iters,
        "train_seconds": train_seconds,
        "seconds_per_iter": train_seconds / n_iters,
        "total_seconds": time.perf_counter() - t_all,
        "final_logit_scale": float(logit_scale.detach().exp()),
        "trace": trace,
        "heldout_metrics": heldout,
    }
    (tmp / "clip_small.training.json").write_text(json.dumps(report, indent=2) + "\n")
    replace_directory(tmp, out)
    print(json.dumps({k: report[k] for k in ("iters", "seconds_per_iter", "weights_bytes", "heldout_metrics")}, indent=2))
    print(f"saved {out}")
    return report


if __name__ == "__main__":
    main()
