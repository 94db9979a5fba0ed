"""Pixel shuffle "v2": the 2x2 token merge between the ViT and the adapter."""

from __future__ import annotations

import pytest
import torch

from megatron_sail.models.adapter import pixel_shuffle_v2


def internvl_pixel_shuffle_literal(x: torch.Tensor, version: str = "v2") -> torch.Tensor:
    """The InternVL/SAIL-VL sequence written out step by step (scale 0.5).

    The release calls it on ``vit_embeds.reshape(n, rows, cols, C)`` and names the dims
    (n, w, h, c), so its "w" is our row count and its "h" our column count; the result
    [n, ., ., 4c] is then flattened row-major into [n, tokens, 4c].
    """
    n, w, h, c = x.shape  # their names: w = our rows, h = our cols
    x = x.view(n, w, h // 2, c * 2)
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, h // 2, w // 2, c * 4)
    if version == "v2":
        x = x.permute(0, 2, 1, 3).contiguous()
    return x.reshape(n, -1, c * 4)


@pytest.mark.parametrize("rows,cols", [(4, 4), (4, 6), (6, 4), (2, 8), (8, 2), (32, 32)])
def test_matches_internvl_literal_sequence(rows, cols):
    torch.manual_seed(rows * 100 + cols)
    x = torch.randn(3, rows, cols, 5)
    ours = pixel_shuffle_v2(x)
    theirs = internvl_pixel_shuffle_literal(x)
    assert ours.shape == (3, (rows // 2) * (cols // 2), 20)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_differs_from_v1_on_non_square_grid():
    # v1 leaves the grid transposed: the literal comparison above must be able to tell them apart.
    torch.manual_seed(0)
    x = torch.randn(1, 4, 6, 3)
    v1 = internvl_pixel_shuffle_literal(x, version="v1")
    assert v1.shape == pixel_shuffle_v2(x).shape
    assert not torch.allclose(pixel_shuffle_v2(x), v1)


@pytest.mark.parametrize("rows,cols", [(4, 6), (6, 4), (2, 2)])
def test_explicit_definition_elementwise(rows, cols):
    torch.manual_seed(1)
    n, c = 2, 3
    x = torch.randn(n, rows, cols, c)
    out = pixel_shuffle_v2(x)
    out_cols = cols // 2
    for b in range(n):
        for i in range(rows // 2):
            for j in range(out_cols):
                expected = torch.cat(
                    [x[b, 2 * i, 2 * j], x[b, 2 * i, 2 * j + 1],
                     x[b, 2 * i + 1, 2 * j], x[b, 2 * i + 1, 2 * j + 1]]
                )
                assert torch.equal(out[b, i * out_cols + j], expected), (b, i, j)


def test_identifiable_values_land_in_place():
    # Encode (row, col) in the channels: token (i, j) must hold exactly the four source patches.
    rows, cols = 4, 6
    r = torch.arange(rows).view(rows, 1).expand(rows, cols)
    q = torch.arange(cols).view(1, cols).expand(rows, cols)
    x = torch.stack([r, q], dim=-1).unsqueeze(0).float()  # [1, rows, cols, 2]
    out = pixel_shuffle_v2(x).view(rows // 2, cols // 2, 4, 2)
    for i in range(rows // 2):
        for j in range(cols // 2):
            sources = [tuple(v) for v in out[i, j].long().tolist()]
            assert sources == [(2 * i, 2 * j), (2 * i, 2 * j + 1),
                               (2 * i + 1, 2 * j), (2 * i + 1, 2 * j + 1)]


@pytest.mark.parametrize("rows,cols", [(3, 4), (4, 3), (5, 5), (1, 2)])
def test_odd_grid_raises(rows, cols):
    with pytest.raises(ValueError, match=f"{rows}x{cols}"):
        pixel_shuffle_v2(torch.zeros(1, rows, cols, 2))
