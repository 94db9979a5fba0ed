"""Megatron-Core distributed-checkpoint internals: the writer's results queue, the
fully-parallel save's main-replica assignment, and where the common (non-tensor) state is.

- ``filesystem_async._results_queue`` (private module global; 0.16.1-0.19.2): the torch_dist
  writer returns its results through a queue made for async saves, a Manager served by a
  spawned interpreter that imports torch to unpickle them (about 4 s on a 2-core machine,
  on the critical path of each process's first save). Our saves are synchronous: a local
  queue carries the same results.
- ``exchange_utils.determine_main_replica_uniform_distribution`` and
  ``fully_parallel.distribute_main_replicas_with_precomputed_distribution`` (0.16.1-0.19.2,
  not exported by ``dist_checkpointing``): the size-balanced choice of which rank saves each
  replicated shard.
- Common state: up to 0.18.x Megatron writes it to ``common.pt`` (``metadata.json`` names a
  ``common_backend``); from 0.19.0 it is a ShardedObject ``common_state`` inside the
  ``.distcp`` files, a ``torch.save``d one-element list stored as bytes.
"""

from __future__ import annotations

import inspect
import queue
from pathlib import Path

LEGACY_COMMON_FILE = "common.pt"
# ShardedObject("common_state", None, (1,), (0,)).unique_key in megatron-core 0.19
EMBEDDED_COMMON_KEY = "common_state/shard_0_1"


def check() -> None:
    from megatron.core.dist_checkpointing import exchange_utils
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.dist_checkpointing.strategies import filesystem_async, fully_parallel

    if not hasattr(filesystem_async, "_results_queue"):
        raise RuntimeError("dist_checkpointing.strategies.filesystem_async._results_queue is gone")
    for module, name, leading in (
            (exchange_utils, "determine_main_replica_uniform_distribution",
             ["sharded_state_dict", "parallelization_group"]),
            (fully_parallel, "distribute_main_replicas_with_precomputed_distribution",
             ["sharded_state_dict", "parallelization_group", "precomputed_distribution"])):
        fn = getattr(module, name, None)
        if fn is None:
            raise RuntimeError(f"{module.__name__}.{name} is gone")
        params = list(inspect.signature(fn).parameters)
        if params[: len(leading)] != leading:
            raise RuntimeError(f"{module.__name__}.{name}{params}: expected {leading} first")
    key = ShardedObject("common_state", None, (1,), (0,)).unique_key
    if key != EMBEDDED_COMMON_KEY:
        raise RuntimeError(f"ShardedObject keys changed: {key!r}, not {EMBEDDED_COMMON_KEY!r}")


def local_write_results() -> None:
    """Before a synchronous save: give the writer a local results queue (idempotent)."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


def spread_main_replicas(states: list[dict], group) -> None:
    """Collective over ``group``: reassign the main replica of each replicated shard in
    ``states`` (sharded state dicts, in place) so that the saved bytes spread evenly."""
    from megatron.core.dist_checkpointing.exchange_utils import (
        determine_main_replica_uniform_distribution,
    )
    from megatron.core.dist_checkpointing.strategies.fully_parallel import (
        distribute_main_replicas_with_precomputed_distribution,
    )

    distribution = determine_main_replica_uniform_distribution(states, group)
    distribute_main_replicas_with_precomputed_distribution(states, group, distribution)


def has_embedded_common(ckpt_dir: Path) -> bool:
    """Whether the checkpoint keeps its common state inside the .distcp files (written by
    megatron-core >= 0.19) rather than in ``common.pt``."""
    return not (Path(ckpt_dir) / LEGACY_COMMON_FILE).exists()
