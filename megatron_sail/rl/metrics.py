"""The per-episode RL metrics the issue names, from an episode's scores and update results.

Reward, accuracy, format and length statistics are over every rollout scored in the episode
(before dynamic sampling drops all-equal groups: the kept ones are biased towards mixed
outcomes); clip fraction and KL are means over the episode's updates. Timings and tokens/s are
the loop's to add, it owns the clocks.
"""

from __future__ import annotations

from statistics import fmean
from typing import Sequence

from megatron_sail.rl.losses import PolicyLoss
from megatron_sail.rl.rewards import ScoredBatch

ACCURACY_REWARDS = ("boxed_answer", "judge")  # the first one configured is rl/accuracy
FORMAT_REWARD = "think_format"


def episode_metrics(scored: ScoredBatch, response_lengths: Sequence[int], groups_kept: int,
                    groups_total: int, updates: Sequence[PolicyLoss]) -> dict[str, float]:
    """``rl/*`` metrics; ``rl/accuracy``, ``rl/format_reward`` and ``rl/kl`` appear only when
    the episode has an answer reward, the format reward or a reference KL."""
    if not scored.total or len(response_lengths) != len(scored.total):
        raise ValueError(f"{len(scored.total)} scores for {len(response_lengths)} responses")
    out = {"rl/reward_mean": fmean(scored.total),
           "rl/response_length_mean": fmean(response_lengths),
           "rl/groups_kept": float(groups_kept),
           "rl/groups_kept_fraction": groups_kept / groups_total if groups_total else 0.0}
    accuracy = next((name for name in ACCURACY_REWARDS if name in scored.parts), None)
    if accuracy is not None:
        out["rl/accuracy"] = fmean(scored.parts[accuracy])
    if FORMAT_REWARD in scored.parts:
        out["rl/format_reward"] = fmean(scored.parts[FORMAT_REWARD])
    for name, count in scored.unscored.items():
        out[f"rl/unscored/{name}"] = float(count)
    if updates:
        out["rl/clip_fraction"] = fmean(float(u.clip_fraction) for u in updates)
        out["rl/approx_kl"] = fmean(float(u.approx_kl) for u in updates)
        if all(u.ref_kl is not None for u in updates):
            out["rl/kl"] = fmean(float(u.ref_kl) for u in updates)
    return out
