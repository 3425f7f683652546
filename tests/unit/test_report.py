"""The HTML report and the metric files: self-contained, complete, readable back."""

from __future__ import annotations

import base64
import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from brainrecon.metrics.suite import evaluate_methods
from brainrecon.report import write_metrics, write_report


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    rng = np.random.default_rng(0)
    gt = np.kron(rng.random((10, 3, 4, 4)), np.ones((1, 1, 7, 7))).astype(np.float32)  # 28x28
    recons = {
        "close": np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1).astype(np.float32),
        "noise": rng.random(gt.shape).astype(np.float32),
    }
    root = tmp_path_factory.mktemp("empty_weights")
    metrics = evaluate_methods(gt, recons, preset="native", weights_root=root, n_perm=50, n_boot=50,
                               metrics=["PixCorr", "SSIM", "MSE", "CLIP 2-way"],
                               image_ids=[f"img{i}" for i in range(10)])
    return gt, recons, metrics, root


def test_write_metrics(tmp_path: Path, evaluated) -> None:  # noqa: ANN001
    _, _, metrics, root = evaluated
    json_path, csv_path = write_metrics(tmp_path, metrics)
    data = json.loads(json_path.read_text())
    assert data["preset"] == "native"
    pix = data["methods"]["close"]["metrics"]["PixCorr"]
    assert pix["ci_low"] <= pix["mean"] <= pix["ci_high"] and 0 < pix["p_value"] <= 1
    assert data["methods"]["close"]["metrics"]["CLIP 2-way"]["unavailable"].startswith(f"unavailable: {root}")
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 20 and rows[0]["method"] == "close" and rows[0]["image"] == "img0"
    assert rows[0]["CLIP 2-way"] == ""
    per = metrics["noise"].metrics["SSIM"].per_image
    np.testing.assert_allclose([float(r["SSIM"]) for r in rows[10:]], per, rtol=1e-5)


def test_write_report_is_self_contained(tmp_path: Path, evaluated) -> None:  # noqa: ANN001
    gt, recons, metrics, _ = evaluated
    index = write_report(tmp_path / "rep", stimuli=gt, reconstructions=recons, metrics=metrics, title="Demo <x>",
                         extra_sections=[("Notes", "<p id='extra'>hello</p>")])
    page = index.read_text()
    assert index.name == "index.html"
    assert "Demo &lt;x&gt;" in page and "<code>native</code>" in page and "<p id='extra'>hello</p>" in page
    # every figure embedded as PNG data, no external resource but the relative links to our files
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pngs) == 1 + 1 + 2  # grid, bars, best/worst per method
    for b in pngs:
        assert base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page
    for name in ("PixCorr", "SSIM", "MSE", "CLIP 2-way", "unavailable: "):
        assert name in page
    for f in ("metrics.json", "per_image.csv", "figures/grid.png", "figures/bars.png", "figures/best_worst_0.png"):
        assert (tmp_path / "rep" / f).is_file(), f


def test_chains_are_shown_stage_by_stage(tmp_path: Path, evaluated) -> None:  # noqa: ANN001
    from brainrecon.errors import ShapeMismatchError
    from brainrecon.stages.evaluate import chain_methods

    gt, recons, metrics, _ = evaluated
    chains = chain_methods({"close": "noise"}, recons)
    assert chains == {"noise -> close": ["noise", "close"]}
    assert chain_methods({"c": "b", "b": "a"}, dict.fromkeys("abc")) == {"a -> b -> c": ["a", "b", "c"]}
    assert chain_methods({"close": "absent"}, recons) == {}
    index = write_report(tmp_path / "rep", stimuli=gt, reconstructions=recons, metrics=metrics, chains=chains)
    page = index.read_text()
    assert "noise -&gt; close, stage by stage" in page
    assert (tmp_path / "rep" / "figures" / "chain_0.png").is_file()
    with pytest.raises(ShapeMismatchError, match="unknown"):
        write_report(tmp_path / "bad", stimuli=gt, reconstructions=recons, metrics=metrics, chains={"x": ["nope"]})
