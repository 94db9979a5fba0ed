"""The MoE router as routing metrics see it, and the router's GEMM helper without
Transformer Engine.

- ``te_general_gemm``: megatron-core 0.16.1 without TE leaves this name undefined in
  ``transformer.moe.moe_utils`` (reached by the fp32 router); 0.17+ define it as None. Only
  defined here where absent (feature detection), so the patch disappears on fixed releases.
- Router forward hooks: ``TopKRouter.forward`` returns ``(probs, routing_map)`` in
  0.16.1-0.19.x; ``routing_map`` checks that shape on every call instead of assuming it.
- Balancing-loss tracker: 0.16 deprecated ``get_moe_layer_wise_logging_tracker`` /
  ``clear_aux_losses_tracker`` (removal announced for 0.18, still present in 0.19) for
  ``moe_logging.get_moe_metrics_tracker()``; the new API is used wherever it exists.
- Balancing / z-loss gradient scale (``calculate_per_token_loss``): the router attaches
  ``loss x local tokens`` through ``MoEAuxLossAutoScaler.apply``; 0.19 multiplies it by the
  TP x CP group size as well (the routed tokens of a micro-batch span that group), 0.16.1-0.18.x
  do not. ``*_grad_spans_tp_cp`` read which one is installed from the methods' source.
- Expert gradients with EP=1 and expert TP != TP (e.g. whole experts under TP=2 + SP): each
  TP rank feeds the replicated experts its own sequence shard, so their gradients must be
  summed over the expert-data-parallel group, which spans those TP ranks. 0.19 marks such
  weights ``allreduce=False`` (reduced over expert DP); 0.16.1-0.18.x only do so for EP > 1,
  leaving them to the dense DP group, which does not span TP: every rank then updates its
  replica with its shard's gradient alone. ``mark_expert_dp_params`` adds the mark where the
  installed release leaves it out (it reads the flag after building: feature detection).
"""

from __future__ import annotations

import inspect

import torch

_SCALER_CALL = "MoEAuxLossAutoScaler.apply("


def check() -> None:
    from megatron.core.transformer.moe.router import TopKRouter

    if not callable(getattr(TopKRouter, "forward", None)):
        raise RuntimeError("megatron.core.transformer.moe.router.TopKRouter.forward is gone")
    if _metrics_tracker() is None:
        from megatron.core.transformer.moe import moe_utils

        for name in ("get_moe_layer_wise_logging_tracker", "clear_aux_losses_tracker"):
            if not hasattr(moe_utils, name):
                raise RuntimeError(f"neither moe_logging.get_moe_metrics_tracker nor "
                                   f"moe_utils.{name} exists")
    from megatron.core.transformer.moe.moe_layer import MoELayer

    if "experts" not in inspect.getsource(MoELayer.__init__):
        raise RuntimeError("megatron.core.transformer.moe.moe_layer.MoELayer no longer builds "
                           "its routed experts as .experts")
    for name in ("attach_and_log_load_balancing_loss", "apply_z_loss"):
        method = getattr(TopKRouter, name, None)
        if method is None or _SCALER_CALL not in inspect.getsource(method):
            raise RuntimeError(f"TopKRouter.{name} no longer attaches its loss through "
                               f"{_SCALER_CALL[:-1]}")


def _scaler_spans_tp_cp(method_name: str) -> bool:
    """Whether the router multiplies the loss it attaches by the TP x CP group size."""
    from megatron.core.transformer.moe.router import TopKRouter

    src = inspect.getsource(getattr(TopKRouter, method_name))
    calls = src.split(_SCALER_CALL)[1:]
    return any("tp_cp_group.size()" in _call_arguments(rest) for rest in calls)


def _call_arguments(rest: str) -> str:
    """The argument text of a call, given the source just after its opening parenthesis."""
    depth = 1
    for i, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return rest[:i]
    return rest


def balancing_loss_grad_spans_tp_cp() -> bool:
    return _scaler_spans_tp_cp("attach_and_log_load_balancing_loss")


def z_loss_grad_spans_tp_cp() -> bool:
    return _scaler_spans_tp_cp("apply_z_loss")


def mark_expert_dp_params(chunks, config) -> int:
    """Mark the routed experts' weights ``allreduce=False`` when EP=1 and expert TP != TP, as
    megatron-core 0.19 does; must run before DDP and the optimizer read the flag. Returns how
    many parameters were marked."""
    from megatron.core.transformer.moe.moe_layer import MoELayer

    if (config.expert_model_parallel_size > 1
            or (config.expert_tensor_parallel_size or config.tensor_model_parallel_size)
            == config.tensor_model_parallel_size):
        return 0
    marked = 0
    for chunk in chunks:
        for module in chunk.modules():
            if isinstance(module, MoELayer) and module.experts is not None:
                for param in module.experts.parameters():
                    if getattr(param, "allreduce", True):
                        param.allreduce = False
                        marked += 1
    return marked


def define_missing_te_gemm() -> None:
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


def routing_map(hook_outputs) -> torch.Tensor:
    """The [tokens, experts] boolean routing map from a ``TopKRouter`` forward hook's
    outputs."""
    if (not isinstance(hook_outputs, tuple) or len(hook_outputs) != 2
            or not isinstance(hook_outputs[1], torch.Tensor) or hook_outputs[1].dtype != torch.bool):
        kinds = [type(o).__name__ for o in hook_outputs] if isinstance(hook_outputs, tuple) \
            else type(hook_outputs).__name__
        raise RuntimeError(f"TopKRouter.forward returned {kinds}, not (probs, routing_map)")
    return hook_outputs[1]


def _metrics_tracker():
    try:
        from megatron.core.transformer.moe.moe_logging import get_moe_metrics_tracker
    except ImportError:
        return None
    return get_moe_metrics_tracker()


def layer_metrics() -> dict[str, torch.Tensor]:
    """Megatron's tracked per-layer balancing losses since the last clear: name -> values."""
    tracker = _metrics_tracker()
    if tracker is not None:
        return {name: entry.values for name, entry in tracker.metrics.items()}
    from megatron.core.transformer.moe.moe_utils import get_moe_layer_wise_logging_tracker

    return {name: entry["values"] for name, entry in get_moe_layer_wise_logging_tracker().items()}


def clear_layer_metrics() -> None:
    tracker = _metrics_tracker()
    if tracker is not None:
        tracker.clear()
        return
    from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker

    clear_aux_losses_tracker()
