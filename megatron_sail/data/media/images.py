"""Image bytes -> size (header only) or a fully decoded RGB Pillow image.

Like the release (``Image.open(f).convert("RGB")``), EXIF orientation is not applied and alpha
is dropped, so tile counts from :func:`probe_image` match what :func:`decode_image` yields.
Truncated files raise MediaError because Pillow refuses them by default; a process that sets
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`` gets grey-filled images instead.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from megatron_sail.data.media.errors import MediaError, describe


def probe_image(data: bytes, source: str) -> tuple[int, int]:
    """(width, height) read from the header only (Pillow opens lazily; pixels are not decoded).

    Raises MediaError if the bytes are not an image format Pillow recognises, or if the image
    is over Pillow's decompression-bomb limit.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception as exc:  # Pillow raises several types (UnidentifiedImageError, OSError, ...)
        raise MediaError(source, f"not a readable image ({describe(exc)})") from exc
    if width < 1 or height < 1:
        raise MediaError(source, f"image has an empty size {width}x{height}")
    return width, height


def decode_image(data: bytes, source: str) -> Image.Image:
    """Fully decoded RGB image; truncated or corrupt data raises MediaError here, not later."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        if image.mode != "RGB":
            image = image.convert("RGB")
    except Exception as exc:
        raise MediaError(source, f"cannot decode image ({describe(exc)})") from exc
    if image.width < 1 or image.height < 1:
        raise MediaError(source, f"image has an empty size {image.width}x{image.height}")
    return image


def decode_images_dali(images: Sequence[bytes], sources: Sequence[str] | None = None,
                       device: str = "cpu", num_threads: int = 1) -> list[np.ndarray]:
    """Decode a batch of encoded images with DALI; HxWx3 uint8 RGB arrays on the host.

    ``device="cpu"`` uses DALI's libjpeg-turbo decoder; on the development machines its pixels
    equal Pillow's for baseline JPEGs, but it is not faster than Pillow at the same CPU count, so
    the training pipeline decodes with Pillow (:func:`decode_image`). ``device="mixed"`` decodes
    on the GPU with nvJPEG — UNVERIFIED on GPU (written for DALI's documented API; never run here),
    and nvJPEG's pixels may differ slightly from Pillow's. If DALI rejects the batch, the culprit
    is found by decoding each image with Pillow and reported as a MediaError with its source.
    """
    from megatron_sail.data.media.dali_pipelines import dali_image_decoder

    if sources is None:
        sources = [f"image[{i}]" for i in range(len(images))]
    if len(sources) != len(images):
        raise ValueError(f"{len(images)} images but {len(sources)} sources")
    if not images:
        return []
    try:
        return dali_image_decoder(device, num_threads, len(images)).decode(images)
    except RuntimeError as exc:
        for data, source in zip(images, sources):
            decode_image(data, source)  # raises a MediaError naming the bad image
        raise MediaError(", ".join(sources), f"DALI could not decode the batch ({describe(exc)})") from exc
