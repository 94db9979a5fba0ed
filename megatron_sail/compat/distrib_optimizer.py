"""Megatron's fully reshardable distributed-optimizer load with torch's Adam (no apex/TE).

Without apex/TE (CPU) Megatron uses torch's Adam, whose per-parameter state has a ``step``
tensor. ``DistributedOptimizer._set_main_param_and_optimizer_states`` (private) copies every
state key from the checkpoint, which stores ``step`` in the param groups instead, and fails
on it; ``step`` is already restored from the param groups by then, so only the tensors in the
checkpoint are copied. ``load_state_dict`` also hands one shared ``step`` tensor to every
parameter, which torch's Adam increments in place per parameter (corrupting bias
correction): each gets its own copy. Written for megatron-core 0.16.1; 0.17-0.19.2 still
behave so. Only installed when ``HAVE_APEX_OR_TE`` is false.
"""

from __future__ import annotations

import functools
import inspect

import torch


def _module():
    from megatron.core.optimizer import distrib_optimizer

    return distrib_optimizer


def check() -> None:
    dopt = _module()
    cls = getattr(dopt, "DistributedOptimizer", None)
    if cls is None or not hasattr(dopt, "HAVE_APEX_OR_TE"):
        raise RuntimeError("megatron.core.optimizer.distrib_optimizer lacks "
                           "DistributedOptimizer or HAVE_APEX_OR_TE")
    for name, expected in (("_set_main_param_and_optimizer_states", ["self", "model_param", "tensors"]),
                           ("load_state_dict", ["self", "state_dict"])):
        method = getattr(cls, name, None)
        if method is None:
            raise RuntimeError(f"DistributedOptimizer.{name} is gone")
        params = list(inspect.signature(inspect.unwrap(method)).parameters)
        if params != expected:
            raise RuntimeError(f"DistributedOptimizer.{name}{params}: expected {expected}")


def patch_torch_adam_reshard() -> None:
    """Idempotent; nothing to do with apex or TE's optimizers."""
    dopt = _module()
    if dopt.HAVE_APEX_OR_TE:
        return
    cls = dopt.DistributedOptimizer
    original = cls._set_main_param_and_optimizer_states
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
    cls._set_main_param_and_optimizer_states = set_states
    load = cls.load_state_dict

    @functools.wraps(load)
    def load_state_dict(self, state_dict):
        load(self, state_dict)
        for state in self.optimizer.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = state["step"].clone()

    cls.load_state_dict = load_state_dict
