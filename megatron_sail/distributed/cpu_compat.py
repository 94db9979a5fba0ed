"""Run Megatron-Core's real parallel code paths on CPU over gloo.

Megatron-Core assumes CUDA throughout: it creates tensors on ``torch.cuda.current_device()``,
keeps RNG state in CUDA generators, overlaps communication on CUDA streams and asserts
``param.type() == 'torch.cuda.FloatTensor'`` in the optimizer. On a CPU-only machine this
module maps each of those points to its CPU meaning, so TP/PP/EP/DP, the distributed
optimizer and distributed checkpointing execute unchanged. It is explicit and CPU-only:
``activate()`` refuses to run when CUDA is available.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

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


class _NoopStream:
    """Stand-in for torch.cuda.Stream/Event: everything runs in program order on CPU."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        # record_event() must return something that can synchronize(), query(), ...
        return lambda *args, **kwargs: _NoopStream()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _CpuRngState:
    """CUDA-RNG API of Megatron's tracker mapped to the CPU default generator."""

    @staticmethod
    def get(device="cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False) -> None:
        torch.set_rng_state(new_state)


def _no_compile(model=None, **kwargs):
    return model if model is not None else (lambda fn: fn)


def import_megatron() -> None:
    """On a CPU-only machine, import Megatron-Core with its ``torch.compile`` decorators as
    no-ops; elsewhere (or when it is already imported) do nothing. Rank entry points call it
    before importing anything that imports Megatron.

    Megatron wraps its fused kernels in ``torch.compile`` at import time, which imports
    TorchDynamo and Inductor: about 4.5 s of a 6 s import on a 2-core machine, paid by every
    rank process. On CPU nothing is compiled (every ``*_fusion`` flag of our specs is off,
    and the few decorated helpers that still run are plain tensor code), so they stay eager.
    """
    if "megatron.core" in sys.modules or torch.cuda.is_available():
        return
    compile_fn = torch.compile
    torch.compile = _no_compile
    try:
        import megatron.core  # noqa: F401
        import megatron.core.transformer.moe.moe_layer  # noqa: F401 - imported by MoE builds
    finally:
        torch.compile = compile_fn


def _patch_megatron_rng() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = _CpuRngState.get
    mrandom._set_cuda_rng_state = _CpuRngState.set
    # Activation recompute re-runs forward code inside autograd functions, where the
    # function mode of the calling thread is not in effect: re-enter it there.
    for name in ("CheckpointFunction", "CheckpointWithoutOutputFunction"):
        fn = getattr(mrandom, name, None)
        if fn is None or getattr(fn.forward, "_sail_cpu", False):
            continue
        for method in ("forward", "backward"):
            setattr(fn, method, staticmethod(_in_cpu_mode(getattr(fn, method))))


def _in_cpu_mode(method):
    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        with _CudaToCpuMode():
            return method(*args, **kwargs)

    wrapped._sail_cpu = True
    return wrapped


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    # Autograd backward runs outside the function mode, so the device that Megatron's
    # backward passes ask for must already be the CPU.
    cuda.current_device = lambda: torch.device("cpu")
    cuda.device_count = lambda: 1
    cuda.set_device = lambda *a, **k: None
    cuda.synchronize = lambda *a, **k: None
    cuda.Stream = _NoopStream
    cuda.Event = _NoopStream
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.current_stream = lambda *a, **k: _NoopStream()
    cuda.default_stream = lambda *a, **k: _NoopStream()
    cuda.manual_seed = torch.manual_seed
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    cuda.nvtx.range_push = lambda *a, **k: None
    cuda.nvtx.range_pop = lambda *a, **k: None
    cuda.max_memory_allocated = lambda *a, **k: 0
    cuda.memory_allocated = lambda *a, **k: 0


def _patch_megatron_moe() -> None:
    """megatron-core 0.16.1 without TE leaves ``te_general_gemm`` undefined in moe_utils
    (reached by the fp32 router) and passes split-size tensors, not lists, to
    ``all_to_all_single`` for CPU tensors."""
    try:
        from megatron.core.transformer.moe import moe_utils
    except ImportError:  # older/newer layouts
        return
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    try:
        from megatron.core.tensor_parallel import mappings
    except ImportError:
        return
    original = mappings._AllToAll.forward if hasattr(mappings, "_AllToAll") else None
    if original is None or getattr(original, "_sail_cpu", False):
        return

    @functools.wraps(original)
    def forward(ctx, group, input, output_split_sizes, input_split_sizes):
        if isinstance(output_split_sizes, torch.Tensor):
            output_split_sizes = output_split_sizes.tolist()
        if isinstance(input_split_sizes, torch.Tensor):
            input_split_sizes = input_split_sizes.tolist()
        return original(ctx, group, input, output_split_sizes, input_split_sizes)

    forward._sail_cpu = True
    mappings._AllToAll.forward = staticmethod(forward)


def _patch_megatron_torch_adam_reshard() -> None:
    """Without apex/TE (CPU), Megatron uses torch's Adam, whose per-parameter state has a
    ``step`` tensor. The fully reshardable loader copies every state key from the checkpoint,
    which stores ``step`` in the param groups instead, and fails on it; ``step`` is already
    restored from the param groups by then, so only the tensors in the checkpoint are copied."""
    from megatron.core.optimizer import distrib_optimizer as dopt

    if getattr(dopt, "HAVE_APEX_OR_TE", True):
        return
    original = dopt.DistributedOptimizer._set_main_param_and_optimizer_states
    if getattr(original, "_sail_cpu", False):
        return

    @functools.wraps(original)
    def set_states(self, model_param, tensors):
        if not self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            group_index, group_order = self.model_param_group_index_map[model_param]
            main_param = self.optimizer.param_groups[group_index]["params"][group_order]
            dst = {"param": main_param, **self.optimizer.state[main_param]}
            for key, value in tensors.items():
                dst[key].copy_(value)
            return
        original(self, model_param, tensors)

    set_states._sail_cpu = True
    dopt.DistributedOptimizer._set_main_param_and_optimizer_states = set_states

    # The loader also hands one shared ``step`` tensor to every parameter; torch's Adam
    # increments it in place per parameter, which would corrupt bias correction.
    load = dopt.DistributedOptimizer.load_state_dict

    @functools.wraps(load)
    def load_state_dict(self, state_dict):
        load(self, state_dict)
        for state in self.optimizer.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()

    dopt.DistributedOptimizer.load_state_dict = load_state_dict


def activate() -> None:
    """Enable the CPU layer for this process (idempotent)."""
    global _ACTIVE
    if _ACTIVE is not None:
        return
    if torch.cuda.is_available():
        raise RuntimeError("the CPU compatibility layer must not be used on a CUDA machine")
    _patch_torch_cuda()
    import_megatron()
    _patch_megatron_rng()
    _patch_megatron_moe()
    _patch_megatron_torch_adam_reshard()
    _ACTIVE = _CudaToCpuMode()
    _ACTIVE.__enter__()


def is_active() -> bool:
    return _ACTIVE is not None
