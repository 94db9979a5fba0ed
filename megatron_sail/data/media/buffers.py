"""Output buffers for decoded pixels that cross from DataLoader workers to the training process."""

from __future__ import annotations

import torch
from torch.utils.data import get_worker_info

from megatron_sail.compat.shared_memory import empty_shared


def pixel_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised uint8 tensor of ``shape``.

    Inside a DataLoader worker it is allocated in shared memory, as torch's ``default_collate``
    does for batches: sending it to the training process then passes a file descriptor instead of
    copying the pixels into a fresh shared segment first (the copy and the page faults of a second
    buffer are a measurable part of per-sample cost). Elsewhere it is ordinary memory.
    """
    if get_worker_info() is not None:
        return empty_shared(shape, torch.uint8)
    return torch.empty(shape, dtype=torch.uint8)
