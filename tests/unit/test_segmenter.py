"""The scene segmenter: label maps, training, saving/loading, and the accuracy of the bundled weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from brainrecon.errors import ConfigError, DataFormatError, MissingWeightsError, ShapeMismatchError  # noqa: E402
from brainrecon.paths import bundled_weights_dir  # noqa: E402
from brainrecon.roi.closed_loop import column_scores  # noqa: E402
from brainrecon.sim.segmenter import (  # noqa: E402
    SegmenterConfig,
    SegmenterSemantics,
    label_fractions,
    load_segmenter,
    save_segmenter,
    segmentation_set,
    train_segmenter,
)
from brainrecon.sim.stimuli import CATEGORIES, procedural_scene  # noqa: E402


def test_scene_labels_agree_with_the_semantics():
    rng = np.random.default_rng(3)
    img, sem, _, labels = procedural_scene(rng, 64, return_labels=True)
    assert labels.shape == (64, 64) and img.shape == (64, 64, 3)
    np.testing.assert_allclose([np.mean(labels == c) for c in range(len(CATEGORIES))], sem, atol=1e-7)
    # same draws with and without the labels
    img2, sem2, _ = procedural_scene(np.random.default_rng(3), 64)
    np.testing.assert_array_equal(img, img2)
    np.testing.assert_array_equal(sem, sem2)


def test_label_fractions_are_soft_one_hot_maps():
    labels = np.full((128, 128), -1, np.int16)
    labels[:2, :2] = 0  # one full output pixel of category 0
    labels[2, 2] = 3  # a quarter of another output pixel
    y = label_fractions(labels, 4)
    assert y.shape == (5, 64, 64)
    np.testing.assert_allclose(y.sum(0), 1.0)
    assert y[1, 0, 0] == 1.0 and y[4, 1, 1] == 0.25 and y[0, 1, 1] == 0.75
    with pytest.raises(ShapeMismatchError):
        label_fractions(np.zeros((100, 100), np.int16), 4)


def test_train_save_load_and_read_areas(tmp_path):
    images, targets, semantics = segmentation_set(12, seed=5, size=64)
    assert images.shape == (12, 64, 64, 3) and targets.shape == (12, len(CATEGORIES) + 1, 64, 64)
    model, trace = train_segmenter(images, targets, SegmenterConfig(8, CATEGORIES), steps=3, batch=4)
    assert len(trace) == 2 and np.isfinite(trace[-1]["loss"])
    path = save_segmenter(model, tmp_path / "seg.safetensors")
    est = SegmenterSemantics(str(path), categories=CATEGORIES)
    areas = est(images)
    assert areas.shape == (12, len(CATEGORIES)) and areas.dtype == np.float32
    assert (areas >= 0).all() and (areas.sum(1) <= 1 + 1e-5).all()
    # the same images at another size are resampled to the segmenter's input
    big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)
    np.testing.assert_allclose(est(big), areas, atol=1e-5)
    assert est.score(images, semantics)["categories"] == list(CATEGORIES)
    with pytest.raises(DataFormatError, match="expected the simulator's"):
        SegmenterSemantics(str(path), categories=["face"])(images)
    cfg = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**cfg, "width": 16}))
    with pytest.raises(DataFormatError, match="tensors do not match the scene segmenter"):
        load_segmenter(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(MissingWeightsError, match="config"):
        load_segmenter(path)
    with pytest.raises(MissingWeightsError, match=str(tmp_path / "none.safetensors")):
        load_segmenter(tmp_path / "none.safetensors")
    with pytest.raises(ConfigError):
        SegmenterConfig(12, CATEGORIES)


def test_bundled_segmenter_reads_every_category_on_unseen_scenes():
    path = bundled_weights_dir() / "scene_segmenter.safetensors"
    if not path.is_file():
        pytest.fail(f"bundled segmenter missing at {path}; train it with scripts/train_scene_segmenter.py")
    # scenes of a seed the training script never uses (it draws with 20261122 and 20261123), each body shape
    # on its own: the default experiment draws solid bodies, the GAN experiments stick figures
    reader = SegmenterSemantics(categories=CATEGORIES)
    for shape in ("solid", "stick"):
        images, _, semantics = segmentation_set(150, seed=7, size=128, body_shapes=(shape,))
        r, _ = column_scores(reader(images).astype(np.float64), semantics.astype(np.float64))
        assert min(r) > 0.9, (shape, dict(zip(CATEGORIES, np.round(r, 3))))


def test_segmentation_set_takes_the_body_shapes_in_turn():
    both, _, sem_both = segmentation_set(8, seed=7, size=64)
    solid, _, sem_solid = segmentation_set(8, seed=7, size=64, body_shapes=("solid",))
    stick, _, sem_stick = segmentation_set(8, seed=7, size=64, body_shapes=("stick",))
    has_body = sem_solid[:, CATEGORIES.index("body")] > 0
    assert has_body[0::2].any() and has_body[1::2].any()  # seed 7: scenes 1 and 4 hold a body
    # one random stream: scene i is the same scene, its bodies drawn solid (even i) or as a stick figure (odd i)
    for i in range(8):
        ref, ref_sem = (solid, sem_solid) if i % 2 == 0 else (stick, sem_stick)
        np.testing.assert_array_equal(both[i], ref[i])
        np.testing.assert_array_equal(sem_both[i], ref_sem[i])
