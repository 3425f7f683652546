"""The calibrate stage chooses a chain's img2img strength on held-out training images only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from brainrecon.errors import ConfigError
from brainrecon.latents.base import TargetSpec
from brainrecon.reconstruct import choose_strength
from brainrecon.stages.base import ArtifactStore, Runner
from brainrecon.stages.calibrate import build_calibrate_stage
from brainrecon.stages.pipeline import build_stages
from pipelines.config import build_spaces, to_plain

REPO = Path(__file__).resolve().parents[2]


class _Tint:
    """Img2img stand-in: pulls the image it starts from towards each stimulus' mean colour."""

    name = "tint"
    targets = {"c": TargetSpec((3,), "mean colour")}

    def __init__(self, strength: float = 0.75) -> None:
        self.strength = strength

    def with_strength(self, strength: float) -> _Tint:
        return _Tint(strength)

    def encode(self, stimuli):
        return {"c": stimuli.images.reshape(len(stimuli.images), -1, 3).mean(1).astype(np.float32) / 255.0}

    def decode(self, latents, *, init=None, seed=0):
        c = np.clip(latents["c"], 0, 1)[:, :, None, None].astype(np.float32)
        return (1 - self.strength) * init + self.strength * np.broadcast_to(c, init.shape)


def _experiment(tmp_path: Path):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="run", overrides=[
            "experiment=toy", f"paths.data_root={tmp_path / 'data'}", f"paths.artifacts_root={tmp_path / 'artifacts'}"])
    plain = to_plain(cfg)
    plain["latents"]["tint"] = {"_target_": "tests.integration.test_calibrate._Tint"}
    plain["generate"]["init_from"] = {"tint": "pixels"}
    spaces = {**build_spaces(cfg), "tint": _Tint()}
    return plain, spaces


def test_calibration_scores_every_strength_on_held_out_training_images(tmp_path):
    plain, spaces = _experiment(tmp_path)
    stages = build_stages(plain, spaces)
    stage = build_calibrate_stage(
        {"strengths": [0.75, 0.05, 0.4], "n_holdout": 40, "metrics": ["PixCorr", "SSIM"], "n_boot": 50},
        stages, spaces, experiment=plain, scope=stages["data"].scope, seed=0, resources={"device": "cpu"})
    assert sorted(stage.upstream) == ["data", "extract/pixels", "extract/tint"]  # no test-set artifact
    runner = Runner(ArtifactStore(tmp_path / "artifacts"), progress=False)
    art = runner.run(stage)
    res = art.json("calibration")
    assert res["strengths"] == [0.05, 0.4, 0.75] and res["n_holdout"] == 40
    pix = {s: res["metrics"][res["labels"][f"strength={s:g}"]]["PixCorr"]["mean"] for s in res["strengths"]}
    reference = res["metrics"]["pixels"]["PixCorr"]["mean"]
    assert reference > 0.3                        # the toy decoder works on held-out images
    assert pix[0.05] > pix[0.75]                  # flat colour erases the layout
    assert res["chosen_strength"] == choose_strength(pix, reference, 0.2)
    held = art.array("holdout_index")
    assert len(held) == 40 and len(set(held.tolist())) == 40
    assert held.max() < 200                       # rows of the training set (toy n_train = 200)
    assert art.array("images/strength=0.4").shape == art.array("images/init").shape == (40, 32, 32, 3)
    for fig in ("strength.png", "examples.png"):
        assert (art.path / "figures" / fig).stat().st_size > 5000
    assert Runner(ArtifactStore(tmp_path / "artifacts"), progress=False).run(stage).key == art.key  # cached


def test_only_a_chained_space_can_be_calibrated(tmp_path):
    plain, spaces = _experiment(tmp_path)
    stages = build_stages(plain, spaces)
    for cfg, match in (({"space": "pixels"}, "does not start from"), ({"space": "nope"}, "calibrate.space"),
                       ({"strenghts": [0.5]}, "unknown parameter"), ({"metrics": ["SSIM"]}, "needs PixCorr"),
                       ({"strengths": [0.5, 1.5]}, "calibrate.strengths"), ({"strengths": []}, "calibrate.strengths"),
                       ({"n_holdout": 1}, "calibrate.n_holdout")):
        with pytest.raises(ConfigError, match=match):
            build_calibrate_stage(cfg, stages, spaces, experiment=plain, scope="subj01", seed=0, resources={})


def test_cli_without_a_chain_says_what_is_missing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.calibrate_strength", "experiment=toy", f"paths.data_root={tmp_path}",
         f"paths.artifacts_root={tmp_path / 'artifacts'}", "progress=false"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "calibrate.space" in proc.stderr and "generate.init_from" in proc.stderr
