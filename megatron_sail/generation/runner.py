"""The parent side of ``sail generate``: checks the request against the checkpoint and runs
the generation in ``tp * pp`` rank processes (``sail forward``'s machinery)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from megatron_sail.config import config_to_dict
from megatron_sail.convert.errors import ConversionError
from megatron_sail.convert.exporter import open_checkpoint
from megatron_sail.convert.forward import check_inputs
from megatron_sail.convert.hf_config import RELEASE_IMG_CONTEXT_ID
from megatron_sail.generation.loading import generation_config
from megatron_sail.convert.procs import run_ranks
from megatron_sail.generation.sampling import SamplingParams


@dataclass
class GenerateOptions:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    eos_token_ids: tuple[int, ...] = ()  # empty: the tokenizer's end token (<|im_end|>)
    img_context_token_id: int = RELEASE_IMG_CONTEXT_ID
    tp: int = 1
    pp: int = 1
    ep: int = 1  # expert parallelism (MoE): tp * pp * ep rank processes
    kv_cache: bool = True  # False: re-run the whole batch every step (the reference path)
    dtype: str = "fp32"
    vocab_limit: Optional[int] = None  # the tokenizer's vocabulary, when smaller than the model's
    batch_size: int = 8  # prompts generated together (a sampled batch's seed is seed + first row)
    progress: bool = False
    group: int = 1  # consecutive prompts that are one record's rollouts (progress in records)
    stream_tokenizer: Optional[str] = None  # one prompt: its answer printed as it arrives


@dataclass
class Generation:
    generated: list[list[int]]
    seconds: float
    tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = sum(len(g) for g in self.generated)


def open_model(ckpt: str | Path):
    """(checkpoint directory, its config) - unknown or broken checkpoints raise a user error."""
    ckpt_dir, _, cfg, _ = open_checkpoint(ckpt)
    return ckpt_dir, cfg


def run_generation(ckpt: str | Path, prompts: list[list[int]],
                   pixel_values: Optional[torch.Tensor], opts: GenerateOptions) -> Generation:
    if not prompts:
        raise ConversionError("no prompts")
    if opts.batch_size < 1:
        raise ConversionError(f"--batch-size must be >= 1, got {opts.batch_size}")
    if opts.max_new_tokens < 1:
        raise ConversionError(f"--max-new-tokens must be >= 1, got {opts.max_new_tokens}")
    if not opts.eos_token_ids:
        raise ConversionError("no end token: give --eos-token-id ID (no tokenizer to take it from)")
    try:
        SamplingParams(opts.temperature, opts.top_p, opts.top_k)
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    ckpt_dir, cfg = open_model(ckpt)
    longest = max(len(p) for p in prompts)
    limit = cfg.model.llm.max_position_embeddings
    if longest + opts.max_new_tokens > limit:
        raise ConversionError(f"the prompt takes {longest} tokens; with --max-new-tokens "
                              f"{opts.max_new_tokens} that exceeds the model's context of {limit}")
    # The same checks as `sail forward` (vocabulary, image tokens vs tiles), on a padded batch.
    ids = torch.zeros(len(prompts), longest, dtype=torch.int64)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = torch.tensor(p, dtype=torch.int64)
    inputs = {"input_ids": ids}
    if pixel_values is not None:
        inputs["pixel_values"] = pixel_values
    check_inputs(inputs, cfg, opts.img_context_token_id)
    cfg.model.img_context_token_id = opts.img_context_token_id
    cfg = generation_config(cfg, opts.tp, opts.pp, opts.ep, opts.dtype,
                            longest + opts.max_new_tokens)
    with tempfile.TemporaryDirectory(prefix="sail-generate-") as tmp:
        pixels = None
        if pixel_values is not None:
            pixels = os.path.join(tmp, "pixels.safetensors")
            save_file({"pixel_values": pixel_values.contiguous()}, pixels)
        pad = 0 if opts.img_context_token_id != 0 else 1
        spec = {"config": config_to_dict(cfg), "ckpt": str(ckpt_dir), "prompts": prompts,
                "pixels": pixels, "max_new_tokens": opts.max_new_tokens,
                "temperature": opts.temperature, "top_p": opts.top_p, "top_k": opts.top_k,
                "seed": opts.seed, "eos_token_ids": list(opts.eos_token_ids), "pad_id": pad,
                "batch_size": opts.batch_size, "vocab_limit": opts.vocab_limit, "progress": opts.progress,
                "group": opts.group, "kv_cache": opts.kv_cache,
                "stream_tokenizer": opts.stream_tokenizer}
        results = run_ranks("megatron_sail.generation.cli_job:worker_job", spec, opts.tp * opts.pp * opts.ep)
    picked = next(r for r in results if "generated" in r)
    return Generation(picked["generated"], picked["seconds"])


def to_padded(generated: list[list[int]]) -> torch.Tensor:
    """[B, N] int64, -1 after each row's end (N: the longest row)."""
    width = max((len(g) for g in generated), default=0)
    out = torch.full((len(generated), width), -1, dtype=torch.int64)
    for i, g in enumerate(generated):
        out[i, :len(g)] = torch.tensor(g, dtype=torch.int64)
    return out
