"""Generation with the KV cache gives the tokens of the no-cache reference path (every step
re-runs the whole batch), token for token, on ragged batches with images: two rows of one
length (one prefill pass), shorter and longer rows (masked slots before them), at TP=1 in
this process, at TP=2 (sequence parallel: every step padded to 2 tokens) and at PP=2 (the
forward-only schedule at the decode step's length); an MoE model gives the same greedy ids
at EP=2 as at EP=1."""

from __future__ import annotations

import pytest
import torch

from megatron_sail.convert.reference import ReleaseReference
from megatron_sail.generation.runner import GenerateOptions, run_generation

IMG = 7
NEW = 8


def ragged_batch(model, seed: int):
    """Rows (tiles, text tokens): two equal-length image rows, a text row, a longer 2-tile
    row and a short text row."""
    gen = torch.Generator().manual_seed(seed)
    vit = model.vision
    per_tile = (vit.image_size // vit.patch_size // 2) ** 2
    ids, pixels = [], []
    for tiles, text in ((1, 5), (1, 5), (0, 9), (2, 3), (0, 2)):
        row = torch.randint(IMG + 1, model.llm.vocab_size, (text,), generator=gen).tolist()
        row[1:1] = [IMG] * (tiles * per_tile)
        ids.append(row)
        pixels.append(torch.randn(tiles, 3, vit.image_size, vit.image_size, generator=gen))
    return ids, torch.cat(pixels)


@pytest.fixture(scope="module")
def dense_batch(release):
    return ragged_batch(ReleaseReference(release("fp32")).model, seed=11)


def test_cache_equals_no_cache_in_process(dense_batch, imported, megatron_single_rank):
    from megatron_sail.generation import generate, load_for_generation

    ids, pixels = dense_batch
    cfg, layout, chunks, _ = load_for_generation(imported("fp32"), max_length=256,
                                                 img_context_token_id=IMG)
    kw = dict(pixel_values=pixels, max_new_tokens=NEW, eos_token_ids=(), img_context_token_id=IMG,
              vocab_size=cfg.model.llm.vocab_size)
    reference = generate(chunks, layout, ids, use_kv_cache=False, **kw)
    assert all(len(g) == NEW for g in reference)
    assert generate(chunks, layout, ids, **kw) == reference
    # sampling draws from the same logits, so the same seed gives the same tokens too
    sampled = dict(kw, temperature=1.5, top_k=40, seed=2)
    assert generate(chunks, layout, ids, **sampled) == \
        generate(chunks, layout, ids, use_kv_cache=False, **sampled)


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)])
def test_cache_equals_no_cache_multi_rank(tp, pp, dense_batch, imported):
    ids, pixels = dense_batch
    opts = dict(max_new_tokens=NEW, eos_token_ids=(-1,), img_context_token_id=IMG, tp=tp, pp=pp)
    cached = run_generation(imported("fp32"), ids, pixels, GenerateOptions(**opts)).generated
    full = run_generation(imported("fp32"), ids, pixels,
                          GenerateOptions(kv_cache=False, **opts)).generated
    assert all(len(g) == NEW for g in full)
    assert cached == full


def test_moe_expert_parallel_equals_one_rank(release, imported):
    ids, pixels = ragged_batch(ReleaseReference(release("moe")).model, seed=12)
    opts = dict(max_new_tokens=NEW, eos_token_ids=(-1,), img_context_token_id=IMG)
    one = run_generation(imported("moe"), ids, pixels, GenerateOptions(**opts)).generated
    assert all(len(g) == NEW for g in one)
    assert run_generation(imported("moe"), ids, pixels, GenerateOptions(ep=2, **opts)).generated == one
