"""Stimuli of the simulated experiment: procedural scenes with captions, or photographs.

Procedural scenes are drawn with numpy only (no font files, no downloaded images), so they
are licence-clean and identical on every machine. Each scene is a natural-statistics
background (coloured noise with a 1/f amplitude spectrum) with one to three objects of
known categories (:data:`CATEGORIES`) at known colours, positions and sizes. The scene
description is the ground truth: per category, the fraction of the image its visible
pixels cover (``semantics``), which drives the category-selective voxels of the encoding
model, and five captions generated from that description.

Photographs (e.g. ``../shared/data/imagenet-samples-256``) can replace the scenes. Their
category content is unknown, so their ``semantics`` are all zero and their captions are
built from the class name in the file name (``<wnid>_<class_name>.jpg``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from brainrecon.errors import ConfigError, DataFormatError, MissingDataError

#: Object categories of the procedural scenes, in the column order of ``semantics``.
CATEGORIES: tuple[str, ...] = ("face", "body", "building", "word", "tree", "car", "ball")

#: The NSD floc ROI family driven by each category (categories absent here drive none).
FLOC_CATEGORY: dict[str, str] = {
    "floc-faces": "face",
    "floc-bodies": "body",
    "floc-places": "building",
    "floc-words": "word",
}

N_CAPTIONS = 5

class _BodyGeometry(NamedTuple):
    """A body's parts as fractions of the object's side ``s`` (x from the centre, y downwards)."""

    limb_half_width: float
    torso_half_width: float
    torso_top: float
    torso_bottom: float
    shoulder: float  # y where the arms leave the torso
    hand: float  # |x| of the hands (at y = 0.08)
    hip: float  # |x| where the legs leave the torso
    leg_width_factor: float  # legs are this much thicker than arms
    head: tuple[float, float, float]  # centre y, x radius, y radius


# "stick": the earlier scenes' figure, whose limbs are 1-3.5 px wide at 64 px, too thin for the small
# generators to draw (docs/roi.md); kept for the models trained on it. "solid": the same pose with a torso
# 0.40 s wide and limbs about twice as thick, so that a body covers about as much of its box as a face.
_BODY_GEOMETRY: dict[str, _BodyGeometry] = {
    "solid": _BodyGeometry(0.085, 0.20, -0.26, 0.14, -0.20, 0.38, 0.11, 1.15, (-0.37, 0.13, 0.13)),
    "stick": _BodyGeometry(0.045, 0.14, -0.25, 0.12, -0.22, 0.30, 0.08, 1.2, (-0.36, 0.10, 0.12)),
}

#: How bodies are drawn: ``"solid"`` (the default since session 7) or ``"stick"`` (the earlier scenes'
#: thin stick figure, which the bundled IC-GAN and BigBiGAN were trained on). Only the
#: body's pixels differ: both shapes draw the same random numbers, so a seed gives the same scenes.
BODY_SHAPES: tuple[str, ...] = tuple(_BODY_GEOMETRY)

# Named colours (RGB in [0, 1]); objects only use these so that captions can name them.
_COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "orange": (0.95, 0.55, 0.10),
    "yellow": (0.95, 0.85, 0.15),
    "green": (0.15, 0.65, 0.20),
    "blue": (0.12, 0.30, 0.85),
    "purple": (0.55, 0.20, 0.70),
    "white": (0.95, 0.95, 0.95),
    "black": (0.08, 0.08, 0.08),
    "grey": (0.50, 0.50, 0.50),
    "brown": (0.50, 0.30, 0.12),
}
_SKIN = [(0.96, 0.80, 0.69), (0.87, 0.67, 0.53), (0.72, 0.51, 0.36), (0.45, 0.30, 0.20)]

# 5x7 bitmap glyphs, drawn for this project ('#' = ink). Enough letters for letter strings.
_GLYPHS: dict[str, tuple[str, ...]] = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
}
_GLYPH_ARRAYS = {k: np.array([[c == "#" for c in row] for row in v]) for k, v in _GLYPHS.items()}
_LETTERS = tuple(sorted(_GLYPHS))


@dataclass
class StimulusSet:
    """Images with their ground-truth content.

    Attributes
    ----------
    images : np.ndarray
        (n, size, size, 3) uint8.
    captions : np.ndarray
        (n, 5) unicode strings ('<U...' dtype, loadable without pickle).
    semantics : np.ndarray
        (n, len(CATEGORIES)) float32: fraction of the image covered by the visible pixels of
        each category (for words: the cells of the letter string). Zero for photographs.
    descriptions : list[dict]
        Per image, JSON-serialisable scene description (objects with category, colour,
        centre (x, y as fractions of width/height, y downwards), size as a fraction of the
        image side, visible area) or, for photographs, the file name and class.
    """

    images: np.ndarray
    captions: np.ndarray
    semantics: np.ndarray
    descriptions: list[dict]


# --------------------------------------------------------------------------- backgrounds
def pink_noise_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A colour background whose luminance has a 1/f amplitude spectrum (natural images).

    Returns (size, size, 3) float32 in [0, 1].
    """
    f = np.fft.fftfreq(size)
    fr = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    fr[0, 0] = 1.0  # the DC term is set by the mean colour below
    amp = 1.0 / fr
    amp[0, 0] = 0.0

    def field() -> np.ndarray:
        spec = amp * np.exp(2j * np.pi * rng.random((size, size)))
        img = np.real(np.fft.ifft2(spec))
        return img / (img.std() + 1e-12)

    lum = field()
    chroma = np.stack([field() for _ in range(2)], axis=-1)
    base = rng.uniform(0.25, 0.75, size=3)
    contrast = rng.uniform(0.08, 0.18)
    out = base[None, None, :] + contrast * lum[..., None]
    # weak opponent colour modulation (red-green, blue-yellow)
    out[..., 0] += 0.03 * chroma[..., 0]
    out[..., 1] -= 0.03 * chroma[..., 0]
    out[..., 2] += 0.03 * chroma[..., 1]
    out[..., :2] -= 0.015 * chroma[..., 1:2]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- shapes
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    return c[None, :], c[:, None]  # x (columns), y (rows), fractions of the side


