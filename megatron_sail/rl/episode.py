"""One episode's rollouts as training micro-batches: which kept rollout goes to which
data-parallel rank and micro-batch, padded so that every rank runs the same number of
equally shaped micro-batches (Megatron's schedules and the MoE all-to-all need that).

A padding row repeats rollout 0 with an all-zero response mask: it runs through the model like
any row but adds nothing to the loss, the gradient or the metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from megatron_sail.rl.rollouts import RolloutBatch, pack_rollouts


@dataclass
class RLMicroBatch:
    tokens: Tensor                    # [b, S] int64
    pixel_values: Optional[Tensor]    # the rows' tiles in row order
    targets: Tensor                   # [b, S - 1]
    mask: Tensor                      # [b, S - 1] float, 0 on prompts, padding and padding rows
    advantages: Tensor                # [b]
    old_logp: Optional[Tensor] = None  # filled by the log-prob pass before the first update
    ref_logp: Optional[Tensor] = None  # filled by the reference model's pass (kl_coeff > 0)


@dataclass(frozen=True)
class EpisodeBatch:
    rollouts: RolloutBatch
    prompt_of: list[int]     # each rollout's prompt index (for its tiles)
    advantages: Tensor       # [N]


def pack_episode(prompts: Sequence[Sequence[int]], prompt_of: Sequence[int],
                 responses: Sequence[Sequence[int]], advantages: Tensor, pad_id: int,
                 multiple: int = 1) -> EpisodeBatch:
    """Rows for the kept rollouts; the width is rounded up to ``multiple`` (sequence
    parallelism splits the sequence over the TP ranks)."""
    batch = pack_rollouts([prompts[p] for p in prompt_of], responses, pad_id)
    extra = (-batch.tokens.shape[1]) % multiple
    if extra:
        tokens = torch.nn.functional.pad(batch.tokens, (0, extra), value=pad_id)
        mask = torch.nn.functional.pad(batch.response_mask, (0, extra))
        batch = RolloutBatch(tokens, tokens[:, 1:], mask, batch.prompt_lengths,
                             batch.response_lengths)
    return EpisodeBatch(batch, list(prompt_of), advantages.to(torch.float32))


def minibatch_rows(num_rollouts: int, mini_batch_size: int) -> list[list[int]]:
    """Consecutive mini-batches of rollout indices (the last may be smaller)."""
    return [list(range(i, min(i + mini_batch_size, num_rollouts)))
            for i in range(0, num_rollouts, mini_batch_size)]


def rank_rows(rows: Sequence[int], dp: int, dp_rank: int,
              micro_batch_size: int) -> list[list[Optional[int]]]:
    """This DP rank's contiguous share of ``rows`` in micro-batches of ``micro_batch_size``;
    None marks a padding row. Every rank gets the same number of micro-batches."""
    per_rank = math.ceil(len(rows) / dp)
    count = max(1, math.ceil(per_rank / micro_batch_size))
    mine: list[Optional[int]] = list(rows[dp_rank * per_rank:(dp_rank + 1) * per_rank])
    mine += [None] * (count * micro_batch_size - len(mine))
    return [mine[i * micro_batch_size:(i + 1) * micro_batch_size] for i in range(count)]


def micro_batch(episode: EpisodeBatch, rows: Sequence[Optional[int]], pixels_of) -> RLMicroBatch:
    """The micro-batch of ``rows`` (None: padding); ``pixels_of(prompt indices)`` gives the
    tiles of those prompts in order."""
    index = [0 if r is None else r for r in rows]
    real = torch.tensor([r is not None for r in rows], dtype=torch.float32)
    batch = episode.rollouts
    return RLMicroBatch(
        tokens=batch.tokens[index], pixel_values=pixels_of([episode.prompt_of[i] for i in index]),
        targets=batch.targets[index], mask=batch.response_mask[index] * real[:, None],
        advantages=episode.advantages[index] * real)
