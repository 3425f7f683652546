"""What a brain region "wants to see": ROI-optimal synthesis, closed-loop validation, weight analysis.

Brain-Diffuser and IC-GAN feed synthetic fMRI patterns built from ROI masks through their
fitted decoders and generate "ROI-optimal" images. This package does that for every latent
space of a run, with the references' normalisation constants as named parameters, and adds
what the references do not report: whether the images drive their ROI through an encoding
model (closed loop), and where early visual ROI images put their energy.

Modules
-------
:mod:`~brainrecon.roi.masks`
    ROI catalogue (NSD: floc faces/words/places/bodies, V1-V4 from ``prf-visualrois``,
    eccentricity bands from ``prf-eccrois``; GOD: V1-V4, LOC, FFA, PPA), NIfTI masks, and the
    synthetic pattern.
:mod:`~brainrecon.roi.synthesis`
    ROI-optimal latents through the ridge dual form with the reference scaling schemes.
:mod:`~brainrecon.roi.closed_loop`
    Encoding models (the simulator's true model with estimated category content; a voxel-wise
    ridge encoding model fitted on the run) and the closed-loop table.
:mod:`~brainrecon.roi.energy`
    Eccentricity profile of the images' energy, preferred eccentricity, pRF coverage correlation.
:mod:`~brainrecon.roi.weights`
    Voxel-weight percentiles per ROI, the semantic index, statistics across subjects.
:mod:`~brainrecon.roi.explore`
    One call for a run's artifacts (:func:`explore_rois`) and the saved result (:class:`RoiExploration`).
:mod:`~brainrecon.roi.figures`
    Figures of an exploration. :mod:`~brainrecon.roi.runs`: locate a run's artifacts; gallery and
    metric figures for the notebooks.

Heavy dependencies (torch, the latent spaces) are imported only when used.
"""

from brainrecon.roi.closed_loop import (
    ClosedLoopResult,
    KernelRidgeReadout,
    SemanticEstimator,
    SimulatedResponses,
    VoxelwiseEncodingModel,
    closed_loop,
)
from brainrecon.roi.energy import EnergyResult, energy_analysis
from brainrecon.roi.explore import RoiExploration, explore_rois
from brainrecon.roi.masks import ROI_SETS, RoiSpec, nifti_mask, resolve_rois, synthetic_patterns
from brainrecon.roi.synthesis import PUBLISHED_SCALING, RoiScaling, TargetStats, default_scaling, roi_latents
from brainrecon.roi.weights import WeightAnalysis, across_subjects, weight_analysis

__all__ = [
    "ClosedLoopResult",
    "EnergyResult",
    "KernelRidgeReadout",
    "PUBLISHED_SCALING",
    "ROI_SETS",
    "RoiExploration",
    "RoiScaling",
    "RoiSpec",
    "SemanticEstimator",
    "SimulatedResponses",
    "TargetStats",
    "VoxelwiseEncodingModel",
    "WeightAnalysis",
    "across_subjects",
    "closed_loop",
    "default_scaling",
    "energy_analysis",
    "explore_rois",
    "nifti_mask",
    "resolve_rois",
    "roi_latents",
    "synthetic_patterns",
    "weight_analysis",
]
