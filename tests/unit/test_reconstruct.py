"""The multi-stage reconstructor chains spaces and hands each stage the previous images."""

from __future__ import annotations

import numpy as np
import pytest

from brainrecon.errors import ConfigError, ShapeMismatchError
from brainrecon.latents.base import TargetSpec
from brainrecon.reconstruct import Reconstructor, brain_diffuser


class _Flat:
    """Decodes a grey level per image; ignores init."""

    name = "flat"
    targets = {"g": TargetSpec((1,))}

    def encode(self, stimuli):  # pragma: no cover - not used
        raise NotImplementedError

    def decode(self, latents, *, init=None, seed=0):
        g = np.clip(latents["g"][:, 0], 0, 1).astype(np.float32)
        return np.broadcast_to(g[:, None, None, None], (len(g), 3, 8, 8)).copy()


class _Blend:
    """Blends its init image with a target colour; records the inits and seeds it saw."""

    name = "blend"
    targets = {"c": TargetSpec((3,))}

    def __init__(self):
        self.inits, self.seeds = [], []

    def encode(self, stimuli):  # pragma: no cover - not used
        raise NotImplementedError

    def decode(self, latents, *, init=None, seed=0):
        self.inits.append(None if init is None else init.copy())
        self.seeds.append(seed)
        c = latents["c"].astype(np.float32)[:, :, None, None]
        base = np.zeros((len(c), 3, 8, 8), np.float32) if init is None else init
        return 0.5 * base + 0.5 * c


def test_chain_passes_previous_images_and_batches():
    blend = _Blend()
    chain = Reconstructor([("flat", _Flat()), ("blend", blend)], batch_size=3)
    g = np.linspace(0, 1, 7, dtype=np.float32)[:, None]
    c = np.tile(np.array([[1.0, 0.0, 0.0]], np.float32), (7, 1))
    out = chain({"flat": {"g": g}, "blend": {"c": c}}, seed=10)
    assert set(out) == {"flat", "blend"}
    assert out["flat"].shape == out["blend"].shape == (7, 3, 8, 8)
    np.testing.assert_allclose(out["blend"][:, 0, 0, 0], 0.5 * g[:, 0] + 0.5)
    np.testing.assert_allclose(out["blend"][:, 1, 0, 0], 0.5 * g[:, 0])
    assert [len(i) for i in blend.inits] == [3, 3, 1]  # batches of the previous stage's images
    assert blend.seeds == [10, 13, 16]                 # seed + start, like the generate stage


def test_first_stage_gets_no_init():
    blend = _Blend()
    Reconstructor([("blend", blend)])({"blend": {"c": np.zeros((2, 3), np.float32)}})
    assert blend.inits == [None]


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="at least one"):
        Reconstructor([])
    with pytest.raises(ConfigError, match="unique"):
        Reconstructor([("a", _Flat()), ("a", _Flat())])
    chain = brain_diffuser(_Flat(), _Blend())
    with pytest.raises(ShapeMismatchError, match="versatile"):
        chain({"vdvae": {"g": np.zeros((2, 1), np.float32)}})
    with pytest.raises(ShapeMismatchError, match="rows"):
        chain({"vdvae": {"g": np.zeros((2, 1), np.float32)}, "versatile": {"c": np.zeros((3, 3), np.float32)}})
