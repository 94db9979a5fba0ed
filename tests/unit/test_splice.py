"""Visual embeddings overwrite the text embeddings at <IMG_CONTEXT> positions."""

from __future__ import annotations

import re

import pytest
import torch

from megatron_sail.models.sailvl import splice_visual_embeddings

IMG = 7


def _batch():
    input_ids = torch.tensor([
        [1, IMG, IMG, 2, IMG, 3],
        [IMG, 4, 5, IMG, IMG, 6],
    ])
    torch.manual_seed(0)
    text = torch.randn(2, 6, 4)
    visual = torch.randn(6, 4)
    return input_ids, text, visual


def test_visual_rows_in_batch_major_order_and_text_untouched():
    input_ids, text, visual = _batch()
    before = text.clone()
    out = splice_visual_embeddings(text, input_ids, visual, IMG)
    expected_slots = [(0, 1), (0, 2), (0, 4), (1, 0), (1, 3), (1, 4)]
    for k, (b, s) in enumerate(expected_slots):
        assert torch.equal(out[b, s], visual[k]), (k, b, s)
    for b in range(2):
        for s in range(6):
            if (b, s) not in expected_slots:
                assert torch.equal(out[b, s], text[b, s]), (b, s)
    assert torch.equal(text, before)  # the input is not modified in place
    assert out.shape == text.shape


def test_visual_cast_to_text_dtype():
    input_ids, text, visual = _batch()
    out = splice_visual_embeddings(text, input_ids, visual.to(torch.bfloat16), IMG)
    assert out.dtype == text.dtype
    torch.testing.assert_close(out[0, 1], visual[0].to(torch.bfloat16).float(), rtol=0, atol=0)


def test_gradients_flow_to_text_and_visual():
    input_ids, text, visual = _batch()
    text.requires_grad_(True)
    visual.requires_grad_(True)
    weights = torch.randn(2, 6, 4)
    (splice_visual_embeddings(text, input_ids, visual, IMG) * weights).sum().backward()

    is_img = (input_ids == IMG).unsqueeze(-1)
    # text: gradient = weights where text survives, zero where it was overwritten
    torch.testing.assert_close(text.grad, torch.where(is_img, torch.zeros_like(weights), weights))
    # visual row k: gradient = the weight at the k-th image slot
    torch.testing.assert_close(visual.grad, weights[input_ids == IMG])
    assert visual.grad.abs().sum() > 0 and text.grad.abs().sum() > 0


@pytest.mark.parametrize("n_visual", [5, 7, 0])
def test_count_mismatch_names_both_counts(n_visual):
    input_ids, text, _ = _batch()  # 6 image tokens
    with pytest.raises(ValueError) as err:
        splice_visual_embeddings(text, input_ids, torch.zeros(n_visual, 4), IMG)
    message = str(err.value)
    assert re.search(r"\b6\b", message), message
    assert re.search(rf"\b{n_visual}\b", message), message


def test_no_image_tokens_and_no_visuals_is_identity():
    text = torch.randn(1, 3, 4)
    out = splice_visual_embeddings(text, torch.tensor([[1, 2, 3]]), torch.zeros(0, 4), IMG)
    assert torch.equal(out, text)


# ---- model level: the tiny SAIL-VL on one rank ------------------------------------------

def _tiny_inputs(img_context_id: int, tokens_per_tile: int):
    prefix, suffix = [11, 12, 13, 14], [21, 22, 23, 24, 25, 26]
    ids = prefix + [img_context_id] * tokens_per_tile + suffix
    input_ids = torch.tensor([ids])
    position_ids = torch.arange(len(ids)).unsqueeze(0)
    return input_ids, position_ids, len(prefix), len(prefix) + tokens_per_tile


def test_model_is_causal_around_the_image(build_tiny):
    cfg, _, model = build_tiny(img_context_id=5)
    grid = cfg.model.vision.image_size // cfg.model.vision.patch_size
    input_ids, position_ids, img_start, img_end = _tiny_inputs(5, (grid // 2) ** 2)
    torch.manual_seed(3)
    image_a = torch.randn(1, 3, cfg.model.vision.image_size, cfg.model.vision.image_size)
    image_b = torch.randn_like(image_a)
    model.eval()
    with torch.no_grad():
        out_a = model(input_ids, position_ids, pixel_values=image_a)
        out_b = model(input_ids, position_ids, pixel_values=image_b)
    assert out_a.shape[:2] == input_ids.shape
    # text before the first image token cannot see the image
    torch.testing.assert_close(out_a[:, :img_start], out_b[:, :img_start], rtol=0, atol=1e-6)
    # the image tokens and everything after them do depend on it
    for pos in (img_start, img_end, input_ids.shape[1] - 1):
        assert (out_a[:, pos] - out_b[:, pos]).abs().max() > 1e-4, pos


def test_model_image_tokens_without_pixels_raise(build_tiny):
    cfg, _, model = build_tiny(img_context_id=5)
    input_ids, position_ids, _, _ = _tiny_inputs(5, 16)
    with torch.no_grad(), pytest.raises(ValueError, match="IMG_CONTEXT"):
        model(input_ids, position_ids)
