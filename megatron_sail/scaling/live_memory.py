"""Peak bytes of live tensor storage in this process, counted tensor by tensor.

The CPU allocator keeps no statistics and process RSS is mostly the interpreter and
libraries, so this counts what a GPU's ``max_memory_allocated`` would: every storage created
by an aten op (forward, backward, optimizer, collectives) while the mode is active, from its
creation until it is freed, each storage once however many views share it. Tensors that
existed before the mode was entered, and memory that is not a tensor storage (e.g. numpy
arrays, library workspaces), are not seen; allocator rounding and fragmentation are not
modelled.
"""

from __future__ import annotations

import weakref

import torch

from megatron_sail.compat.torch_dispatch import TorchDispatchMode, tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    def __init__(self, device_type: str = "cpu"):
        super().__init__()
        self.device_type = device_type
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}  # id(storage) -> bytes counted for it

    def reset_peak(self) -> None:
        self.peak = self.live

    def _release(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def _track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type != self.device_type or tensor.is_sparse:
            return
        storage = tensor.untyped_storage()
        key, nbytes = id(storage), storage.nbytes()
        known = self._sizes.get(key)
        if known is None:
            # Storages keep their Python object while alive, so the finaliser fires exactly
            # when the memory is released.
            weakref.finalize(storage, self._release, key)
        elif known == nbytes:
            return
        self._sizes[key] = nbytes  # new, or resized in place (resize_, set_)
        self.live += nbytes - (known or 0)
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out
