"""Megatron-Core's CUDA RNG-state helpers mapped to the CPU generator, and its activation
recompute re-entering the CPU layer.

Targets ``megatron.core.tensor_parallel.random._get_cuda_rng_state`` /
``_set_cuda_rng_state`` (private; used by the RNG tracker's ``fork()``) and the forward /
backward of ``CheckpointFunction`` / ``CheckpointWithoutOutputFunction``. Written for
megatron-core 0.16.1; the same names and signatures are in 0.17-0.19.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch

_RECOMPUTE = ("CheckpointFunction", "CheckpointWithoutOutputFunction")


def _random():
    from megatron.core.tensor_parallel import random

    return random


def _cpu_get(device="cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_set(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def check() -> None:
    mrandom = _random()
    for name, ours in (("_get_cuda_rng_state", _cpu_get), ("_set_cuda_rng_state", _cpu_set)):
        target = getattr(mrandom, name, None)
        if target is None:
            raise RuntimeError(f"megatron.core.tensor_parallel.random.{name} is gone")
        if getattr(target, "_sail_cpu", False):
            continue
        theirs = list(inspect.signature(target).parameters)
        if theirs != list(inspect.signature(ours).parameters):
            raise RuntimeError(f"megatron.core.tensor_parallel.random.{name}{theirs}: "
                               f"signature changed")
    if not hasattr(mrandom, _RECOMPUTE[0]):
        raise RuntimeError(f"megatron.core.tensor_parallel.random.{_RECOMPUTE[0]} is gone")


def patch_for_cpu(in_cpu_mode: Callable[[Callable], Callable]) -> None:
    """RNG state on the CPU generator; ``in_cpu_mode(fn)`` wraps the recompute functions'
    forward/backward, which autograd runs where the calling thread's function mode is not
    in effect. Idempotent."""
    mrandom = _random()
    for name, ours in (("_get_cuda_rng_state", _cpu_get), ("_set_cuda_rng_state", _cpu_set)):
        ours._sail_cpu = True
        setattr(mrandom, name, ours)
    for name in _RECOMPUTE:
        fn = getattr(mrandom, name, None)
        if fn is None or getattr(fn.forward, "_sail_cpu", False):
            continue
        for method in ("forward", "backward"):
            wrapped = functools.wraps(getattr(fn, method))(in_cpu_mode(getattr(fn, method)))
            wrapped._sail_cpu = True
            setattr(fn, method, staticmethod(wrapped))
