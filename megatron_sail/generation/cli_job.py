"""The rank side of ``sail generate``: generate for the prompts of a job spec and return the
new tokens from the rank that picked them, with the time spent."""

from __future__ import annotations

import time


def run_job(spec: dict, cfg, layout, chunks) -> dict:
    from safetensors.torch import load_file

    from megatron_sail.convert.megatron_side import is_logits_writer
    from megatron_sail.generation.generate import generate

    pixels = load_file(spec["pixels"])["pixel_values"] if spec.get("pixels") else None
    start = time.perf_counter()
    new = generate(chunks, layout, spec["prompts"], pixel_values=pixels,
                   max_new_tokens=spec["max_new_tokens"], temperature=spec["temperature"],
                   top_p=spec["top_p"], top_k=spec["top_k"], seed=spec["seed"],
                   eos_token_ids=tuple(spec["eos_token_ids"]),
                   img_context_token_id=cfg.model.img_context_token_id,
                   vocab_size=cfg.model.llm.vocab_size, pad_id=spec["pad_id"])
    seconds = time.perf_counter() - start
    return {"generated": new, "seconds": seconds} if is_logits_writer() else {}
