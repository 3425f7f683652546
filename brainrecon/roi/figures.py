"""Figures of an ROI exploration (matplotlib ``Figure`` objects; pyplot's state is left alone).

Every function returns a :class:`matplotlib.figure.Figure` drawn on the Agg canvas, so it works
without a display and shows inline in notebooks; :func:`save_figure` writes a PNG.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError

__all__ = [
    "roi_images_figure",
    "closed_loop_figure",
    "eccentricity_figure",
    "weights_figure",
    "summary_figure",
    "save_figure",
    "save_exploration_figures",
]

_GROUP_COLOURS = {"category": "#c0392b", "visual": "#2471a3", "eccentricity": "#229954", "custom": "#7d3c98"}


def _figure(**kwargs: Any) -> Any:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return path


def roi_images_figure(
    images: Mapping[str, np.ndarray],
    rois: Sequence[str],
    *,
    baseline: Mapping[str, np.ndarray] | None = None,
    groups: Mapping[str, str] | None = None,
    title: str = "ROI-optimal images",
    tile: float = 1.15,
) -> Any:
    """Grid of ROI images: one row per image set (space), one column per ROI (baseline first).

    Parameters
    ----------
    images : mapping space -> (n_rois, H, W, 3) uint8
    rois : ROI names (column titles)
    baseline : mapping space -> (1, H, W, 3) uint8, optional
        Shown in a first column ("baseline": the decode of the intercepts).
    groups : mapping ROI -> group, optional
        Colours the column titles by group.
    """
    spaces = list(images)
    if not spaces:
        raise ConfigError("roi_images_figure: expected at least one image set")
    extra = 1 if baseline else 0
    cols = len(rois) + extra
    fig = _figure(figsize=(tile * cols + 0.9, tile * len(spaces) + 0.8))
    axes = fig.subplots(len(spaces), cols, squeeze=False)
    for r, space in enumerate(spaces):
        row = ([("baseline", baseline[space][0])] if baseline else []) + [(n, images[space][i]) for i, n in enumerate(rois)]
        for c, (name, img) in enumerate(row):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest" if img.shape[0] < 64 else "antialiased")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                colour = "#555555" if name == "baseline" else _GROUP_COLOURS.get((groups or {}).get(name, "custom"), "k")
                ax.set_title(name, fontsize=10, color=colour)
            if c == 0:
                ax.set_ylabel(space, fontsize=10)
    fig.suptitle(title, fontsize=12)
    fig.subplots_adjust(wspace=0.05, hspace=0.08)
    return fig


def draws_figure(exploration: Any, space: str, *, draws: int = 6) -> Any:
    """The first ``draws`` draws of every ROI image of ``space``, one row per draw, each with its own baseline.

    Parameters
    ----------
    exploration : RoiExploration with ``samples`` (``roi.samples`` > 1)
    space : image set to show
    draws : number of draws (rows) at most
    """
    if not exploration.samples or space not in exploration.samples:
        raise ConfigError(f"draws_figure: no samples of {space!r} (the exploration was run with one draw per ROI)")
    seed = int(exploration.info.get("seed", 0))
    stack, base = exploration.samples[space], exploration.baseline_samples[space]
    n = min(int(draws), len(stack))
    rows = {f"seed {seed + k}": stack[k] for k in range(n)}
    return roi_images_figure(rows, exploration.rois, baseline={f"seed {seed + k}": base[k] for k in range(n)},
                             groups={s.name: s.group for s in exploration.specs},
                             title=f"{space}: ROI images of {n} of {len(stack)} draws (decoding seeds)")


def closed_loop_figure(result: Any, space: str, *, title: str | None = None) -> Any:
    """Heat map of ROI responses to ROI images, and each ROI image against the natural test stimuli.

    Left: ``responses[i, j]``, the mean z-scored response of ROI j (columns) to the ROI-optimal
    image of ROI i (rows); boxes mark each ROI's own image. Right: per ROI, the distribution of
    its response over the natural test stimuli (box: quartiles, whiskers: 5-95 %) and its
    response to its own ROI image (diamond), with the percentile.
    """
    M = np.asarray(result.responses[space])
    rois = list(result.rois)
    n = len(rois)
    fig = _figure(figsize=(6.0 + 0.42 * n, 1.6 + 0.42 * n))
    gs = fig.add_gridspec(1, 2, width_ratios=[max(n, 2), 5], wspace=0.35)
    ax = fig.add_subplot(gs[0, 0])
    lim = float(np.nanmax(np.abs(M))) or 1.0
    im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{M[i, j]:.1f}", ha="center", va="center", fontsize=7 if n > 8 else 9,
                    color="white" if abs(M[i, j]) > 0.6 * lim else "black")
        ax.add_patch(_rect(i))
    ax.set_xticks(range(n))
    ax.set_xticklabels(rois, rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(n))
    ax.set_yticklabels(rois, fontsize=9)
    ax.set_xlabel("response of ROI (mean z over its voxels)", fontsize=9)
    ax.set_ylabel("ROI-optimal image of", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    ax2 = fig.add_subplot(gs[0, 1])
    nat = np.asarray(result.natural)
    import matplotlib as mpl

    # matplotlib 3.10 replaced `vert` by `orientation`
    horizontal = {"orientation": "horizontal"} if tuple(int(v) for v in mpl.__version__.split(".")[:2]) >= (3, 10) \
        else {"vert": False}
    ax2.boxplot([nat[:, i] for i in range(n)], positions=range(n), **horizontal, whis=(5, 95), widths=0.6,
                showfliers=False, patch_artist=True, boxprops={"facecolor": "#dddddd", "edgecolor": "#888888"},
                medianprops={"color": "#555555"})
    rows = {r["roi"]: r for r in result.table(space)}
    for i, roi in enumerate(rois):
        colour = _GROUP_COLOURS.get(result.groups.get(roi, "custom"), "k")
        ax2.plot(M[i, i], i, marker="D", color=colour, markersize=7)
        ax2.text(1.02, i, f"{rows[roi]['percentile']:.0f}th", transform=ax2.get_yaxis_transform(), va="center",
                 fontsize=9, color=colour)
    ax2.set_yticks(range(n))
    ax2.set_yticklabels(rois, fontsize=9)
    ax2.invert_yaxis()
    ax2.set_xlabel("ROI response: natural test stimuli (box) vs its ROI image (diamond)", fontsize=9)
    ax2.axvline(0, color="#999999", lw=0.6)
    ax2.tick_params(axis="x", labelsize=8)
    ax.tick_params(axis="both", length=0)
    fig.suptitle(title or f"Closed loop, {space} images — {result.model}", fontsize=11)
    return fig


def _rect(i: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="k", lw=1.4)


def eccentricity_figure(energy: Mapping[str, Any], specs: Sequence[Any], *, title: str = "Where ROI images put their energy") -> Any:
    """Energy density per eccentricity ring of the eccentricity-band images, and preferred vs nominal eccentricity
    of their energy and (where measured) of the contrast they add.

    Parameters
    ----------
    energy : mapping space -> EnergyResult
    specs : the ROI specs of the exploration (eccentricity bands are those with ``ecc_range``)
    """
    bands = [s for s in specs if s.ecc_range is not None]
    visual = [s for s in specs if s.group == "visual"]
    spaces = list(energy)
    with_contrast = bool(bands) and all(energy[sp].contrast_preferred_ecc is not None for sp in spaces)
    n_panels = len(spaces) + 1 + int(with_contrast)
    fig = _figure(figsize=(4.0 * len(spaces) + 4.2 * (1 + int(with_contrast)), 3.6))
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    import matplotlib as mpl

    cmap = mpl.colormaps["viridis"]
    for k, space in enumerate(spaces):
        e = energy[space]
        ax = axes[k]
        centres = np.arange(len(e.edges))
        labels = [f"{lo:g}-{hi:g}" for lo, hi in zip(e.edges[:-1], e.edges[1:])] + [f">{e.edges[-1]:g}"]
        for b, s in enumerate(bands):
            i = e.rois.index(s.name)
            prof = e.profile[i] / max(e.profile[i].sum(), 1e-12)
            ax.plot(centres, prof, "-o", color=cmap(b / max(len(bands) - 1, 1)), label=s.name, ms=4)
        ax.set_xticks(centres)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_xlabel("eccentricity ring (deg)", fontsize=9)
        ax.set_ylabel("share of energy density", fontsize=9)
        ax.set_title(space, fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        if k == 0 and bands:
            ax.legend(fontsize=8, title="ROI image", title_fontsize=8)
    if bands:
        _band_panel(axes[len(spaces)], energy, bands, "preferred_ecc", "preferred eccentricity of its image (deg)",
                    "eccentricity bands: energy")
        if with_contrast:
            _band_panel(axes[len(spaces) + 1], energy, bands, "contrast_preferred_ecc",
                        "preferred eccentricity of the contrast added (deg)", "eccentricity bands: contrast added")
    elif visual:
        ax = axes[-1]
        for k, space in enumerate(spaces):
            e = energy[space]
            ax.plot(range(len(visual)), [e.preferred_ecc[e.rois.index(s.name)] for s in visual], "-o", label=space)
        ax.set_xticks(range(len(visual)))
        ax.set_xticklabels([s.name for s in visual])
        ax.set_ylabel("preferred eccentricity (deg)", fontsize=9)
        ax.legend(fontsize=8)
    else:
        axes[-1].axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _band_panel(ax: Any, energy: Mapping[str, Any], bands: Sequence[Any], attr: str, ylabel: str, title: str) -> None:
    """Preferred eccentricity (``EnergyResult.<attr>``) of each band's image against the band's nominal eccentricity."""
    from matplotlib.ticker import FixedLocator, NullLocator

    spaces = list(energy)
    for space in spaces:
        e = energy[space]
        x = [e.nominal_ecc.get(s.name, np.nan) for s in bands]
        y = [getattr(e, attr)[e.rois.index(s.name)] for s in bands]
        ax.plot(x, y, "-o", label=space, ms=5)
    ref = next((energy[sp] for sp in spaces if all(s.name in energy[sp].reference_ecc for s in bands)), None)
    if ref is not None:  # where the bands actually look (the simulator's effective receptive fields)
        ax.plot([ref.nominal_ecc.get(s.name, np.nan) for s in bands], [ref.reference_ecc[s.name] for s in bands],
                ls=":", marker="s", color="#444444", ms=4, label="effective RFs")
    lims = [0.2, 8.0]
    ax.plot(lims, lims, ls="--", color="#999999", lw=0.8, label="identity")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [0.25, 0.5, 1, 2, 4, 8]
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}" for t in ticks], fontsize=8)
    ax.set_yticklabels([f"{t:g}" for t in ticks], fontsize=8)
    ax.set_xlabel("nominal eccentricity of the band (deg)", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)


def weights_figure(weights: Any, *, title: str = "Voxel-weight percentiles per ROI") -> Any:
    """Grouped bars of the mean voxel-weight percentile per ROI and target, and the semantic index."""
    rois = list(weights.rois)
    targets = list(weights.percentiles)
    has_index = weights.semantic_index is not None
    fig = _figure(figsize=(max(6.0, 0.55 * len(rois) * (1 + has_index) + 3), 3.6))
    axes = fig.subplots(1, 2 if has_index else 1, squeeze=False)[0]
    ax = axes[0]
    width = 0.8 / max(len(targets), 1)
    for k, t in enumerate(targets):
        ax.bar(np.arange(len(rois)) + (k - (len(targets) - 1) / 2) * width, [weights.percentiles[t][r] for r in rois],
               width, label=t)
    ax.axhline(50, color="#999999", lw=0.8, ls="--")
    ax.set_xticks(range(len(rois)))
    ax.set_xticklabels(rois, rotation=60, ha="right", fontsize=9)
    ax.set_ylabel("mean percentile of |w| (L1)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("which voxels each decoder leans on", fontsize=10)
    if has_index:
        ax = axes[1]
        vals = [weights.semantic_index[r] for r in rois]
        ax.bar(range(len(rois)), vals, color=["#c0392b" if v > 0 else "#2471a3" for v in vals])
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(range(len(rois)))
        ax.set_xticklabels(rois, rotation=60, ha="right", fontsize=9)
        sem, low = weights.semantic_pair
        ax.set_ylabel(f"{sem} − {low}", fontsize=9)
        ax.set_title("semantic index", fontsize=10)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def summary_figure(exploration: Any, *, model: str | None = None, space: str | None = None) -> Any:
    """ROI images of every space above the closed-loop heat map of one space (default: the last)."""
    space = space or exploration.spaces[-1]
    if model is None and exploration.closed_loop:  # the simulator's model when there is one
        model = "truth" if "truth" in exploration.closed_loop else next(iter(exploration.closed_loop))
    rois = exploration.rois
    groups = {s.name: s.group for s in exploration.specs}
    n_sp = len(exploration.spaces)
    n = len(rois)
    fig = _figure(figsize=(max(1.05 * (n + 1) + 1, 9), 1.1 * n_sp + (0.42 * n + 2 if model else 0) + 0.8))
    heights = [1.1 * n_sp] + ([0.42 * n + 1.6] if model else [])
    sub = fig.subfigures(len(heights), 1, height_ratios=heights)
    sub = np.atleast_1d(sub)
    axes = sub[0].subplots(n_sp, n + 1, squeeze=False)
    for r, sp in enumerate(exploration.spaces):
        row = [("baseline", exploration.baseline[sp][0])] + [(rn, exploration.images[sp][i]) for i, rn in enumerate(rois)]
        for c, (name, img) in enumerate(row):
            a = axes[r, c]
            a.imshow(img)
            a.set_xticks([])
            a.set_yticks([])
            if r == 0:
                a.set_title(name, fontsize=9, color=_GROUP_COLOURS.get(groups.get(name, ""), "#555555"))
            if c == 0:
                a.set_ylabel(sp, fontsize=9)
    sub[0].suptitle("ROI-optimal images (first column: baseline = decode of the intercepts)", fontsize=11)
    if model:
        res = exploration.closed_loop[model]
        M = np.asarray(res.responses[space])
        ax = sub[1].subplots(1, 1)
        lim = float(np.nanmax(np.abs(M))) or 1.0
        im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        rows = {r["roi"]: r for r in res.table(space)}
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{M[i, j]:.1f}", ha="center", va="center", fontsize=7)
            ax.add_patch(_rect(i))
        ax.set_xticks(range(n))
        ax.set_xticklabels(rois, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n))
        ax.set_yticklabels([f"{r} ({rows[r]['percentile']:.0f}th)" for r in rois], fontsize=8)
        ax.set_ylabel("image of ROI (percentile vs natural test)", fontsize=9)
        ax.set_xlabel("response of ROI (mean z)", fontsize=9)
        sub[1].colorbar(im, ax=ax, fraction=0.03, pad=0.01)
        sub[1].suptitle(f"Closed loop ({model} model), {space} images", fontsize=11)
    return fig


def save_exploration_figures(exploration: Any, folder: str | os.PathLike) -> list[Path]:
    """Write every figure of an exploration as PNGs into ``folder``; returns the paths."""
    folder = Path(folder)
    groups = {s.name: s.group for s in exploration.specs}
    out = [save_figure(roi_images_figure(exploration.images, exploration.rois, baseline=exploration.baseline,
                                         groups=groups), folder / "roi_images.png")]
    for model, res in exploration.closed_loop.items():
        for space in res.responses:
            out.append(save_figure(closed_loop_figure(res, space), folder / f"closed_loop_{model}_{space}.png"))
    if exploration.samples:  # one image is one draw: show how the draws of the final space vary
        space = exploration.spaces[-1]
        out.append(save_figure(draws_figure(exploration, space), folder / f"draws_{space}.png"))
    if exploration.energy:
        out.append(save_figure(eccentricity_figure(exploration.energy, exploration.specs), folder / "eccentricity.png"))
    if exploration.weights is not None:
        out.append(save_figure(weights_figure(exploration.weights), folder / "weights.png"))
    out.append(save_figure(summary_figure(exploration), folder / "summary.png"))
    return out