def _ellipse(x, y, cx, cy, rx, ry):
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _rect(x, y, x0, y0, x1, y1):
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def _segment(x, y, ax, ay, bx, by, half_width):
    dx, dy = bx - ax, by - ay
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
    return (x - ax - t * dx) ** 2 + (y - ay - t * dy) ** 2 <= half_width**2


def _triangle(x, y, p0, p1, p2):
    def side(a, b):
        return (x - b[0]) * (a[1] - b[1]) - (a[0] - b[0]) * (y - b[1])

    d0, d1, d2 = side(p0, p1), side(p1, p2), side(p2, p0)
    neg = (d0 < 0) | (d1 < 0) | (d2 < 0)
    pos = (d0 > 0) | (d1 > 0) | (d2 > 0)
    return ~(neg & pos)


def _paint(canvas, labels, mask, colour, label):
    canvas[mask] = colour
    if label is not None:
        labels[mask] = label


def _draw_object(canvas, labels, x, y, cat_idx, cx, cy, s, colour, rng, text, body_shape="solid"):
    """Draw one object of category ``CATEGORIES[cat_idx]`` centred at (cx, cy), side s.

    Returns the mask counted as the object's area (its silhouette; for words the cells of
    the letters, so that thin strokes still count as a word-sized region). ``body_shape`` is one
    of :data:`BODY_SHAPES`.
    """
    cat = CATEGORIES[cat_idx]
    dark = np.array(_COLOURS["black"])
    if cat == "face":
        skin = np.array(_SKIN[rng.integers(len(_SKIN))])
        head = _ellipse(x, y, cx, cy, 0.36 * s, 0.48 * s)
        hair = _ellipse(x, y, cx, cy - 0.30 * s, 0.38 * s, 0.22 * s) & (y < cy - 0.22 * s)
        _paint(canvas, labels, head, skin, cat_idx)
        _paint(canvas, labels, hair, np.array(colour), cat_idx)
        for ex in (-0.14, 0.14):
            _paint(canvas, labels, _ellipse(x, y, cx + ex * s, cy - 0.06 * s, 0.06 * s, 0.04 * s), dark, None)
        _paint(canvas, labels, _ellipse(x, y, cx, cy + 0.24 * s, 0.14 * s, 0.035 * s), np.array((0.6, 0.15, 0.15)), None)
        return head | hair
    if cat == "body":
        col = np.array(colour)
        skin = np.array(_SKIN[rng.integers(len(_SKIN))])
        g = _BODY_GEOMETRY[body_shape]
        hw, tw = g.limb_half_width * s, g.torso_half_width * s
        parts = [
            _rect(x, y, cx - tw, cy + g.torso_top * s, cx + tw, cy + g.torso_bottom * s),  # torso
            *(_segment(x, y, cx + side * tw, cy + g.shoulder * s, cx + side * g.hand * s, cy + 0.08 * s, hw)  # arms
              for side in (-1, 1)),
            *(_segment(x, y, cx + side * g.hip * s, cy + g.torso_bottom * s, cx + side * (g.hip + 0.04) * s,
                       cy + 0.48 * s, hw * g.leg_width_factor) for side in (-1, 1)),  # legs
        ]
        head = _ellipse(x, y, cx, cy + g.head[0] * s, g.head[1] * s, g.head[2] * s)
        body = np.logical_or.reduce(parts)
        _paint(canvas, labels, body, col, cat_idx)
        _paint(canvas, labels, head, skin, cat_idx)
        return body | head
    if cat == "building":
        wall = _rect(x, y, cx - 0.40 * s, cy - 0.15 * s, cx + 0.40 * s, cy + 0.48 * s)
        roof = _triangle(x, y, (cx - 0.48 * s, cy - 0.15 * s), (cx + 0.48 * s, cy - 0.15 * s), (cx, cy - 0.48 * s))
        _paint(canvas, labels, wall, np.array(colour), cat_idx)
        _paint(canvas, labels, roof, np.array(_COLOURS["brown"]) * 0.8, cat_idx)
        glass = np.array((0.75, 0.85, 0.95))
        for wx in (-0.25, 0.0, 0.25):
            for wy in (0.0, 0.22):
                if wx == 0.0 and wy == 0.22:
                    continue
                win = _rect(x, y, cx + (wx - 0.07) * s, cy + (wy - 0.06) * s, cx + (wx + 0.07) * s, cy + (wy + 0.06) * s)
                _paint(canvas, labels, win, glass, None)
        _paint(canvas, labels, _rect(x, y, cx - 0.07 * s, cy + 0.26 * s, cx + 0.07 * s, cy + 0.48 * s), dark * 2, None)
        return wall | roof
    if cat == "word":
        n = len(text)
        cell = 1.6 * s / (n * 6)  # 5 columns of ink + 1 of spacing per letter
        x0 = cx - 0.5 * n * 6 * cell
        y0 = cy - 3.5 * cell
        ink = np.zeros(canvas.shape[:2], dtype=bool)
        size = canvas.shape[0]
        col = np.floor((x - x0) / cell).astype(int)
        row = np.floor((y - y0) / cell).astype(int)
        col = np.broadcast_to(col, (size, size))
        row = np.broadcast_to(row, (size, size))
        inside = (row >= 0) & (row < 7) & (col >= 0) & (col < n * 6)
        for li, letter in enumerate(text):
            g = _GLYPH_ARRAYS[letter]
            c = col - li * 6
            sel = inside & (c >= 0) & (c < 5)
            ink[sel] = g[row[sel], c[sel]]
        # the letters' cells, also where a glyph has no ink, count as the word's area
        labels[inside] = cat_idx
        _paint(canvas, labels, ink, np.array(colour), None)
        return inside
    if cat == "tree":
        trunk = _rect(x, y, cx - 0.07 * s, cy, cx + 0.07 * s, cy + 0.48 * s)
        crown = _ellipse(x, y, cx, cy - 0.15 * s, 0.33 * s, 0.33 * s)
        _paint(canvas, labels, trunk, np.array(_COLOURS["brown"]), cat_idx)
        _paint(canvas, labels, crown, np.array(colour), cat_idx)
        return trunk | crown
    if cat == "car":
        lower = _rect(x, y, cx - 0.48 * s, cy - 0.02 * s, cx + 0.48 * s, cy + 0.20 * s)
        cabin = _rect(x, y, cx - 0.25 * s, cy - 0.22 * s, cx + 0.22 * s, cy - 0.02 * s)
        _paint(canvas, labels, lower | cabin, np.array(colour), cat_idx)
        wheels = _ellipse(x, y, cx - 0.28 * s, cy + 0.22 * s, 0.11 * s, 0.11 * s) | _ellipse(
            x, y, cx + 0.28 * s, cy + 0.22 * s, 0.11 * s, 0.11 * s
        )
        _paint(canvas, labels, wheels, dark, cat_idx)
        return lower | cabin | wheels
    # ball
    ball = _ellipse(x, y, cx, cy, 0.35 * s, 0.35 * s)
    _paint(canvas, labels, ball, np.array(colour), cat_idx)
    shine = _ellipse(x, y, cx - 0.12 * s, cy - 0.12 * s, 0.07 * s, 0.07 * s)
    _paint(canvas, labels, shine, np.array(_COLOURS["white"]), None)
    return ball


