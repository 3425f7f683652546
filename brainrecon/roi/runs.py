"""Find a run's artifacts and draw its reconstructions and metrics (used by the notebooks).

A *run* is one complete ``evaluate`` artifact and everything upstream of it: the data
artifact, and per latent space the extract, fit, predict and generate artifacts (read from the
manifests' ``inputs``, so nothing is recomputed and no configuration is needed). The ``roi``
artifacts built on the same data and decoders are found the same way.

:func:`find_run` picks the most recent run of a subject (optionally of one experiment);
:func:`gallery_figure`, :func:`metric_bars_figure` and :func:`per_image_figure` draw it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brainrecon.errors import ConfigError, MissingDataError
from brainrecon.stages.base import Artifact, ArtifactStore

__all__ = [
    "Run", "find_run", "list_runs", "gallery_figure", "metric_bars_figure", "per_image_figure", "scope_name",
    "as_png", "metrics_table", "format_rows", "stimuli_figure",
]


def scope_name(subject: int | str) -> str:
    """``1`` -> ``subj01``; other strings are returned as they are."""
    return f"subj{int(subject):02d}" if str(subject).isdigit() else str(subject)


@dataclass
class Run:
    """The artifacts of one evaluated run (see the module docstring)."""

    store: ArtifactStore
    scope: str
    evaluate: Artifact
    data: Artifact
    extract: dict[str, Artifact] = field(default_factory=dict)
    fit: dict[str, Artifact] = field(default_factory=dict)
    predict: dict[str, Artifact] = field(default_factory=dict)
    generate: dict[str, Artifact] = field(default_factory=dict)

    @property
    def experiment(self) -> str:
        return str(self.evaluate.manifest["params"].get("experiment", "?"))

    @property
    def spaces(self) -> list[str]:
        """Latent spaces, chained ones after the space they start from."""
        from brainrecon.roi.explore import chain_order

        return chain_order(sorted(self.generate), self.chains)

    @property
    def chains(self) -> dict[str, str]:
        return dict(self.evaluate.manifest["params"].get("chains") or {})

    def metrics(self) -> dict[str, Any]:
        """``report/metrics.json`` of the evaluate artifact."""
        return self.evaluate.json("report/metrics")

    def per_image(self) -> list[dict[str, str]]:
        """Rows of ``report/per_image.csv`` (method, image, one column per metric)."""
        with open(self.evaluate.file("report/per_image.csv"), newline="") as fh:
            return list(csv.DictReader(fh))

    def stimuli(self, split: str = "test") -> np.ndarray:
        """Stimuli ``(n, H, W, 3)`` uint8 of a split."""
        if split not in ("train", "test"):
            raise ConfigError(f"split: expected 'train' or 'test', got {split!r}")
        return np.asarray(self.data.array(f"stimuli_{split}"))

    def images(self, space: str, kind: str = "reconstruction") -> np.ndarray:
        """Generated images ``(n_test, H, W, 3)`` uint8 of one space (``reconstruction``, ``ceiling``, ``chance``)."""
        if space not in self.generate:
            raise ConfigError(f"space: expected one of {sorted(self.generate)}, got {space!r}")
        gen = self.generate[space]
        if kind not in gen.summary.get("kinds", []):
            raise ConfigError(f"kind: the generate artifact of {space!r} has {gen.summary.get('kinds')}, not {kind!r}")
        return np.asarray(gen.array(kind))

    def roi_artifacts(self) -> list[Artifact]:
        """Complete ``roi`` artifacts built on this run's data and decoders, newest first."""
        fit_keys = {f"fit/{s}": a.key for s, a in self.fit.items()}
        out = []
        for art in self.store.list(self.scope, "roi"):
            inputs = {k: v["key"] for k, v in art.manifest["inputs"].items()}
            if inputs.get("data") != self.data.key:
                continue
            if all(inputs.get(k) == v for k, v in fit_keys.items() if k in inputs) and any(k in inputs for k in fit_keys):
                out.append(art)
        return sorted(out, key=lambda a: a.manifest["timing"]["started"], reverse=True)

    def latest_roi(self, key: str | None = None, *, prefer_default: bool = True) -> Artifact:
        """A ``roi`` artifact of this run: the one with ``key``, else the newest made with the default
        roi parameters (``python -m pipelines.explore_roi`` without roi overrides), else the newest.

        Raises
        ------
        MissingDataError
            None exists (the message names the command that makes one).
        """
        from brainrecon.stages.roi import ROI_DEFAULTS

        arts = self.roi_artifacts()
        if key is not None:
            arts = [a for a in arts if a.key == key]
        if not arts:
            raise MissingDataError(
                self.store.root / self.scope / "roi" / (key or ""), "ROI exploration of this run",
                "run `python -m pipelines.explore_roi` with the run's configuration first",
            )
        if prefer_default and key is None:
            defaults = [a for a in arts
                        if all(a.manifest["params"].get(k) == v for k, v in ROI_DEFAULTS.items() if k in a.manifest["params"])]
            if defaults:
                return defaults[0]
        return arts[0]

    def stage_artifacts(self) -> list[tuple[str, Artifact]]:
        """Every artifact of the run in pipeline order, as (label, artifact)."""
        out: list[tuple[str, Artifact]] = [("data", self.data)]
        for stage in ("extract", "fit", "predict", "generate"):
            out += [(f"{stage}/{s}", getattr(self, stage)[s]) for s in self.spaces if s in getattr(self, stage)]
        out.append(("evaluate", self.evaluate))
        return out

    def describe(self) -> str:
        """One line per stage: label, key and run time (what the run consists of)."""
        lines = [f"{self.experiment}, {self.scope}, artifacts under {self.store.root}"]
        for label, art in self.stage_artifacts():
            secs = art.manifest.get("timing", {}).get("seconds")
            lines.append(f"  {label:<22} {art.key}   {'' if secs is None else f'{secs:8.1f} s'}")
        return "\n".join(lines)

    def roi_voxel_counts(self) -> dict[str, dict[int, int]]:
        """Per ROI label file of the data artifact, the number of voxels per label value (> 0)."""
        from brainrecon.roi.explore import data_labels

        out = {}
        for name, lab in data_labels(self.data).items():
            values, counts = np.unique(lab[lab > 0], return_counts=True)
            out[name] = {int(v): int(c) for v, c in zip(values, counts)}
        return out

    def __repr__(self) -> str:
        return (f"Run({self.experiment}, {self.scope}, evaluate/{self.evaluate.key}, spaces {self.spaces}, "
                f"at {self.store.root})")


