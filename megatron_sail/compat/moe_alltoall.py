"""Split sizes as lists for ``_AllToAll`` on CPU tensors.

Megatron-Core's alltoall token dispatcher converts its split-size tensors to host arrays only
when they are CUDA tensors (``maybe_move_tensor_to_cpu``); on CPU it hands
``tensor_parallel.mappings._AllToAll`` (private) tensors, which ``all_to_all_single`` rejects.
The wrapper converts the two split-size arguments and passes every other argument through
unchanged: 0.16.1-0.17.x take ``(ctx, group, input, output_split_sizes, input_split_sizes)``,
0.18.0 added ``use_nccl_stream`` after them (0.19.x too). Still needed in 0.19.2.
"""

from __future__ import annotations

import functools
import inspect

import torch

_LEADING = ["ctx", "group", "input", "output_split_sizes", "input_split_sizes"]


def _target():
    from megatron.core.tensor_parallel import mappings

    if not hasattr(mappings, "_AllToAll"):
        raise RuntimeError("megatron.core.tensor_parallel.mappings._AllToAll is gone")
    return mappings._AllToAll


def check() -> None:
    forward = _target().forward
    forward = getattr(forward, "__wrapped__", forward)
    params = list(inspect.signature(forward).parameters)
    if params[: len(_LEADING)] != _LEADING:
        raise RuntimeError(f"_AllToAll.forward{params}: expected the arguments to start with "
                           f"{_LEADING}")


def _as_list(sizes):
    return sizes.tolist() if isinstance(sizes, torch.Tensor) else sizes


def patch_split_sizes() -> None:
    """Idempotent."""
    all_to_all = _target()
    original = all_to_all.forward
    if getattr(original, "_sail_cpu", False):
        return

    @functools.wraps(original)
    def forward(ctx, group, input, output_split_sizes, input_split_sizes, *rest, **kwargs):
        return original(ctx, group, input, _as_list(output_split_sizes),
                        _as_list(input_split_sizes), *rest, **kwargs)

    forward._sail_cpu = True
    all_to_all.forward = staticmethod(forward)
