"""Image probing/decoding, and every failure reported as a MediaError naming the source."""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from megatron_sail.data.media import dali_pipelines
from megatron_sail.data.media import (MediaError, dali_available, decode_image, decode_images_dali, probe_image,
                                      read_media_file)
from tests.data.media.conftest import encode, random_image


def test_probe_reads_the_header_only_and_matches_decode():
    jpeg = encode(random_image(321, 123), "JPEG", quality=90)
    assert probe_image(jpeg, "a.jpg") == (321, 123)
    assert probe_image(jpeg[:2000], "head.jpg") == (321, 123)  # the pixels are never needed
    image = decode_image(jpeg, "a.jpg")
    assert image.mode == "RGB" and image.size == (321, 123)


@pytest.mark.parametrize("mode,fmt", [("RGBA", "PNG"), ("L", "PNG"), ("P", "PNG"), ("CMYK", "JPEG"),
                                      ("RGB", "WEBP")])
def test_decode_converts_to_rgb_like_the_release(mode, fmt):
    original = random_image(40, 30, mode=mode)
    data = encode(original, fmt)
    image = decode_image(data, "x")
    assert image.mode == "RGB"
    from io import BytesIO

    assert np.array_equal(np.asarray(image), np.asarray(Image.open(BytesIO(data)).convert("RGB")))
    assert probe_image(data, "x") == (40, 30)


@pytest.mark.parametrize("data", [b"", b"not an image at all" * 10, bytes(range(256)) * 4])
def test_garbage_bytes_raise_media_error(data):
    for call in (probe_image, decode_image):
        with pytest.raises(MediaError) as info:
            call(data, "shard-0007.tar/sample42.jpg")
        assert info.value.source == "shard-0007.tar/sample42.jpg"
        assert str(info.value).startswith("shard-0007.tar/sample42.jpg: ")


def test_truncated_jpeg_fails_at_decode_not_later():
    jpeg = encode(random_image(200, 150), "JPEG")
    truncated = jpeg[: len(jpeg) // 2]
    assert probe_image(truncated, "cut.jpg") == (200, 150)  # the header is intact
    with pytest.raises(MediaError, match=r"^cut\.jpg: cannot decode image .*truncated") as info:
        decode_image(truncated, "cut.jpg")
    assert info.value.source == "cut.jpg" and "truncated" in info.value.reason


def test_corrupt_png_raises_media_error():
    png = bytearray(encode(random_image(64, 64), "PNG"))
    png[len(png) // 2: len(png) // 2 + 64] = bytes(64)  # damages the compressed pixel data
    with pytest.raises(MediaError, match="corrupt.png"):
        decode_image(bytes(png), "corrupt.png")


def test_media_error_fields_str_and_pickling():
    error = MediaError("videos/a.mp4", "video has no frames")
    assert isinstance(error, ValueError)
    assert str(error) == "videos/a.mp4: video has no frames"
    copy = pickle.loads(pickle.dumps(error))  # raised in a loader worker, re-raised in the trainer
    assert (copy.source, copy.reason, str(copy)) == (error.source, error.reason, str(error))


def test_missing_file_raises_media_error(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(MediaError, match="file not found") as info:
        read_media_file(missing)
    assert info.value.source == str(missing)
    present = tmp_path / "ok.png"
    present.write_bytes(encode(random_image(8, 8), "PNG"))
    assert probe_image(read_media_file(present), str(present)) == (8, 8)


@pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI not installed")
def test_dali_cpu_image_decode_equals_pillow_and_names_bad_images():
    images = [encode(random_image(97, 61, seed=1), "JPEG", quality=85),
              encode(random_image(50, 80, seed=2), "JPEG", quality=95),
              encode(random_image(33, 33, seed=3), "PNG")]
    decoded = decode_images_dali(images)
    for data, pixels in zip(images, decoded):
        assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
        assert np.array_equal(pixels, np.asarray(decode_image(data, "x")))
    bad = [images[0], images[1][:300] + bytes(300)]
    with pytest.raises(MediaError) as info:
        decode_images_dali(bad, ["good.jpg", "bad.jpg"])
    assert info.value.source == "bad.jpg"
    assert len(decode_images_dali(images[:1])) == 1  # the failed pipeline was replaced


def _in_forked_child(images: list[bytes], expected: list[np.ndarray]) -> None:
    dali_pipelines._cache.clear()  # drop the parent's pipelines (their threads are not here) ...
    gc.collect()
    decoded = decode_images_dali(images)  # ... and build this process's own
    os._exit(0 if all(np.array_equal(a, b) for a, b in zip(decoded, expected)) else 1)


@pytest.mark.skipif(not dali_available(), reason="NVIDIA DALI not installed")
def test_a_forked_process_drops_the_dali_pipelines_it_inherited_and_decodes_with_its_own():
    # as a DataLoader worker does: destroying an inherited pipeline used to join its parent's
    # threads and kill the child with a segmentation fault
    images = [encode(random_image(45, 31, seed=4), "JPEG", quality=90)]
    expected = decode_images_dali(images)
    bad = [images[0], images[0][:200] + bytes(200)]
    with pytest.raises(MediaError):
        decode_images_dali(bad)  # a failed pipeline, kept alive by the traceback here
    child = multiprocessing.get_context("fork").Process(target=_in_forked_child, args=(images, expected))
    child.start()
    child.join(30)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0
