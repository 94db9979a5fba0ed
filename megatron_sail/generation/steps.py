"""The forward passes of generation, with or without a KV cache. Both give, for every row, the
logits of its next token (on the rank that picks tokens, None elsewhere); ``generate`` picks.

``FullSteps`` (the reference): every step re-runs each row's prompt and new tokens,
right-padded to the longest row. Attention is causal and positions are 0..n-1 per row, so
padding after a row's last token cannot change that token's logits.

``CachedSteps``: Megatron-Core's static KV cache (``compat.inference_context``). Ragged
prompts are *right-aligned* in the cache: with P the longest prompt, a row of length L holds
its prompt in slots P-L..P-1 and its n-th new token in slot P+n-1, so every row takes its new
token at the same slot and each decode step is one token per row. The slots before a row's
prompt are masked (and zeroed). Rotary attention depends only on the distance between a query
and a key, so a row shifted by P-L attends exactly as it does at positions 0..L-1 (up to
rounding). Megatron's classic alternative (decode from the shortest prompt on, forcing the
prompt tokens of longer rows one step at a time) would cost one forward pass per token of
the length difference, and would feed <IMG_CONTEXT> tokens - images - in decode steps; here
the prompts, and with them all images (the ViT runs once per prompt), go through the
prefill: one pass per distinct prompt length (rows are grouped by length; an RL group's
rollouts share one), each at its own slot offset.

Sequence parallelism splits every step's tokens over the TP ranks, so a step is padded to a
multiple of TP after its real tokens; the cache then advances by the real tokens only and the
next step overwrites the padding's slots before anything reads them (the mask hides them
from real tokens meanwhile).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch

from megatron_sail.compat import inference_context as kv


class FullSteps:
    def __init__(self, chunks, layout, prompts: Sequence[Sequence[int]],
                 pixel_values: Optional[torch.Tensor], vocab_size: int, pad_id: int):
        self.chunks, self.layout, self.pixel_values = chunks, layout, pixel_values
        self.vocab_size, self.pad_id = vocab_size, pad_id
        self.rows = [list(map(int, p)) for p in prompts]

    prefill_passes = 1

    def first(self, passes: int = 1) -> Optional[torch.Tensor]:
        """The prompts' pass, run ``passes`` times (expert-parallel replicas step together;
        the same pass again gives the same logits)."""
        for _ in range(passes - 1):
            self._forward()
        return self._forward()

    def next(self, tokens: list[int], done: list[bool]) -> Optional[torch.Tensor]:
        for row, token, finished in zip(self.rows, tokens, done):
            if not finished:   # a finished row stays as it is: the batch stays narrow
                row.append(token)
        return self._forward()

    def _forward(self) -> Optional[torch.Tensor]:
        from megatron_sail.convert.megatron_side import forward_logits

        width = max(len(r) for r in self.rows)
        ids = torch.full((len(self.rows), width), self.pad_id, dtype=torch.int64)
        for i, r in enumerate(self.rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.int64)
        logits = forward_logits(self.chunks, self.layout, ids, self.pixel_values,
                                self.vocab_size, self.pad_id)
        if logits is None:
            return None
        last = torch.tensor([len(r) - 1 for r in self.rows])
        return logits[torch.arange(len(self.rows)), last]


def tiles_of_rows(prompts: Sequence[Sequence[int]], pixel_values: Optional[torch.Tensor],
                  img_id: int) -> list[Optional[torch.Tensor]]:
    """Each row's tiles (None for none), from the tiles of all rows in row order: a tile is
    ``<IMG_CONTEXT> tokens / tiles`` tokens, the same for every tile of a batch."""
    counts = [sum(1 for t in p if t == img_id) for p in prompts]
    if pixel_values is None or not sum(counts):
        return [None] * len(prompts)
    total = sum(counts)
    tiles = pixel_values.shape[0]
    if tiles == 0 or total % tiles or any(c % (total // tiles) for c in counts):
        raise ValueError(f"the prompts' {total} <IMG_CONTEXT> tokens (id {img_id}) do not "
                         f"split evenly over {tiles} tiles")
    per_tile = total // tiles
    out, first = [], 0
    for c in counts:
        n = c // per_tile
        out.append(pixel_values[first:first + n] if n else None)
        first += n
    return out


def _check_masks_honoured(chunks) -> None:
    """Ragged or sequence-parallel batches rely on explicit attention masks in passes where
    Megatron's cache sets the mask type to ``no_mask``; ``LocalCoreAttention`` applies a mask
    it is given whatever the type, Transformer Engine's attention ignores it then."""
    from megatron_sail.models.attention import LocalCoreAttention

    for chunk in chunks:
        for name, module in chunk.named_modules():
            if name.startswith("language_model.") and name.endswith("core_attention") \
                    and not isinstance(module, LocalCoreAttention):
                raise ValueError(f"the KV cache on ragged or sequence-parallel batches needs "
                                 f"the local attention (model.transformer_impl=local), not "
                                 f"{type(module).__name__}; use use_kv_cache=False")


