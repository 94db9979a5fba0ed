"""Dealing a planned global batch to data-parallel ranks, and the packing metrics.

The rows are fixed before this step (``packing_plan``), so changing the DP size only changes
who computes which row: with the loss summed over tokens and divided by the global token
count, the update is the same for any DP size. The deal balances what each rank waits on:
visual tokens (the ViT's work, which varies a lot between rows) first, then tokens (the
LLM's work, nearly equal for well-packed rows).
"""

from __future__ import annotations

from typing import Sequence

from megatron_sail.data.packing.plan import GlobalBatchPlan, PackedRow

# Swap-refinement rounds after the greedy deal; each round moves one pair of rows.
MAX_SWAPS = 64


def deal_rows(plan: GlobalBatchPlan, dp_size: int) -> list[list[PackedRow]]:
    """Rank ``r``'s rows, ``len(plan.rows) / dp_size`` of them, in micro-batch order.

    Greedy: rows by visual tokens (then tokens) descending, each to the rank with the least
    work so far among those not yet full. Then a few swaps between the most and the least
    loaded rank, each taking the pair of rows that best halves their gap. Every rank's rows
    keep the plan's order (stream order), which is the micro-batch order. Deterministic.
    """
    n = len(plan.rows)
    if dp_size < 1 or n % dp_size:
        raise ValueError(f"{n} packed rows cannot be dealt evenly to DP {dp_size}")
    per_rank = n // dp_size
    rows = plan.rows
    # Balance visual tokens when there are any; a text-only batch balances tokens instead.
    visual = any(r.visual_tokens for r in rows)
    cost = [(r.visual_tokens, r.tokens) if visual else (r.tokens, 0) for r in rows]

    owner: list[list[int]] = [[] for _ in range(dp_size)]
    load = [(0, 0)] * dp_size
    for i in sorted(range(n), key=lambda i: (-cost[i][0], -cost[i][1], i)):
        rank = min((r for r in range(dp_size) if len(owner[r]) < per_rank),
                   key=lambda r: (load[r], r))
        owner[rank].append(i)
        load[rank] = (load[rank][0] + cost[i][0], load[rank][1] + cost[i][1])

    primary = [c[0] for c in cost]
    for _ in range(MAX_SWAPS):
        if not _swap_once(owner, primary):
            break
    return [[rows[i] for i in sorted(idx)] for idx in owner]


def _swap_once(owner: list[list[int]], cost: list[int]) -> bool:
    """Swap one row of the heaviest rank with one of the lightest if that narrows their gap."""
    totals = [sum(cost[i] for i in idx) for idx in owner]
    heavy = max(range(len(owner)), key=lambda r: (totals[r], -r))
    light = min(range(len(owner)), key=lambda r: (totals[r], r))
    gap = totals[heavy] - totals[light]
    best = None  # (new gap, position in heavy, position in light)
    for a, i in enumerate(owner[heavy]):
        for b, j in enumerate(owner[light]):
            moved = cost[i] - cost[j]
            if 0 < moved < gap:
                candidate = (abs(gap - 2 * moved), a, b)
                best = candidate if best is None or candidate < best else best
    if best is None:
        return False
    _, a, b = best
    owner[heavy][a], owner[light][b] = owner[light][b], owner[heavy][a]
    return True


def packing_stats(rows_per_rank: Sequence[Sequence[PackedRow]], seq_length: int) -> dict:
    """Metrics for one global batch dealt to ranks (flat names, as in the training log)."""
    rows = [r for rank in rows_per_rank for r in rank]
    if not rows:
        raise ValueError("no packed rows")
    tokens = sum(r.tokens for r in rows)
    samples = sum(len(r.samples) for r in rows)
    visual = [sum(r.visual_tokens for r in rank) for rank in rows_per_rank]
    per_rank_tokens = [sum(r.tokens for r in rank) for rank in rows_per_rank]
    visual_mean = sum(visual) / len(visual)
    tokens_mean = sum(per_rank_tokens) / len(per_rank_tokens)
    return {
        "packing_efficiency": tokens / (len(rows) * seq_length),
        "packed_rows": len(rows),
        "packed_samples": samples,
        "samples_per_row": samples / len(rows),
        "visual_tokens_per_rank_max": max(visual),
        "visual_tokens_per_rank_mean": visual_mean,
        "visual_tokens_rank_imbalance": max(visual) / visual_mean if visual_mean else 1.0,
        "tokens_per_rank_max": max(per_rank_tokens),
        "tokens_per_rank_mean": tokens_mean,
    }
