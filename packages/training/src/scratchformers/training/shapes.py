"""Shapes drawn by code: the offline image dataset of the image recipes.

Every image shows one shape (a circle, square, triangle, diamond, cross or star) in one of six
colours, three sizes and nine positions, slightly turned, on a dark plain, gradient or noisy
background; the label is the shape. Shapes are drawn with Pillow at four times the image's
size and scaled down, so that their edges are smooth at 32 pixels, and everything is drawn
from one seed:
the same call gives the same images, byte for byte, on every machine. Thousands of images take
a second or two.

The other attributes are columns of the dataset too, so that an image-text recipe can caption
the very same images (:func:`shape_caption`: "a small red circle at the top left").
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping
from typing import Any

import datasets
import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
# Bright, saturated colours on darker backgrounds: a shape is always lighter than what is
# around it, so its edges have one sign whatever its colour, which a small ViT learns in
# minutes (with light and dark backgrounds mixed it barely starts to in that time).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 70, 70),
    "green": (70, 215, 70),
    "blue": (80, 130, 255),
    "yellow": (245, 225, 50),
    "purple": (195, 85, 255),
    "orange": (255, 155, 35),
}
# The side of the square a shape fills, as a share of the image's side.
SIZES: dict[str, float] = {"small": 0.3, "medium": 0.42, "large": 0.54}
# Where the shape's centre is, as shares of the image's width and height.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top": (0.5, 0.25),
    "top right": (0.75, 0.25),
    "left": (0.25, 0.5),
    "centre": (0.5, 0.5),
    "right": (0.75, 0.5),
    "bottom left": (0.25, 0.75),
    "bottom": (0.5, 0.75),
    "bottom right": (0.75, 0.75),
}
BACKGROUNDS = ("plain", "gradient", "noise")
COLUMNS = ("image", "label", "shape", "colour", "size", "position", "background")

_SUPERSAMPLING = 4  # drawn at 4x and scaled down: smooth edges without an anti-aliasing API
_MIN_CONTRAST = 110.0  # RGB distance between a shape and its background, so it stays visible
_MAX_TURN_DEGREES = 12.0  # small turns only: a diamond turned 45 degrees would be a square
_CELL = 0.125  # half the distance between two anchors of POSITIONS, as a share of the side


def shape_caption(example: Mapping[str, Any]) -> str:
    """A caption of one example of :func:`shapes_dataset`, from its attribute columns:
    ``"a small red circle at the top left"``, ``"a large blue star in the centre"``."""
    position = example["position"]
    if position == "centre":
        where = "in the centre"
    elif position in ("left", "right"):
        where = f"on the {position}"
    else:
        where = f"at the {position}"
    return f"a {example['size']} {example['colour']} {example['shape']} {where}"


def shapes_dataset(num_images: int, image_size: int = 32, seed: int | str = 0) -> datasets.Dataset:
    """``num_images`` generated images of ``image_size`` x ``image_size`` pixels (RGB).

    Columns: ``image`` (``datasets.Image``), ``label`` (``ClassLabel`` named by
    :data:`SHAPES`), and the attributes as strings: ``shape``, ``colour``, ``size``,
    ``position`` (a key of :data:`POSITIONS`) and ``background``. The classes are balanced to
    within one image, in a shuffled order. ``seed`` (an int or a string) fixes every image;
    different seeds give independent images, so a training set and a held-out set drawn with
    two seeds share none.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for example in _draw_examples(num_images, image_size, seed):
        for name in COLUMNS:
            columns[name].append(example[name])
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(SHAPES)),
            **{name: datasets.Value("string") for name in COLUMNS[2:]},
        }
    )
    return datasets.Dataset.from_dict(columns, features=features)


def draw_shape(
    shape: str,
    colour: str,
    size: str,
    position: str,
    background: str = "plain",
    image_size: int = 32,
    seed: int | str = 0,
) -> Image.Image:
    """One image of the given attributes (keys of :data:`SHAPES`, :data:`COLOURS`,
    :data:`SIZES`, :data:`POSITIONS`, :data:`BACKGROUNDS`), as :func:`shapes_dataset` draws
    them; ``seed`` fixes the small random parts (the exact size, place, turn, tints)."""
    for value, known, what in (
        (shape, SHAPES, "shape"),
        (colour, COLOURS, "colour"),
        (size, SIZES, "size"),
        (position, POSITIONS, "position"),
        (background, BACKGROUNDS, "background"),
    ):
        if value not in known:
            raise ValueError(f"unknown {what} {value!r}; the {what}s are {', '.join(known)}")
    rng = random.Random(seed)
    noise_rng = np.random.default_rng(rng.getrandbits(64))
    return _draw(shape, colour, size, position, background, image_size, rng, noise_rng)


def _draw_examples(num_images: int, image_size: int, seed: int | str) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    # numpy draws the background noise; its seed comes from the same stream, so one seed fixes all.
    noise_rng = np.random.default_rng(rng.getrandbits(64))
    # Balanced: each shape num_images // 6 or one more times, in a random order.
    labels = [index % len(SHAPES) for index in range(num_images)]
    rng.shuffle(labels)
    for label in labels:
        shape = SHAPES[label]
        colour = rng.choice(list(COLOURS))
        size = rng.choice(list(SIZES))
        position = rng.choice(list(POSITIONS))
        background = rng.choice(BACKGROUNDS)
        image = _draw(shape, colour, size, position, background, image_size, rng, noise_rng)
        yield {
            "image": image,
            "label": label,
            "shape": shape,
            "colour": colour,
            "size": size,
            "position": position,
            "background": background,
        }