# --------------------------------------------------------------------------- captions
_NOUNS = {
    "face": ("face", "human face", "portrait of a face"),
    "body": ("person", "human figure", "standing person"),
    "building": ("house", "building", "small building"),
    "word": ("word", "letter string", "written word"),
    "tree": ("tree", "leafy tree", "tree"),
    "car": ("car", "automobile", "small car"),
    "ball": ("ball", "round ball", "sphere"),
}


def _where(cx: float, cy: float) -> str:
    horiz = "left" if cx < 0.4 else "right" if cx > 0.6 else ""
    vert = "top" if cy < 0.4 else "bottom" if cy > 0.6 else ""
    if horiz and vert:
        return f"in the {vert} {horiz}"
    if horiz or vert:
        return f"on the {horiz or vert}"
    return "in the centre"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(obj: dict, rng: np.random.Generator, with_colour: bool = True) -> str:
    nouns = _NOUNS[obj["category"]]
    noun = nouns[rng.integers(len(nouns))]
    if obj["category"] == "word":
        noun = f'{noun} "{obj["text"]}"'
    adj = []
    if obj["size"] > 0.38:
        adj.append("large")
    elif obj["size"] < 0.22:
        adj.append("small")
    if with_colour:
        adj.append(obj["colour"])
    words = " ".join(adj + [noun])
    return f"{_article(words)} {words}"


