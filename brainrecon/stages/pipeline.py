"""Assemble the stages of one experiment from a plain configuration mapping.

The Hydra entry point (``pipelines/run.py``) resolves the configuration and
builds the latent spaces; everything here is plain Python, so tests and
notebooks run experiments without Hydra.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainrecon.errors import ConfigError
from brainrecon.latents.base import LatentSpace
from brainrecon.stages.base import Artifact, ArtifactStore, Execution, Runner, Stage
from brainrecon.stages.data import DataStage
from brainrecon.stages.evaluate import EvaluateStage
from brainrecon.stages.extract import ExtractStage
from brainrecon.stages.fit import FitStage
from brainrecon.stages.generate import GenerateStage
from brainrecon.stages.predict import PredictStage
from brainrecon.stages.roi import build_roi_stage

log = logging.getLogger("brainrecon")

STAGE_ORDER = ("data", "extract", "fit", "predict", "generate", "evaluate", "roi")


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` produced."""

    artifacts: dict[str, Artifact] = field(default_factory=dict)
    executions: list[Execution] = field(default_factory=list)

    @property
    def report(self) -> Path | None:
        ev = self.artifacts.get("evaluate")
        if ev is None:
            return None
        p = ev.path / "report" / "index.html"
        return p if p.exists() else None


def _section(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = cfg.get(name) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name}: expected a mapping, got {type(value).__name__}")
    return dict(value)


def predict_params(section: dict[str, Any], space: str) -> dict[str, Any]:
    """The predict section as one space sees it: a per-space ``rescale`` mapping is resolved here.

    ``predict.rescale`` is a method name for every target, or a mapping with an optional
    ``default`` and one entry per space (a method name, or a mapping target -> method). Each
    space's predict stage receives only its own entry, so changing one space's rescaling does
    not invalidate the others' caches.
    """
    value = section.get("rescale", "none")
    if isinstance(value, Mapping):
        value = value.get(space, value.get("default", "none"))
        if isinstance(value, Mapping):
            value = dict(value)
    return {**section, "rescale": value}


