"""Procedural scenes, their captions and ground-truth content; the photograph option."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from brainrecon.errors import ConfigError, DataFormatError, MissingDataError
from brainrecon.paths import shared_data_dir
from brainrecon.sim import CATEGORIES, SimConfig, simulate_nsd
from brainrecon.sim.stimuli import (
    _NOUNS,
    _draw_object,
    _grid,
    make_stimuli,
    photo_stimuli,
    pink_noise_background,
    procedural_stimuli,
)


@pytest.fixture(scope="module")
def scenes():
    return procedural_stimuli(80, 64, np.random.default_rng(5))


def test_shapes_dtypes_and_determinism(scenes):
    assert scenes.images.shape == (80, 64, 64, 3) and scenes.images.dtype == np.uint8
    assert scenes.captions.shape == (80, 5) and scenes.captions.dtype.kind == "U"
    assert scenes.semantics.shape == (80, len(CATEGORIES)) and scenes.semantics.dtype == np.float32
    again = procedural_stimuli(80, 64, np.random.default_rng(5))
    np.testing.assert_array_equal(again.images, scenes.images)
    np.testing.assert_array_equal(again.captions, scenes.captions)
    other = procedural_stimuli(80, 64, np.random.default_rng(6))
    assert not np.array_equal(other.images, scenes.images)
    # every category occurs, and images differ from each other
    assert np.all((scenes.semantics > 0).sum(axis=0) >= 3)
    assert len({im.tobytes() for im in scenes.images}) == 80


def test_semantics_agree_with_the_scene_description(scenes):
    for sem, desc in zip(scenes.semantics, scenes.descriptions):
        objs = desc["objects"]
        assert 1 <= len(objs) <= 3
        assert np.all(sem >= 0) and sem.sum() <= 1.0 + 1e-6
        for c, name in enumerate(CATEGORIES):
            areas = [o["area"] for o in objs if o["category"] == name]
            if not areas:
                assert sem[c] == 0
            else:
                # the category's area is the union of its objects' visible pixels
                assert max(areas) - 1e-6 <= sem[c] <= sum(areas) + 1e-6


def test_object_area_hand_computed():
    size = 256
    canvas = np.zeros((size, size, 3), np.float32)
    labels = np.full((size, size), -1, np.int16)
    x, y = _grid(size)
    ball = CATEGORIES.index("ball")
    mask = _draw_object(canvas, labels, x, y, ball, 0.5, 0.5, 0.4, (1.0, 0.0, 0.0), np.random.default_rng(0), "ABC")
    # a disc of radius 0.35 * size-fraction 0.4 covers pi * 0.14^2 of the image
    assert abs(mask.mean() - np.pi * 0.14**2) < 0.002
    assert abs(np.mean(labels == ball) - np.pi * 0.14**2) < 0.002
    # the disc is painted red except its white highlight
    red = np.all(canvas == (1.0, 0.0, 0.0), axis=-1)
    assert red.sum() > 0.9 * mask.sum()


def test_captions_describe_the_content(scenes):
    for caps, desc in zip(scenes.captions, scenes.descriptions):
        assert all(len(c) > 10 and c[0].isupper() for c in caps)
        listing = caps[1].lower()
        for obj in desc["objects"]:
            if obj["area"] <= 0:
                continue
            assert any(n in listing for n in _NOUNS[obj["category"]]), (listing, obj)
            if obj["category"] == "word":
                assert obj["text"] in caps[1]  # letter strings keep their case
        main = max((o for o in desc["objects"] if o["area"] > 0), key=lambda o: o["area"])
        assert main["colour"] in caps[0]


def test_background_has_natural_one_over_f_spectrum():
    img = pink_noise_background(np.random.default_rng(0), 256)
    lum = img @ np.array([0.299, 0.587, 0.114])
    amp = np.abs(np.fft.fft2(lum - lum.mean()))
    f = np.fft.fftfreq(256) * 256
    r = np.hypot(f[:, None], f[None, :]).round().astype(int)
    radial = np.bincount(r.ravel(), amp.ravel()) / np.bincount(r.ravel())
    ks = np.arange(4, 60)
    slope = np.polyfit(np.log(ks), np.log(radial[ks]), 1)[0]
    # amplitude ~ 1/f (clipping to [0, 1] flattens it slightly)
    assert -1.3 < slope < -0.7


def _photo_folder(tmp_path, n=6):
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(0, 256, size=(40 + i, 30, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / f"n{i:08d}_red_fox_{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_photograph_source(tmp_path):
    folder = _photo_folder(tmp_path)
    s = photo_stimuli(folder, 4, 24, np.random.default_rng(1))
    assert s.images.shape == (4, 24, 24, 3) and s.images.dtype == np.uint8
    assert np.all(s.semantics == 0)
    for caps, desc in zip(s.captions, s.descriptions):
        assert desc["source"] == "photograph"
        assert all(desc["class_name"] in c for c in caps)
        assert desc["class_name"].startswith("red fox ")
    # centre crop then resize: recompute one image independently with PIL
    name = s.descriptions[0]["file"]
    im = Image.open(folder / name).convert("RGB")
    w, h = im.size
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    ref = np.asarray(im.crop(box).resize((24, 24), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(s.images[0], ref)
    # the same seed picks the same photographs
    s2 = make_stimuli(str(folder), 4, 24, np.random.default_rng(1))
    np.testing.assert_array_equal(s2.images, s.images)


def test_photograph_source_errors(tmp_path):
    with pytest.raises(MissingDataError, match="stimulus folder"):
        photo_stimuli(tmp_path / "absent", 2, 16, np.random.default_rng(0))
    folder = _photo_folder(tmp_path, n=3)
    with pytest.raises(ConfigError, match="need 5 images"):
        photo_stimuli(folder, 5, 16, np.random.default_rng(0))
    (folder / "n99999999_broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataFormatError, match="broken"):
        photo_stimuli(folder, 4, 16, np.random.default_rng(0))
    with pytest.raises(ConfigError):
        procedural_stimuli(0, 32, np.random.default_rng(0))


def test_simulation_with_photographs(tmp_path):
    (tmp_path / "photos").mkdir()
    folder = _photo_folder(tmp_path / "photos", n=12)
    cfg = SimConfig(n_train=8, n_test=4, image_size=24, n_voxels=120, trials_per_session=12, stimulus_source=folder)
    assert cfg.stimulus_source == str(folder)  # a Path is kept as text (JSON config)
    truth = simulate_nsd(tmp_path / "nsd", cfg, progress=False)
    assert np.all(truth.semantics == 0)
    assert truth.stimuli().shape == (12, 24, 24, 3)
    assert all("red fox" in c for c in truth.captions[:, 0])


def test_real_imagenet_samples():
    shared = shared_data_dir()
    if shared is None or not (shared / "imagenet-samples-256").is_dir():
        pytest.skip("../shared/data/imagenet-samples-256 is absent (development data only)")
    s = photo_stimuli(shared / "imagenet-samples-256", 3, 32, np.random.default_rng(0))
    assert s.images.shape == (3, 32, 32, 3)
    assert s.images.std() > 10  # real photographs, not blank
    assert all(len(d["class_name"]) > 0 for d in s.descriptions)


def test_body_shapes_differ_only_in_the_bodies():
    # both shapes draw the same random numbers: a seed gives the same scenes except the bodies' pixels
    solid = procedural_stimuli(60, 64, np.random.default_rng(11), body_shape="solid")
    stick = procedural_stimuli(60, 64, np.random.default_rng(11), body_shape="stick")
    np.testing.assert_array_equal(solid.captions, stick.captions)
    has_body = solid.semantics[:, CATEGORIES.index("body")] > 0
    assert 5 <= has_body.sum() < 60
    np.testing.assert_array_equal(solid.images[~has_body], stick.images[~has_body])
    assert all(not np.array_equal(a, b) for a, b in zip(solid.images[has_body], stick.images[has_body]))
    others = [c for c in range(len(CATEGORIES)) if CATEGORIES[c] != "body"]
    np.testing.assert_array_equal(solid.semantics[~has_body], stick.semantics[~has_body])
    assert solid.semantics[~has_body][:, others].sum() > 0


def test_solid_body_covers_its_box_like_a_face():
    # one centred object of side s = 0.5 on a 256 px canvas; areas as fractions of the s x s box
    size, s = 256, 0.5
    x, y = _grid(size)
    areas = {}
    for cat, shape in (("face", "solid"), ("body", "solid"), ("body", "stick")):
        canvas = np.zeros((size, size, 3), np.float32)
        labels = np.full((size, size), -1, np.int16)
        mask = _draw_object(canvas, labels, x, y, CATEGORIES.index(cat), 0.5, 0.5, s, (1.0, 0.0, 0.0),
                            np.random.default_rng(0), "ABC", shape)
        areas[cat, shape] = mask.mean() / s**2
    # stick figure: torso 0.28 x 0.37 of the box plus limbs and head, 0.30 of it (solid 0.51, face and hair 0.62)
    assert 0.2 < areas["body", "stick"] < 0.32
    # solid: 1.4 to 1.9 times the stick figure, and 70 % to 100 % of a face
    assert 1.4 < areas["body", "solid"] / areas["body", "stick"] < 1.9
    assert 0.7 < areas["body", "solid"] / areas["face", "solid"] < 1.0
    # the arm crosses the row through the box centre right of the torso (x > 0.2 s): a segment of half-width
    # 0.085 s from (0.20, -0.20) s to (0.38, 0.08) s meets a row over 2 * 0.085 * |d| / d_y = 0.202 s
    canvas = np.zeros((size, size, 3), np.float32)
    labels = np.full((size, size), -1, np.int16)
    _draw_object(canvas, labels, x, y, CATEGORIES.index("body"), 0.5, 0.5, s, (1.0, 0.0, 0.0),
                 np.random.default_rng(0), "ABC", "solid")
    row = labels[size // 2, int((0.5 + 0.2 * s) * size) + 1:]
    expected = 2 * 0.085 * np.hypot(0.18, 0.28) / 0.28 * s * size
    assert abs((row == CATEGORIES.index("body")).sum() - expected) <= 2


def test_body_shape_is_validated():
    with pytest.raises(ConfigError, match="body_shape"):
        procedural_stimuli(2, 32, np.random.default_rng(0), body_shape="thin")
    with pytest.raises(ConfigError, match="SimConfig.body_shape"):
        SimConfig(body_shape="thin").validate()
    # a simulation written before the field existed drew stick figures
    legacy = SimConfig().to_json()
    del legacy["body_shape"]
    assert SimConfig.from_json(legacy).body_shape == "stick"
    assert SimConfig.from_json(SimConfig().to_json()).body_shape == "solid"
