"""Autoregressive generation on the Megatron model at any TP/PP/EP, for ``sail generate`` and
RL rollouts.

The forward passes (with Megatron-Core's KV cache by default, or re-running the whole batch
every step, the reference) are in ``steps``. Each data-parallel replica of the model generates
its own rows (RL rollouts: different prompts per replica; ``sail generate``: the same batch on
every replica): its last pipeline stage (TP rank 0) picks the tokens and the replica's other
ranks receive them, so a replica's ranks take the same steps.

Expert parallelism spans the replicas (an MoE layer's all-to-all exchanges tokens between
them), so with EP > 1 every replica must run the same number of forward passes: the replicas
agree on the number of prefill passes (a replica with fewer distinct prompt lengths repeats its
last one, which rewrites the same cache entries) and decode until every replica is done (a
finished replica's steps are discarded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch

from megatron_sail.generation.sampling import SamplingParams, next_tokens


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _is_picker() -> bool:
    """The rank of its replica that holds the logits: last pipeline stage, TP rank 0."""
    from megatron.core import parallel_state

    if not _distributed():
        return True
    return (parallel_state.is_pipeline_last_stage(ignore_virtual=True)
            and parallel_state.get_tensor_model_parallel_rank() == 0)


def _share(tokens: Optional[torch.Tensor], batch: int) -> torch.Tensor:
    """The picking rank's tokens on every rank of its replica (a sum over the model-parallel
    group, where only that rank is non-zero)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    out = torch.zeros(batch, dtype=torch.int64) if tokens is None else tokens.to(torch.int64)
    if _distributed():
        dist.all_reduce(out, group=parallel_state.get_model_parallel_group())
    return out


def _most_over_replicas(value: int, layout) -> int:
    """The largest ``value`` of any replica, where expert parallelism makes them step
    together; ``value`` itself otherwise."""
    import torch.distributed as dist

    if not _distributed() or layout.ep == 1 or layout.dp == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


@torch.no_grad()
def generate(model_chunks: list, layout, prompts: Sequence[Sequence[int]], *,
             pixel_values: Optional[torch.Tensor] = None, max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
             eos_token_ids: Sequence[int] = (), img_context_token_id: int, vocab_size: int,
             pad_id: int = 0,
             on_step: Optional[Callable[[list[Optional[int]]], None]] = None,
             use_kv_cache: bool = True) -> list[list[int]]:
    """New tokens for each prompt, each list ending at its first end token (inclusive) or after
    ``max_new_tokens``.

    - ``model_chunks``/``layout``: the model at its TP/PP/EP, built and loaded in this process
      (``load_for_generation``, or the policy being trained); every rank of a data-parallel
      replica calls this with the same arguments (replicas may pass different prompts).
    - ``prompts``: token ids per row, ragged; ``<IMG_CONTEXT>`` runs already expanded.
    - ``pixel_values`` [tiles, 3, H, W] float32: the tiles of all image blocks in order (row 0's
      first, then row 1's ...), as ``sail forward`` takes them; ``img_context_token_id`` is
      the id those blocks use (checked against the tile count).
    - ``temperature`` 0 is greedy; otherwise sampling with ``top_k`` (0: all) and ``top_p``
      from a ``torch.Generator`` seeded with ``seed`` (the same seed gives the same tokens).
    - ``vocab_size``: the tokenizer's (the output layer may be padded beyond it);
      ``pad_id`` fills rows shorter than the longest (never attended to by real tokens).
    - ``on_step(tokens)``: after every step, the token each row received (None when that row
      had finished) - for streaming.
    - ``use_kv_cache``: False re-runs the whole batch every step (the reference the cached
      path is tested against; same tokens).
    """

    from megatron_sail.generation.steps import CachedSteps, FullSteps

    params = SamplingParams(temperature, top_p, top_k)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    images = sum(int(t == img_context_token_id) for p in prompts for t in p)
    if images and pixel_values is None:
        raise ValueError(f"the prompts hold {images} <IMG_CONTEXT> tokens "
                         f"(id {img_context_token_id}) but there are no pixel_values")
    eos = set(int(t) for t in eos_token_ids)
    generator = torch.Generator().manual_seed(seed)
    if use_kv_cache:
        steps = CachedSteps(model_chunks, layout, prompts, pixel_values, vocab_size, pad_id,
                            img_context_token_id, max_new_tokens)
    else:
        steps = FullSteps(model_chunks, layout, prompts, pixel_values, vocab_size, pad_id)
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    picker = _is_picker()
    scores = steps.first(_most_over_replicas(steps.prefill_passes, layout))
    for count in range(1, max_new_tokens + 1):
        picked = None
        if picker and scores is not None:
            if 0 <= img_context_token_id < scores.shape[-1]:
                # An image placeholder is never an answer, and fed back it would ask for tiles
                # that do not exist (sampling an untrained model at temperature 1 picks it).
                scores[:, img_context_token_id] = float("-inf")
            picked = next_tokens(scores, params, generator)
        tokens = _share(picked, len(prompts)).tolist()
        step: list[Optional[int]] = []
        for i, t in enumerate(tokens):
            if done[i]:
                step.append(None)
                continue
            new[i].append(t)
            step.append(t)
            done[i] = t in eos
        if on_step is not None:
            on_step(step)
        if count == max_new_tokens or _most_over_replicas(int(not all(done)), layout) == 0:
            break
        scores = steps.next(tokens, done)
    return new
