"""``experiment=digits69`` on the real fMRI of van Gerven et al. (2010), end to end.

Needs ``../shared/data/vangerven2010-digits69`` (skipped, with the reason, when absent) and the
bundled digit VAE. Checks that every reconstruction beats the no-brain floor of the mean training
image and that the best one beats the mean image of the true class (which knows the test labels).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from brainrecon.paths import bundled_weights_dir, shared_data_dir

REPO = Path(__file__).resolve().parents[2]
SHARED = shared_data_dir()
MAT = SHARED / "vangerven2010-digits69" / "digit69_28x28.mat" if SHARED is not None else None
WEIGHTS = bundled_weights_dir() / "digit_vae.safetensors"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(MAT is None or not MAT.is_file(),
                       reason="../shared/data/vangerven2010-digits69 absent (real fMRI, not in the repository)"),
    pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"bundled digit VAE absent: {WEIGHTS}"),
]


def _floors() -> dict[str, tuple[float, float]]:
    from scipy.io import loadmat

    from brainrecon.metrics.lowlevel import pixcorr_unchecked, ssim_gray

    m = loadmat(str(MAT))
    img = {s: m[f"stim{s}"].reshape(-1, 28, 28, order="F").astype(np.float64) / 255 for s in ("Trn", "Test")}
    gt = img["Test"]
    lab_tr, lab_te = m["labelTrn"].ravel(), m["labelTest"].ravel()
    cands = {"mean": np.broadcast_to(img["Trn"].mean(0), gt.shape),
             "class": np.stack([img["Trn"][lab_tr == c].mean(0) for c in lab_te])}
    return {k: (float(pixcorr_unchecked(gt.reshape(10, -1), v.reshape(10, -1)).mean()), float(ssim_gray(gt, v).mean()))
            for k, v in cands.items()}


def test_digits69_beats_the_floors(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    from brainrecon.stages.pipeline import run_experiment
    from pipelines.config import build_spaces, to_plain

    monkeypatch.setenv("BRAINRECON_SHARED_DATA", str(SHARED))  # independent of the working directory
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="run", overrides=[
            "experiment=digits69", f"paths.artifacts_root={tmp_path}", "progress=false",
            "metrics.n_boot=200", "metrics.n_perm=200"])
    result = run_experiment(to_plain(cfg), build_spaces(cfg), artifacts_root=tmp_path, progress=False)
    metrics = json.loads((result.artifacts["evaluate"].path / "report" / "metrics.json").read_text())["methods"]
    floors = _floors()
    got = {m: (metrics[m]["metrics"]["PixCorr"]["mean"], metrics[m]["metrics"]["SSIM"]["mean"])
           for m in ("pixels", "digits", "digits_prior")}
    for m, (pcc, ssim) in got.items():
        assert pcc > floors["mean"][0] and ssim > floors["mean"][1], (m, got[m], floors)
    best = max(got.values(), key=sum)
    assert best[0] > floors["class"][0] and best[1] > floors["class"][1], (got, floors)
