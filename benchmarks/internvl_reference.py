"""Independent reference of the release's image preprocessing, written literally after the
InternVL / SAIL-VL2 model-card code (``find_closest_aspect_ratio``, ``dynamic_preprocess``,
``build_transform``), with torchvision's ToTensor + Normalize spelled out in plain torch
(torchvision is not installed here). The baseline of ``preprocess_throughput.py`` and the
ground truth of the tiling tests (tests may import benchmarks, never the other way round).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size):
    best_ratio_diff = float("inf")
    best_ratio = (1, 1)
    area = width * height
    for ratio in target_ratios:
        target_aspect_ratio = ratio[0] / ratio[1]
        ratio_diff = abs(aspect_ratio - target_aspect_ratio)
        if ratio_diff < best_ratio_diff:
            best_ratio_diff = ratio_diff
            best_ratio = ratio
        elif ratio_diff == best_ratio_diff:
            if area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
                best_ratio = ratio
    return best_ratio


def dynamic_preprocess(image, min_num=1, max_num=12, image_size=448, use_thumbnail=False):
    orig_width, orig_height = image.size
    aspect_ratio = orig_width / orig_height

    target_ratios = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num)
    target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])

    target_aspect_ratio = find_closest_aspect_ratio(
        aspect_ratio, target_ratios, orig_width, orig_height, image_size)

    target_width = image_size * target_aspect_ratio[0]
    target_height = image_size * target_aspect_ratio[1]
    blocks = target_aspect_ratio[0] * target_aspect_ratio[1]

    resized_img = image.resize((target_width, target_height))  # Pillow's default filter: bicubic
    processed_images = []
    for i in range(blocks):
        box = (
            (i % (target_width // image_size)) * image_size,
            (i // (target_width // image_size)) * image_size,
            ((i % (target_width // image_size)) + 1) * image_size,
            ((i // (target_width // image_size)) + 1) * image_size,
        )
        processed_images.append(resized_img.crop(box))
    assert len(processed_images) == blocks
    if use_thumbnail and len(processed_images) != 1:
        processed_images.append(image.resize((image_size, image_size)))
    return processed_images, target_aspect_ratio


def to_tensor(pic: Image.Image) -> torch.Tensor:
    """torchvision ``ToTensor`` for an RGB uint8 image: CHW float32 in [0, 1]."""
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    img = img.view(pic.size[1], pic.size[0], 3).permute((2, 0, 1)).contiguous()
    return img.to(dtype=torch.float32).div(255)


def normalize_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """torchvision ``Normalize(MEAN, STD)`` (inplace=False)."""
    tensor = tensor.clone()
    mean = torch.as_tensor(MEAN, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    std = torch.as_tensor(STD, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
    return tensor.sub_(mean).div_(std)


def transform(img: Image.Image, input_size: int = 448) -> torch.Tensor:
    """``build_transform``: RGB, bicubic resize to input_size, ToTensor, Normalize."""
    img = img.convert("RGB") if img.mode != "RGB" else img
    img = img.resize((input_size, input_size), Image.Resampling.BICUBIC)
    return normalize_tensor(to_tensor(img))


def load_image_pixels(image: Image.Image, input_size: int = 448, max_num: int = 12) -> torch.Tensor:
    """The model card's ``load_image`` after opening: float32 [N, 3, S, S] normalised tiles."""
    images, _ = dynamic_preprocess(image.convert("RGB"), image_size=input_size, use_thumbnail=True,
                                   max_num=max_num)
    return torch.stack([transform(tile, input_size) for tile in images])


def reference_grid(width, height, min_num=1, max_num=12, image_size=448):
    """The grid ``dynamic_preprocess`` picks, without resizing (its first half, verbatim)."""
    aspect_ratio = width / height
    target_ratios = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num)
    target_ratios = sorted(target_ratios, key=lambda x: x[0] * x[1])
    return find_closest_aspect_ratio(aspect_ratio, target_ratios, width, height, image_size)
