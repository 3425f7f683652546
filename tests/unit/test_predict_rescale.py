"""Per-space and per-target rescaling settings of the predict stage."""

from __future__ import annotations

import pytest

from brainrecon.errors import ConfigError
from brainrecon.stages.pipeline import predict_params
from brainrecon.decoding.holdout import methods_per_target


def test_one_method_for_every_target():
    assert methods_per_target("paper", ["a", "b"]) == {"a": "paper", "b": "paper"}


def test_mapping_with_default():
    got = methods_per_target({"instance": "paper", "default": "none"}, ["instance", "noise", "dense"])
    assert got == {"instance": "paper", "noise": "none", "dense": "none"}
    assert methods_per_target({"instance": "train_stats"}, ["instance", "noise"])["noise"] == "none"


def test_unknown_target_or_method_is_named():
    with pytest.raises(ConfigError, match=r"unknown target\(s\) \['nosie'\]"):
        methods_per_target({"nosie": "paper"}, ["noise"])
    with pytest.raises(ConfigError, match=r"predict.rescale \(noise\): expected one of .*got 'papr'"):
        methods_per_target("papr", ["noise"])


def test_pipeline_hands_each_space_its_own_entry():
    section = {"rescale": {"default": "train_stats", "icgan": {"instance": "paper", "default": "none"}}}
    assert predict_params(section, "icgan")["rescale"] == {"instance": "paper", "default": "none"}
    assert predict_params(section, "bigbigan")["rescale"] == "train_stats"
    assert predict_params({"rescale": "paper"}, "vdvae")["rescale"] == "paper"
    assert predict_params({}, "vdvae")["rescale"] == "none"
