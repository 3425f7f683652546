"""The small VDVAE the project trained (``brainrecon/weights/vdvae_small.*``) really reconstructs scenes.

Held-out scenes are drawn by the simulator's generator with a seed used neither for the training
images (``scripts/sim_training_images.py``, seed 1000) nor for the default experiment (seed 0).
"""

from __future__ import annotations

import numpy as np
import pytest

from brainrecon.images import resize, to_float_chw
from brainrecon.latents.base import Stimuli, check_latent_space
from brainrecon.metrics.lowlevel import pixcorr
from brainrecon.paths import bundled_weights_dir
from brainrecon.sim.stimuli import procedural_stimuli

WEIGHTS = bundled_weights_dir() / "vdvae_small.safetensors"
MIN_PIXCORR = 0.6  # encode -> decode of held-out 64 px scenes, mean over images

pytestmark = pytest.mark.skipif(not WEIGHTS.exists(), reason=f"trained weights absent: {WEIGHTS}")


@pytest.fixture(scope="module")
def space():
    from brainrecon.latents.vdvae import build_vdvae_space

    return build_vdvae_space("bundled:vdvae_small.safetensors", batch_size=16, progress=False)


@pytest.fixture(scope="module")
def held_out():
    stim = procedural_stimuli(24, 128, np.random.default_rng(424242))
    return Stimuli(stim.images, [list(c) for c in stim.captions])


def test_trained_small_model_passes_the_shared_check(space, held_out):
    check_latent_space(space, Stimuli(held_out.images[:4]))


def test_trained_small_model_reconstructs_held_out_scenes(space, held_out):
    z = space.encode(held_out)
    recon = space.decode(z, seed=0)
    truth = resize(to_float_chw(held_out.images), recon.shape[-1])
    r = pixcorr(truth, recon)
    shuffled = pixcorr(truth, recon[np.roll(np.arange(len(recon)), 1)])
    print(f"held-out PixCorr {r.mean():.3f} (shuffled pairs {shuffled.mean():.3f})")
    assert r.mean() >= MIN_PIXCORR
    assert r.mean() > shuffled.mean() + 0.3


def test_weights_fingerprint_is_content_based(space):
    assert space.fingerprint()["weights"] is not None
