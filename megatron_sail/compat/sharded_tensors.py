"""What megatron_sail reads of Megatron-Core's ``ShardedTensor`` beyond its key, data and
shapes: the stacked-layer axes (``prepend_axis_num``), the distributed optimizer's flat
slices (``flattened_range``) and the replica id.

Fields of the dataclass in megatron-core 0.16.1-0.19.2; ``replica_id`` is an int or a tuple
of ints, main when all are 0 (``mapping.is_main_replica``).
"""

from __future__ import annotations

import dataclasses


def check() -> None:
    from megatron.core.dist_checkpointing import mapping

    fields = {f.name for f in dataclasses.fields(mapping.ShardedTensor)}
    missing = {"prepend_axis_num", "flattened_range", "replica_id"} - fields
    if missing:
        raise RuntimeError(f"ShardedTensor lacks the fields {sorted(missing)}")
    if not callable(getattr(mapping, "is_main_replica", None)):
        raise RuntimeError("dist_checkpointing.mapping.is_main_replica is gone")


def stacked_axes(sh) -> int:
    """How many leading axes of the global tensor stack layers (or experts)."""
    return sh.prepend_axis_num


def is_flat_slice(sh) -> bool:
    """A flattened slice (distributed-optimizer state), not a whole local shard."""
    return sh.flattened_range is not None


def is_main_replica(sh) -> bool:
    from megatron.core.dist_checkpointing.mapping import is_main_replica as main

    return main(sh.replica_id)
