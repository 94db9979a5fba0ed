"""Rollout packing (next-token alignment) and response log-probs on hand-built logits."""

import math

import pytest
import torch

from megatron_sail.rl.rollouts import pack_rollouts, token_logprobs


def test_response_mask_marks_the_logits_that_predict_response_tokens():
    batch = pack_rollouts([[5, 6, 7], [5]], [[8, 9], [4, 3, 2]], pad_id=0)
    assert batch.tokens.tolist() == [[5, 6, 7, 8, 9], [5, 4, 3, 2, 0]]
    assert batch.targets.tolist() == [[6, 7, 8, 9], [4, 3, 2, 0]]
    # row 0: targets 8, 9 (response) sit at positions 2, 3; row 1: 4, 3, 2 at 0, 1, 2
    assert batch.response_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]
    masked = batch.targets[batch.response_mask.bool()].tolist()
    assert masked == [8, 9, 4, 3, 2]
    assert (batch.prompt_lengths, batch.response_lengths) == ([3, 1], [2, 3])


def test_an_empty_response_has_no_tokens_and_bad_input_is_refused():
    batch = pack_rollouts([[1, 2]], [[]])
    assert batch.response_mask.sum().item() == 0
    with pytest.raises(ValueError):
        pack_rollouts([[1]], [[2], [3]])
    with pytest.raises(ValueError):
        pack_rollouts([[]], [[2]])


def test_token_logprobs_at_temperature():
    # vocabulary of 2, logits [0, ln 3]: p = [1/4, 3/4]
    # at temperature 2, logits [0, ln 3 / 2]: p = [1, sqrt 3] / (1 + sqrt 3)
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)]]], dtype=torch.bfloat16)
    targets = torch.tensor([[1, 0]])
    out = token_logprobs(logits, targets)
    assert out.dtype == torch.float32
    # bf16 rounds ln 3 = 1.0986 to 1.1016: log-probs shift by < 3e-3
    assert out.tolist()[0] == pytest.approx([math.log(0.75), math.log(0.25)], abs=3e-3)
    exact = token_logprobs(torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)]]],
                                        dtype=torch.float64), targets, temperature=2.0)
    s = math.sqrt(3)
    assert exact.dtype == torch.float64
    assert exact.tolist()[0] == pytest.approx([math.log(s / (1 + s)), math.log(1 / (1 + s))])
    with pytest.raises(ValueError):
        token_logprobs(logits, targets[:, :1])
