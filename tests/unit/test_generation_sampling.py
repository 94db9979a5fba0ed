"""Next-token choice: greedy is the argmax; top-k and top-p keep exactly the tokens they name
(checked on planted distributions), and a seeded generator repeats its draws."""

import math

import pytest
import torch

from megatron_sail.generation.sampling import SamplingParams, next_tokens


def draws(logits, params, n=4000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch = logits.expand(n, -1)
    return next_tokens(batch, params, gen)


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.9, -1.0], [5.0, 0.0, 0.0, 0.0]])
    assert next_tokens(logits, SamplingParams(), torch.Generator()).tolist() == [1, 0]


def test_top_k_keeps_the_k_best():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    seen = set(draws(logits, SamplingParams(temperature=1.0, top_k=2)).tolist())
    assert seen == {0, 1}


def test_top_p_keeps_the_smallest_set_reaching_p():
    # Sorted probabilities 0.5, 0.3, 0.15, 0.05: p=0.7 needs {0.5, 0.3}; p=0.8 exactly reaches
    # it with the same two (a token is dropped when those before it already reach p).
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]]))
    assert set(draws(logits, SamplingParams(temperature=1.0, top_p=0.7)).tolist()) == {1, 3}
    assert set(draws(logits, SamplingParams(temperature=1.0, top_p=0.81)).tolist()) == {0, 1, 3}
    # Renormalised over the kept pair: 0.5 / 0.8 = 0.625; 4000 draws give a standard error
    # of sqrt(0.625 * 0.375 / 4000) ~ 0.0077, so 5 sigma is 0.04.
    share = (draws(logits, SamplingParams(temperature=1.0, top_p=0.7)) == 1).float().mean()
    assert abs(float(share) - 0.625) < 0.04


def test_temperature_sharpens():
    logits = torch.log(torch.tensor([[0.6, 0.4]]))
    # T = 0.5 squares the odds: 0.36 / (0.36 + 0.16) = 0.6923
    share = (draws(logits, SamplingParams(temperature=0.5)) == 0).float().mean()
    assert abs(float(share) - 0.36 / 0.52) < 5 * math.sqrt(0.69 * 0.31 / 4000)


def test_seeded_draws_repeat():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(1))
    p = SamplingParams(temperature=1.0, top_p=0.9, top_k=20)
    assert torch.equal(draws(logits, p, 200, seed=5), draws(logits, p, 200, seed=5))
    assert not torch.equal(draws(logits, p, 200, seed=5), draws(logits, p, 200, seed=6))


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-1)])
def test_bad_parameters(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw)


def test_generate_never_picks_the_image_placeholder(monkeypatch):
    """Logits that favour <IMG_CONTEXT> above all: generate() picks the next best token, greedy
    and sampled (fed back, the placeholder would need tiles that do not exist). The pick is the
    same code for both forward paths; the no-cache one is faked here."""
    from megatron_sail.convert import megatron_side
    from megatron_sail.generation.generate import generate

    img, best = 3, 1

    def fake_logits(chunks, layout, ids, pixel_values, vocab_size, pad_id):
        logits = torch.full((ids.shape[0], ids.shape[1], vocab_size), -5.0)
        logits[..., img], logits[..., best] = 10.0, 4.0
        return logits

    monkeypatch.setattr(megatron_side, "forward_logits", fake_logits)
    for temperature in (0.0, 1.0):
        new = generate([None], None, [[0, 2], [2]], pixel_values=None, max_new_tokens=20,
                       temperature=temperature, seed=0, img_context_token_id=img, vocab_size=6,
                       use_kv_cache=False)
        assert all(len(row) == 20 and img not in row for row in new), new
        if temperature == 0.0:
            assert new == [[best] * 20] * 2
