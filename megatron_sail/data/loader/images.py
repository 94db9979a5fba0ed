"""Image -> normalised pixel tensor, matching SAIL-VL2's ImageNet preprocessing."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from megatron_sail.data.media.tiling import IMAGENET_MEAN, IMAGENET_STD, normalize

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "to_pixel_values"]


def to_pixel_values(image: np.ndarray, image_size: int) -> torch.Tensor:
    """HxWx3 uint8 -> float32 [3, image_size, image_size], ImageNet-normalised."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {image.shape} dtype {image.dtype}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if image.shape[:2] != (image_size, image_size):
        resized = Image.fromarray(image).resize((image_size, image_size), Image.Resampling.BICUBIC)
        image = np.asarray(resized)
    # torch.tensor copies, so read-only arrays (e.g. from Pillow) are fine; the release's
    # arithmetic (x / 255 - mean) / std, shared with the real-data path.
    return normalize(torch.tensor(image).permute(2, 0, 1))
