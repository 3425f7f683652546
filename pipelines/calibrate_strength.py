"""Choose a chain's img2img strength on held-out training images: ``python -m pipelines.calibrate_strength``.

Runs the experiment's data and extract stages it needs (complete ones are reused) and the
calibrate stage (:mod:`brainrecon.stages.calibrate`), then prints every metric per strength,
the strength the rule picks and where the figures are. The test set is not read. The result is
a recommendation: apply it with ``latents.<space>.strength=<value>``.

Examples
--------
::

    python -m pipelines.calibrate_strength                                  # the default experiment
    python -m pipelines.calibrate_strength calibrate.strengths=[0.4,0.5,0.6] calibrate.n_holdout=100
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipelines.config import build_spaces, run_reporting_errors, to_plain

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("brainrecon")


def format_calibration(result: dict) -> str:
    """The calibration table as text: one row per image set, one column per metric (mean)."""
    labels = result["labels"]
    rows = [labels["init"]] + [labels[f"strength={s:g}"] for s in result["strengths"]]
    metrics = [m for m in result["metrics"][rows[0]] if m != "MSE"]
    width = max(len(r) for r in rows) + 2
    lines = [" " * width + "".join(f"{m:>20}" for m in metrics)]
    for r in rows:
        vals = [result["metrics"][r].get(m, {}).get("mean") for m in metrics]
        lines.append(f"{r:<{width}}" + "".join(f"{'n/a' if v is None else f'{v:.3f}':>20}" for v in vals))
    return "\n".join(lines)


def execute(cfg: DictConfig) -> Path:
    """Run the calibrate stage of the configured experiment; return its artifact folder."""
    from brainrecon.stages.base import ArtifactStore, Runner
    from brainrecon.stages.calibrate import build_calibrate_stage
    from brainrecon.stages.pipeline import build_stages

    plain = to_plain(cfg)
    spaces = build_spaces(cfg)
    stages = build_stages(plain, spaces)
    stage = build_calibrate_stage(
        plain.get("calibrate") or {}, stages, spaces, experiment=plain, scope=stages["data"].scope,
        seed=int(plain.get("seed", 0)), resources={"device": plain.get("device", "cpu")},
    )
    runner = Runner(ArtifactStore(plain["paths"]["artifacts_root"]), force=list(plain.get("force") or []),
                    progress=bool(plain.get("progress", True)))
    art = runner.run(stage)
    ran = ", ".join(f"{e.label or e.stage}({e.seconds:.1f}s)" for e in runner.executions) or "nothing (all stages complete)"
    print(f"[brainrecon] strength calibration of {plain.get('name')}, subject {plain.get('subject')}: ran {ran}")
    result = art.json("calibration")
    print(format_calibration(result))
    print(f"rule: {result['rule']} (floor {result['pixcorr_floor']:.3f})")
    if result["unavailable_metrics"]:
        print(f"unavailable (backbone weights absent): {', '.join(result['unavailable_metrics'])}")
    configured = getattr(spaces[result["space"]], "strength", None)
    print(f"[brainrecon] chosen strength: {result['chosen_strength']} "
          f"(configured: {configured}); apply with latents.{result['space']}.strength=<value>")
    print(f"[brainrecon] figures: {(art.path / 'figures').resolve()}")
    return art.path


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="calibrate_strength")
def _main(cfg: DictConfig) -> None:
    run_reporting_errors(execute, cfg)


def main() -> None:
    """Entry point."""
    logging.basicConfig(level=logging.WARNING)
    _main()


if __name__ == "__main__":
    main()
