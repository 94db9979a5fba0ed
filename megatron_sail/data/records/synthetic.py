"""Synthetic shapes-and-colours captioning data.

Every caption is determined by the drawn image, so a model can only drive the
loss down by actually looking at the pixels. Samples are a pure function of
(seed, index, image_size): no global RNG state is touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations, product

import numpy as np
from PIL import Image, ImageDraw

# Saturated, mutually distant colours on a black background keep shapes
# identifiable even after downscaling to 56x56.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (25, 200, 25),
    "blue": (30, 70, 240),
    "yellow": (245, 225, 20),
    "purple": (160, 40, 200),
    "white": (245, 245, 245),
}
BACKGROUND: tuple[int, int, int] = (0, 0, 0)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
QUESTIONS: tuple[str, ...] = (
    "Describe the image.",
    "What shapes are in the picture?",
    "What do you see in this image?",
    "Describe the shapes and their colors.",
    "What is shown in the picture?",
)
# Layout name -> the phrase for each slot. Slots are the image halves (or the
# whole image), so the described position is always where the shape is.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "center": ("in the center",),
    "left_right": ("on the left", "on the right"),
    "top_bottom": ("at the top", "at the bottom"),
}

# Shape side as a fraction of the slot's short side: large enough to stay
# solid at 56 px, small enough to leave room for position jitter.
_MIN_FILL, _MAX_FILL = 0.55, 0.85


@dataclass(frozen=True)
class SyntheticSample:
    image: np.ndarray  # HxWx3 uint8
    question: str
    answer: str


def _slots(layout: str, size: int) -> list[tuple[int, int, int, int]]:
    """Pixel boxes (x0, y0, x1, y1), end-exclusive, one per shape slot."""
    half = size // 2
    if layout == "center":
        return [(0, 0, size, size)]
    if layout == "left_right":
        return [(0, 0, half, size), (half, 0, size, size)]
    if layout == "top_bottom":
        return [(0, 0, size, half), (0, half, size, size)]
    raise ValueError(f"unknown layout {layout!r}")


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    slot: tuple[int, int, int, int],
    shape: str,
    colour: tuple[int, int, int],
) -> None:
    x0, y0, x1, y1 = slot
    # One pixel of margin so shapes in neighbouring slots never touch.
    w, h = x1 - x0 - 2, y1 - y0 - 2
    side = max(2, int(min(w, h) * rng.uniform(_MIN_FILL, _MAX_FILL)))
    left = x0 + 1 + int(rng.integers(0, w - side + 1))
    top = y0 + 1 + int(rng.integers(0, h - side + 1))
    box = (left, top, left + side - 1, top + side - 1)  # Pillow boxes are inclusive
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def _describe(items: list[tuple[str, str]], places: tuple[str, ...]) -> str:
    parts = [f"a {colour} {shape} {place}" for (colour, shape), place in zip(items, places)]
    return " and ".join(parts) + "."


def make_sample(seed: int, index: int, image_size: int) -> SyntheticSample:
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed} index={index}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 for recognisable shapes, got {image_size}")
    rng = np.random.default_rng([seed, index])
    layout = list(LAYOUTS)[int(rng.integers(len(LAYOUTS)))]
    places = LAYOUTS[layout]
    colour_names = rng.choice(list(COLOURS), size=len(places), replace=False)
    shape_names = rng.choice(SHAPES, size=len(places), replace=True)
    items = [(str(c), str(s)) for c, s in zip(colour_names, shape_names)]

    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for slot, (colour, shape) in zip(_slots(layout, image_size), items):
        _draw_shape(draw, rng, slot, shape, COLOURS[colour])

    question = QUESTIONS[int(rng.integers(len(QUESTIONS)))]
    return SyntheticSample(image=np.asarray(image, dtype=np.uint8), question=question, answer=_describe(items, places))


def corpus() -> list[str]:
    """Every question and answer make_sample can emit, in a fixed order."""
    texts = list(QUESTIONS)
    items = list(product(COLOURS, SHAPES))
    for places in LAYOUTS.values():
        for combo in permutations(items, len(places)):
            colours = {colour for colour, _ in combo}
            if len(colours) == len(combo):
                texts.append(_describe(list(combo), places))
    return texts
