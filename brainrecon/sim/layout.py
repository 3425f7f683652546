"""Where the simulator keeps its ground truth beside the NSD files it writes.

The NSD files themselves follow the real layout, defined once in
:class:`brainrecon.data.nsd.NSDLayout`; the simulator writes through it so that the
writer and the loader can never disagree on a path.
"""

from __future__ import annotations

from pathlib import Path

from brainrecon.data.nsd import NSDLayout
from brainrecon.preprocessing import NSD_BETA_SCALE as BETA_SCALE  # noqa: F401  (int16 = percent x 300)

TRUTH_DIR = "brainrecon_sim"


def nsd(root: str | Path) -> NSDLayout:
    """The NSD layout under ``root``."""
    return NSDLayout(Path(root))


def truth_dir(root: str | Path) -> Path:
    return Path(root) / TRUTH_DIR
