"""torch distributed-checkpoint helpers the converter's reader plans partial reads with.

``torch.distributed.checkpoint.planner_helpers.create_read_items_for_chunk_list`` (not in
DCP's documented API) turns a region of a stored tensor into read items; the reader also
subclasses ``DefaultLoadPlanner`` (``create_local_plan``, ``lookup_tensor``) and
``FileSystemReader`` (``read_metadata``). Written for torch 2.13; the same in torch 2.9-2.14.
"""

from __future__ import annotations

import inspect

from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint import planner_helpers

_LEADING = ["fqn", "checkpoint_md", "local_chunks"]


def check() -> None:
    fn = getattr(planner_helpers, "create_read_items_for_chunk_list", None)
    if fn is None:
        raise RuntimeError("torch.distributed.checkpoint.planner_helpers."
                           "create_read_items_for_chunk_list is gone")
    params = list(inspect.signature(fn).parameters)
    if params[: len(_LEADING)] != _LEADING:
        raise RuntimeError(f"create_read_items_for_chunk_list{params}: expected {_LEADING}")
    for cls, names in ((DefaultLoadPlanner, ("create_local_plan", "lookup_tensor")),
                       (FileSystemReader, ("read_metadata",))):
        missing = [n for n in names if not hasattr(cls, n)]
        if missing:
            raise RuntimeError(f"{cls.__name__} lacks {missing}")


def create_read_items_for_chunk_list(fqn, checkpoint_md, local_chunks):
    return planner_helpers.create_read_items_for_chunk_list(fqn, checkpoint_md, local_chunks)
