"""CPU stand-ins for the ``torch.cuda`` functions Megatron-Core calls outside any tensor
operation (devices, streams, events, RNG state, NVTX ranges, memory counters).

Written for torch 2.13 (CPU build) and megatron-core 0.16.1; holds for torch 2.9-2.14 and
megatron-core 0.17-0.19. Only the CPU layer (``distributed.cpu_compat``) installs them, and
never on a CUDA machine.
"""

from __future__ import annotations

import contextlib

import torch

# Replaced attributes of torch.cuda: each must exist, or Megatron no longer reaches it
# there and the stand-in would be dead code hiding a new call path.
_FUNCTIONS = ("current_device", "device_count", "set_device", "synchronize", "Stream",
              "Event", "stream", "current_stream", "default_stream", "manual_seed",
              "get_rng_state", "set_rng_state", "max_memory_allocated", "memory_allocated")


class NoopStream:
    """Stand-in for torch.cuda.Stream/Event: everything runs in program order on CPU."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        # record_event() must return something that can synchronize(), query(), ...
        return lambda *args, **kwargs: NoopStream()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def check() -> None:
    missing = [n for n in _FUNCTIONS if not hasattr(torch.cuda, n)]
    missing += [f"nvtx.{n}" for n in ("range_push", "range_pop") if not hasattr(torch.cuda.nvtx, n)]
    if missing:
        raise RuntimeError(f"torch {torch.__version__}: torch.cuda lacks {missing}")


def install_cpu_stand_ins() -> None:
    cuda = torch.cuda
    # Autograd backward runs outside the CPU layer's function mode, so the device that
    # Megatron's backward passes ask for must already be the CPU.
    cuda.current_device = lambda: torch.device("cpu")
    cuda.device_count = lambda: 1
    cuda.set_device = lambda *a, **k: None
    cuda.synchronize = lambda *a, **k: None
    cuda.Stream = NoopStream
    cuda.Event = NoopStream
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.current_stream = lambda *a, **k: NoopStream()
    cuda.default_stream = lambda *a, **k: NoopStream()
    cuda.manual_seed = torch.manual_seed
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    cuda.nvtx.range_push = lambda *a, **k: None
    cuda.nvtx.range_pop = lambda *a, **k: None
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_allocated = lambda *a, **k: 0
