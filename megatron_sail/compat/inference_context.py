"""Megatron-Core's static-batching KV cache, as generation drives it.

Written for megatron-core 0.16.1-0.19.x, where these held unchanged:

- ``StaticInferenceContext(max_batch_size, max_sequence_length)`` (module
  ``inference.contexts.static_context``; the package ``__init__`` warns about other imports);
- a forward with the context writes this step's keys/values at
  ``[sequence_len_offset : +s, batch_size_offset : +b]`` of per-layer buffers
  ``key_value_memory_dict[layer] = (keys, values)``, each ``[max_seq, max_batch, groups, dim]``,
  and attends to slots ``[: sequence_len_offset + s]``; rotary positions are the slots.
  Past the first slot (``sequence_len_offset > 0``) attention drops its causal mask type and
  applies the ``attention_mask`` it is given (True where masked);
- ``materialize_only_last_token_logits`` makes the output layer see the last position only:
  an attribute of the context in 0.16.1, of its ``config`` (an ``InferenceConfig``) from 0.17
  on (found by feature detection in ``_flag_owner``; sources of 0.17.1, 0.18.0 and 0.19.2 read
  for the rest of this list);
- ``GPTModel.forward(..., inference_context=, runtime_gather_output=)``: in inference mode the
  model asserts that logits are gathered over TP;
- inference mode: a context outside training mode up to 0.17; from 0.18 on the model also asks
  the process-wide ``inference.utils.InferenceMode`` flag (keeping only the last position's
  logits, among others), which Megatron's engines set around their forward passes -
  ``active()`` does the same where it exists.

The offsets are set directly rather than through ``increment_*`` so that a step padded for
sequence parallelism can advance the cache by its real tokens only.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import nullcontext

import torch


def check() -> None:
    from megatron.core.inference.contexts.static_context import StaticInferenceContext
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.attention import Attention

    ctx = StaticInferenceContext(2, 4)
    for name in ("sequence_len_offset", "batch_size_offset", "key_value_memory_dict"):
        if not hasattr(ctx, name):
            raise RuntimeError(f"StaticInferenceContext has no attribute {name!r}")
    _flag_owner(ctx)
    params = inspect.signature(GPTModel.forward).parameters
    for name in ("inference_context", "runtime_gather_output"):
        if name not in params:
            raise RuntimeError(f"GPTModel.forward takes no {name!r} argument")
    try:
        from megatron.core.inference.utils import InferenceMode
    except ImportError:
        InferenceMode = None
    if InferenceMode is not None and not callable(getattr(InferenceMode, "active", None)):
        raise RuntimeError("megatron.core.inference.utils.InferenceMode has no active()")
    source = inspect.getsource(Attention._adjust_key_value_for_inference)
    for needle in ("key_value_memory_dict", "sequence_len_offset", "batch_size_offset",
                   "AttnMaskType.no_mask"):
        if needle not in source:
            raise RuntimeError(f"Attention._adjust_key_value_for_inference no longer uses "
                               f"{needle}")


def new_context(max_batch: int, max_length: int):
    from megatron.core.inference.contexts.static_context import StaticInferenceContext

    return StaticInferenceContext(max_batch, max_length)


def place(ctx, first_slot: int, first_row: int, only_last_logits: bool) -> None:
    """Where the next forward writes its keys/values, and whether it materialises only the
    last position's logits."""
    ctx.sequence_len_offset = first_slot
    ctx.batch_size_offset = first_row
    _flag_owner(ctx).materialize_only_last_token_logits = only_last_logits


def _flag_owner(ctx):
    """What holds ``materialize_only_last_token_logits``: the context's config (0.17+) or the
    context itself (0.16.1)."""
    for owner in (getattr(ctx, "config", None), ctx):
        if owner is not None and hasattr(owner, "materialize_only_last_token_logits"):
            return owner
    raise RuntimeError("StaticInferenceContext has no materialize_only_last_token_logits "
                       "(on itself or its config)")


def active():
    """Megatron's inference-mode flag set for a forward pass, where the release has one."""
    try:
        from megatron.core.inference.utils import InferenceMode
    except ImportError:   # before 0.18 the context alone marks inference
        return nullcontext()
    return InferenceMode.active()


def kv_buffers(ctx) -> Iterator[torch.Tensor]:
    """Every key and value buffer of this rank's layers, [max_seq, max_batch, groups, dim]."""
    for keys, values in ctx.key_value_memory_dict.values():
        yield keys
        yield values
