"""The simulated NSD experiment: the project's default, with a known ground truth.

:func:`simulate_nsd` writes a complete small NSD subject in the real on-disk layout (so the
real NSD loader reads it) together with its ground truth (:class:`SimTruth`): procedural,
captioned stimuli (:mod:`brainrecon.sim.stimuli`), voxels placed in the MNI152 brain with
retinotopic and category-selective ROIs (:mod:`brainrecon.sim.anatomy`), the true encoding
model (:class:`EncodingModel`), and NSD-like noise with its noise ceiling
(:mod:`brainrecon.sim.noise`). :func:`oracle_decoding` gives the reference accuracy of decoding
the true features from the betas (:mod:`brainrecon.sim.ceiling`).

Example
-------
>>> from brainrecon.sim import SimConfig, simulate_nsd
>>> truth = simulate_nsd("data/sim_nsd")            # doctest: +SKIP
>>> truth.betas.shape, truth.noise_ceiling_3trial.mean()        # doctest: +SKIP
"""

from brainrecon.sim.ceiling import averaged_betas, oracle_decoding
from brainrecon.sim.encoding import EncodingModel, FeatureSpec
from brainrecon.sim.noise import estimate_ncsnr, noise_ceiling
from brainrecon.sim.stimuli import CATEGORIES, FLOC_CATEGORY
from brainrecon.sim.truth import SimConfig, SimTruth, load_truth
from brainrecon.sim.writer import simulate_nsd

__all__ = [
    "CATEGORIES",
    "FLOC_CATEGORY",
    "EncodingModel",
    "FeatureSpec",
    "SimConfig",
    "SimTruth",
    "averaged_betas",
    "estimate_ncsnr",
    "load_truth",
    "noise_ceiling",
    "oracle_decoding",
    "simulate_nsd",
]
