"""A stage process killed with SIGKILL mid-write: the rerun completes and nothing half-written is read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from brainrecon.errors import StageError
from brainrecon.stages.base import ArtifactStore

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from brainrecon.stages.base import ArtifactStore, Runner, Stage

    class SlowWriter(Stage):
        name = "slow"
        def run(self, inputs, ctx):
            n = self.params["n"]
            arr = np.lib.format.open_memmap(ctx.out / "big.npy", mode="w+", dtype=np.float32, shape=(n, 1000))
            for i in range(n):
                arr[i] = i
                arr.flush()
                if self.resources.get("slow"):
                    (ctx.out / "progress").write_text(str(i))
                    time.sleep(0.02)
            return {"rows": n}

    class Reader(Stage):
        name = "reader"
        def run(self, inputs, ctx):
            ctx.save_json("sum", {"sum": float(inputs["w"].array("big")[:, 0].sum())})
            return {}

    slow = sys.argv[2] == "slow"
    w = SlowWriter({"n": 200}, scope="s", resources={"slow": slow})
    r = Reader({}, {"w": w}, scope="s")
    art = Runner(ArtifactStore(sys.argv[1]), progress=False).run(r)
    print("DONE", art.path)
    """
)


def test_sigkill_mid_write_then_rerun_completes(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    root = tmp_path / "artifacts"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(root), "slow"], env=env)
    progress_files = lambda: list(root.glob("s/slow/*.tmp/progress"))  # noqa: E731
    deadline = time.time() + 60
    while time.time() < deadline:
        files = progress_files()
        if files and int(files[0].read_text() or 0) >= 20:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the stage never started writing")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    store = ArtifactStore(root)
    tmp_dirs = list(root.glob("s/slow/*.tmp"))
    assert len(tmp_dirs) == 1, "the killed stage should leave only its .tmp folder"
    key = tmp_dirs[0].name.removesuffix(".tmp")
    assert not store.is_complete("s", "slow", key)
    with pytest.raises(StageError):
        store.open("s", "slow", key)
    assert not list(root.glob("s/reader/*/manifest.json")), "the consumer must not have run on partial output"

    out = subprocess.run([sys.executable, str(script), str(root), "fast"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "DONE" in out.stdout
    assert not list(root.glob("s/*/*.tmp")), "the stale .tmp must be cleared"
    art = store.open("s", "slow", key)
    np.testing.assert_array_equal(art.array("big")[:, 0], np.arange(200, dtype=np.float32))
    reader = store.list("s", "reader")
    assert len(reader) == 1
    assert reader[0].json("sum")["sum"] == float(sum(range(200)))
