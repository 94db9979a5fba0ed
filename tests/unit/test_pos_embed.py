"""AnyRes: the learned position table resized (bicubic) to the patch grid of the image."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from megatron_sail.models.vision import interpolate_pos_embed


def reference_resize(table: torch.Tensor, side: int, hw: tuple[int, int]) -> torch.Tensor:
    """Table row t = grid cell (t // side, t % side); resize that [side, side, C] image."""
    channels = table.shape[1]
    image = table.view(side, side, channels)  # [rows, cols, C]
    image = image.permute(2, 0, 1).unsqueeze(0)  # [1, C, rows, cols]
    resized = F.interpolate(image, size=hw, mode="bicubic", align_corners=False)[0]
    return resized.permute(1, 2, 0).reshape(hw[0] * hw[1], channels)


def test_trained_grid_is_unchanged():
    torch.manual_seed(0)
    table = torch.randn(64, 7)
    out = interpolate_pos_embed(table, (8, 8))
    assert torch.equal(out, table)


@pytest.mark.parametrize("hw", [(12, 8), (8, 12), (4, 4), (16, 16), (5, 11)])
def test_equals_bicubic_resize_of_grid(hw):
    torch.manual_seed(1)
    table = torch.randn(64, 6)
    out = interpolate_pos_embed(table, hw)
    assert out.shape == (hw[0] * hw[1], 6)
    torch.testing.assert_close(out, reference_resize(table, 8, hw), rtol=1e-5, atol=1e-6)


def test_rows_follow_h_and_columns_follow_w():
    # A table depending only on the column keeps its exact values when only rows are resized
    # (a unit-scale axis is an identity for bicubic with align_corners=False); one depending only
    # on the row is exact when only columns are resized.
    side, channels = 8, 3
    col_only = torch.arange(side).float().repeat(side).unsqueeze(1).expand(-1, channels)
    out = interpolate_pos_embed(col_only.contiguous(), (12, side)).view(12, side, channels)
    for r in range(12):
        torch.testing.assert_close(out[r, :, 0], torch.arange(side).float(), rtol=0, atol=1e-5)

    row_only = torch.arange(side).float().repeat_interleave(side).unsqueeze(1).expand(-1, channels)
    out = interpolate_pos_embed(row_only.contiguous(), (side, 12)).view(side, 12, channels)
    for q in range(12):
        torch.testing.assert_close(out[:, q, 1], torch.arange(side).float(), rtol=0, atol=1e-5)


def test_constant_table_stays_constant():
    table = torch.full((64, 5), 0.37)
    for hw in [(12, 8), (3, 9), (20, 20)]:
        out = interpolate_pos_embed(table, hw)
        assert out.shape == (hw[0] * hw[1], 5)
        torch.testing.assert_close(out, torch.full_like(out, 0.37), rtol=0, atol=1e-5)


def test_non_square_output_shape_and_dtype():
    table = torch.randn(1024, 4, dtype=torch.bfloat16)  # the release's 32x32 grid
    out = interpolate_pos_embed(table, (48, 20))
    assert out.shape == (48 * 20, 4)
    assert out.dtype == torch.bfloat16


def test_sail_vit_runs_on_non_square_image(build_tiny):
    cfg, _, model = build_tiny()
    assert cfg.model.vision.image_size == 112  # trained grid 8x8
    torch.manual_seed(2)
    with torch.no_grad():
        feats = model.vision(torch.randn(2, 3, 168, 112))
        square = model.vision(torch.randn(2, 3, 112, 112))
    assert feats.shape == (2, 12, 8, cfg.model.vision.hidden_size)
    assert square.shape == (2, 8, 8, cfg.model.vision.hidden_size)
    assert torch.isfinite(feats).all()
    # and the adapter turns the 12x8 grid into 6x4 = 24 LLM tokens per tile
    with torch.no_grad():
        tokens = model.adapter(feats)
    assert tokens.shape == (2 * 24, cfg.model.llm.hidden_size)