def captions_for_scene(objects: list[dict], rng: np.random.Generator) -> list[str]:
    """Five captions describing a scene from its object list (ground truth, not a model)."""
    visible = [o for o in objects if o["area"] > 0.0] or objects
    main = max(visible, key=lambda o: o["area"])
    listing = [_phrase(o, rng, with_colour=False) for o in visible]
    if len(listing) == 1:
        joined = listing[0]
    else:
        joined = ", ".join(listing[:-1]) + " and " + listing[-1]
    count = {1: "one object", 2: "two objects", 3: "three objects"}.get(len(visible), f"{len(visible)} objects")
    caps = [
        f"{_phrase(main, rng)} {_where(main['cx'], main['cy'])}",
        f"a picture of {joined}",
        f"{joined} over a textured background",
        f"a scene with {count}: {joined}",
        f"{_phrase(main, rng)} and a noisy backdrop",
    ]
    # capitalise only the first letter: str.capitalize would lower-case the letter strings
    return [c[0].upper() + c[1:] for c in caps]


# --------------------------------------------------------------------------- generators
def procedural_scene(
    rng: np.random.Generator, size: int, *, return_labels: bool = False, body_shape: str = "solid"
) -> tuple[np.ndarray, np.ndarray, list[dict]] | tuple[np.ndarray, np.ndarray, list[dict], np.ndarray]:
    """Draw one scene.

    Returns
    -------
    image : (size, size, 3) uint8
    semantics : (len(CATEGORIES),) float32, visible area fraction per category
    objects : list of JSON-serialisable object descriptions
    labels : (size, size) int16, only with ``return_labels``
        Category index of each pixel (-1: background); ``semantics[c]`` is ``mean(labels == c)``.

    ``body_shape`` is one of :data:`BODY_SHAPES`.
    """
    _check_body_shape(body_shape)
    canvas = pink_noise_background(rng, size)
    labels = np.full((size, size), -1, dtype=np.int16)
    x, y = _grid(size)
    n_obj = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    colour_names = list(_COLOURS)
    objects = []
    masks = []
    for _ in range(n_obj):
        cat_idx = int(rng.integers(len(CATEGORIES)))
        s = float(rng.uniform(0.18, 0.5))
        cx = float(rng.uniform(0.15 + 0.3 * s, 0.85 - 0.3 * s))
        cy = float(rng.uniform(0.15 + 0.3 * s, 0.85 - 0.3 * s))
        cname = colour_names[int(rng.integers(len(colour_names)))]
        text = "".join(rng.choice(_LETTERS, size=int(rng.integers(3, 6))))
        mask = _draw_object(canvas, labels, x, y, cat_idx, cx, cy, s, _COLOURS[cname], rng, text, body_shape)
        obj = {"category": CATEGORIES[cat_idx], "colour": cname, "cx": cx, "cy": cy, "size": s}
        if CATEGORIES[cat_idx] == "word":
            obj["text"] = text
        objects.append(obj)
        masks.append(mask)
    # visible area: pixels whose final label is this object's category and that the
    # object covered (later objects occlude earlier ones)
    semantics = np.zeros(len(CATEGORIES), dtype=np.float32)
    for c in range(len(CATEGORIES)):
        semantics[c] = np.float32(np.mean(labels == c))
    for obj, mask in zip(objects, masks):
        c = CATEGORIES.index(obj["category"])
        obj["area"] = float(np.mean(mask & (labels == c)))
    image = np.clip(np.round(canvas * 255.0), 0, 255).astype(np.uint8)
    if return_labels:
        return image, semantics, objects, labels
    return image, semantics, objects