def _inputs(art: Artifact) -> dict[str, str]:
    return {k: v["key"] for k, v in art.manifest["inputs"].items()}


def _open_run(store: ArtifactStore, scope: str, ev: Artifact) -> Run:
    ins = _inputs(ev)
    run = Run(store, scope, ev, store.open(scope, "data", ins["data"]))
    for name, key in ins.items():
        stage, _, space = name.partition("/")
        if stage in ("extract", "predict", "generate") and space:
            getattr(run, stage)[space] = store.open(scope, stage, key)
    for space, pred in run.predict.items():
        fit_key = _inputs(pred).get("fit")
        if fit_key:
            run.fit[space] = store.open(scope, "fit", fit_key)
    return run


def list_runs(artifacts_root: str | os.PathLike, subject: int | str = 1) -> list[dict[str, Any]]:
    """Every complete evaluate artifact of a subject: experiment, key, start time, newest first."""
    store = ArtifactStore(artifacts_root)
    scope = scope_name(subject)
    rows = [{"experiment": a.manifest["params"].get("experiment"), "key": a.key, "started": a.manifest["timing"]["started"]}
            for a in store.list(scope, "evaluate")]
    return sorted(rows, key=lambda r: r["started"], reverse=True)


def find_run(
    artifacts_root: str | os.PathLike = "artifacts",
    subject: int | str = 1,
    experiment: str | None = None,
    key: str | None = None,
) -> Run:
    """The most recent evaluated run of a subject (of ``experiment``, or the evaluate ``key``).

    Raises
    ------
    MissingDataError
        No complete evaluate artifact matches (the message says how to make one).
    """
    store = ArtifactStore(artifacts_root)
    scope = scope_name(subject)
    arts = store.list(scope, "evaluate")
    if key is not None:
        arts = [a for a in arts if a.key == key]
    if experiment is not None:
        arts = [a for a in arts if a.manifest["params"].get("experiment") == experiment]
    if not arts:
        what = f"experiment {experiment!r}" if experiment else "any experiment"
        raise MissingDataError(Path(artifacts_root) / scope / "evaluate", f"evaluated run of {what}",
                               "run `python -m pipelines.run` (or `make demo`) first")
    newest = max(arts, key=lambda a: a.manifest["timing"]["started"])
    return _open_run(store, scope, newest)


