"""Run one experiment: ``python -m pipelines.run experiment=NAME [overrides]``.

Also installed as the ``brainrecon`` console script. Errors that brainrecon
raises on purpose (missing data or weights, a bad parameter) are printed as one
short message; ``HYDRA_FULL_ERROR=1`` shows the full traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipelines.config import build_spaces, run_reporting_errors, to_plain

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("brainrecon")


def execute(cfg: DictConfig) -> Path | None:
    """Run the configured experiment; return the report path (None if evaluate was not reached)."""
    from brainrecon.stages.pipeline import run_experiment

    plain = to_plain(cfg)
    spaces = build_spaces(cfg)
    result = run_experiment(
        plain,
        spaces,
        artifacts_root=plain["paths"]["artifacts_root"],
        force=list(plain.get("force") or []),
        until=plain.get("until", "evaluate"),
        progress=bool(plain.get("progress", True)),
    )
    ran = ", ".join(f"{e.label or e.stage}({e.seconds:.1f}s)" for e in result.executions) or "nothing (all stages complete)"
    print(f"[brainrecon] experiment {plain.get('name')}, subject {plain.get('subject')}: ran {ran}")
    if result.report is not None:
        print(f"[brainrecon] report: {result.report.resolve()}")
    return result.report


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="run")
def _main(cfg: DictConfig) -> None:
    run_reporting_errors(execute, cfg)


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING)
    _main()


if __name__ == "__main__":
    main()
