"""An uninitialised tensor allocated straight in shared memory, as torch's ``default_collate``
does for batches in DataLoader workers (``TypedStorage._new_shared``, private): the public
``share_memory_()`` would first allocate ordinary memory and then copy it into a new shared
segment. Written for torch 2.13; the same in torch 2.9-2.14.
"""

from __future__ import annotations

import math

import torch


def check() -> None:
    proto = torch.empty(0, dtype=torch.uint8)
    if not hasattr(proto, "_typed_storage") or not hasattr(proto._typed_storage(), "_new_shared"):
        raise RuntimeError(f"torch {torch.__version__}: Tensor._typed_storage()._new_shared is gone")


def empty_shared(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    proto = torch.empty(0, dtype=dtype)
    storage = proto._typed_storage()._new_shared(math.prod(shape), device=proto.device)
    return proto.new(storage).view(shape)
