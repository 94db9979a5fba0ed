"""The start-up check of the stack: the megatron-core version, then every compatibility
module's ``check()``.

Each module of this package that touches a non-public Megatron-Core or torch API has a
``check() -> None`` raising RuntimeError when its target has changed shape (a missing
attribute, a changed signature). Registering one is one line in ``CHECKED_MODULES``; a test
fails when a module with a ``check()`` is missing from it.
"""

from __future__ import annotations

import importlib

from megatron_sail.compat.versions import CompatError, check_megatron_core_version

CHECKED_MODULES = (
    "megatron_sail.compat.torch_cuda",
    "megatron_sail.compat.eager_import",
    "megatron_sail.compat.megatron_rng",
    "megatron_sail.compat.moe_alltoall",
    "megatron_sail.compat.moe_router",
    "megatron_sail.compat.distrib_optimizer",
    "megatron_sail.compat.dist_ckpt_internals",
    "megatron_sail.compat.sharded_tensors",
    "megatron_sail.compat.deferred_fsync",
    "megatron_sail.compat.torch_dcp",
    "megatron_sail.compat.torch_dispatch",
    "megatron_sail.compat.shared_memory",
    "megatron_sail.compat.safe_checkpoint_load",
    "megatron_sail.compat.local_attention_cp",
    "megatron_sail.compat.inference_context",
    "megatron_sail.compat.dali_fork",
)

_checked = False


def check_stack() -> None:
    """Raise CompatError naming every problem: a megatron-core outside the supported range
    (checked first, alone: nothing else is meaningful then), or touch points whose targets
    changed. Once per process; Megatron is imported by the checks."""
    global _checked
    if _checked:
        return
    check_megatron_core_version()
    problems = []
    for name in CHECKED_MODULES:
        try:
            importlib.import_module(name).check()
        except (RuntimeError, ImportError, AttributeError, TypeError, ValueError) as exc:
            problems.append(f"{name.rsplit('.', 1)[-1]}: {exc}")
    if problems:
        raise CompatError("this Megatron-Core / torch differs from what megatron_sail was "
                          "written for:\n  " + "\n  ".join(problems))
    _checked = True
