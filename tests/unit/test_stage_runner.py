"""The stage contract: keys, skipping, forced reruns, atomic commit, manifests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from brainrecon.errors import StageError
from brainrecon.stages.base import (
    MANIFEST,
    Artifact,
    ArtifactStore,
    RunContext,
    Runner,
    Stage,
    compute_key,
    hashable_params,
)


class Source(Stage):
    name = "source"

    def run(self, inputs: Mapping[str, Artifact], ctx: RunContext) -> dict[str, Any]:
        ctx.save_array("x", np.arange(self.params["n"], dtype=np.float32) * self.params.get("scale", 1.0))
        return {"n": self.params["n"]}


class Double(Stage):
    name = "double"

    def run(self, inputs: Mapping[str, Artifact], ctx: RunContext) -> dict[str, Any]:
        ctx.save_array("y", 2 * inputs["src"].array("x"))
        return {}


class Total(Stage):
    name = "total"

    def run(self, inputs: Mapping[str, Artifact], ctx: RunContext) -> dict[str, Any]:
        ctx.save_json("total", {"sum": float(np.sum(inputs["d"].array("y")) + np.sum(inputs["s2"].array("x")))})
        return {}


def graph(n: int = 5, scale: float = 1.0, n2: int = 3, data_root: str = "/a"):
    src = Source({"n": n, "scale": scale, "data_root": data_root}, scope="s")
    src2 = Source({"n": n2}, scope="s")
    d = Double({"k": 1}, {"src": src}, scope="s")
    t = Total({}, {"d": d, "s2": src2}, scope="s")
    return src, src2, d, t


def ran(runner: Runner) -> list[tuple[str, str]]:
    return [(e.stage, e.key) for e in runner.executions]


def test_key_ignores_paths_and_execution_details():
    a = compute_key("s", 1, {"alpha": 1.0, "data_root": "/x", "weights_path": "/w", "device": "cpu"}, {})
    b = compute_key("s", 1, {"alpha": 1.0, "data_root": "/y", "weights_path": "/v", "device": "cuda"}, {})
    c = compute_key("s", 1, {"alpha": 2.0, "data_root": "/x"}, {})
    assert a == b
    assert a != c
    assert compute_key("s", 2, {"alpha": 1.0}, {}) != compute_key("s", 1, {"alpha": 1.0}, {})
    assert compute_key("s", 1, {"alpha": 1.0}, {"u": "k1"}) != compute_key("s", 1, {"alpha": 1.0}, {"u": "k2"})
    assert hashable_params({"a": {"cache_dir": 1, "b": [{"x_path": 1, "y": 2}]}}) == {"a": {"b": [{"y": 2}]}}


def test_key_is_order_independent_and_distinguishes_types():
    assert compute_key("s", 1, {"a": 1, "b": 2}, {}) == compute_key("s", 1, {"b": 2, "a": 1}, {})
    assert compute_key("s", 1, {"a": 1}, {}) != compute_key("s", 1, {"a": "1"}, {})


def test_runs_once_then_skips(artifacts):
    *_, t = graph()
    r1 = Runner(ArtifactStore(artifacts), progress=False)
    art = r1.run(t)
    assert [s for s, _ in ran(r1)] == ["source", "double", "source", "total"]
    assert art.json("total")["sum"] == pytest.approx(2 * sum(range(5)) + sum(range(3)))
    r2 = Runner(ArtifactStore(artifacts), progress=False)
    art2 = r2.run(graph()[-1])
    assert r2.executions == []
    assert art2.path == art.path


def test_changing_one_parameter_reruns_that_stage_and_its_descendants_only(artifacts):
    Runner(ArtifactStore(artifacts), progress=False).run(graph()[-1])
    r = Runner(ArtifactStore(artifacts), progress=False)
    r.run(graph(scale=3.0)[-1])
    # src2 (the other branch) is untouched; src, double and total rerun.
    assert sorted(s for s, _ in ran(r)) == ["double", "source", "total"]
    assert all(k != compute_key("source", 1, {"n": 3}, {}) for s, k in ran(r) if s == "source")


def test_moving_data_does_not_rerun(artifacts):
    Runner(ArtifactStore(artifacts), progress=False).run(graph(data_root="/old")[-1])
    r = Runner(ArtifactStore(artifacts), progress=False)
    r.run(graph(data_root="/new/place")[-1])
    assert r.executions == []


def test_force_reruns_stage_and_descendants(artifacts):
    Runner(ArtifactStore(artifacts), progress=False).run(graph()[-1])
    r = Runner(ArtifactStore(artifacts), force=["double"], progress=False)
    r.run(graph()[-1])
    assert sorted(s for s, _ in ran(r)) == ["double", "total"]
    r = Runner(ArtifactStore(artifacts), force=["*"], progress=False)
    r.run(graph()[-1])
    assert len(r.executions) == 4


def test_manifest_records_provenance(artifacts):
    src, *_ = graph()
    art = Runner(ArtifactStore(artifacts), progress=False).run(src)
    m = json.loads((art.path / MANIFEST).read_text())
    assert m["stage"] == "source" and m["key"] == src.key() and m["scope"] == "s"
    assert m["params"]["data_root"] == "/a"  # recorded ...
    assert "data_root" not in m["hashed_params"]  # ... but not hashed
    assert m["summary"] == {"n": 5}
    assert m["versions"]["numpy"] == np.__version__
    assert "brainrecon" in m["versions"]
    assert m["timing"]["seconds"] >= 0
    assert "git" in m
    assert m["files"] == ["x.npy"]


def test_folder_without_manifest_is_never_read(artifacts):
    store = ArtifactStore(artifacts)
    src, *_ = graph()
    folder = store.folder("s", "source", src.key())
    folder.mkdir(parents=True)
    np.save(folder / "x.npy", np.full(5, 99.0, dtype=np.float32))  # half-written output, no manifest
    with pytest.raises(StageError, match="manifest"):
        store.open("s", "source", src.key())
    assert not store.is_complete("s", "source", src.key())


def test_stale_tmp_is_cleared(artifacts):
    store = ArtifactStore(artifacts)
    src, *_ = graph()
    tmp = store.folder("s", "source", src.key()).with_name(src.key() + ".tmp")
    tmp.mkdir(parents=True)
    (tmp / "junk.npy").write_bytes(b"garbage")
    art = Runner(store, progress=False).run(src)
    assert not tmp.exists()
    assert not (art.path / "junk.npy").exists()
    np.testing.assert_array_equal(art.array("x"), np.arange(5, dtype=np.float32))


class Flaky(Stage):
    """Writes items one by one; raises after ``fail_after`` items (a crash), counts items computed."""

    name = "flaky"
    resumable = True
    computed: list[int] = []

    def run(self, inputs, ctx):
        for i in range(self.params["n"]):
            if (ctx.out / f"item_{i}.npy").exists():
                continue
            if i == self.resources.get("fail_after"):
                raise RuntimeError("simulated crash")
            ctx.save_array(f"item_{i}", np.array([i]))
            Flaky.computed.append(i)
        return {}


def test_resumable_stage_keeps_committed_items(artifacts):
    Flaky.computed = []
    store = ArtifactStore(artifacts)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Runner(store, progress=False).run(Flaky({"n": 5}, scope="s", resources={"fail_after": 3}))
    assert Flaky.computed == [0, 1, 2]
    art = Runner(store, progress=False).run(Flaky({"n": 5}, scope="s"))
    assert Flaky.computed == [0, 1, 2, 3, 4]  # items 0-2 were not recomputed
    assert sorted(art.manifest["files"]) == [f"item_{i}.npy" for i in range(5)]


def test_list_finds_complete_artifacts_only(artifacts):
    store = ArtifactStore(artifacts)
    Runner(store, progress=False).run(graph()[-1])
    (artifacts / "s" / "source" / "deadbeef.tmp").mkdir()
    assert sorted(a.stage for a in store.list()) == ["double", "source", "source", "total"]


class Versioned(Source):
    code = 1

    def fingerprint(self):
        return {"code": Versioned.code}


def test_fingerprint_change_invalidates_cache(artifacts):
    Versioned.code = 1
    k1 = Versioned({"n": 3}, scope="s").key()
    Versioned.code = 2
    assert Versioned({"n": 3}, scope="s").key() != k1
