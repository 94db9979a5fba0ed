"""Group-relative advantages and dynamic sampling.

Each prompt is answered by a group of G rollouts; a rollout's advantage is its reward relative
to its own group: (r - mean_group) / (std_group + eps). No value model is needed, and the scale
of the rewards drops out. The std is the sample standard deviation (n - 1 in the denominator, as
the common open implementations of GRPO/DAPO compute it); ``eps`` = 1e-6 only guards the division.

A group whose rewards are all equal has zero advantage everywhere and so contributes no gradient
while still diluting the mini-batch; DAPO's dynamic sampling drops such groups and refills the
batch from more prompts. ``prompts_to_draw`` says how many, from the keep rate seen so far.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

STD_EPS = 1e-6


def _grouped(rewards: Sequence[float] | Tensor, group_size: int) -> Tensor:
    r = torch.as_tensor(rewards, dtype=torch.float64)
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for a group-relative baseline, got {group_size}")
    if r.dim() != 1 or r.numel() % group_size:
        raise ValueError(f"{r.numel()} rewards do not split into groups of {group_size}")
    return r.view(-1, group_size)


def group_advantages(rewards: Sequence[float] | Tensor, group_size: int,
                     eps: float = STD_EPS) -> Tensor:
    """Advantages [N] for N rewards laid out group after group (rollouts of one prompt next to
    each other); an all-equal group gets zeros."""
    g = _grouped(rewards, group_size)
    mean = g.mean(dim=1, keepdim=True)
    std = g.std(dim=1, keepdim=True, unbiased=True)
    return ((g - mean) / (std + eps)).view(-1)


def informative_groups(rewards: Sequence[float] | Tensor, group_size: int) -> Tensor:
    """Bool [N // group_size]: True for a group whose rewards are not all equal (exact
    comparison: rewards are sums of the same binary/weighted terms, so equal means identical)."""
    g = _grouped(rewards, group_size)
    return g.max(dim=1).values != g.min(dim=1).values


def kept_rollouts(rewards: Sequence[float] | Tensor, group_size: int) -> list[int]:
    """Indices of the rollouts in informative groups (dynamic sampling), in order."""
    keep = informative_groups(rewards, group_size)
    return [i for i in range(keep.numel() * group_size) if bool(keep[i // group_size])]


def prompts_to_draw(needed_groups: int, kept_groups: int, drawn_groups: int,
                    min_keep_rate: float = 0.05) -> int:
    """How many more prompts to sample so that, at the keep rate seen so far, ``needed_groups``
    informative groups are reached: ceil(missing / rate). The rate is kept/drawn, floored at
    ``min_keep_rate`` so that a first round where every group was dropped asks for a bounded
    number (1 / min_keep_rate per missing group) rather than infinitely many."""
    if needed_groups < 0 or kept_groups < 0 or drawn_groups < kept_groups:
        raise ValueError(f"inconsistent counts: needed={needed_groups} kept={kept_groups} "
                         f"drawn={drawn_groups}")
    if not 0 < min_keep_rate <= 1:
        raise ValueError(f"min_keep_rate must be in (0, 1], got {min_keep_rate}")
    missing = needed_groups - kept_groups
    if missing <= 0:
        return 0
    rate = max(kept_groups / drawn_groups if drawn_groups else 1.0, min_keep_rate)
    return math.ceil(missing / rate - 1e-9)
