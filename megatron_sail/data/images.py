"""Image -> normalised pixel tensor, matching SAIL-VL2's ImageNet preprocessing."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# Folded into one multiply-add per pixel: (x / 255 - mean) / std == x * scale + shift.
_SCALE = torch.tensor([1.0 / (255.0 * s) for s in IMAGENET_STD], dtype=torch.float32).view(3, 1, 1)
_SHIFT = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], dtype=torch.float32).view(3, 1, 1)


def to_pixel_values(image: np.ndarray, image_size: int) -> torch.Tensor:
    """HxWx3 uint8 -> float32 [3, image_size, image_size], ImageNet-normalised."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {image.shape} dtype {image.dtype}")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if image.shape[:2] != (image_size, image_size):
        resized = Image.fromarray(image).resize((image_size, image_size), Image.Resampling.BICUBIC)
        image = np.asarray(resized)
    # torch.tensor copies, so read-only arrays (e.g. from Pillow) are fine.
    chw = torch.tensor(image).permute(2, 0, 1).to(torch.float32)
    return (chw * _SCALE + _SHIFT).contiguous()
