"""The prompts of an RL run: ``rl.data`` (training-format records, each with a reference answer)
encoded once, as ``sail generate`` encodes them, and which of them each episode asks.

Which prompts an episode asks is a pure function of (seed, episode, refill round): resuming at
episode k draws exactly what the uninterrupted run drew, with no sampler state to store. Within
a draw the records are a fresh permutation (repeated when more are asked than exist).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from megatron_sail.errors import UserError


class RLDataError(UserError):
    pass


@dataclass(frozen=True)
class RLPrompts:
    records: list[dict]
    prompts: list[list[int]]                     # model input ids up to the assistant header
    pixels: list[Optional[torch.Tensor]]         # each prompt's tiles [t, 3, H, W], or None
    references: list[str]
    questions: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    def pixels_of(self, indices: list[int]) -> Optional[torch.Tensor]:
        """The tiles of these prompts in order (None when none has an image)."""
        tiles = [self.pixels[i] for i in indices if self.pixels[i] is not None]
        return torch.cat(tiles) if tiles else None


def load_rl_prompts(cfg, tokenizer) -> RLPrompts:
    """Encode ``cfg.rl.data``; a record without a reference answer is skipped (and said)."""
    import os

    from megatron_sail.data.records.record import RecordError
    from megatron_sail.generation.cli import chat_encoder, read_prompt_file
    from megatron_sail.generation.cli_job import tiles_per_prompt
    from megatron_sail.rl.filter_cli import question_of, reference_of

    path = cfg.rl.data
    if not path:
        raise RLDataError("rl.data is not set: RL needs prompt records with reference answers "
                          "(a JSONL file in the training format)")
    if not os.path.isfile(path):
        raise RLDataError(f"rl.data={path}: no such file")

    def has_reference(obj: dict, line: int) -> None:
        if reference_of(obj) is None:
            raise RecordError(path, line, "no reference answer (a \"reference\" or \"answer\" "
                                          "field, or a \\boxed{} in the last gpt turn)")

    batch = read_prompt_file(path, chat_encoder(cfg, tokenizer), cfg.rl.thinking, "rl",
                             accept=has_reference)
    tiles = tiles_per_prompt(batch.prompts, batch.pixel_values, cfg.model.img_context_token_id,
                             cfg.model.vision.patch_size)
    pixels, at = [], 0
    for n in tiles:
        pixels.append(batch.pixel_values[at:at + n] if n else None)
        at += n
    longest = max(len(p) for p in batch.prompts)
    if longest + cfg.rl.max_new_tokens > cfg.rl.max_context:
        raise RLDataError(f"rl.data={path}: the longest prompt takes {longest} tokens; with "
                          f"rl.max_new_tokens={cfg.rl.max_new_tokens} that exceeds "
                          f"rl.max_context={cfg.rl.max_context}")
    if cfg.rl.max_context > cfg.model.llm.max_position_embeddings:
        raise RLDataError(f"rl.max_context={cfg.rl.max_context} exceeds the model's "
                          f"{cfg.model.llm.max_position_embeddings} positions")
    return RLPrompts(batch.records, batch.prompts, pixels,
                     [reference_of(r) for r in batch.records],
                     [question_of(r) for r in batch.records])


def draw_prompts(seed: int, episode: int, round_: int, count: int, num_prompts: int) -> list[int]:
    """``count`` prompt indices for one generation round of an episode."""
    rng = np.random.default_rng([seed, episode, round_])
    out: list[int] = []
    while len(out) < count:
        out.extend(int(i) for i in rng.permutation(num_prompts))
    return out[:count]