def _draw(
    shape: str,
    colour: str,
    size: str,
    position: str,
    background: str,
    image_size: int,
    rng: random.Random,
    noise_rng: np.random.Generator,
) -> Image.Image:
    fill = _jittered(COLOURS[colour], rng, 18)
    canvas = _background(background, fill, image_size, rng, noise_rng)
    # The shape is drawn as a mask at four times the size and scaled down: its edge pixels
    # become partly covered, which Pillow's polygons (never anti-aliased) are not.
    big = image_size * _SUPERSAMPLING
    # The shape's box: its size with a little jitter, its centre anywhere in its position's
    # cell and kept inside the image, so that no shape is cut off. The cells are as wide as
    # the anchors are apart, so centres cover the image evenly: with anchors alone, shapes
    # would sit on the patch grid in a few ways only and a ViT could learn those layouts
    # instead of the shapes (it then fails on a shape moved by half a patch).
    side = SIZES[size] * rng.uniform(0.9, 1.1) * big
    half = side / 2
    anchor_x, anchor_y = POSITIONS[position]
    centre_x = min(max((anchor_x + rng.uniform(-_CELL, _CELL)) * big, half), big - half)
    centre_y = min(max((anchor_y + rng.uniform(-_CELL, _CELL)) * big, half), big - half)
    turn = 0.0 if shape == "circle" else math.radians(rng.uniform(-1, 1) * _MAX_TURN_DEGREES)
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([centre_x - half, centre_y - half, centre_x + half, centre_y + half], fill=255)
    else:
        for polygon in _outline(shape, half):
            points = [
                (
                    centre_x + x * math.cos(turn) - y * math.sin(turn),
                    centre_y + x * math.sin(turn) + y * math.cos(turn),
                )
                for x, y in polygon
            ]
            draw.polygon(points, fill=255)
    mask = mask.resize((image_size, image_size), Image.Resampling.BOX)
    canvas.paste(fill, (0, 0, image_size, image_size), mask)
    return canvas


def _outline(shape: str, half: float) -> list[list[tuple[float, float]]]:
    """The polygons of ``shape`` around the origin, within a box of side ``2 * half``
    (y points down, as in images)."""
    if shape == "square":
        side = half * 0.85  # a square filling the whole box would look bigger than the rest
        return [[(-side, -side), (side, -side), (side, side), (-side, side)]]
    if shape == "triangle":  # pointing up, its box centred on the origin
        return [[(0.0, -half), (half, half * 0.8), (-half, half * 0.8)]]
    if shape == "diamond":
        return [[(0.0, -half), (half * 0.75, 0.0), (0.0, half), (-half * 0.75, 0.0)]]
    if shape == "cross":  # a plus sign: two bars
        bar = half * 0.32
        return [
            [(-half, -bar), (half, -bar), (half, bar), (-half, bar)],
            [(-bar, -half), (bar, -half), (bar, half), (-bar, half)],
        ]
    if shape == "star":  # five points, the first one up
        points = []
        for index in range(10):
            radius = half if index % 2 == 0 else half * 0.42
            angle = -math.pi / 2 + index * math.pi / 5
            points.append((radius * math.cos(angle), radius * math.sin(angle)))
        return [points]
    raise ValueError(f"unknown shape {shape!r}; the shapes are {', '.join(SHAPES)}")


def _background(
    kind: str,
    fill: tuple[int, int, int],
    side: int,
    rng: random.Random,
    noise_rng: np.random.Generator,
) -> Image.Image:
    """A dark background far enough from the shape's colour to leave the shape visible."""
    first = np.asarray(_muted(fill, rng), dtype=np.float64)
    if kind == "plain":
        pixels = np.broadcast_to(first, (side, side, 3))
    elif kind == "gradient":  # from one muted colour to another, across the image
        second = np.asarray(_muted(fill, rng), dtype=np.float64)
        ramp = np.linspace(0.0, 1.0, side)[:, None, None] * np.ones((1, side, 1))
        ramp = np.rot90(ramp, k=rng.randrange(4))
        pixels = first * (1 - ramp) + second * ramp
    else:
        pixels = first + noise_rng.normal(0.0, 22.0, size=(side, side, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "RGB")


def _muted(fill: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    """A dark, greyish colour (a slight tint) that contrasts with ``fill``."""
    for _ in range(100):
        grey = rng.randint(10, 90)
        candidate = tuple(min(255, max(0, grey + rng.randint(-15, 15))) for _ in range(3))
        if math.dist(candidate, fill) >= _MIN_CONTRAST:
            return candidate  # type: ignore[return-value]
    return (0, 0, 0)


def _jittered(
    colour: tuple[int, int, int], rng: random.Random, amount: int
) -> tuple[int, int, int]:
    return tuple(min(255, max(0, channel + rng.randint(-amount, amount))) for channel in colour)  # type: ignore[return-value]
