"""Dynamic tiling equals the release's InternVL preprocessing: grids, tile counts and pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_sail.data.media import IMAGENET_MEAN, IMAGENET_STD, dynamic_tiles, normalize, num_tiles, tile_grid
from benchmarks import internvl_reference as ref
from tests.data.media.conftest import random_image

# 40 sizes: extreme ratios, tiny, exact tile multiples, square tie-breaks (1x1/2x2/3x3 decided by
# area), 2:1 tie-breaks, common photo/video shapes, near-misses of exact ratios.
PIXEL_SIZES = [
    (1, 20), (20, 1), (10, 10), (1, 1), (2, 3), (448, 448), (896, 448), (448, 896), (1344, 896),
    (1792, 1344), (448, 5376), (5376, 448), (640, 480), (480, 640), (800, 600), (1024, 768),
    (1280, 720), (720, 1280), (1920, 1080), (600, 600), (950, 950), (1000, 1000), (1344, 1344),
    (1000, 500), (1400, 700), (500, 1000), (700, 1400), (300, 900), (1200, 400), (3000, 500),
    (500, 3000), (333, 777), (777, 333), (100, 1000), (1000, 100), (449, 447), (1023, 767),
    (1500, 1000), (560, 448), (2048, 1536),
]
SIDES = [1, 2, 7, 10, 20, 50, 99, 224, 300, 447, 448, 449, 500, 560, 640, 700, 896, 950, 1000, 1024,
         1280, 1344, 1400, 1792, 2000, 3000, 5376]
CONFIGS = [(1, 12, 448), (1, 10, 448), (1, 6, 448), (1, 2, 448), (2, 2, 448), (3, 9, 448), (1, 12, 224)]


@pytest.mark.parametrize("min_tiles,max_tiles,image_size", CONFIGS)
def test_grid_and_count_match_reference_on_all_side_pairs(min_tiles, max_tiles, image_size):
    for w in SIDES:
        for h in SIDES:
            expected = ref.reference_grid(w, h, min_tiles, max_tiles, image_size)
            assert tile_grid(w, h, image_size, min_tiles, max_tiles) == expected, (w, h)
            blocks = expected[0] * expected[1]
            assert num_tiles(w, h, image_size, min_tiles, max_tiles) == blocks + (blocks > 1)
            assert num_tiles(w, h, image_size, min_tiles, max_tiles, use_thumbnail=False) == blocks


def test_exact_ties_between_different_grids_follow_the_release():
    # 5:4 with only 2-tile grids: |1.25 - 1/2| == |1.25 - 2/1|, so the release's visiting order and
    # area rule decide; 560x448 is big enough to switch, 500x400 is not.
    assert ref.reference_grid(560, 448, 2, 2) != ref.reference_grid(500, 400, 2, 2)
    for size in [(560, 448), (500, 400), (448, 560), (400, 500)]:
        assert tile_grid(*size, min_tiles=2, max_tiles=2) == ref.reference_grid(*size, 2, 2)
    # 3:2 with max 2 tiles: ties 1x1 against 2x1.
    assert tile_grid(300, 200, max_tiles=2) == ref.reference_grid(300, 200, 1, 2) == (1, 1)
    assert tile_grid(900, 600, max_tiles=2) == ref.reference_grid(900, 600, 1, 2) == (2, 1)


@pytest.mark.parametrize("width,height", PIXEL_SIZES)
def test_tiles_equal_release_pixels(width, height):
    # 112 px tiles keep the 40 cases fast; the resize/crop/thumbnail code is the same as at 448.
    image = random_image(width, height, seed=width * 7919 + height)
    expected = ref.load_image_pixels(image, input_size=112)
    tiles = dynamic_tiles(image, image_size=112)
    assert tiles.dtype == torch.uint8 and tiles.shape[1:] == (3, 112, 112)
    assert tiles.shape[0] == expected.shape[0] == num_tiles(width, height, image_size=112)
    assert torch.equal(normalize(tiles), expected)


@pytest.mark.parametrize("width,height", [(1, 20), (640, 480), (1000, 1000), (1920, 1080), (448, 448)])
def test_tiles_equal_release_pixels_at_448(width, height):
    image = random_image(width, height, seed=width + height)
    expected = ref.load_image_pixels(image)
    tiles = dynamic_tiles(image)
    assert tiles.shape == (num_tiles(width, height), 3, 448, 448)
    assert torch.equal(normalize(tiles), expected)


def test_uint8_tiles_are_the_release_crops_in_order_then_thumbnail():
    image = random_image(500, 350, seed=3)
    crops, grid = ref.dynamic_preprocess(image, max_num=12, image_size=224, use_thumbnail=True)
    expected = torch.stack([torch.from_numpy(np.array(c)).permute(2, 0, 1) for c in crops])
    tiles = dynamic_tiles(image, image_size=224)
    assert tile_grid(500, 350, image_size=224) == grid
    assert torch.equal(tiles, expected)
    assert torch.equal(tiles.contiguous(), expected.contiguous())


@pytest.mark.parametrize("min_tiles,max_tiles,image_size,use_thumbnail",
                         [(1, 12, 224, True), (2, 6, 112, True), (1, 12, 112, False), (4, 4, 56, True)])
def test_other_settings_equal_release(min_tiles, max_tiles, image_size, use_thumbnail):
    image = random_image(811, 523, seed=11)
    crops, _ = ref.dynamic_preprocess(image, min_tiles, max_tiles, image_size, use_thumbnail)
    expected = torch.stack([ref.transform(c, image_size) for c in crops])
    tiles = dynamic_tiles(image, image_size, min_tiles, max_tiles, use_thumbnail)
    assert torch.equal(normalize(tiles), expected)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_non_rgb_images_are_converted_like_the_release(mode):
    image = random_image(350, 150, seed=5, mode=mode)
    expected = ref.load_image_pixels(image, input_size=112)
    assert torch.equal(normalize(dynamic_tiles(image, image_size=112)), expected)


def test_normalize_matches_totensor_normalize():
    pixels = torch.randint(0, 256, (4, 3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pixels[0, :, 0, 0] = 0
    pixels[0, :, 0, 1] = 255
    expected = torch.stack([ref.normalize_tensor(t.to(torch.float32).div(255)) for t in pixels])
    out = normalize(pixels)
    assert out.dtype == torch.float32 and out.is_contiguous() and out.device == pixels.device
    assert torch.equal(out, expected)
    channels_last = pixels.contiguous(memory_format=torch.channels_last)
    assert torch.equal(normalize(channels_last), expected)
    assert torch.equal(normalize(pixels[1]), expected[1])  # a single [3, H, W] image
    assert IMAGENET_MEAN == ref.MEAN and IMAGENET_STD == ref.STD


def test_normalize_rejects_wrong_input():
    with pytest.raises(ValueError, match="uint8"):
        normalize(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, H, W\]"):
        normalize(torch.zeros(1, 4, 4, 3, dtype=torch.uint8))


def test_invalid_arguments():
    with pytest.raises(ValueError):
        tile_grid(0, 10)
    with pytest.raises(ValueError):
        tile_grid(10, 10, min_tiles=3, max_tiles=2)
    with pytest.raises(ValueError):
        num_tiles(10, 10, image_size=0)


class _TileSet(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        tiles = dynamic_tiles(random_image(300 + i, 200, seed=i), image_size=56)
        return tiles, tiles.is_shared()


def test_tiles_made_in_a_dataloader_worker_are_allocated_in_shared_memory():
    loader = torch.utils.data.DataLoader(_TileSet(), batch_size=None, num_workers=1)
    for i, (tiles, shared_in_worker) in enumerate(loader):
        assert shared_in_worker  # handed over without another copy
        assert torch.equal(tiles, dynamic_tiles(random_image(300 + i, 200, seed=i), image_size=56))
    assert not dynamic_tiles(random_image(30, 20), image_size=56).is_shared()  # ordinary memory here


def test_normalize_by_hand():
    """The release's arithmetic (x / 255 - mean) / std on values worked out by hand, in CHW."""
    pixels = torch.zeros((3, 4, 4), dtype=torch.uint8)
    pixels[:, 0, 0] = torch.tensor([255, 0, 128], dtype=torch.uint8)
    out = normalize(pixels)
    assert out.shape == (3, 4, 4) and out.dtype == torch.float32
    expected = torch.tensor([(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225])
    torch.testing.assert_close(out[:, 0, 0], expected, atol=1e-5, rtol=0)
    # Black: -mean / std, about (-2.118, -2.036, -1.804).
    torch.testing.assert_close(out[:, 1, 1], torch.tensor([-2.117904, -2.035714, -1.804444]),
                               atol=1e-5, rtol=0)
