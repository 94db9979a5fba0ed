"""Sequence packing for the multimodal loader.

Per training step, every rank runs the same three steps, with no communication:

1. ``plan_global_batch``: from sample metadata (lengths, visual tokens; no media decoded),
   pack the next global batch of ``rows`` rows of ``seq_length`` tokens; samples that do
   not fit carry over in a small ``PackingState`` saved with the checkpoint.
2. ``deal_rows``: split the rows over data-parallel ranks, balancing visual tokens (ViT
   work) and tokens. The rows do not depend on the DP size, so neither does the loss.
3. ``collate_packed``: this rank's rows, one micro-batch each, as ``[1, seq_length]``
   MicroBatches with ``cu_seqlens`` (positions restart per sample, no attention across
   samples; Megatron's PackedSeqParams are built from them).

``packing_stats`` gives the metrics (efficiency, visual tokens per rank).
"""

from megatron_sail.data.packing.balance import deal_rows, packing_stats
from megatron_sail.data.packing.collate import collate_packed
from megatron_sail.data.packing.plan import (
    GlobalBatchPlan,
    PackedRow,
    PackingState,
    SampleInfo,
    Stream,
    plan_global_batch,
)

__all__ = [
    "GlobalBatchPlan",
    "PackedRow",
    "PackingState",
    "SampleInfo",
    "Stream",
    "collate_packed",
    "deal_rows",
    "packing_stats",
    "plan_global_batch",
]