def _check_body_shape(body_shape: str) -> None:
    if body_shape not in BODY_SHAPES:
        raise ConfigError(f"body_shape: expected one of {list(BODY_SHAPES)}, got {body_shape!r}")


def procedural_stimuli(
    n: int, size: int, rng: np.random.Generator, progress: bool = False, body_shape: str = "solid"
) -> StimulusSet:
    """``n`` procedural scenes of ``size`` x ``size`` pixels with captions and semantics."""
    if n < 1 or size < 16:
        raise ConfigError(f"procedural_stimuli: need n >= 1 and size >= 16, got n={n}, size={size}")
    from tqdm.auto import tqdm

    images = np.empty((n, size, size, 3), dtype=np.uint8)
    semantics = np.empty((n, len(CATEGORIES)), dtype=np.float32)
    captions: list[list[str]] = []
    descriptions: list[dict] = []
    for i in tqdm(range(n), desc="sim: scenes", disable=not progress):
        img, sem, objs = procedural_scene(rng, size, body_shape=body_shape)
        images[i] = img
        semantics[i] = sem
        captions.append(captions_for_scene(objs, rng))
        descriptions.append({"source": "procedural", "objects": objs})
    return StimulusSet(images, np.array(captions, dtype=str), semantics, descriptions)


_PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def photo_stimuli(folder: str | Path, n: int, size: int, rng: np.random.Generator, progress: bool = False) -> StimulusSet:
    """``n`` photographs drawn without replacement from ``folder``, centre-cropped and resized.

    Captions use the class name in the file name (``<id>_<class_name>.jpg``; underscores
    become spaces); semantics are zero because the category content is not known.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    folder = Path(folder)
    if not folder.is_dir():
        raise MissingDataError(folder, "stimulus folder", "SimConfig.stimulus_source must be 'procedural' or a folder of photographs")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _PHOTO_SUFFIXES)
    if len(files) < n:
        raise ConfigError(
            f"stimulus folder {folder}: need {n} images (n_train + n_test), found {len(files)} .jpg/.png files"
        )
    chosen = [files[i] for i in rng.permutation(len(files))[:n]]
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    captions, descriptions = [], []
    for i, path in enumerate(tqdm(chosen, desc="sim: photographs", disable=not progress)):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                side = min(w, h)
                left, top = (w - side) // 2, (h - side) // 2
                im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
                images[i] = np.asarray(im, dtype=np.uint8)
        except OSError as exc:
            raise DataFormatError(f"stimulus photograph {path}: cannot be read as an image ({exc})") from exc
        stem = path.stem
        name = (stem.split("_", 1)[1] if "_" in stem else stem).replace("_", " ")
        art = _article(name)
        captions.append(
            [
                f"A photo of {art} {name}",
                f"{art.capitalize()} {name}",
                f"A picture showing {art} {name}",
                f"An image of {art} {name}",
                f"A close view of {art} {name}",
            ]
        )
        descriptions.append({"source": "photograph", "file": path.name, "class_name": name})
    semantics = np.zeros((n, len(CATEGORIES)), dtype=np.float32)
    return StimulusSet(images, np.array(captions, dtype=str), semantics, descriptions)


def make_stimuli(
    source: str, n: int, size: int, rng: np.random.Generator, progress: bool = False, body_shape: str = "solid"
) -> StimulusSet:
    """Dispatch on ``source``: ``"procedural"`` (bodies drawn as ``body_shape``) or a folder of photographs."""
    if source == "procedural":
        return procedural_stimuli(n, size, rng, progress, body_shape)
    return photo_stimuli(source, n, size, rng, progress)


def load_scene_arrays(images_path: str | Path, captions_path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read the training scenes written by ``scripts/sim_training_images.py``.

    Parameters
    ----------
    images_path : path
        ``.npy`` of ``(n, H, W, 3)`` uint8 scenes.
    captions_path : path, optional
        ``.npy`` of ``(n, k)`` unicode captions; default ``<images stem>_captions.npy`` beside the images.

    Raises
    ------
    MissingDataError, DataFormatError
        Naming the file that is absent or has the wrong layout.
    """
    images_path = Path(images_path)
    captions_path = Path(captions_path) if captions_path is not None else images_path.with_name(images_path.stem + "_captions.npy")
    for path, what in ((images_path, "training images (.npy)"), (captions_path, "training captions (.npy)")):
        if not path.is_file():
            raise MissingDataError(path, what)
    images = np.load(images_path, allow_pickle=False)
    captions = np.load(captions_path, allow_pickle=False)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataFormatError(f"{images_path}: expected (n, H, W, 3) uint8, got {images.shape} {images.dtype}")
    if captions.ndim != 2 or captions.dtype.kind != "U":
        raise DataFormatError(f"{captions_path}: expected (n, k) unicode captions, got {captions.shape} {captions.dtype}")
    if len(captions) != len(images):
        raise DataFormatError(f"{captions_path}: expected {len(images)} rows (one per image), got {len(captions)}")
    return images, captions
