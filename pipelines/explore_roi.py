"""What does a brain region want to see? ``python -m pipelines.explore_roi [overrides]``.

Takes ROI names or NIfTI masks (``roi.rois=[faces,places,/path/mask.nii.gz]``; default: the
reference set of the data, Brain-Diffuser's 13 ROIs on NSD-like data), runs the experiment's
stages it needs (data, extract, fit and generate; complete ones are reused, so after
``make demo`` only the roi stage runs) and the roi stage, then prints the closed-loop table and
where the images, the tables (``closed_loop_*.csv``) and the figures (``figures/summary.png``)
are. ``out_dir=PATH`` also copies them there.

Examples
--------
::

    python -m pipelines.explore_roi                                   # the 13 ROIs of Brain-Diffuser
    python -m pipelines.explore_roi roi.rois=[faces,places,V1]
    python -m pipelines.explore_roi 'roi.rois=[data/my_roi.nii.gz]' out_dir=roi_out
    python -m pipelines.explore_roi +roi.scaling.vdvae.z.method=unit  # a non-transductive VDVAE scaling
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipelines.config import build_spaces, run_reporting_errors, to_plain

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("brainrecon")


def execute(cfg: DictConfig) -> Path:
    """Run the roi stage of the configured experiment; return its artifact folder."""
    from brainrecon.roi.explore import RoiExploration
    from brainrecon.stages.base import ArtifactStore, Runner
    from brainrecon.stages.pipeline import build_stages

    plain = to_plain(cfg)
    spaces = build_spaces(cfg)
    stages = build_stages(plain, spaces)
    runner = Runner(ArtifactStore(plain["paths"]["artifacts_root"]), force=list(plain.get("force") or []),
                    progress=bool(plain.get("progress", True)))
    art = runner.run(stages["roi"])
    ran = ", ".join(f"{e.label or e.stage}({e.seconds:.1f}s)" for e in runner.executions) or "nothing (all stages complete)"
    print(f"[brainrecon] ROI exploration of {plain.get('name')}, subject {plain.get('subject')}: ran {ran}")
    exploration = RoiExploration.load(art.path)
    for model, res in exploration.closed_loop.items():
        space = exploration.spaces[-1]
        print(f"\nclosed loop, {space} images, {res.model}:")
        print(res.format_table(space))
    for space in exploration.spaces:
        order = exploration.eccentricity_ordering(space)
        if order is not None:
            vals = ", ".join(f"{r} {v:.2f}" for r, v in zip(order["rois"], order["values"]))
            print(f"eccentricity of {space} images' energy (deg): {vals}; Spearman {order['spearman']:.2f}")
            if "contrast" in order:
                c = order["contrast"]
                vals = ", ".join(f"{r} {v:.2f}" for r, v in zip(order["rois"], c["values"]))
                print(f"eccentricity of the contrast {space} images add (deg): {vals}; Spearman {c['spearman']:.2f}")
    print(f"\n[brainrecon] images:  {(art.path / 'images').resolve()}")
    print(f"[brainrecon] tables:  {', '.join(str((art.path / f'closed_loop_{m}.csv').resolve()) for m in exploration.closed_loop)}")
    print(f"[brainrecon] figure:  {(art.path / 'figures' / 'summary.png').resolve()}")
    out_dir = plain.get("out_dir")
    if out_dir:
        out = Path(out_dir).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        for name in ("images", "figures"):
            shutil.copytree(art.path / name, out / name, dirs_exist_ok=True)
        for p in art.path.glob("closed_loop_*.csv"):
            shutil.copy2(p, out / p.name)
        shutil.copy2(art.path / "summary.json", out / "summary.json")
        print(f"[brainrecon] copied to {out.resolve()}")
    return art.path


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="roi_explore")
def _main(cfg: DictConfig) -> None:
    run_reporting_errors(execute, cfg)


def main() -> None:
    """Entry point."""
    logging.basicConfig(level=logging.WARNING)
    _main()


if __name__ == "__main__":
    main()
