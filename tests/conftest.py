"""Shared pytest configuration: markers live in pyproject.toml; fixtures here are tiny and generic."""

from __future__ import annotations

import pytest


@pytest.fixture
def artifacts(tmp_path):
    """A fresh artifact root."""
    return tmp_path / "artifacts"


@pytest.fixture
def tiny_torch_cpu():
    """Keep tiny random torch models fast on a shared 2-core CPU (settings restored afterwards).

    One thread: for tensors this small, intra-op threads only add synchronisation, which on a
    busy machine costs 100x. Flushed denormals: random attention weights push softmax tails into
    float32 denormals, on which CPU kernels are very slow.
    """
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)