# --------------------------------------------------------------------------- figures
def _figure(**kwargs: Any) -> Any:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def gallery_figure(
    run: Run,
    *,
    indices: Sequence[int] | None = None,
    n: int = 8,
    kinds: Sequence[str] = ("reconstruction",),
    spaces: Sequence[str] | None = None,
    tile: float = 1.25,
) -> Any:
    """Test stimuli (top row) and, below, each space's images of each kind, one column per image."""
    stim = run.stimuli("test")
    idx = list(indices) if indices is not None else list(range(min(n, len(stim))))
    spaces = list(spaces) if spaces is not None else run.spaces
    rows: list[tuple[str, np.ndarray]] = [("stimulus", stim)]
    for kind in kinds:
        for s in spaces:
            if kind in run.generate[s].summary.get("kinds", []):
                rows.append((s if kind == "reconstruction" else f"{s}\n({kind})", run.images(s, kind)))
    fig = _figure(figsize=(tile * len(idx) + 1.2, tile * len(rows) + 0.6))
    axes = fig.subplots(len(rows), len(idx), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c, i in enumerate(idx):
            ax = axes[r, c]
            ax.imshow(imgs[i])
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"test {i}", fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(f"{run.experiment}, {run.scope}: reconstructions", fontsize=11)
    fig.subplots_adjust(wspace=0.04, hspace=0.06)
    return fig


def metric_bars_figure(run: Run, *, metrics: Sequence[str] | None = None, methods: Sequence[str] | None = None) -> Any:
    """Mean of each metric per method with its bootstrap CI; dashed line: the null mean (wrong pairs)."""
    import matplotlib as mpl

    data = run.metrics()["methods"]
    methods = list(methods) if methods is not None else list(data)
    names: list[str] = []
    for m in methods:
        names += [k for k, v in data[m]["metrics"].items() if v.get("mean") is not None and k not in names
                  and (metrics is None or k in metrics)]
    if not names:
        raise ConfigError(f"metrics: none available for methods {methods}")
    ncol = min(4, len(names))
    nrow = int(np.ceil(len(names) / ncol))
    fig = _figure(figsize=(3.4 * ncol, 2.9 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    colours = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    colour_of = {m: colours[k % len(colours)] for k, m in enumerate(methods)}  # one colour per method throughout
    for ax, name in zip(axes.flat, names):
        shown = [m for m in methods if data[m]["metrics"].get(name, {}).get("mean") is not None]
        for k, m in enumerate(shown):
            v = data[m]["metrics"][name]
            lo, hi = v.get("ci_low"), v.get("ci_high")
            err = None if lo is None or hi is None else [[max(v["mean"] - lo, 0)], [max(hi - v["mean"], 0)]]
            ax.bar(k, v["mean"], color=colour_of[m], yerr=err, capsize=3)
        nulls = [data[m]["metrics"][name].get("null_mean") for m in shown]
        nulls = [x for x in nulls if x is not None]
        if nulls:
            ax.axhline(float(np.mean(nulls)), color="k", ls="--", lw=0.8)
        first = data[shown[0]]["metrics"][name]
        ax.set_title(f"{name} {'↑' if first.get('higher_is_better', True) else '↓'}", fontsize=9)
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels(shown, rotation=40, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"{run.experiment}: metric means with bootstrap CIs (dashed: null mean)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


def per_image_figure(run: Run, metric: str, *, methods: Sequence[str] | None = None) -> Any:
    """Distribution of one metric over test images, per method (box and points)."""
    rows = run.per_image()
    if not rows or metric not in rows[0]:
        raise ConfigError(f"metric: expected a column of per_image.csv ({sorted(rows[0]) if rows else []}), got {metric!r}")
    by: dict[str, list[float]] = {}
    for r in rows:
        if r[metric] != "":
            by.setdefault(r["method"], []).append(float(r[metric]))
    methods = [m for m in (methods if methods is not None else by) if m in by]
    if not methods:
        raise ConfigError(f"metric {metric!r}: no method has per-image values")
    fig = _figure(figsize=(1.0 * len(methods) + 2.5, 3.6))
    ax = fig.subplots()
    ax.boxplot([by[m] for m in methods], positions=range(len(methods)), widths=0.55, showfliers=False)
    rng = np.random.default_rng(0)
    for k, m in enumerate(methods):
        ax.plot(k + rng.uniform(-0.18, 0.18, len(by[m])), by[m], ".", alpha=0.35, ms=3)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(metric, fontsize=9)
    ax.set_title(f"{metric} per test image", fontsize=10)
    fig.tight_layout()
    return fig


def stimuli_figure(run: Run, *, split: str = "train", n: int = 6, tile: float = 1.9) -> Any:
    """The first ``n`` stimuli of a split with their first caption (when the data have captions)."""
    stim = run.stimuli(split)
    caps = run.data.json("captions")[split] if run.data.has("captions.json") else None
    n = min(n, len(stim))
    fig = _figure(figsize=(tile * n, tile + 0.7))
    axes = fig.subplots(1, n, squeeze=False)[0]
    import textwrap

    for i, ax in enumerate(axes):
        ax.imshow(stim[i])
        ax.set_xticks([])
        ax.set_yticks([])
        if caps is not None and caps[i]:
            ax.set_title(textwrap.fill(str(caps[i][0]), 24), fontsize=7)
    fig.suptitle(f"{split} stimuli", fontsize=10)
    return fig


def format_rows(rows: Sequence[dict[str, Any]], digits: int = 3) -> str:
    """Fixed-width text of a list of row dicts (columns: the union of their keys, in order)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]

    def fmt(v: Any) -> str:
        return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))

    cells = [cols] + [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(cols))).rstrip() for c in cells)


def as_png(fig: Any, dpi: int = 100) -> bytes:
    """PNG bytes of a figure (for ``IPython.display.Image`` or files)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def metrics_table(run: Run, methods: Sequence[str] | None = None, metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per method: its metric means (for a quick table in a notebook)."""
    data = run.metrics()["methods"]
    out = []
    for m in (methods if methods is not None else data):
        row: dict[str, Any] = {"method": m}
        for k, v in data[m]["metrics"].items():
            if (metrics is None or k in metrics) and v.get("mean") is not None:
                row[k] = round(float(v["mean"]), 3)
        out.append(row)
    return out

