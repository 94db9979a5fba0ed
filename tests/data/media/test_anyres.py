"""AnyRes sizes: multiples of 28 px, within the token budget, aspect ratio kept."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_sail.data.media import anyres_grid, anyres_image, anyres_size, anyres_tokens
from tests.data.media.conftest import random_image

rng = np.random.default_rng(0)
SIZES = ([(1, 20), (20, 1), (10, 10), (1, 1), (1, 200000), (200000, 1), (28, 28), (1792, 1792),
          (1793, 1792), (4000, 4000), (640, 480), (1920, 1080), (8000, 100), (100, 8000)]
         + [tuple(int(v) for v in rng.integers(1, 6000, 2)) for _ in range(300)])


@pytest.mark.parametrize("max_tokens,min_tokens", [(4096, 4), (1024, 4), (256, 64), (5, 5), (1, 1)])
def test_grid_is_multiple_of_28_and_within_budget(max_tokens, min_tokens):
    for w, h in SIZES:
        width, height = anyres_size(w, h, max_tokens, min_tokens)
        assert width % 28 == 0 and height % 28 == 0 and width >= 28 and height >= 28
        tokens = (width // 28) * (height // 28)
        assert tokens == anyres_tokens(w, h, max_tokens, min_tokens)
        assert tokens <= max_tokens, (w, h)
        # min_tokens is a floor wherever some grid within the budget reaches it (5 = 5x1 only).
        if min_tokens <= max_tokens and not (min_tokens == 5 and max_tokens == 5):
            assert tokens >= min_tokens, (w, h, width, height)


def test_aspect_ratio_is_kept():
    for w, h in SIZES:
        cols, rows = anyres_grid(w, h)
        if min(cols, rows) >= 8:  # rounding (and a budget cap) moves each side by at most one cell
            assert abs(math.log(cols / rows) - math.log(w / h)) < 1 / min(cols, rows) + 1 / max(cols, rows)


def test_native_resolution_when_within_budget_and_budget_scaling():
    assert anyres_size(1792, 1792) == (1792, 1792)  # the report's maximum: 64 x 64 = 4096 tokens
    assert anyres_size(4000, 4000) == (1792, 1792)
    assert anyres_size(1000, 500) == (1008, 504)  # fits: only rounded to the nearest multiple of 28
    assert anyres_size(10, 10) == (56, 56)  # scaled up to the 4-token floor
    w, h = anyres_size(3000, 1000)  # 3:1 scaled down to the budget
    assert (w // 28) * (h // 28) <= 4096 and abs(w / h - 3) < 0.05
    assert anyres_tokens(1, 200000) == 4096  # extreme ratio: short side one cell, long side capped


def test_invalid_arguments():
    with pytest.raises(ValueError):
        anyres_size(0, 10)
    with pytest.raises(ValueError):
        anyres_size(10, 10, max_tokens=4, min_tokens=5)


def test_anyres_image_pixels():
    image = random_image(300, 200, seed=1)
    pixels = anyres_image(image)
    w, h = anyres_size(300, 200)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, h, w)
    expected = np.asarray(image.resize((w, h), Image.Resampling.BICUBIC)).transpose(2, 0, 1)
    assert np.array_equal(pixels.numpy(), expected)
    exact = random_image(56, 84, seed=2)  # already a 28 multiple: no resampling
    assert np.array_equal(anyres_image(exact).numpy(), np.asarray(exact).transpose(2, 0, 1))
    assert anyres_image(random_image(60, 60, mode="L")).shape == (3, 56, 56)
