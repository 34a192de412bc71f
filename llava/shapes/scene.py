"""Scenes of coloured shapes on a 6 x 6 grid, drawn at 336 x 336 over a textured background.

A scene is a deterministic function of a seed. Each occupied cell holds one shape of a colour, size and
offset drawn per object, so the answer to "what colour is the shape in cell b4?" lives only in
the patches the shape covers (a 56 px cell is 4 x 4 CLIP patches of 14 px; a shape covers 1 to 9 of
them), and no single pixel position answers a question.

Colours and shapes are drawn with unequal frequencies (``COLOUR_WEIGHTS``, ``SHAPE_WEIGHTS``) so that
POPE's "popular" negatives (frequent objects that are absent) mean something.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 336
GRID = 6
CELL = IMAGE_SIZE // GRID  # 56 px
PATCH = 14
PATCHES_PER_SIDE = IMAGE_SIZE // PATCH  # 24

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (145, 55, 190),
    "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle", "cross")
COLOUR_WEIGHTS = (0.24, 0.20, 0.17, 0.15, 0.13, 0.11)
SHAPE_WEIGHTS = (0.32, 0.27, 0.22, 0.19)
MIN_SIZE, MAX_SIZE = 22, 46  # bounding-box side in px, inside a 56 px cell
COLOUR_JITTER = 18


@dataclass(frozen=True)
class ShapeObject:
    """One object: its cell (0-based row, column), colour and shape names, and its box in pixels."""

    row: int
    col: int
    colour: str
    shape: str
    left: int
    top: int
    size: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Objects by cell and the seed that draws the background texture and colour jitter."""

    objects: tuple[ShapeObject, ...]
    seed: int

    def at(self, row: int, col: int) -> ShapeObject | None:
        for obj in self.objects:
            if obj.row == row and obj.col == col:
                return obj
        return None

    def count(self, colour: str | None = None, shape: str | None = None) -> int:
        return sum(
            (colour is None or o.colour == colour) and (shape is None or o.shape == shape) for o in self.objects
        )

    def has(self, colour: str, shape: str) -> bool:
        return self.count(colour, shape) > 0


def sample_object(rng: random.Random, row: int, col: int, colour: str | None = None, shape: str | None = None) -> ShapeObject:
    """An object in cell (row, col): colour / shape drawn by their weights unless given; size and offset uniform."""
    colour = colour or rng.choices(list(COLOURS), weights=COLOUR_WEIGHTS)[0]
    shape = shape or rng.choices(SHAPES, weights=SHAPE_WEIGHTS)[0]
    size = rng.randint(MIN_SIZE, MAX_SIZE)
    margin = 2
    left = col * CELL + rng.randint(margin, CELL - size - margin)
    top = row * CELL + rng.randint(margin, CELL - size - margin)
    return ShapeObject(row, col, colour, shape, left, top, size)


def sample_scene(seed: int, min_objects: int = 5, max_objects: int = 12) -> Scene:
    """A scene of ``min_objects..max_objects`` objects in distinct random cells."""
    rng = random.Random(seed)
    count = rng.randint(min_objects, max_objects)
    cells = rng.sample(range(GRID * GRID), count)
    objects = tuple(sample_object(rng, cell // GRID, cell % GRID) for cell in sorted(cells))
    return Scene(objects, seed)


def _texture(rng: np.random.Generator) -> np.ndarray:
    """``[336, 336, 3]`` uint8 background: a grey base, low-frequency waves, a faint grid of lines, noise."""
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    base = rng.uniform(95, 165)
    tint = rng.uniform(-12, 12, size=3)
    waves = np.zeros_like(x)
    for _ in range(3):
        angle, freq, phase = rng.uniform(0, math.pi), rng.uniform(0.02, 0.09), rng.uniform(0, 2 * math.pi)
        waves += rng.uniform(4, 10) * np.sin(freq * (x * math.cos(angle) + y * math.sin(angle)) + phase)
    noise = rng.normal(0, 6, size=(IMAGE_SIZE, IMAGE_SIZE, 1))
    pixels = base + waves[..., None] + tint + noise
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject, fill: tuple[int, int, int]) -> None:
    x0, y0, s = obj.left, obj.top, obj.size
    x1, y1 = x0 + s - 1, y0 + s - 1
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        inset = s // 8
        draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x0 + s / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    elif obj.shape == "cross":
        bar = max(4, s // 3)
        middle = (s - bar) // 2
        draw.rectangle((x0 + middle, y0, x0 + middle + bar - 1, y1), fill=fill)
        draw.rectangle((x0, y0 + middle, x1, y0 + middle + bar - 1), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; valid: {', '.join(SHAPES)}")


def render(scene: Scene) -> Image.Image:
    """The scene as a 336 x 336 RGB image (deterministic for the scene)."""
    rng = np.random.default_rng(scene.seed)
    image = Image.fromarray(_texture(rng))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
        fill = tuple(int(v) for v in np.clip(np.array(COLOURS[obj.colour]) + jitter, 0, 255))
        _draw(draw, obj, fill)
    return image


def object_masks(scene: Scene) -> np.ndarray:
    """``[336, 336]`` int: index + 1 of the object covering each pixel, 0 for background."""
    canvas = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(canvas)
    for index, obj in enumerate(scene.objects):
        _draw(draw, obj, index + 1)
    return np.asarray(canvas)


def patch_objects(scene: Scene, min_coverage: float = 0.2) -> np.ndarray:
    """``[576]`` int in raster order: index + 1 of the object covering at least ``min_coverage`` of each
    14 x 14 patch (the most covering one), 0 for background patches."""
    masks = object_masks(scene).reshape(PATCHES_PER_SIDE, PATCH, PATCHES_PER_SIDE, PATCH)
    masks = masks.transpose(0, 2, 1, 3).reshape(PATCHES_PER_SIDE * PATCHES_PER_SIDE, PATCH * PATCH)
    labels = np.zeros(masks.shape[0], dtype=np.int64)
    for index in range(len(scene.objects)):
        coverage = (masks == index + 1).mean(axis=1)
        better = (coverage >= min_coverage) & (coverage > (masks == labels[:, None]).mean(axis=1) * (labels > 0))
        labels[better] = index + 1
    return labels


def centre_patch(obj: ShapeObject) -> int:
    """Raster index of the patch holding the centre of the object's box: one patch per object, which a
    count can attend to (an object covers 1 to 9 patches, so counting patches would weigh it by its size)."""
    centre_x, centre_y = obj.left + obj.size // 2, obj.top + obj.size // 2
    return (centre_y // PATCH) * PATCHES_PER_SIDE + centre_x // PATCH


def cell_patches(row: int, col: int) -> list[int]:
    """Raster indices of the 16 patches of cell (row, col)."""
    per_cell = CELL // PATCH
    return [
        (row * per_cell + dy) * PATCHES_PER_SIDE + col * per_cell + dx for dy in range(per_cell) for dx in range(per_cell)
    ]
