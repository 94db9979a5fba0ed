"""AnyRes input for SAIL-ViT-AnyRes: one image at (about) native resolution, within a token budget.

The release publishes no AnyRes preprocessing code, so this module fixes the rule (it is the
Qwen2-VL "smart resize" rule, with the SAIL-VL2 numbers):

- A 14 px patch grid merged 2x2 by pixel shuffle gives one LLM token per 28 x 28 px cell, so both
  sides must be multiples of ``UNIT = 28`` px and ``tokens = (W / 28) * (H / 28)``.
- Keep the aspect ratio: scale the image by one factor, as little as possible — 1 if it already
  fits ``min_tokens <= tokens <= max_tokens``, down to the budget if it is too big, up to
  ``min_tokens`` if too small — then round each side to the nearest multiple of 28 (at least 28).
- Rounding can push the product past a bound; then one side is set to the largest (or smallest)
  number of cells that meets it next to the other side, choosing the side whose change distorts
  the aspect ratio least. Extreme aspect ratios (e.g. 1 x 200000 px) keep their short side at
  28 px and have the long side capped, so the budget always holds; ``min_tokens`` is met
  wherever a grid within the budget allows it.

The default budget is the report's maximum, 1792 x 1792 px = 64 x 64 cells = 4096 LLM tokens
(16384 ViT patches); the default floor of 4 tokens is 56 x 56 px.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from megatron_sail.data.media.buffers import pixel_buffer

PATCH_SIZE = 14
MERGE = 2  # pixel shuffle merges 2x2 patches into one LLM token
UNIT = PATCH_SIZE * MERGE  # 28 px per LLM token along each side
DEFAULT_MAX_TOKENS = 4096  # 1792 x 1792 px
DEFAULT_MIN_TOKENS = 4  # 56 x 56 px


def _aspect_error(cols: int, rows: int, aspect: float) -> float:
    return abs(math.log(cols / rows) - math.log(aspect))


def anyres_grid(width: int, height: int, max_tokens: int = DEFAULT_MAX_TOKENS,
                min_tokens: int = DEFAULT_MIN_TOKENS) -> tuple[int, int]:
    """(cols, rows) of 28 px cells for a width x height image; cols * rows = LLM tokens."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 1 <= min_tokens <= max_tokens:
        raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    cols_f, rows_f = width / UNIT, height / UNIT
    area = cols_f * rows_f
    scale = 1.0
    if area > max_tokens:
        scale = math.sqrt(max_tokens / area)
    elif area < min_tokens:
        scale = math.sqrt(min_tokens / area)
    cols = max(1, round(cols_f * scale))
    rows = max(1, round(rows_f * scale))
    aspect = width / height
    if cols * rows > max_tokens:
        # Rounding (or a side clamped to one cell) overshot: cap one side at what fits next to
        # the other, choosing the side whose change keeps the aspect ratio best.
        options = [g for g in ((max_tokens // rows, rows), (cols, max_tokens // cols)) if min(g) >= 1]
        cols, rows = min(options, key=lambda g: _aspect_error(g[0], g[1], aspect))
    elif cols * rows < min_tokens:
        # Rounding undershot: grow one side; min_tokens is a floor only where the budget allows.
        options = [g for g in ((-(-min_tokens // rows), rows), (cols, -(-min_tokens // cols)))
                   if g[0] * g[1] <= max_tokens]
        if options:
            cols, rows = min(options, key=lambda g: _aspect_error(g[0], g[1], aspect))
    return cols, rows


def anyres_size(width: int, height: int, max_tokens: int = DEFAULT_MAX_TOKENS,
                min_tokens: int = DEFAULT_MIN_TOKENS) -> tuple[int, int]:
    """(W, H) in pixels, multiples of 28, that a width x height image is resized to."""
    cols, rows = anyres_grid(width, height, max_tokens, min_tokens)
    return cols * UNIT, rows * UNIT


def anyres_tokens(width: int, height: int, max_tokens: int = DEFAULT_MAX_TOKENS,
                  min_tokens: int = DEFAULT_MIN_TOKENS) -> int:
    """LLM tokens the image takes; from its dimensions only (for sample lengths)."""
    cols, rows = anyres_grid(width, height, max_tokens, min_tokens)
    return cols * rows


def anyres_image(image: Image.Image, max_tokens: int = DEFAULT_MAX_TOKENS,
                 min_tokens: int = DEFAULT_MIN_TOKENS) -> torch.Tensor:
    """uint8 [3, H, W] pixels resized bicubic to :func:`anyres_size` (a CHW view of HWC storage).

    Normalise later with :func:`megatron_sail.data.media.tiling.normalize`.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    size = anyres_size(image.width, image.height, max_tokens, min_tokens)
    resized = image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)
    pixels = pixel_buffer((size[1], size[0], 3))
    pixels.numpy()[...] = np.asarray(resized)
    return pixels.permute(2, 0, 1)


def patchify(image: torch.Tensor, patch: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[3, H, W] -> row-major patches [H/p * W/p, 3 * p * p] (each flattened channel, row,
    column, like the ViT's conv weight) and the (rows, cols) grid."""
    c, height, width = image.shape
    if height % patch or width % patch:
        raise ValueError(f"image {height}x{width} is not a multiple of the {patch} px patch")
    h, w = height // patch, width // patch
    patches = image.reshape(c, h, patch, w, patch).permute(1, 3, 0, 2, 4)
    return patches.reshape(h * w, c * patch * patch), (h, w)
