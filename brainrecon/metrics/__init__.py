"""Evaluation metrics of image reconstructions (definitions: methods guide §5).

Importing this package loads numpy only; torch and the backbones are imported when
features are computed.
"""

from brainrecon.metrics.identification import (
    TestedMetric,
    bootstrap_ci,
    correlation_distance,
    correlation_matrix,
    cosine_matrix,
    latent_identification,
    n_way_identification,
    permutation_pvalue,
    permutation_test,
    top1_retrieval,
    two_way_from_matrix,
    two_way_identification,
)
from brainrecon.metrics.lowlevel import mse, pixcorr, resize_images, ssim, to_grayscale
from brainrecon.metrics.suite import (
    ALL_METRICS,
    PRESETS,
    MetricValue,
    Preset,
    SuiteResult,
    evaluate,
    evaluate_methods,
)

__all__ = [
    "ALL_METRICS",
    "PRESETS",
    "MetricValue",
    "Preset",
    "SuiteResult",
    "TestedMetric",
    "bootstrap_ci",
    "correlation_distance",
    "correlation_matrix",
    "cosine_matrix",
    "evaluate",
    "evaluate_methods",
    "latent_identification",
    "mse",
    "n_way_identification",
    "permutation_pvalue",
    "permutation_test",
    "pixcorr",
    "resize_images",
    "ssim",
    "to_grayscale",
    "top1_retrieval",
    "two_way_from_matrix",
    "two_way_identification",
]
