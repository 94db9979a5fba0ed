"""Import Megatron-Core on a CPU-only machine with its ``torch.compile`` decorators as no-ops.

Megatron wraps its fused kernels in ``torch.compile`` at import time, which imports
TorchDynamo and Inductor: about 4.5 s of a 6 s import on a 2-core machine, paid by every
rank process. On CPU nothing is compiled: the decorated kernels (the SwiGLU and cross-entropy
fusions of performance.*, a few helpers) are plain tensor code, so they stay eager.
Written for torch 2.13 / megatron-core 0.16.1; holds for torch 2.9-2.14, megatron-core
0.17-0.19 (the decorators are applied at import, to whatever ``torch.compile`` is then).
"""

from __future__ import annotations

import inspect
import sys

import torch


def _no_compile(model=None, **kwargs):
    return model if model is not None else (lambda fn: fn)


def check() -> None:
    params = inspect.signature(torch.compile).parameters
    if "model" not in params:
        raise RuntimeError(f"torch {torch.__version__}: torch.compile has no 'model' argument "
                           f"(signature {list(params)})")


def import_megatron() -> None:
    """On a CPU-only machine import Megatron-Core eagerly; elsewhere (or when it is already
    imported) do nothing. Rank entry points call it before importing anything that imports
    Megatron."""
    if "megatron.core" in sys.modules or torch.cuda.is_available():
        return
    compile_fn = torch.compile
    torch.compile = _no_compile
    try:
        import megatron.core  # noqa: F401
        import megatron.core.transformer.moe.moe_layer  # noqa: F401 - imported by MoE builds
    finally:
        torch.compile = compile_fn


def preload_dynamo() -> None:
    """Model builds on the meta device reach ``torch._dynamo`` (private; torch imports it
    lazily, about 1 s on a 2-core machine): a process that builds models later can import
    it ahead of time."""
    import torch._dynamo  # noqa: F401
