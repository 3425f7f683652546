"""Every experiment config composes and instantiates; bad input gives one short message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from brainrecon.errors import ConfigError, MissingWeightsError
from brainrecon.stages.pipeline import STAGE_ORDER, build_stages
from pipelines.config import build_spaces, to_plain

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="run", overrides=overrides)


def test_there_are_experiments():
    assert "sim" in EXPERIMENTS and "toy" in EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINRECON_ARTIFACTS", str(tmp_path))
    monkeypatch.setenv("BRAINRECON_WEIGHTS", str(tmp_path / "weights"))
    cfg = _compose([f"experiment={experiment}"])
    plain = to_plain(cfg)
    assert plain["name"] == experiment
    try:
        spaces = build_spaces(cfg)
    except MissingWeightsError as exc:
        # Published checkpoints never exist here: the config must reach the loader, which names
        # the file under the configured weights root.
        assert str(tmp_path / "weights") in str(exc.path), exc
        return
    stages = build_stages(plain, spaces)
    kinds = {name.split("/")[0] for name in stages}
    assert kinds == set(STAGE_ORDER)
    # keys are computable (every parameter is hashable) and distinct per stage
    keys = [s.key() for s in stages.values()]
    assert len(set(keys)) == len(keys)


def test_default_experiment_is_sim():
    assert to_plain(_compose([]))["name"] == "sim"


def test_paths_come_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINRECON_DATA", str(tmp_path / "d"))
    plain = to_plain(_compose([]))
    assert plain["paths"]["data_root"] == str(tmp_path / "d")


def test_keys_do_not_depend_on_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINRECON_DATA", str(tmp_path / "a"))
    k1 = _keys()
    monkeypatch.setenv("BRAINRECON_DATA", str(tmp_path / "b"))
    monkeypatch.setenv("BRAINRECON_WEIGHTS", str(tmp_path / "w"))
    assert _keys() == k1


def _keys() -> dict[str, str]:
    cfg = _compose([])
    return {n: s.key() for n, s in build_stages(to_plain(cfg), build_spaces(cfg)).items()}


@pytest.mark.parametrize("launcher", ["local_pool", "slurm"])
def test_launcher_configs_compose(launcher):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher" if launcher == "local_pool" else "hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="run", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert ("Joblib" in target) if launcher == "local_pool" else ("Slurm" in target)


def test_bad_space_argument_names_the_key():
    cfg = _compose(["experiment=toy", "+latents.pixels.image_sze=3"])
    with pytest.raises(ConfigError, match=r"latents\.pixels"):
        build_spaces(cfg)


def _cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "pipelines.run", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_cli_wrong_key_gives_short_message(tmp_path):
    out = _cli("experiment=toy", "decoder.alhpas=3", f"paths.artifacts_root={tmp_path}")
    assert out.returncode != 0
    assert "alhpas" in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 10, out.stderr


def test_cli_bad_value_gives_short_message(tmp_path):
    out = _cli("experiment=toy", "data.source=nope", f"paths.artifacts_root={tmp_path}")
    assert out.returncode == 2
    assert "data.source" in out.stderr and "nope" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 4, out.stderr


def test_cli_missing_mandatory_value_names_the_key(tmp_path):
    out = _cli("data=byo", f"paths.artifacts_root={tmp_path}")
    assert out.returncode == 2
    assert "data.byo_path" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_missing_data_file_names_the_path(tmp_path):
    out = _cli("data=byo", f"data.byo_path={tmp_path}/nope.npz", f"paths.artifacts_root={tmp_path}")
    assert out.returncode == 2
    assert f"{tmp_path}/nope.npz" in out.stderr
    assert "Traceback" not in out.stderr


def test_decode_only_settings_keep_the_extract_cache_but_not_the_images(tmp_path, monkeypatch):
    # IC-GAN's extract stage inverts every stimulus (minutes); switching how predictions are
    # decoded must reuse it, while the generated images must follow the new setting.
    monkeypatch.setenv("BRAINRECON_ARTIFACTS", str(tmp_path))

    def keys(*overrides: str) -> dict[str, str]:
        cfg = _compose(["experiment=icgan_sim", *overrides])
        return {n: s.key() for n, s in build_stages(to_plain(cfg), build_spaces(cfg)).items()}

    base = keys()
    other = keys("latents.icgan.decode_from=instance_noise")
    assert other["extract/icgan"] == base["extract/icgan"]
    assert other["fit/icgan"] == base["fit/icgan"] and other["predict/icgan"] == base["predict/icgan"]
    assert other["generate/icgan"] != base["generate/icgan"]
    # a setting of the encoding still invalidates the extract stage
    assert keys("latents.icgan.inversion.steps=11")["extract/icgan"] != base["extract/icgan"]
