"""Generation throughput with and without the KV cache, on the tiny model, in this process.

    python benchmarks/generation_throughput.py [--repeat 2] [--config examples/tiny/pretrain.yaml]

Builds the config's model with random weights on one rank (CPU, local layers) and times
``generate`` greedy, to the full ``max_new_tokens`` (no end token), in two settings: one
short prompt, and a ragged batch of longer prompts. Prints new tokens/s of each path and the
ratio (cached / no cache). Both paths give the same tokens (checked here too); the fastest of
``--repeat`` interleaved runs counts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = (  # name, prompt lengths, new tokens
    ("1 prompt x 16 tokens, 64 new", [16], 64),
    ("8 ragged prompts x 96-160 tokens, 32 new", [96, 104, 112, 120, 128, 144, 152, 160], 32),
)


def build(config: str):
    from megatron_sail.config import load_config
    from megatron_sail.config.validation import resolve_layout
    from megatron_sail.distributed.cpu_compat import import_megatron
    from megatron_sail.distributed.runtime import detect_env, init_model_parallel, init_process_group
    from megatron_sail.models.builder import build_model

    import_megatron()
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_ID"):
        os.environ.pop(key, None)
    cfg = load_config(config, [])
    layout = resolve_layout(cfg, 1)
    init_process_group(detect_env())
    init_model_parallel(layout, seed=1234)
    chunks = build_model(cfg, layout, -1).chunks   # text prompts: no image placeholder
    for chunk in chunks:
        chunk.eval()
    return cfg, layout, chunks


def timed(chunks, layout, prompts, new: int, vocab: int, cache: bool):
    from megatron_sail.generation import generate

    start = time.perf_counter()
    out = generate(chunks, layout, prompts, max_new_tokens=new, img_context_token_id=-1,
                   vocab_size=vocab, use_kv_cache=cache)
    return time.perf_counter() - start, out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.path.join(REPO, "examples", "tiny", "pretrain.yaml"))
    p.add_argument("--repeat", type=int, default=2)
    ns = p.parse_args()
    cfg, layout, chunks = build(ns.config)
    vocab = cfg.model.llm.vocab_size
    gen = torch.Generator().manual_seed(0)
    print(f"model: {ns.config} ({sum(p.numel() for c in chunks for p in c.parameters()) / 1e6:.1f} M "
          f"parameters), {torch.get_num_threads()} threads")
    for name, lengths, new in SETTINGS:
        prompts = [torch.randint(1, vocab, (n,), generator=gen).tolist() for n in lengths]
        best = {True: float("inf"), False: float("inf")}
        outputs = {}
        for _ in range(ns.repeat):
            for cache in (True, False):
                seconds, outputs[cache] = timed(chunks, layout, prompts, new, vocab, cache)
                best[cache] = min(best[cache], seconds)
        if outputs[True] != outputs[False]:
            print(f"{name}: the cached tokens differ from the reference path", file=sys.stderr)
            return 1
        tokens = sum(len(g) for g in outputs[True])
        rate = {c: tokens / best[c] for c in best}
        print(f"{name}: KV cache {rate[True]:.1f} tokens/s, no cache {rate[False]:.1f} tokens/s, "
              f"ratio {rate[True] / rate[False]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
