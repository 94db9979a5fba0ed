"""The rank side of ``sail generate``: generate for the prompts of a job spec, a batch at a
time, and return the new tokens from the rank that picked them, with the time spent."""

from __future__ import annotations

import time

from megatron_sail.config.presets import tokens_per_tile
from megatron_sail.utils.progress import ProgressLine


def tiles_per_prompt(prompts, pixels, img_id: int, patch: int) -> list[int]:
    if pixels is None:
        return [0] * len(prompts)
    per_tile = tokens_per_tile(pixels.shape[-1], patch)  # square tiles
    return [sum(1 for t in p if t == img_id) // per_tile for p in prompts]


def worker_job(spec: dict, cfg, layout) -> dict:
    """Entry point of a conversion rank process (``convert.worker``) for ``sail generate``."""
    from pathlib import Path

    from megatron_sail.convert.worker import load_model

    return run_job(spec, cfg, layout, load_model(Path(spec["ckpt"]), cfg, layout))


def run_job(spec: dict, cfg, layout, chunks) -> dict:
    from safetensors.torch import load_file

    from megatron_sail.convert.megatron_side import is_logits_writer
    from megatron_sail.generation.generate import generate

    prompts = spec["prompts"]
    pixels = load_file(spec["pixels"])["pixel_values"] if spec.get("pixels") else None
    img_id = cfg.model.img_context_token_id
    tiles = tiles_per_prompt(prompts, pixels, img_id, cfg.model.vision.patch_size)
    batch, writer = spec["batch_size"], is_logits_writer()
    vocab = min(cfg.model.llm.vocab_size, spec.get("vocab_limit") or cfg.model.llm.vocab_size)
    stream = _stream(spec) if writer else None
    out: list[list[int]] = []
    group = spec.get("group", 1)
    progress = ProgressLine("generate", len(prompts) // group,
                            "records" if group > 1 else "prompts")
    start = time.perf_counter()
    tile0 = 0
    for first in range(0, len(prompts), batch):
        rows = prompts[first:first + batch]
        n = sum(tiles[first:first + batch])
        px = pixels[tile0:tile0 + n] if pixels is not None and n else None
        tile0 += n
        out += generate(chunks, layout, rows, pixel_values=px,
                        max_new_tokens=spec["max_new_tokens"], temperature=spec["temperature"],
                        top_p=spec["top_p"], top_k=spec["top_k"], seed=spec["seed"] + first,
                        eos_token_ids=tuple(spec["eos_token_ids"]), img_context_token_id=img_id,
                        vocab_size=vocab, pad_id=spec["pad_id"],
                        use_kv_cache=spec.get("kv_cache", True),
                        on_step=None if stream is None else lambda step: stream.add(step[0]))
        if writer and spec.get("progress"):
            tokens = sum(len(g) for g in out)
            progress.show(len(out) // group,
                          detail=f"{tokens} tokens, {tokens / progress.elapsed():.1f} tokens/s")
    if stream is not None:
        stream.finish()
    seconds = time.perf_counter() - start
    return {"generated": out, "seconds": seconds} if writer else {}


def _stream(spec: dict):
    """The one prompt's answer printed as it arrives (``sail generate --prompt``)."""
    if not spec.get("stream_tokenizer"):
        return None
    from megatron_sail.data.encoding.hf_tokenizer import load_tokenizer
    from megatron_sail.generation.streaming import TextStream

    if len(spec["prompts"]) != 1:
        raise ValueError("streaming prints one prompt's answer")
    return TextStream(load_tokenizer(spec["stream_tokenizer"]), spec["eos_token_ids"])
