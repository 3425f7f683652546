"""Shared pytest configuration: markers live in pyproject.toml; fixtures here are tiny and generic."""

from __future__ import annotations

import pytest


@pytest.fixture
def artifacts(tmp_path):
    """A fresh artifact root."""
    return tmp_path / "artifacts"
