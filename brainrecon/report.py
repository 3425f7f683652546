"""Evaluation outputs people look at: ``metrics.json``, ``per_image.csv`` and an HTML report.

The HTML report is one self-contained file: every figure is a PNG embedded as a
base64 data URI (the same PNGs are also written to ``figures/`` beside it), so it
opens from disk in any browser without a server. Figures are matplotlib ``Figure``
objects rendered by the Agg canvas (no display needed; pyplot's state and the active
backend are left alone).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainrecon.errors import ShapeMismatchError
from brainrecon.metrics.suite import SuiteResult

#: metrics tried, in order, to rank best and worst reconstructions (continuous distances
#: first: two-way scores saturate at 1 and rank poorly)
RANK_PREFERENCE = ("SwAV distance", "EffNet-B distance", "EffNet-Lite0 distance", "CLIP 2-way", "SSIM", "PixCorr")


def _as_methods(result: SuiteResult | Mapping[str, SuiteResult]) -> dict[str, SuiteResult]:
    if isinstance(result, SuiteResult):
        return {"recon": result}
    return dict(result)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _clean(obj: Any) -> Any:
    """Replace NaN/inf by None so that metrics.json is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_metrics(out_dir: str | os.PathLike, result: SuiteResult | Mapping[str, SuiteResult]) -> tuple[Path, Path]:
    """Write ``metrics.json`` (summary with preset, CIs, p-values) and ``per_image.csv``.

    Parameters
    ----------
    out_dir : path
        Created if needed.
    result : SuiteResult or mapping of method name to SuiteResult

    Returns
    -------
    (Path, Path)
        Paths of ``metrics.json`` and ``per_image.csv``. The CSV has one row per
        (method, image) and one column per metric; unavailable metrics are empty.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = _as_methods(result)
    presets = sorted({r.preset for r in methods.values()})
    summary = {
        "preset": presets[0] if len(presets) == 1 else presets,
        "methods": {m: r.to_dict() for m, r in methods.items()},
    }
    json_path = out / "metrics.json"
    json_path.write_text(json.dumps(_clean(summary), indent=2, default=_json_default))
    names: list[str] = []
    for r in methods.values():
        names += [k for k in r.metrics if k not in names]
    csv_path = out / "per_image.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["method", "image", *names])
        for m, r in methods.items():
            for k, image_id in enumerate(r.image_ids or [str(i) for i in range(r.n_images)]):
                row = []
                for name in names:
                    v = r.metrics.get(name)
                    value = None if v is None or v.per_image is None else v.per_image[k]
                    row.append("" if value is None or not np.isfinite(value) else f"{value:.6g}")
                w.writerow([m, image_id, *row])
    return json_path, csv_path


# --------------------------------------------------------------------------- figures
def _to_hwc(img: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(img, dtype=np.float32).transpose(1, 2, 0), 0, 1)


def new_figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure`` not registered with pyplot (``kwargs`` as ``Figure``)."""
    # a bare Figure renders with the Agg canvas and leaves pyplot's global state (and the
    # user's backend, e.g. in a notebook) untouched
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes (100 dpi, tight bounding box)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def grid_png(stimuli: np.ndarray, recons: Mapping[str, np.ndarray], idx: Sequence[int], title: str) -> bytes:
    """PNG of a grid: the stimuli ``idx`` on the first row, one row per entry of ``recons``.

    Images are ``(n, 3, H, W)`` float in [0, 1]; columns are titled with the image index.
    """
    rows = [("Stimulus", stimuli)] + list(recons.items())
    cols = len(idx)
    fig = new_figure(figsize=(1.3 * cols + 1.2, 1.3 * len(rows)))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c, i in enumerate(idx):
            ax = axes[r, c]
            ax.imshow(_to_hwc(imgs[i]), interpolation="nearest" if imgs.shape[-1] < 64 else "antialiased")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
            if r == 0:
                ax.set_title(str(i), fontsize=8)
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


