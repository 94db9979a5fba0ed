"""The cached path's bookkeeping: each row's tiles out of the batch's, and the prefill mask of
a prompt right-aligned after masked slots."""

from __future__ import annotations

import pytest
import torch

from megatron_sail.generation.steps import CachedSteps, tiles_of_rows

IMG = 9


def test_tiles_follow_the_rows_in_order():
    pixels = torch.arange(3.0).view(3, 1, 1, 1)     # tile k holds k
    rows = [[1, IMG, IMG, 2], [3], [IMG, IMG, IMG, IMG, 4]]   # 2 tokens a tile: 1, 0, 2 tiles
    got = tiles_of_rows(rows, pixels, IMG)
    assert got[0].flatten().tolist() == [0.0] and got[1] is None
    assert got[2].flatten().tolist() == [1.0, 2.0]


def test_uneven_tiles_are_refused():
    with pytest.raises(ValueError, match="split evenly"):
        tiles_of_rows([[IMG, IMG, IMG]], torch.zeros(2, 1, 1, 1), IMG)


def test_prefill_mask_sees_only_the_prompt_causally():
    mask = CachedSteps._prefill_mask(rows=2, width=3, offset=2)   # True where masked
    assert mask.shape == (2, 1, 3, 5)
    visible = (~mask[0, 0]).int().tolist()
    assert visible == [[0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 1]]
