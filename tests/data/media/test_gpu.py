"""Checks that need a CUDA device (skipped elsewhere): normalisation on the GPU, and selection."""

from __future__ import annotations

import pytest
import torch

from megatron_sail.data.media import (BackendUnavailableError, dali_available, dynamic_tiles, normalize,
                                      select_video_backend)
from benchmarks import internvl_reference as ref
from tests.data.media.conftest import random_image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_normalize_on_gpu_equals_the_release_on_cpu():
    image = random_image(1000, 700, seed=9)
    tiles = dynamic_tiles(image)
    on_gpu = normalize(tiles.cuda())
    assert on_gpu.device.type == "cuda" and on_gpu.is_contiguous()
    assert torch.equal(on_gpu.cpu(), ref.load_image_pixels(image))


def test_selection_with_cuda():
    if dali_available():
        assert select_video_backend("auto", "h264") == "dali-gpu"
    else:
        assert select_video_backend("auto", "h264") == "pyav"
        with pytest.raises(BackendUnavailableError, match="DALI"):
            select_video_backend("dali-gpu", "h264")
