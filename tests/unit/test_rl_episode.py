"""The RL loop's bookkeeping: which prompts an episode asks, how rollouts become equally shaped
micro-batches on every data-parallel rank, and the vocab-parallel log-probs of the update."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from megatron_sail.rl.data import draw_prompts
from megatron_sail.rl.episode import micro_batch, minibatch_rows, pack_episode, rank_rows
from megatron_sail.rl.loop import cut_at_end
from megatron_sail.rl.rollouts import token_logprobs, vocab_parallel_token_logprobs
from tests.helpers import REPO


def test_prompt_draws_are_a_function_of_seed_episode_and_round():
    a = draw_prompts(7, 3, 0, 10, 4)
    assert a == draw_prompts(7, 3, 0, 10, 4)
    assert sorted(a[:4]) == [0, 1, 2, 3] and sorted(a[4:8]) == [0, 1, 2, 3]  # permutations
    assert a != draw_prompts(7, 4, 0, 10, 4) or a != draw_prompts(7, 3, 1, 10, 4)
    assert len(draw_prompts(7, 3, 0, 3, 100)) == 3


def test_rank_rows_give_every_rank_the_same_number_of_micro_batches():
    rows = list(range(5))
    shares = [rank_rows(rows, 2, r, 2) for r in range(2)]
    assert shares[0] == [[0, 1], [2, None]] and shares[1] == [[3, 4], [None, None]]
    assert [r for s in shares for mb in s for r in mb if r is not None] == rows
    assert minibatch_rows(5, 2) == [[0, 1], [2, 3], [4]]


def test_padding_rows_and_prompts_carry_no_loss():
    prompts = [[5, 6, 7], [8, 9]]
    episode = pack_episode(prompts, [0, 1], [[1, 2], [3]], torch.tensor([1.0, -1.0]),
                           pad_id=0, multiple=4)
    assert episode.rollouts.tokens.shape == (2, 8)  # width 5 rounded up to 4's multiple
    assert episode.rollouts.tokens[0, :5].tolist() == [5, 6, 7, 1, 2]
    mb = micro_batch(episode, [1, None], lambda idx: None)
    assert mb.mask[0].tolist() == [0, 1, 0, 0, 0, 0, 0]  # logits at 1 predict response[0]
    assert mb.mask[1].sum() == 0 and mb.advantages.tolist() == [-1.0, 0.0]


def test_cut_at_end_keeps_the_end_token():
    assert cut_at_end([4, 5, 2, 6, 2], {2}) == [4, 5, 2]
    assert cut_at_end([4, 5], {2}) == [4, 5]


def test_vocab_parallel_logprobs_equal_the_gathered_truncated_softmax(megatron_single_rank):
    """TP = 1 here: the excluded columns (padding beyond the tokenizer's vocabulary and the
    image placeholder) must drop out exactly as generation drops them."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 12, generator=gen, requires_grad=True)
    targets = torch.randint(0, 9, (2, 5), generator=gen)
    targets[targets == 3] = 4  # never the banned id
    got = vocab_parallel_token_logprobs(logits, targets, 0.7, vocab_size=10, banned=(3,))
    truncated = logits.detach()[..., :10].clone()
    truncated[..., 3] = float("-inf")
    expected = token_logprobs(truncated, targets, 0.7)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    got.sum().backward()  # no gradient reaches the excluded columns
    assert torch.all(logits.grad[..., 10:] == 0) and torch.all(logits.grad[..., 3] == 0)


def test_committed_count_tokenizer_is_the_one_the_task_trains(tmp_path):
    from megatron_sail.rl.tasks import train_count_tokenizer

    train_count_tokenizer(tmp_path / "t.model")
    digest = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "t.model") == digest(Path(REPO) / "examples/rl/count-tokenizer.model")


def test_committed_count_data_is_what_the_task_writes(tmp_path):
    from megatron_sail.rl.tasks import write_count_task

    out = write_count_task(tmp_path / "count", 128, seed=0, image_size=56)
    committed = Path(REPO) / "examples/rl/count"
    assert out.read_text() == (committed / "records.jsonl").read_text()
    for png in sorted((tmp_path / "count/images").iterdir()):
        assert png.read_bytes() == (committed / "images" / png.name).read_bytes()
