"""Run Megatron-Core's real parallel code paths on CPU over gloo.

Megatron-Core assumes CUDA throughout: it creates tensors on ``torch.cuda.current_device()``,
keeps RNG state in CUDA generators, overlaps communication on CUDA streams and asserts
``param.type() == 'torch.cuda.FloatTensor'`` in the optimizer. On a CPU-only machine this
module maps each of those points to its CPU meaning, so TP/PP/EP/DP, the distributed
optimizer and distributed checkpointing execute unchanged. It is explicit and CPU-only:
``activate()`` refuses to run when CUDA is available. The function mode here uses public torch
API only; each patch of a Megatron or torch internal lives in ``megatron_sail.compat``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from megatron_sail.compat import distrib_optimizer, megatron_rng, moe_alltoall, moe_router, torch_cuda
from megatron_sail.compat.eager_import import import_megatron  # noqa: F401 - entry points' import
from megatron_sail.compat.startup import check_stack

_ACTIVE: "_CudaToCpuMode | None" = None

# Tensor.type() strings as the optimizer expects them for CUDA tensors.
_CPU_TO_CUDA_TYPE = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, int):  # torch.cuda.current_device() results
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA ``device=`` arguments to CPU and makes moves to CUDA no-ops."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):  # e.g. the CP rotary slice's index tensor; no host to pin for
            kwargs["pin_memory"] = False
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CPU_TO_CUDA_TYPE.get(name, name)
        if func is torch.Tensor.record_stream:
            return None
        if func in (torch.Tensor.to,) and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        if func in (torch.Tensor.pin_memory,):
            return args[0]
        return func(*args, **kwargs)


def _in_cpu_mode(method):
    def wrapped(*args, **kwargs):
        with _CudaToCpuMode():
            return method(*args, **kwargs)

    return wrapped


def activate() -> None:
    """Enable the CPU layer for this process (idempotent)."""
    global _ACTIVE
    if _ACTIVE is not None:
        return
    if torch.cuda.is_available():
        raise RuntimeError("the CPU compatibility layer must not be used on a CUDA machine")
    torch_cuda.install_cpu_stand_ins()
    import_megatron()
    check_stack()
    megatron_rng.patch_for_cpu(_in_cpu_mode)
    moe_router.define_missing_te_gemm()
    moe_alltoall.patch_split_sizes()
    distrib_optimizer.patch_torch_adam_reshard()
    _ACTIVE = _CudaToCpuMode()
    _ACTIVE.__enter__()


def is_active() -> bool:
    return _ACTIVE is not None
