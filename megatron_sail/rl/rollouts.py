"""Rollouts as training tensors: prompt + response token rows, and the log-probs of the
response tokens, aligned with the model's next-token logits.

The logit at position t predicts the token at t + 1, so a response token at position p is
scored by the logits at p - 1; getting that off by one silently trains on the wrong tokens,
hence one tested place. Log-probs are taken at the sampling temperature: the rollout policy is
the tempered distribution, and the importance ratio must compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class RolloutBatch:
    tokens: Tensor         # [B, S] int64, prompt then response, right-padded with pad_id
    targets: Tensor        # [B, S - 1] tokens[:, 1:], what logits[:, :-1] predict
    response_mask: Tensor  # [B, S - 1] float, 1 where the target is a response token
    prompt_lengths: list[int]
    response_lengths: list[int]


def pack_rollouts(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                  pad_id: int = 0) -> RolloutBatch:
    """One row per rollout (a prompt repeated for each rollout of its group is passed once per
    rollout). Responses are the generated tokens only, end token included when one was
    produced (it is a decision of the policy and is trained like any other token)."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every rollout needs a non-empty prompt")
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    tokens = torch.full((len(prompts), max(width, 2)), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(prompts), tokens.shape[1] - 1))
    for i, (p, r) in enumerate(zip(prompts, responses)):
        tokens[i, :len(p) + len(r)] = torch.tensor(list(p) + list(r), dtype=torch.int64)
        mask[i, len(p) - 1:len(p) - 1 + len(r)] = 1  # logits at len(p)-1 predict response[0]
    return RolloutBatch(tokens, tokens[:, 1:], mask, [len(p) for p in prompts],
                        [len(r) for r in responses])


def token_logprobs(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) at ``targets``: logits [B, S - 1, V] (the model's
    output without its last position) and targets [B, S - 1] -> [B, S - 1], in float32 or
    wider (bf16 log-probs would make ratios near 1 meaningless)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match targets "
                         f"{tuple(targets.shape)}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logp = torch.log_softmax(logits.to(dtype) / temperature, dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def vocab_parallel_token_logprobs(logits: Tensor, targets: Tensor, temperature: float,
                                  vocab_size: int, banned: Sequence[int] = ()) -> Tensor:
    """``token_logprobs`` on this tensor-parallel rank's vocabulary shard [B, S - 1, V / TP]
    without gathering the logits: Megatron's vocab-parallel cross entropy is -log softmax at
    the target. The columns generation never samples - the output layer's padding beyond the
    tokenizer's ``vocab_size`` and ``banned`` ids (the image placeholder) - are excluded, so the
    log-probs are those of the distribution the rollouts were drawn from (at top_p = 1, no
    top_k). Differentiable (the policy's update) and exact against ``token_logprobs`` on the
    gathered, truncated logits (tested)."""
    from megatron.core import parallel_state, tensor_parallel

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match targets "
                         f"{tuple(targets.shape)}")
    local = logits.shape[-1]
    first = parallel_state.get_tensor_model_parallel_rank() * local
    columns = torch.arange(first, first + local, device=logits.device)
    excluded = columns >= vocab_size
    for token in banned:
        excluded |= columns == token
    scaled = logits.float() / temperature
    scaled = scaled.masked_fill(excluded, float("-inf"))
    return -tensor_parallel.vocab_parallel_cross_entropy(scaled, targets)
