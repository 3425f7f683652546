"""Provenance of the weights the project trains itself: the ``<weights>.training.json`` beside them.

Every bundled model is trained by a script under ``scripts/``; the provenance file records how
(script, arguments, data, loss trace, wall time, parameter count, file size, library versions),
so that the weights can be checked and reproduced.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def training_provenance(
    script: str,
    arguments: Mapping[str, Any],
    model: Any,
    weights: Path,
    trace: Sequence[Mapping[str, Any]],
    wall_s: float,
    **sections: Any,
) -> dict[str, Any]:
    """The provenance record of one training run.

    Parameters
    ----------
    script : str
        The training script, relative to the repository root.
    arguments : mapping
        Its parsed arguments (paths become strings).
    model : torch.nn.Module
        The trained model (its parameters are counted).
    weights : Path
        The written weights file (its size is recorded).
    trace : sequence of mappings
        Loss trace; its last entry is also recorded as ``final``.
    wall_s : float
        Training wall time in seconds.
    **sections
        Further entries (``training_data``, ``heldout``...), kept in order after ``arguments``.
    """
    import torch

    return {
        "script": script,
        "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in arguments.items()},
        **sections,
        "loss_trace": list(trace),
        "final": trace[-1] if trace else None,
        "wall_time_s": round(float(wall_s), 1),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "weights_bytes": Path(weights).stat().st_size,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
    }


def write_training_provenance(weights: Path, provenance: Mapping[str, Any]) -> Path:
    """Write ``provenance`` as ``<weights stem>.training.json`` beside ``weights``, atomically; return its path."""
    from brainrecon.stages.base import write_json_atomic

    path = Path(weights).with_suffix(".training.json")
    write_json_atomic(path, dict(provenance))
    return path
