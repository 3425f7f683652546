"""Reference accuracies that decoders trained on the simulated data can be compared with.

Per-voxel ceilings (encoding direction) are NSD's noise ceilings in
:class:`~brainrecon.sim.truth.SimTruth` (``true_noise_ceiling_3trial``). For the decoding
direction (voxels -> the encoding model's features), :func:`oracle_decoding` gives the
accuracy of the best *linear* decoder under the known generative model: it is built from the
noise-free responses and the known noise variances, not learnt from noisy trials, so a ridge
regression trained on the noisy training betas should approach it from below.
"""

from __future__ import annotations

import numpy as np

from brainrecon.metrics.brain import rowwise_pearson
from brainrecon.sim.truth import SimTruth


def averaged_betas(truth: SimTruth, image_ids: np.ndarray) -> np.ndarray:
    """Repeat-averaged betas (len(image_ids), n_voxels) float32, percent, in the given order."""
    ids = truth.trial_image_ids
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.searchsorted(sorted_ids, image_ids, side="left")
    stops = np.searchsorted(sorted_ids, image_ids, side="right")
    out = np.empty((len(image_ids), truth.n_voxels), dtype=np.float64)
    for r, (a, b) in enumerate(zip(starts, stops)):
        out[r] = truth.betas[order[a:b]].mean(axis=0)
    return out.astype(np.float32)


def oracle_decoding(truth: SimTruth) -> dict[str, np.ndarray]:
    """Test accuracy of the oracle linear decoder from repeat-averaged betas to the true features.

    The decoder is ``E[y | x]`` for jointly Gaussian features ``y`` and averaged betas ``x``
    with moments from the training images: ``W = C_yr (C_rr + N)^-1`` where ``C`` are the
    covariances of the noise-free responses ``r`` and features over the training images and
    ``N = diag(noise_sd^2 (1 + drift_sd^2 + session_offset_sd^2) / n_repeats)`` is the
    covariance of the trial noise of an average of ``n_repeats`` trials (session offsets and
    drifts count as noise because trials of one image fall in different sessions).

    Returns
    -------
    dict with ``r`` (n_features,) Pearson correlation over the test images between decoded
    and true features (NaN for features constant over the test images), ``prediction``
    (n_test, n_features) and ``test_image_ids``.
    """
    cfg = truth.config
    tr, te = truth.train_image_ids, truth.test_image_ids
    r_tr = truth.responses[tr].astype(np.float64)
    y_tr = truth.features[tr].astype(np.float64)
    mu_r, mu_y = r_tr.mean(axis=0), y_tr.mean(axis=0)
    rc, yc = r_tr - mu_r, y_tr - mu_y
    n = len(tr)
    noise = truth.noise_sd.astype(np.float64) ** 2 * (1 + cfg.drift_sd**2 + cfg.session_offset_sd**2) / cfg.n_repeats
    # (C_rr + N)^-1 applied through the n x n dual system (n_train < n_voxels):
    # (rc^T rc / n + N)^-1 = N^-1 - N^-1 rc^T (n I + rc N^-1 rc^T)^-1 rc N^-1
    x_te = averaged_betas(truth, te).astype(np.float64) - mu_r
    xn = x_te / noise
    k = n * np.eye(n) + (rc / noise) @ rc.T
    inv_x = xn - (np.linalg.solve(k, rc @ xn.T).T @ rc) / noise
    pred = mu_y + (inv_x @ rc.T) @ yc / n
    return {"r": rowwise_pearson(pred.T, truth.features[te].astype(np.float64).T), "prediction": pred.astype(np.float32), "test_image_ids": te}
