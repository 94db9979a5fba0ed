import numpy as np
import pytest
import torch

from megatron_sail.data.loader.images import IMAGENET_MEAN, IMAGENET_STD, to_pixel_values


def test_constants() -> None:
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)


def test_normalisation_values() -> None:
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    image[0, 0] = (255, 0, 128)
    pixels = to_pixel_values(image, 4)
    assert pixels.shape == (3, 4, 4) and pixels.dtype == torch.float32
    expected = torch.tensor([(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225])
    torch.testing.assert_close(pixels[:, 0, 0], expected, atol=1e-5, rtol=0)
    # Black pixels: -mean / std, i.e. about (-2.118, -2.036, -1.804).
    torch.testing.assert_close(pixels[:, 1, 1], torch.tensor([-2.117904, -2.035714, -1.804444]), atol=1e-5, rtol=0)


def test_channel_layout_is_chw() -> None:
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[..., 1] = 255  # pure green
    pixels = to_pixel_values(image, 8)
    assert torch.allclose(pixels[1], torch.full((8, 8), (1 - 0.456) / 0.224))
    assert torch.allclose(pixels[0], torch.full((8, 8), -0.485 / 0.229))


def test_resize_to_square() -> None:
    image = np.full((30, 40, 3), 200, dtype=np.uint8)
    pixels = to_pixel_values(image, 56)
    assert pixels.shape == (3, 56, 56)
    # A flat image stays flat under bicubic resampling.
    torch.testing.assert_close(pixels[0], torch.full((56, 56), (200 / 255 - 0.485) / 0.229), atol=1e-5, rtol=0)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        to_pixel_values(np.zeros((4, 4, 3), dtype=np.float32), 4)
    with pytest.raises(ValueError, match="HxWx3"):
        to_pixel_values(np.zeros((4, 4), dtype=np.uint8), 4)
