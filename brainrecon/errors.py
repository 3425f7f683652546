"""Exceptions raised by brainrecon, in one place.

Every error names the file or parameter concerned and states what was expected and
what was found, so that a user can fix the input without reading a traceback.
"""

from __future__ import annotations

from pathlib import Path


class BrainreconError(Exception):
    """Base class of every error raised on purpose by brainrecon."""


class ConfigError(BrainreconError, ValueError):
    """A configuration key or parameter has an invalid value."""


class DataFormatError(BrainreconError, ValueError):
    """A data file exists but does not have the expected layout or content."""


class ShapeMismatchError(BrainreconError, ValueError):
    """Two arrays (or an array and a fitted model) disagree in shape."""

    def __init__(self, what: str, expected: object, got: object, hint: str = "") -> None:
        msg = f"{what}: expected {expected}, got {got}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)
        self.expected = expected
        self.got = got


class MissingDataError(BrainreconError, FileNotFoundError):
    """A data file or folder the configuration points to does not exist."""

    def __init__(self, path: str | Path, what: str = "data file", hint: str = "") -> None:
        msg = f"{what} not found: {path}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)
        self.path = Path(path)


class MissingWeightsError(BrainreconError, FileNotFoundError):
    """Published or trained weights are not at the configured path.

    brainrecon never falls back to random weights: the error names the path that
    was looked at and the file the user has to obtain.
    """

    def __init__(self, path: str | Path, what: str, hint: str = "") -> None:
        msg = f"weights for {what} not found at {path}"
        if hint:
            msg += f"; {hint}"
        super().__init__(msg)
        self.path = Path(path)


class StageError(BrainreconError, RuntimeError):
    """A pipeline stage failed or its inputs are inconsistent."""
