"""Greedy generation on an imported release-layout checkpoint equals a greedy loop over the
reference model's logits (transformers' Aimv2VisionModel + Qwen3ForCausalLM + pixel shuffle
+ mlp1, measured to match the release's own code), token for token, for a ragged batch of a
text-only prompt, a 1-tile and a 3-tile prompt, at TP=1, TP=2 and PP=2; sampling is seeded."""

from __future__ import annotations

import pytest
import torch

from megatron_sail.convert.reference import ReleaseReference
from megatron_sail.generation.runner import GenerateOptions, run_generation

IMG = 7
NEW = 6


def prompts(model, seed: int = 5):
    """(ids, tiles) per row: text only, one tile, three tiles (one <IMG_CONTEXT> run each)."""
    gen = torch.Generator().manual_seed(seed)
    vit = model.vision
    per_tile = (vit.image_size // vit.patch_size // 2) ** 2
    rows = []
    for tiles, text in ((0, 7), (1, 5), (3, 4)):
        ids = torch.randint(IMG + 1, model.llm.vocab_size, (text,), generator=gen).tolist()
        ids[2:2] = [IMG] * (tiles * per_tile)
        pixels = torch.randn(tiles, 3, vit.image_size, vit.image_size, generator=gen)
        rows.append((ids, pixels))
    return rows


def reference_greedy(reference, ids: list[int], pixels: torch.Tensor, eos: int) -> list[int]:
    seq, new = list(ids), []
    for _ in range(NEW):
        logits = reference.logits(torch.tensor([seq]), pixels if pixels.numel() else None, IMG)[0, -1]
        top2 = logits.topk(2).values
        # A near-tie would make the comparison meaningless; fp32 forward noise is ~1e-5.
        assert float(top2[0] - top2[1]) > 1e-3
        token = int(logits.argmax())
        seq.append(token)
        new.append(token)
        if token == eos:
            break
    return new


@pytest.fixture(scope="module")
def case(release):
    reference = ReleaseReference(release("fp32"))
    rows = prompts(reference.model)
    first = reference_greedy(reference, *rows[0], eos=-1)
    eos = first[2]   # row 0 stops after its third token: the end token is checked too
    expected = [reference_greedy(reference, ids, px, eos) for ids, px in rows]
    assert len(expected[0]) == 3
    pixels = torch.cat([px for _, px in rows])
    return [ids for ids, _ in rows], pixels, eos, expected


@pytest.mark.parametrize("tp, pp", [(1, 1), (2, 1), (1, 2)])
def test_greedy_equals_reference_loop(tp, pp, case, imported):
    ids, pixels, eos, expected = case
    opts = GenerateOptions(max_new_tokens=NEW, eos_token_ids=(eos,), img_context_token_id=IMG,
                           tp=tp, pp=pp)
    out = run_generation(imported("fp32"), ids, pixels, opts)
    assert out.generated == expected


def test_sampling_is_seeded(case, imported):
    ids, pixels, eos, _ = case
    opts = GenerateOptions(max_new_tokens=NEW, eos_token_ids=(-5,), img_context_token_id=IMG,
                           temperature=5.0, top_k=50, top_p=0.95, seed=3)
    first = run_generation(imported("fp32"), ids, pixels, opts).generated
    again = run_generation(imported("fp32"), ids, pixels, opts).generated
    other = run_generation(imported("fp32"), ids, pixels,
                           GenerateOptions(**{**opts.__dict__, "seed": 4})).generated
    assert first == again and all(len(g) == NEW for g in first)
    assert first != other   # 18 tokens at temperature 5: equal by chance with negligible odds


def test_in_process_api_and_batching_invariance(case, imported, megatron_single_rank):
    """The Python API the RL rollouts use, in this process (one rank): the ragged batch equals
    the reference, and each prompt alone gives the tokens it gets in the batch."""
    from megatron_sail.generation import generate, load_for_generation

    ids, pixels, eos, expected = case
    cfg, layout, chunks, tokenizer = load_for_generation(imported("fp32"), max_length=128,
                                                         img_context_token_id=IMG)
    assert tokenizer is None   # an import carries no tokenizer
    kw = dict(max_new_tokens=NEW, eos_token_ids=(eos,), img_context_token_id=IMG,
              vocab_size=cfg.model.llm.vocab_size)
    assert generate(chunks, layout, ids, pixel_values=pixels, **kw) == expected
    per_tile = (cfg.model.vision.image_size // cfg.model.vision.patch_size // 2) ** 2
    first = 0
    for row, want in zip(ids, expected):
        n = row.count(IMG) // per_tile
        alone = generate(chunks, layout, [row], pixel_values=pixels[first:first + n] if n else None, **kw)
        first += n
        assert alone == [want]
    with pytest.raises(ValueError, match="no pixel_values"):
        generate(chunks, layout, [ids[1]], pixel_values=None, **kw)


def test_moe_greedy_equals_reference_loop(release, imported):
    """A Qwen3-MoE release imported at EP=2, generated at EP=1 (generation's layout)."""
    reference = ReleaseReference(release("moe"))
    rows = prompts(reference.model, seed=8)
    expected = [reference_greedy(reference, ids, px, eos=-1) for ids, px in rows]
    opts = GenerateOptions(max_new_tokens=NEW, eos_token_ids=(-1,), img_context_token_id=IMG)
    out = run_generation(imported("moe"), [ids for ids, _ in rows], torch.cat([px for _, px in rows]), opts)
    assert out.generated == expected
