"""The multi-stage reconstructor chains spaces and hands each stage the previous images."""

from __future__ import annotations

import numpy as np
import pytest

from brainrecon.errors import ConfigError, ShapeMismatchError
from brainrecon.latents.base import TargetSpec
from brainrecon.reconstruct import Reconstructor, brain_diffuser, choose_strength, strength_sweep


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


# --------------------------------------------------------------------------- strength calibration
class _Mixer(_Blend):
    """Img2img stand-in: moves its init image towards a colour by ``strength``."""

    def __init__(self, strength=0.75):
        super().__init__()
        self.strength = strength

    def with_strength(self, strength):
        other = _Mixer(strength)
        other.inits, other.seeds = self.inits, self.seeds  # shared record, as the real copies share models
        return other

    def decode(self, latents, *, init=None, seed=0):
        self.inits.append(init.copy())
        self.seeds.append(seed)
        c = latents["c"].astype(np.float32)[:, :, None, None]
        return (1 - self.strength) * init + self.strength * c


def test_choose_strength_takes_the_largest_within_the_floor():
    pix = {0.3: 0.45, 0.5: 0.41, 0.6: 0.399, 0.75: 0.30}
    assert choose_strength(pix, reference=0.5) == 0.5          # floor 0.4
    assert choose_strength(pix, reference=0.5, max_drop=0.25) == 0.6
    assert choose_strength(pix, reference=0.9) is None           # none keeps the layout
    assert choose_strength({0.3: float("nan"), 0.5: 0.5}, reference=0.5) == 0.5
    with pytest.raises(ConfigError, match="max_pixcorr_drop"):
        choose_strength(pix, reference=0.5, max_drop=1.0)


def test_strength_sweep_starts_every_strength_from_the_same_images():
    mixer = _Mixer()
    g = np.linspace(0, 1, 5, dtype=np.float32)[:, None]
    c = np.tile(np.array([[1.0, 0.0, 0.0]], np.float32), (5, 1))
    out = strength_sweep(_Flat(), {"g": g}, mixer, {"c": c}, [0.25, 1.0], seed=7, batch_size=2, progress=False)
    assert list(out) == ["init", "strength=0.25", "strength=1"]
    np.testing.assert_allclose(out["init"][:, 0, 0, 0], g[:, 0])
    np.testing.assert_allclose(out["strength=0.25"][:, 1, 0, 0], 0.75 * g[:, 0])
    np.testing.assert_allclose(out["strength=1"][:, 1], 0.0)
    assert mixer.seeds == [7, 9, 11] * 2
    for first, second in zip(mixer.inits[:3], mixer.inits[3:]):
        np.testing.assert_array_equal(first, second)
    with pytest.raises(ConfigError, match="no img2img strength"):
        strength_sweep(_Flat(), {"g": g}, _Flat(), {"g": g}, [0.5])
    with pytest.raises(ConfigError, match="at least one"):
        strength_sweep(_Flat(), {"g": g}, mixer, {"c": c}, [])
