"""InternVL dynamic tiling, as in the SAIL-VL2 release: an image becomes 1..max_tiles 448 px tiles.

The rule (the release's ``dynamic_preprocess`` + ``find_closest_aspect_ratio``):

1. Candidate grids are all (cols, rows) with ``min_tiles <= cols * rows <= max_tiles``, visited in
   order of increasing tile count.
2. The grid whose aspect ratio ``cols / rows`` is closest to ``width / height`` wins. On an exact
   tie with the best so far, the later (never smaller) grid replaces it only if the image is large
   enough for it: ``width * height > 0.5 * image_size**2 * cols * rows``.
3. The image is resized once (bicubic) to ``(cols * S, rows * S)`` and cut into tiles row by row.
4. If there is more than one tile, a thumbnail (the whole image resized bicubic to S x S) is
   appended.

Tiles are produced as uint8 so the costly float conversion and ImageNet normalisation can run
later, on the accelerator, with :func:`normalize` (4x fewer bytes through worker queues and the
host-to-device copy as well). The pixel values are identical to the release's.

Memory layout: the uint8 tiles have shape [N, 3, S, S] but are stored channels-last
(``torch.channels_last``), a free view of the HWC pixels Pillow produces; indexing, ``torch.equal``,
``torch.cat`` and ``.to(device)`` all work on it, call ``.contiguous()`` where plain NCHW storage
is required. :func:`normalize` returns contiguous NCHW. Inside a DataLoader worker the tiles are
allocated in shared memory (see :mod:`megatron_sail.data.media.buffers`).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image

from megatron_sail.data.media.buffers import pixel_buffer

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_BICUBIC = Image.Resampling.BICUBIC


def _check_args(image_size: int, min_tiles: int, max_tiles: int) -> None:
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if not 1 <= min_tiles <= max_tiles:
        raise ValueError(f"need 1 <= min_tiles <= max_tiles, got min_tiles={min_tiles}, max_tiles={max_tiles}")


@functools.lru_cache(maxsize=64)
def candidate_grids(min_tiles: int, max_tiles: int) -> tuple[tuple[int, int], ...]:
    """All (cols, rows) grids with min_tiles..max_tiles tiles, in the release's visiting order.

    The release builds a Python set and sorts it by tile count (a stable sort), so grids with the
    same count keep the set's iteration order, which decides exact ties such as (1, 2) vs (2, 1)
    for a 5:4 image. Building the set the same way reproduces that order (it is deterministic:
    small-int tuples hash the same in every CPython process).
    """
    grids = set(
        (i, j)
        for n in range(min_tiles, max_tiles + 1)
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if min_tiles <= i * j <= max_tiles
    )
    return tuple(sorted(grids, key=lambda grid: grid[0] * grid[1]))


def tile_grid(width: int, height: int, image_size: int = 448, min_tiles: int = 1,
              max_tiles: int = 12) -> tuple[int, int]:
    """(cols, rows) of the tile grid for a width x height image."""
    _check_args(image_size, min_tiles, max_tiles)
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aspect = width / height
    area = width * height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)  # same aspect error: take the bigger grid if the image can fill it
    return best


def num_tiles(width: int, height: int, image_size: int = 448, min_tiles: int = 1,
              max_tiles: int = 12, use_thumbnail: bool = True) -> int:
    """Number of tiles (thumbnail included) an image of this size yields; no decoding needed."""
    cols, rows = tile_grid(width, height, image_size, min_tiles, max_tiles)
    blocks = cols * rows
    return blocks + 1 if use_thumbnail and blocks > 1 else blocks


def resized_rgb(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 pixels of ``image`` resized bicubic to size=(W, H) (no resampling if equal)."""
    resized = image if image.size == size else image.resize(size, _BICUBIC)
    return np.asarray(resized)


def dynamic_tiles(image: Image.Image, image_size: int = 448, min_tiles: int = 1, max_tiles: int = 12,
                  use_thumbnail: bool = True) -> torch.Tensor:
    """uint8 [N, 3, S, S] tiles of ``image`` (channels-last storage), thumbnail last if N > 1."""
    if image.mode != "RGB":
        image = image.convert("RGB")  # the release converts every image to RGB on opening
    cols, rows = tile_grid(image.width, image.height, image_size, min_tiles, max_tiles)
    blocks = cols * rows
    total = blocks + 1 if use_thumbnail and blocks > 1 else blocks
    s = image_size
    tiles = pixel_buffer((total, s, s, 3))
    out = tiles.numpy()
    # One resize of the whole image to the grid, then the tiles are strided views of it:
    # [rows*S, cols*S, 3] -> [rows, S, cols, S, 3] -> [rows, cols, S, S, 3], copied row-major.
    grid = resized_rgb(image, (cols * s, rows * s))
    out[:blocks].reshape(rows, cols, s, s, 3)[...] = grid.reshape(rows, s, cols, s, 3).swapaxes(1, 2)
    if total > blocks:
        out[blocks] = resized_rgb(image, (s, s))
    return tiles.permute(0, 3, 1, 2)


def normalize(tiles_uint8: torch.Tensor) -> torch.Tensor:
    """float32 ImageNet-normalised copy of uint8 [..., 3, H, W] pixels, on the input's device.

    The same arithmetic as torchvision's ``ToTensor()`` + ``Normalize(IMAGENET_MEAN, IMAGENET_STD)``
    (x / 255, then (x - mean) / std in float32), so results equal the release's bit for bit, on
    the CPU and on CUDA (checked on an H200). Run it where the tiles end up (after ``.cuda()``).
    """
    if tiles_uint8.dtype != torch.uint8:
        raise ValueError(f"normalize expects uint8 pixels, got {tiles_uint8.dtype}")
    if tiles_uint8.dim() < 3 or tiles_uint8.shape[-3] != 3:
        raise ValueError(f"normalize expects [..., 3, H, W] pixels, got shape {tuple(tiles_uint8.shape)}")
    device = tiles_uint8.device
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device).view(3, 1, 1)
    # A tensor divisor, not the Python scalar 255: CUDA turns division by a Python scalar into
    # multiplication by its reciprocal (1-ulp differences); this keeps true division everywhere.
    full_scale = torch.tensor(255.0, dtype=torch.float32, device=device)
    pixels = tiles_uint8.contiguous().to(torch.float32).div(full_scale)
    return pixels.sub_(mean).div_(std)
