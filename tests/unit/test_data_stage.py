"""The data stage's cache follows the data's content, not its path."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from brainrecon.data.byo import save_byo
from brainrecon.errors import ConfigError, ShapeMismatchError
from brainrecon.fingerprint import path_fingerprint
from brainrecon.stages.base import ArtifactStore, Runner
from brainrecon.stages.data import DataStage, SplitData


def _byo(path, seed):
    rng = np.random.default_rng(seed)
    save_byo(
        path,
        betas_train=rng.standard_normal((12, 7)),
        betas_test=rng.standard_normal((3, 7)),
        stimuli_train=rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8),
        stimuli_test=rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8),
    )
    return path


def test_byo_key_follows_content_not_path(tmp_path):
    a = _byo(tmp_path / "a.npz", 0)
    b = _byo(tmp_path / "b.npz", 1)
    moved = tmp_path / "elsewhere" / "a.npz"
    moved.parent.mkdir()
    shutil.copy(a, moved)
    key = lambda p: DataStage({"source": "byo", "byo_path": str(p)}).key()  # noqa: E731
    assert key(a) == key(moved)
    assert key(a) != key(b)
    assert path_fingerprint(tmp_path / "absent.npz") == "missing"


def test_byo_stage_writes_the_artifact(tmp_path):
    a = _byo(tmp_path / "a.npz", 0)
    art = Runner(ArtifactStore(tmp_path / "art"), progress=False).run(DataStage({"source": "byo", "byo_path": str(a)}))
    assert art.array("X_train").shape == (12, 7)
    assert art.array("stimuli_test").shape == (3, 8, 8, 3)
    np.testing.assert_allclose(np.asarray(art.array("X_train")).mean(0), 0, atol=1e-5)


def test_unknown_source_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.source"):
        Runner(ArtifactStore(tmp_path), progress=False).run(DataStage({"source": "nope"}))


def test_split_validation_names_both_sides():
    d = SplitData(
        X_train=np.zeros((4, 3)), X_test=np.zeros((2, 3)),
        stimuli_train=np.zeros((5, 8, 8, 3), np.uint8), stimuli_test=np.zeros((2, 8, 8, 3), np.uint8),
        train_ids=np.arange(4), test_ids=np.arange(2),
    )
    with pytest.raises(ShapeMismatchError, match="expected 4, got 5"):
        d.validate()