def _bars_figure(methods: Mapping[str, SuiteResult]) -> bytes | None:
    import matplotlib as mpl

    names: list[str] = []
    for r in methods.values():
        names += [k for k, v in r.metrics.items() if v.available and k not in names]
    if not names:
        return None
    ncol = min(4, len(names))
    nrow = math.ceil(len(names) / ncol)
    fig = new_figure(figsize=(3.2 * ncol, 2.6 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    colors = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = list(methods)
    for ax, name in zip(axes.flat, names):
        for k, m in enumerate(labels):
            v = methods[m].metrics.get(name)
            if v is None or not v.available or v.mean is None:
                continue
            lo, hi = v.ci if v.ci is not None else (v.mean, v.mean)
            err = [[max(v.mean - lo, 0)], [max(hi - v.mean, 0)]]
            ax.bar(k, v.mean, color=colors[k % len(colors)], yerr=err, capsize=4)
        chance = next((methods[m].metrics[name].chance for m in labels
                       if name in methods[m].metrics and methods[m].metrics[name].chance is not None), None)
        if chance is not None:
            ax.axhline(chance, color="k", ls="--", lw=0.8, label="chance")
        first = next(methods[m].metrics[name] for m in labels if name in methods[m].metrics)
        arrow = "↑" if first.higher_is_better else "↓"
        ax.set_title(f"{name} {arrow}", fontsize=9)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("Means with bootstrap CIs (dashed: chance)", fontsize=10)
    fig.tight_layout()
    return png_bytes(fig)


def _rank_metric(result: SuiteResult, preferred: str | None) -> str | None:
    order = ([preferred] if preferred else []) + list(RANK_PREFERENCE)
    for name in order:
        v = result.metrics.get(name)
        if v is not None and v.available and v.per_image is not None and np.isfinite(v.per_image).any():
            return name
    return None


def _best_worst_figure(
    stimuli: np.ndarray, recon: np.ndarray, result: SuiteResult, metric: str, n: int, method: str
) -> bytes:
    v = result.metrics[metric]
    score = np.where(np.isfinite(v.per_image), v.per_image, -np.inf if v.higher_is_better else np.inf)
    order = np.argsort(-score if v.higher_is_better else score, kind="stable")
    n = min(n, len(order) // 2 if len(order) > 1 else 1)
    groups = [("best", order[:n]), ("worst", order[::-1][:n])]
    fig = new_figure(figsize=(1.4 * 2 * n, 3.2))
    axes = fig.subplots(2, 2 * n, squeeze=False)
    for g, (label, idx) in enumerate(groups):
        for c, i in enumerate(idx):
            for r, imgs in enumerate((stimuli, recon)):
                ax = axes[r, g * n + c]
                ax.imshow(_to_hwc(imgs[i]), interpolation="nearest" if imgs.shape[-1] < 64 else "antialiased")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{label} #{c + 1}\nimg {i}: {v.per_image[i]:.3g}", fontsize=7)
            if c == 0 and g == 0:
                axes[0, 0].set_ylabel("stimulus", fontsize=8)
                axes[1, 0].set_ylabel(method, fontsize=8)
    fig.suptitle(f"{method}: best and worst by {metric}", fontsize=10, y=1.06)
    return png_bytes(fig)


# --------------------------------------------------------------------------- HTML
def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if x != 0 and abs(x) < 0.1:  # MSE-sized values keep three significant digits
        return f"{x:.{digits}g}"
    return f"{x:.{digits}f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def _metric_table(methods: Mapping[str, SuiteResult]) -> str:
    names: list[str] = []
    for r in methods.values():
        names += [k for k in r.metrics if k not in names]
    level = next(iter(methods.values())).settings.get("ci_level", 0.95)
    head = "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    rows = []
    for name in names:
        first = next(r.metrics[name] for r in methods.values() if name in r.metrics)
        arrow = "↑" if first.higher_is_better else "↓"
        cells = []
        for r in methods.values():
            v = r.metrics.get(name)
            if v is None:
                cells.append("<td>–</td>")
            elif not v.available:
                cells.append(f'<td class="na">{html.escape(v.unavailable or "")}</td>')
            else:
                ci = "" if v.ci is None else f" [{_fmt(v.ci[0])}, {_fmt(v.ci[1])}]"
                cells.append(
                    f"<td><b>{_fmt(v.mean)}</b>{ci}<br><small>p = {_fmt_p(v.p_value)}"
                    f"{'' if v.null_mean is None else f'; null mean {_fmt(v.null_mean)}'}</small></td>"
                )
        desc = html.escape(first.description)
        rows.append(f'<tr><th title="{desc}">{html.escape(name)} {arrow}<br><small>{desc}</small></th>'
                    f"{''.join(cells)}</tr>")
    p_methods = sorted({v.p_method for r in methods.values() for v in r.metrics.values() if v.p_method})
    note = (f"Cells: mean [{int(level * 100)} % bootstrap CI]; one-sided permutation p-value against "
            "no correspondence between reconstructions and images. p-value methods: "
            + "; ".join(html.escape(p) for p in p_methods))
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table><p class='note'>{note}</p>"


def comparison_table_html(diffs: Sequence[Any]) -> str:
    """An HTML table of paired differences (:func:`brainrecon.metrics.comparison.compare_methods`)."""
    if not diffs:
        return "<p>No metric has per-image values for both methods of any pair.</p>"
    rows = []
    for d in diffs:
        arrow = "↑" if d.higher_is_better else "↓"
        verdict = "no difference at 95 %" if d.better is None else f"<b>{html.escape(d.better)}</b> better"
        rows.append(
            f"<tr><td>{html.escape(d.a)} − {html.escape(d.b)}</td><td>{html.escape(d.metric)} {arrow}</td>"
            f"<td>{_fmt(d.mean_a)}</td><td>{_fmt(d.mean_b)}</td><td><b>{_fmt(d.diff)}</b> "
            f"[{_fmt(d.ci[0])}, {_fmt(d.ci[1])}]</td><td>{_fmt_p(d.p_value)}</td><td>{verdict}</td></tr>"
        )
    return (
        "<table><tr><th>pair (a − b)</th><th>metric</th><th>a</th><th>b</th><th>a − b [95 % CI]</th>"
        f"<th>p</th><th>verdict</th></tr>{''.join(rows)}</table>"
        "<p class='note'>Per-image differences on the same test images: percentile bootstrap CI over images and "
        "two-sided sign-flip permutation p-value. Arrows give each metric's better direction. Also in "
        "<a href='comparisons.json'>comparisons.json</a>.</p>"
    )


def _img_tag(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th small{font-weight:normal;color:#666}
td.na{color:#999;font-size:12px;max-width:320px;word-break:break-all}
img{max-width:100%;border:1px solid #eee;margin:4px 0}
.note{color:#555;font-size:13px}
code{background:#f4f4f4;padding:1px 4px}
"""


def write_report(
    out_dir: str | os.PathLike,
    *,
    stimuli: np.ndarray,
    reconstructions: Mapping[str, np.ndarray],
    metrics: Mapping[str, SuiteResult],
    title: str = "brainrecon evaluation",
    extra_sections: Sequence[tuple[str, str]] | Mapping[str, str] | None = None,
    n_grid: int = 12,
    n_best: int = 4,
    rank_metric: str | None = None,
    chains: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write a self-contained HTML report (plus ``metrics.json``, ``per_image.csv``, ``figures/``).

    Parameters
    ----------
    out_dir : path
        Output folder (created).
    stimuli : ndarray, shape (n, 3, H, W), float in [0, 1]
    reconstructions : mapping of method name to ndarray (n, 3, h, w)
    metrics : mapping of method name to SuiteResult
        As returned by :func:`brainrecon.metrics.evaluate_methods`.
    title : str
    extra_sections : sequence of (heading, HTML fragment) or mapping, optional
        Appended as they are (the caller is responsible for their HTML).
    n_grid : int
        Number of images in the stimulus/reconstruction grid (the first ``n_grid``).
    n_best : int
        Number of best and of worst reconstructions shown per method.
    rank_metric : str, optional
        Metric that ranks best/worst (default: first available of :data:`RANK_PREFERENCE`).
    chains : mapping of title to method names, optional
        Multi-stage reconstructions shown stage by stage (e.g. ``{"Brain-Diffuser":
        ["vdvae", "versatile"]}``): one grid each, stimulus first, then every stage.

    Returns
    -------
    Path
        ``out_dir / "index.html"``.
    """
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    stimuli = np.asarray(stimuli)
    for m, r in reconstructions.items():
        if len(r) != len(stimuli):
            raise ShapeMismatchError(f"reconstructions[{m!r}] count", len(stimuli), len(r))
    missing = sorted(set(reconstructions) - set(metrics))
    if missing:
        raise ShapeMismatchError("methods with metrics", sorted(reconstructions), sorted(metrics),
                                 f"no metrics for {missing}")
    write_metrics(out, metrics)
    first = next(iter(metrics.values()))
    presets = sorted({r.preset for r in metrics.values()})

    def save(name: str, data: bytes) -> str:
        (fig_dir / name).write_bytes(data)
        return _img_tag(data, name)

    idx = list(range(min(n_grid, len(stimuli))))
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p><b>Preset:</b> <code>{html.escape(', '.join(presets))}</code> — "
        f"{html.escape(str(first.settings.get('preset_description', '')))}<br>"
        f"<b>Images:</b> {first.n_images}; <b>methods:</b> {html.escape(', '.join(metrics))}; "
        f"bootstrap resamples {first.settings.get('n_boot')}, permutations {first.settings.get('n_perm')}, "
        f"seed {first.settings.get('seed')}.</p>",
        '<p class="note">Files: <a href="metrics.json">metrics.json</a>, <a href="per_image.csv">per_image.csv</a>, '
        '<a href="figures/">figures/</a></p>',
        "<h2>Stimuli and reconstructions</h2>",
        save("grid.png", grid_png(stimuli, reconstructions, idx, "first images: stimulus (top) and each method")),
    ]
    for k, (name, stages) in enumerate((chains or {}).items()):
        unknown = [m for m in stages if m not in reconstructions]
        if unknown:
            raise ShapeMismatchError(f"chains[{name!r}] methods", sorted(reconstructions), stages, f"unknown {unknown}")
        parts += [
            f"<h3>{html.escape(name)}, stage by stage</h3>",
            save(f"chain_{k}.png", grid_png(stimuli, {m: reconstructions[m] for m in stages}, idx,
                                                f"{name}: stimulus, then {' -> '.join(stages)}")),
        ]
    parts += [
        "<h2>Metrics</h2>",
        _metric_table(metrics),
    ]
    bars = _bars_figure(metrics)
    if bars is not None:
        parts += ["<h2>Bar plots</h2>", save("bars.png", bars)]
    parts.append("<h2>Best and worst reconstructions</h2>")
    for k, (m, recon) in enumerate(reconstructions.items()):
        metric = _rank_metric(metrics[m], rank_metric)
        if metric is None:
            parts.append(f"<p>{html.escape(m)}: no per-image metric available to rank.</p>")
            continue
        parts.append(f"<h3>{html.escape(m)} <small>(ranked by {html.escape(metric)})</small></h3>")
        parts.append(save(f"best_worst_{k}.png", _best_worst_figure(stimuli, recon, metrics[m], metric, n_best, m)))
    sections = extra_sections.items() if isinstance(extra_sections, Mapping) else (extra_sections or [])
    for heading, fragment in sections:
        parts += [f"<h2>{html.escape(heading)}</h2>", fragment]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
