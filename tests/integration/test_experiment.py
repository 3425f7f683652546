"""Experiments end to end through the real runner and stages."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from brainrecon.stages.pipeline import run_experiment
from pipelines.config import build_spaces, to_plain

REPO = Path(__file__).resolve().parents[2]


def _run_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "BRAINRECON_DATA": str(tmp_path / "data")}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.run", *overrides, f"paths.artifacts_root={tmp_path / 'artifacts'}", "progress=false"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_toy_experiment_cli_runs_then_skips(tmp_path):
    first = _run_cli(tmp_path, "experiment=toy")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "report:" in first.stdout
    report = Path(first.stdout.split("report:")[1].split()[0])
    assert report.is_file() and report.stat().st_size > 1000
    for stage in ("data", "extract/pixels", "fit/pixels", "predict/pixels", "generate/pixels", "evaluate"):
        assert f"{stage}(" in first.stdout
    second = _run_cli(tmp_path, "experiment=toy")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "ran nothing (all stages complete)" in second.stdout
    assert str(report) in second.stdout


def _artifact_hashes(root: Path) -> dict[str, str]:
    """sha256 of every array an experiment wrote, by path relative to the artifact root."""
    out = {}
    for p in sorted(root.rglob("*.npy")):
        out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _compose(experiment: str, data_root: Path, artifacts_root: Path):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            config_name="run",
            overrides=[f"experiment={experiment}", f"paths.data_root={data_root}", f"paths.artifacts_root={artifacts_root}"],
        )


@pytest.mark.parametrize("experiment", ["toy", "sim"])
def test_same_seed_gives_byte_identical_arrays(tmp_path, experiment):
    hashes = []
    for run in ("a", "b"):  # fully independent runs: separate data and artifact roots
        cfg = _compose(experiment, tmp_path / run / "data", tmp_path / run / "artifacts")
        plain = to_plain(cfg)
        run_experiment(plain, build_spaces(cfg), artifacts_root=tmp_path / run / "artifacts", progress=False)
        hashes.append(_artifact_hashes(tmp_path / run / "artifacts"))
    assert len(hashes[0]) >= 10
    assert hashes[0] == hashes[1]


def test_different_seed_changes_arrays(tmp_path):
    hashes = []
    for seed in (0, 1):
        cfg = _compose("toy", tmp_path / f"s{seed}" / "data", tmp_path / f"s{seed}" / "artifacts")
        cfg.seed = seed
        run_experiment(to_plain(cfg), build_spaces(cfg), artifacts_root=tmp_path / f"s{seed}" / "artifacts", progress=False, until="data")
        hashes.append(_artifact_hashes(tmp_path / f"s{seed}" / "artifacts"))
    x0 = {k.split("/", 3)[-1]: v for k, v in hashes[0].items()}
    x1 = {k.split("/", 3)[-1]: v for k, v in hashes[1].items()}
    assert x0["X_train.npy"] != x1["X_train.npy"]


def test_changing_one_parameter_reruns_only_descendants(tmp_path):
    def run(**overrides):
        cfg = _compose("toy", tmp_path / "data", tmp_path / "artifacts")
        for key, value in overrides.items():
            section, name = key.split(".")
            cfg[section][name] = value
        res = run_experiment(to_plain(cfg), build_spaces(cfg), artifacts_root=tmp_path / "artifacts", progress=False)
        return [e.stage for e in res.executions]

    assert run() == ["data", "extract", "fit", "predict", "generate", "evaluate"]
    assert run() == []
    assert run(**{"predict.rescale": "paper"}) == ["predict", "generate", "evaluate"]
    assert run(**{"predict.rescale": "paper", "decoder.cv": 5}) == ["fit", "predict", "generate", "evaluate"]
    assert run(**{"predict.rescale": "paper", "decoder.cv": 5, "metrics.n_boot": 300}) == ["evaluate"]
    # back to the first configuration: everything is still cached
    assert run() == []


@pytest.mark.parametrize("rescale", ["paper", "train_stats"])
def test_rescaling_options_run(tmp_path, rescale):
    cfg = _compose("toy", tmp_path / "data", tmp_path / "artifacts")
    cfg.predict.rescale = rescale
    res = run_experiment(to_plain(cfg), build_spaces(cfg), artifacts_root=tmp_path / "artifacts", progress=False, until="predict")
    summary = res.artifacts["predict/pixels"].summary
    assert summary["rescale"] == rescale
    assert summary["z"]["two_way_identification"] > 0.8
