"""Low-level (layout and colour) decodability of the simulated voxels.

The encoding model's luminance/colour block must make a coarse RGB version of each image
linearly decodable from the repeat-averaged betas, as real early visual cortex allows
(Brain-Diffuser's first stage recovers layout and colour from NSD betas). The decoder here is
the acceptance one of the simulator: scikit-learn ``RidgeCV`` with one alpha per target,
voxels z-scored with training statistics, 8x8x3 box-averaged images as targets.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import RidgeCV

from brainrecon.sim import SimConfig, simulate_nsd
from brainrecon.sim.ceiling import averaged_betas

SMALL = SimConfig(n_train=240, n_test=40, image_size=32, n_voxels=600, trials_per_session=280, seed=5)


def tiny_images(images: np.ndarray, side: int = 8) -> np.ndarray:
    """(n, side*side*3) float64 box-averaged RGB in [0, 1] of square uint8 images."""
    n, s = images.shape[:2]
    f = s // side
    return (images.astype(np.float64) / 255.0).reshape(n, side, f, side, f, 3).mean(axis=(2, 4)).reshape(n, -1)


def decode_tiny_images(truth, shuffle_train: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ridge-decoded and true 8x8x3 test images; ``shuffle_train`` breaks the training pairing (control)."""
    tr, te = truth.train_image_ids, truth.test_image_ids
    x_tr, x_te = averaged_betas(truth, tr).astype(np.float64), averaged_betas(truth, te).astype(np.float64)
    mu, sd = x_tr.mean(axis=0), x_tr.std(axis=0)
    sd[sd == 0] = 1.0
    y_tr, y_te = tiny_images(truth.stimuli(tr)), tiny_images(truth.stimuli(te))
    if shuffle_train is not None:
        y_tr = y_tr[shuffle_train.permutation(len(y_tr))]
    ridge = RidgeCV(alphas=np.logspace(0, 7, 8), alpha_per_target=True)
    ridge.fit((x_tr - mu) / sd, y_tr)
    return ridge.predict((x_te - mu) / sd), y_te


def pixcorr_and_two_way(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Mean per-image Pearson r over pixels, and two-way identification by that correlation."""
    n = len(pred)
    r = np.array([[np.corrcoef(pred[i], true[j])[0, 1] for j in range(n)] for i in range(n)])
    wins = [np.mean([r[i, i] > r[i, j] for j in range(n) if j != i]) for i in range(n)]
    return float(np.mean(np.diag(r))), float(np.mean(wins))


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    return simulate_nsd(tmp_path_factory.mktemp("sim") / "nsd", SMALL, progress=False)


def test_metric_helpers_on_hand_worked_values():
    true = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0], [0.0, 2.0, 0.0]])
    pixcorr, two_way = pixcorr_and_two_way(true.copy(), true)
    assert pixcorr == pytest.approx(1.0) and two_way == 1.0
    pixcorr, two_way = pixcorr_and_two_way(true[[1, 0, 2]], true)
    # image 0 <-> 1 swapped: r = -1 for both; image 2 is right (r = 1)
    assert pixcorr == pytest.approx((-1 - 1 + 1) / 3)
    # image 0's prediction [2,1,0] correlates -1 with itself, +1 with image 1, 0 with image 2: 0 wins
    assert two_way == pytest.approx((0 + 0 + 1) / 3)
    images = np.zeros((1, 16, 16, 3), np.uint8)
    images[0, :2, :2] = 255  # one 2x2 cell of the 8x8 grid is white
    t = tiny_images(images).reshape(8, 8, 3)
    assert t[0, 0].tolist() == [1.0, 1.0, 1.0] and t.sum() == 3.0


def test_coarse_colour_images_are_decodable(truth):
    pred, true = decode_tiny_images(truth)
    pixcorr, two_way = pixcorr_and_two_way(pred, true)
    assert pixcorr >= 0.3, pixcorr
    assert two_way >= 0.8, two_way
    # the per-pixel decoding is above chance for most pixels, colour channels included
    r2 = 1.0 - ((pred - true) ** 2).sum(axis=0) / ((true - true.mean(axis=0)) ** 2).sum(axis=0)
    assert np.median(r2) > 0.1
    for c in range(3):
        assert np.median(r2.reshape(64, 3)[:, c]) > 0.05, c
    # control: a decoder trained on mismatched image/betas pairs is at chance
    pred_c, _ = decode_tiny_images(truth, shuffle_train=np.random.default_rng(0))
    pixcorr_c, two_way_c = pixcorr_and_two_way(pred_c, true)
    assert two_way_c < 0.7 and pixcorr_c < 0.2, (pixcorr_c, two_way_c)
