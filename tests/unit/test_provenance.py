"""The provenance record written beside trained weights."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from brainrecon.provenance import training_provenance, write_training_provenance  # noqa: E402


def test_training_provenance_records_the_run_and_is_written_beside_the_weights(tmp_path):
    model = torch.nn.Linear(3, 2)  # 8 parameters
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(b"x" * 17)
    prov = training_provenance("scripts/train_x.py", {"out": weights, "steps": 2}, model, weights,
                               [{"step": 0, "loss": 2.0}, {"step": 1, "loss": 1.5}], 12.345,
                               training_data={"seed": 4}, heldout={"r": [0.9]})
    assert list(prov)[:4] == ["script", "arguments", "training_data", "heldout"]
    assert prov["arguments"] == {"out": str(weights), "steps": 2}
    assert prov["final"] == {"step": 1, "loss": 1.5} and prov["wall_time_s"] == 12.3
    assert prov["n_parameters"] == 8 and prov["weights_bytes"] == 17
    assert set(prov["versions"]) == {"python", "torch", "numpy"}
    path = write_training_provenance(weights, prov)
    assert path == tmp_path / "m.training.json" and json.loads(path.read_text()) == json.loads(json.dumps(prov))
    assert not list(tmp_path.glob("*.partial"))
    assert training_provenance("s", {}, model, weights, [], 0.0)["final"] is None