def build_stages(cfg: Mapping[str, Any], spaces: Mapping[str, LatentSpace]) -> dict[str, Stage]:
    """Build the stage graph of an experiment.

    Parameters
    ----------
    cfg : Mapping
        Resolved configuration with sections ``data``, ``latents``, ``extract``,
        ``decoder``, ``predict``, ``generate``, ``metrics`` and keys ``subject``,
        ``seed``, ``device``.
    spaces : Mapping[str, LatentSpace]
        The built latent spaces, by the names used in ``cfg["latents"]``.

    Returns
    -------
    dict
        Stages by name: ``"data"``, ``"extract/<space>"``, ``"fit/<space>"``,
        ``"predict/<space>"``, ``"generate/<space>"``, ``"evaluate"``, ``"roi"`` (section ``roi``;
        it runs only when ``until="roi"``).
    """
    latents_cfg = _section(cfg, "latents")
    if set(latents_cfg) != set(spaces):
        raise ConfigError(f"latents: configured spaces {sorted(latents_cfg)} but built {sorted(spaces)}")
    if not spaces:
        raise ConfigError("latents: at least one latent space is required")
    subject = cfg.get("subject", 1)
    scope = f"subj{int(subject):02d}" if str(subject).isdigit() else str(subject)
    seed = int(cfg.get("seed", 0))
    device = cfg.get("device", "cpu")
    base_res = {"device": device}

    stages: dict[str, Stage] = {}
    data = DataStage(_section(cfg, "data"), scope=scope, resources=base_res)
    stages["data"] = data
    decoder = _section(cfg, "decoder")
    per_target = dict(decoder.pop("targets", None) or {})
    gen_cfg = _section(cfg, "generate")
    init_from = dict(gen_cfg.pop("init_from", None) or {})
    for name in spaces:  # spaces whose generation starts from another's images come after it
        src = init_from.get(name)
        if src is not None and src not in spaces:
            raise ConfigError(f"generate.init_from.{name}: expected one of {sorted(spaces)}, got {src!r}")
    ordered = sorted(spaces, key=lambda s: s in init_from)
    for name in ordered:
        space = spaces[name]
        res = {**base_res, "space": space}
        space_cfg = dict(latents_cfg[name])
        ex = ExtractStage(
            {"space": space_cfg, **_section(cfg, "extract")},
            {"data": data},
            scope=scope,
            resources=res,
            label=f"extract/{name}",
        )
        fit = FitStage(
            {"decoder": decoder, "targets": dict(per_target.get(name) or {})},
            {"data": data, "extract": ex},
            scope=scope,
            resources=res,
            label=f"fit/{name}",
        )
        pred = PredictStage(
            predict_params(_section(cfg, "predict"), name),
            {"data": data, "extract": ex, "fit": fit},
            scope=scope,
            resources=res,
            label=f"predict/{name}",
        )
        up: dict[str, Stage] = {"extract": ex, "predict": pred}
        if name in init_from:
            up["init"] = stages[f"generate/{init_from[name]}"]
        gen_params: dict[str, Any] = {"seed": seed, **gen_cfg}
        decode_only = tuple(getattr(space, "decode_params", ()) or ())
        if decode_only:
            # The extract key leaves these out (see ExtractStage.key), so the images must key on them.
            gen_params["decode"] = {k: space_cfg[k] for k in decode_only if k in space_cfg}
        gen = GenerateStage(gen_params, up, scope=scope, resources=res, label=f"generate/{name}")
        stages.update({f"extract/{name}": ex, f"fit/{name}": fit, f"predict/{name}": pred, f"generate/{name}": gen})
    ev_up: dict[str, Stage] = {"data": data}
    for name in spaces:
        ev_up[f"generate/{name}"] = stages[f"generate/{name}"]
        ev_up[f"predict/{name}"] = stages[f"predict/{name}"]
        ev_up[f"extract/{name}"] = stages[f"extract/{name}"]
    stages["evaluate"] = EvaluateStage(
        {"seed": seed, "experiment": cfg.get("name", "experiment"), "chains": init_from, **_section(cfg, "metrics")},
        ev_up,
        scope=scope,
        resources={**base_res, "spaces": dict(spaces)},
    )
    stages["roi"] = build_roi_stage(_section(cfg, "roi"), stages, spaces, scope=scope, seed=seed, chains=init_from,
                                    resources=base_res)
    return stages


def run_experiment(
    cfg: Mapping[str, Any],
    spaces: Mapping[str, LatentSpace],
    *,
    artifacts_root: str | Path,
    force: Sequence[str] = (),
    until: str = "evaluate",
    progress: bool = True,
) -> ExperimentResult:
    """Run an experiment's stages up to ``until`` (inclusive), reusing complete artifacts.

    Parameters
    ----------
    cfg, spaces
        See :func:`build_stages`.
    artifacts_root : path
        Root of the artifact store.
    force : sequence of str
        Stage names (``"fit"``) to rerun with their descendants; ``"*"`` for all.
    until : str
        Last stage to run, one of :data:`STAGE_ORDER`.
    """
    if until not in STAGE_ORDER:
        raise ConfigError(f"until: expected one of {list(STAGE_ORDER)}, got {until!r}")
    unknown = sorted(set(force) - set(STAGE_ORDER) - {"*"})
    if unknown:
        raise ConfigError(f"force: expected stage names from {list(STAGE_ORDER)} or '*', got {unknown}")
    stages = build_stages(cfg, spaces)
    runner = Runner(ArtifactStore(artifacts_root), force=force, progress=progress)
    wanted = STAGE_ORDER[: STAGE_ORDER.index(until) + 1]
    result = ExperimentResult()
    for sname, stage in stages.items():
        if sname.split("/")[0] in wanted:
            result.artifacts[sname] = runner.run(stage)
    result.executions = runner.executions
    return result
