"""The evaluate stage (wired to brainrecon.metrics and brainrecon.report)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from brainrecon.stages.base import Artifact, RunContext, Stage


class EvaluateStage(Stage):
    name = "evaluate"
    version = 1

    def run(self, inputs: Mapping[str, Artifact], ctx: RunContext) -> dict[str, Any]:
        raise NotImplementedError("evaluate stage: in progress")
