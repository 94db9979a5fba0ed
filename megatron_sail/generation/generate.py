"""Autoregressive generation on the Megatron model at any TP/PP, for ``sail generate`` and
RL rollouts.

Every step re-runs the whole batch (no KV cache): each row is its prompt plus the tokens
generated so far, right-padded to the longest row. Attention is causal and positions are
0..n-1 per row, so padding after a row's last token cannot change that token's logits - the
same argument ``forward_logits`` uses for its sequence-parallel padding. The last pipeline
stage (TP rank 0) picks the tokens and every rank receives them, so all ranks take the same
steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch

from megatron_sail.generation.sampling import SamplingParams, next_tokens


def _share(tokens: Optional[torch.Tensor], batch: int) -> torch.Tensor:
    """The picking rank's tokens on every rank of its model replica (a sum where only that
    rank is non-zero); data-parallel replicas (RL rollouts) each generate their own rows."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    out = torch.zeros(batch, dtype=torch.int64) if tokens is None else tokens.to(torch.int64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out, group=parallel_state.get_model_parallel_group())
    return out


@torch.no_grad()
def generate(model_chunks: list, layout, prompts: Sequence[Sequence[int]], *,
             pixel_values: Optional[torch.Tensor] = None, max_new_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
             eos_token_ids: Sequence[int] = (), img_context_token_id: int, vocab_size: int,
             pad_id: int = 0,
             on_step: Optional[Callable[[list[Optional[int]]], None]] = None) -> list[list[int]]:
    """New tokens for each prompt, each list ending at its first end token (inclusive) or after
    ``max_new_tokens``.

    - ``model_chunks``/``layout``: the model at its TP/PP, built and loaded in this process
      (``load_for_generation``); every rank of the model calls this with the same arguments.
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
    """

    from megatron_sail.convert.megatron_side import forward_logits, is_logits_writer

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
    rows = [list(map(int, p)) for p in prompts]
    new: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    picker = is_logits_writer()
    for _ in range(max_new_tokens):
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.int64)
        logits = forward_logits(model_chunks, layout, ids, pixel_values, vocab_size, pad_id)
        picked = None
        if picker and logits is not None:
            last = torch.tensor([len(r) - 1 for r in rows])
            scores = logits[torch.arange(len(rows)), last]
            if 0 <= img_context_token_id < scores.shape[-1]:
                # An image placeholder is never an answer, and fed back it would ask for tiles
                # that do not exist (sampling an untrained model at temperature 1 picks it).
                scores[:, img_context_token_id] = float("-inf")
            picked = next_tokens(scores, params, generator)
        tokens = _share(picked, len(rows)).tolist()
        step: list[Optional[int]] = []
        for i, t in enumerate(tokens):
            if done[i]:
                step.append(None)
                continue
            rows[i].append(t)
            new[i].append(t)
            step.append(t)
            done[i] = t in eos
        if on_step is not None:
            on_step(step)
        if all(done):
            break
    return new
