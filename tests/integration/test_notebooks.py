"""The notebooks run top to bottom on a run of the default experiment, and the roi stage behind them works.

One small run of the default experiment (the simulated NSD at a reduced size: fewer images and
voxels, smaller bootstrap) is made once for this module with ``until="roi"``; the three notebooks
are executed against it with nbclient, and every figure they render is written as a PNG to
``$BRAINRECON_NOTEBOOK_FIGURES`` (default ``artifacts/notebook_figures/`` in the checkout) so
that a person can check that the figures are legible.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
from hydra import compose, initialize_config_dir  # noqa: E402

from brainrecon.roi import RoiExploration  # noqa: E402
from brainrecon.roi.runs import find_run  # noqa: E402
from brainrecon.stages.pipeline import run_experiment  # noqa: E402
from pipelines.config import build_spaces, to_plain  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
#: The default experiment, smaller: the same stages, spaces and chain at a fraction of the cost
#: (fewer images and voxels, 20 instead of 50 DDIM steps, smaller bootstrap).
SMALL = [
    "data.n_train=160", "data.n_test=8", "data.n_voxels=1000", "data.image_size=64", "+data.trials_per_session=300",
    "latents.versatile.steps=20", "metrics.n_boot=100", "metrics.n_perm=100", "progress=false",
]


def _compose(config: str, root: Path, extra: list[str] = ()):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name=config, overrides=[
            *SMALL, f"paths.data_root={root / 'data'}", f"paths.artifacts_root={root / 'artifacts'}", *extra])


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("default_small")
    cfg = _compose("roi_explore", root)
    result = run_experiment(to_plain(cfg), build_spaces(cfg), artifacts_root=root / "artifacts", until="roi",
                            progress=False)
    return root, result


def test_roi_stage_output(small_run):
    root, result = small_run
    art = result.artifacts["roi"]
    ex = RoiExploration.load(art.path)
    assert len(ex.rois) == 13 and ex.spaces == ["pixels", "vdvae", "versatile"]
    assert set(ex.closed_loop) == {"truth", "fitted"}
    for space, imgs in ex.images.items():
        assert imgs.shape[0] == 13 and imgs.dtype == np.uint8
        assert len(list((art.path / "images" / space).glob("*.png"))) == 14  # 13 ROIs + baseline
    table = ex.closed_loop["truth"].table("versatile")
    assert {r["group"] for r in table} == {"category", "visual", "eccentricity"}
    assert all(0.0 <= r["percentile"] <= 100.0 for r in table)
    est = ex.closed_loop["truth"].extra["semantic_estimator_heldout"]
    assert est["categories"][0] == "face" and len(est["r"]) == 7
    assert "faces" in ex.closed_loop["truth"].extra["natural_check"]  # the loop itself, on natural stimuli
    assert ex.eccentricity_ordering("pixels")["rois"] == ["ecc0pt5", "ecc1", "ecc2", "ecc4", "ecc4plus"]
    assert ex.weights is not None and ex.weights.semantic_pair == ("versatile.clip_text", "vdvae.z")
    for name in ("summary.png", "roi_images.png", "eccentricity.png", "weights.png", "closed_loop_truth_versatile.png"):
        assert (art.path / "figures" / name).stat().st_size > 10_000
    assert find_run(root / "artifacts", 1, "sim").latest_roi().key == art.key


def _figures_dir() -> Path:
    return Path(os.environ.get("BRAINRECON_NOTEBOOK_FIGURES", REPO / "artifacts" / "notebook_figures"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(small_run, path):
    root, _ = small_run
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "notebooks are stored without outputs"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "each notebook has one cell tagged 'parameters'"
    params[0].source = (f"ARTIFACTS_ROOT = {str(root / 'artifacts')!r}\nSUBJECT = 1\nEXPERIMENT = 'sim'\nN_IMAGES = 6\n"
                        "ROI_KEY = None\n")
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    out = _figures_dir() / path.stem
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    n = 0
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            assert o.get("output_type") != "error", f"cell {i} raised {o.get('ename')}: {o.get('evalue')}"
            png = o.get("data", {}).get("image/png")
            if png:
                (out / f"cell{i:02d}_{n}.png").write_bytes(base64.b64decode(png))
                n += 1
    assert n >= 4, f"{path.name} rendered {n} figures, expected at least 4"


def test_explore_roi_command_takes_names_and_nifti_masks(small_run, capsys):
    from pipelines.explore_roi import execute

    root, result = small_run
    sim_root = Path(result.artifacts["data"].json("info")["sim_root"])
    mask = sim_root / "nsddata" / "ppdata" / "subj01" / "func1pt8mm" / "roi" / "floc-places.nii.gz"
    cfg = _compose("roi_explore", root, [f"roi.rois=[faces,{mask}]", "roi.models=[truth]", "roi.weights=false",
                                         "+roi.scaling.vdvae.z.method=unit", f"out_dir={root / 'out'}"])
    folder = execute(cfg)
    out = capsys.readouterr().out
    assert "ran roi(" in out and "closed loop, versatile images" in out
    ex = RoiExploration.load(folder)
    assert ex.rois == ["faces", "floc-places"] and ex.scalings["vdvae.z"].method == "unit"
    # the NIfTI mask selects exactly the voxels of the data's floc-places labels
    labels = np.load(result.artifacts["data"].path / "roi_floc-places.npy")
    np.testing.assert_array_equal(ex.masks[1], labels > 0)
    assert (root / "out" / "figures" / "summary.png").is_file() and (root / "out" / "closed_loop_truth.csv").is_file()


def test_encoder_guidance_raises_its_objective_on_the_guided_rows(small_run, capsys):
    from brainrecon.roi.guidance import EncoderGuide
    from pipelines.explore_roi import execute

    root, result = small_run
    common = ["roi.rois=[eccentricity]", "roi.models=[truth]", "roi.weights=false", "roi.samples=2"]
    plain = RoiExploration.load(execute(_compose("roi_explore", root, common)))
    guided_folder = execute(_compose("roi_explore", root, [*common, "roi.guidance.scale=1.0"]))
    out = capsys.readouterr().out
    assert "eccentricity of the contrast versatile images add" in out
    guided = RoiExploration.load(guided_folder)
    info = guided.info["guidance"]
    assert info["scale"] == 1.0 and info["objective"] == "selective" and info["spaces"] == ["versatile"]
    assert "Encoder guidance of versatile" in guided.report_text()
    assert "guidance" not in plain.info or plain.info["guidance"] is None
    # the guided diffusion raises each band's selective objective over the references' images of the same seeds
    data = result.artifacts["data"]
    specs = guided.specs
    guide = EncoderGuide.fit(np.asarray(data.array("stimuli_train")), np.asarray(data.array("X_train")),
                             guided.mask_dict(), {s.name: s.group for s in specs}, guided.rois)
    rows = np.arange(len(guided.rois))
    gain = [guide.objective_numpy(guided.samples["versatile"][k], rows)
            - guide.objective_numpy(plain.samples["versatile"][k], rows) for k in range(2)]
    assert np.mean(gain) > 0 and np.mean(np.asarray(gain) > 0) >= 0.7
    order = guided.eccentricity_ordering("versatile")
    assert "neighbours" in order["contrast"] and len(order["contrast"]["neighbours"]) == 4
    recommended = _compose("roi_explore", root, ["roi=recommended"]).roi  # the documented preset composes
    assert recommended.pattern == "partial" and recommended.guidance.scale == 1.0 and recommended.samples == 4