class CachedSteps:
    def __init__(self, chunks, layout, prompts: Sequence[Sequence[int]],
                 pixel_values: Optional[torch.Tensor], vocab_size: int, pad_id: int,
                 img_id: int, max_new_tokens: int):
        self.chunks, self.layout = chunks, layout
        self.vocab_size, self.pad_id = vocab_size, pad_id
        self.prompts = [list(map(int, p)) for p in prompts]
        self.tiles = tiles_of_rows(self.prompts, pixel_values, img_id)
        # cache row c holds prompt order[c]: equal lengths are neighbours (one prefill each)
        self.order = sorted(range(len(prompts)), key=lambda i: len(self.prompts[i]))
        self.longest = max(len(p) for p in self.prompts)
        self.step_width = layout.tp if layout.sequence_parallel else 1
        self.ragged = any(len(p) < self.longest for p in self.prompts)
        self.slot = self.longest   # where the next decode step's tokens go
        if self.ragged or self.step_width > 1:
            _check_masks_honoured(chunks)
        self.context = kv.new_context(len(prompts), self.longest + max_new_tokens
                                      + self.step_width)

    def _forward(self, ids: torch.Tensor, pixels, first_slot: int, first_row: int,
                 mask: Optional[torch.Tensor], last: int) -> Optional[torch.Tensor]:
        """Logits of position ``last`` of each row of this step."""
        from megatron_sail.convert.megatron_side import forward_cached

        # Only the last position is needed; Megatron can keep just that one unless the step is
        # padded (the real last token is not last) or split over TP ranks (each holds a part).
        only_last = not self.layout.sequence_parallel and last == ids.shape[1] - 1
        kv.place(self.context, first_slot, first_row, only_last)
        logits = forward_cached(self.chunks, self.layout, ids, pixels, self.context,
                                first_slot, mask, self.vocab_size)
        if logits is None:
            return None
        return logits[:, -1] if only_last else logits[:, last]

    def _padded(self, ids: torch.Tensor) -> torch.Tensor:
        pad = (-ids.shape[1]) % self.step_width
        return torch.nn.functional.pad(ids, (0, pad), value=self.pad_id)

    @property
    def prefill_passes(self) -> int:
        return len(self._groups())

    def _groups(self) -> list[tuple[int, int]]:
        """``(start, end)`` in cache-row order of each group of equal-length prompts, the
        longest first."""
        groups, end = [], len(self.order)
        while end > 0:
            length = len(self.prompts[self.order[end - 1]])
            start = end
            while start > 0 and len(self.prompts[self.order[start - 1]]) == length:
                start -= 1
            groups.append((start, end))
            end = start
        return groups

    def first(self, passes: int = 0) -> Optional[torch.Tensor]:
        """Prefill each group of equal-length prompts at its offset, longest first: that
        pass (offset 0, unmasked causal attention) makes Megatron allocate the cache
        uninitialised, and the other rows are zeroed before any masked pass reads them (a
        masked key is weighted 0, but 0 x NaN is NaN). ``passes`` beyond the groups repeat
        the last group's pass (expert-parallel replicas step together): it writes the same
        keys and values to the same cache entries again."""
        scores: list[Optional[torch.Tensor]] = [None] * len(self.prompts)
        groups = self._groups()
        groups += [groups[-1]] * max(0, passes - len(groups))
        for start, end in groups:
            length = len(self.prompts[self.order[end - 1]])
            rows = self.order[start:end]
            ids = self._padded(torch.tensor([self.prompts[i] for i in rows], dtype=torch.int64))
            tiles = [self.tiles[i] for i in rows if self.tiles[i] is not None]
            offset = self.longest - length
            mask = self._prefill_mask(len(rows), ids.shape[1], offset) if offset else None
            logits = self._forward(ids, torch.cat(tiles) if tiles else None, offset, start,
                                   mask, length - 1)
            if not offset:
                for buffer in kv.kv_buffers(self.context):
                    buffer[:, :start] = 0
            if logits is not None:
                for i, row in enumerate(rows):
                    scores[row] = logits[i]
        return None if scores[0] is None else torch.stack(scores)

    @staticmethod
    def _prefill_mask(rows: int, width: int, offset: int) -> torch.Tensor:
        """[rows, 1, width, offset + width], True where masked: query j (slot offset + j)
        sees slots offset..offset + j (causal within the prompt, nothing before it)."""
        keys = torch.arange(offset + width)
        queries = torch.arange(width).unsqueeze(1) + offset
        masked = (keys < offset) | (keys > queries)
        return masked.expand(rows, 1, width, offset + width)

    def next(self, tokens: list[int], done: list[bool]) -> Optional[torch.Tensor]:
        """One new token per row (a finished row's last one again: its result is unused)."""
        batch = len(self.prompts)
        ids = torch.full((batch, self.step_width), self.pad_id, dtype=torch.int64)
        ids[:, 0] = torch.tensor([tokens[i] for i in self.order], dtype=torch.int64)
        mask = None
        if self.ragged or self.step_width > 1:
            keys = torch.arange(self.slot + self.step_width)
            starts = torch.tensor([self.longest - len(self.prompts[i]) for i in self.order])
            queries = torch.arange(self.step_width) + self.slot
            masked = ((keys.view(1, 1, -1) < starts.view(-1, 1, 1))
                      | (keys.view(1, 1, -1) > queries.view(1, -1, 1)))
            mask = masked.unsqueeze(1)   # [batch, 1, step, keys]
        logits = self._forward(ids, None, self.slot, 0, mask, 0)
        self.slot += 1
        if logits is None:
            return None
        scores = torch.empty_like(logits)
        scores[torch.tensor(self.order)] = logits
        return scores
