"""Start-up at scale: model build + first iteration of SAIL-VL2 shapes, against a plain
Megatron-Core GPT build of the same language-model shape, in the same run.

    python benchmarks/startup.py [--preset sailvl2-8b sailvl2-a3b] [--llm-layers 2]
        [--vision-layers 2] [--vocab N] [--seq-length 512] [--rounds 2]

Per preset, alternating rounds so that machine noise hits every variant alike (median shown):
- ``sail``: ``build_model`` as a fresh run does it (SAIL-ViT + adapter + LLM; every weight drawn
  layout-independently from the seeded generator), then the first iteration: forward and
  backward of one micro-batch holding one 448x448 image tile and ``--seq-length`` tokens;
- ``sail, for a load``: ``build_model(initialize=False)`` as a resume or ``checkpoint.load``
  does it (the load overwrites every weight; ``tests/unit/test_startup.py``), then the same
  first iteration;
- ``megatron-core``: ``GPTModel`` of the same LLM config with Megatron's own initialisation
  (normal(0, init_std), scaled output layers) and its local layer spec, then forward and
  backward of the same tokens (text only: a plain GPT has no vision tower).
The ratio is SAIL's (build + first iteration) over Megatron-Core's. Shapes keep the preset's
widths, heads and experts; layers (and, with ``--vocab``, the vocabulary) are scaled down so
that they fit the machine's memory; the full shape's parameter count is printed for scale.
One process, TP = PP = 1, on the GPU when there is one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _setup() -> None:
    import os

    from megatron_sail.compat.startup import check_stack
    from megatron_sail.distributed.cpu_compat import import_megatron

    import_megatron()
    check_stack()
    from megatron_sail.config import load_config
    from megatron_sail.config.validation import resolve_layout
    from megatron_sail.distributed.runtime import detect_env, init_model_parallel, init_process_group

    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_ID"):
        os.environ.pop(key, None)
    init_process_group(detect_env())
    init_model_parallel(resolve_layout(load_config(None, []), 1), seed=1234)


def _config(preset: str, ns: argparse.Namespace, full: bool = False):
    from megatron_sail.config import load_config

    overrides = [f"model.preset={preset}", f"data.seq_length={ns.seq_length}"]
    if not full:
        overrides += [f"model.llm.num_layers={ns.llm_layers}",
                      f"model.vision.num_layers={ns.vision_layers}"]
        if ns.vocab:
            overrides.append(f"model.llm.vocab_size={ns.vocab}")
    return load_config(None, overrides)


def full_shape_params(preset: str, ns: argparse.Namespace) -> float:
    """Parameters of the whole preset (all layers, full vocabulary), by the memory planner's
    count (no build: the full shape need not fit here)."""
    from megatron_sail.costs.shapes import shape_from_config
    from megatron_sail.scaling.memory import count_params

    return sum(count_params(shape_from_config(_config(preset, ns, full=True))).values())


def _batch(cfg, img_id: int, device):
    import torch

    from megatron_sail.config.presets import tokens_per_tile

    vit = cfg.model.vision
    per_tile = tokens_per_tile(vit.image_size, vit.patch_size)
    seq = cfg.data.seq_length
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(img_id + 1, cfg.model.llm.vocab_size, (1, seq), generator=gen)
    ids[0, 1:1 + per_tile] = img_id
    labels = torch.randint(0, cfg.model.llm.vocab_size, (1, seq), generator=gen)
    pixels = torch.randn(1, 3, vit.image_size, vit.image_size, generator=gen)
    positions = torch.arange(seq)[None]
    return ids.to(device), positions.to(device), labels.to(device), pixels.to(device)


def _first_iteration(loss) -> None:
    import torch

    loss.float().sum().backward()
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def sail(cfg, initialize: bool) -> tuple[float, float]:
    import torch

    from megatron_sail.config.validation import resolve_layout
    from megatron_sail.models.builder import build_model

    img_id = 5
    t0 = time.perf_counter()
    model = build_model(cfg, resolve_layout(cfg, 1), img_id, initialize=initialize).chunks[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    if not initialize:  # unset memory: the load would fill it; any finite values time alike
        with torch.no_grad():
            for param in model.parameters():
                param.normal_(0, cfg.model.init_std)
    ids, positions, labels, pixels = _batch(cfg, img_id, next(model.parameters()).device)
    t2 = time.perf_counter()
    _first_iteration(model(ids, positions, labels=labels, pixel_values=pixels))
    t3 = time.perf_counter()
    return t1 - t0, t3 - t2


def megatron_gpt(cfg) -> tuple[float, float]:
    import dataclasses

    import torch
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.utils import init_method_normal, scaled_init_method_normal

    from megatron_sail.config.validation import resolve_layout
    from megatron_sail.models.builder import llm_config

    layout = resolve_layout(cfg, 1)
    llm, std = cfg.model.llm, cfg.model.init_std
    config = dataclasses.replace(
        llm_config(cfg, layout), init_method=init_method_normal(std),
        output_layer_init_method=scaled_init_method_normal(std, llm.num_layers),
        embedding_init_method=init_method_normal(std))
    t0 = time.perf_counter()
    model = GPTModel(
        config=config, transformer_layer_spec=get_gpt_layer_local_spec(
            num_experts=llm.num_experts, moe_grouped_gemm=cfg.model.moe.grouped_gemm,
            qk_layernorm=True, normalization="RMSNorm"),
        vocab_size=layout.padded_vocab_size, max_sequence_length=llm.max_position_embeddings,
        share_embeddings_and_output_weights=llm.tie_word_embeddings,
        position_embedding_type="rope", rotary_base=int(llm.rope_theta))
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    ids, positions, labels, _ = _batch(cfg, 5, next(model.parameters()).device)
    t2 = time.perf_counter()
    _first_iteration(model(ids, positions, attention_mask=None, labels=labels))
    t3 = time.perf_counter()
    return t1 - t0, t3 - t2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", nargs="+", default=["sailvl2-8b", "sailvl2-a3b"])
    p.add_argument("--llm-layers", type=int, default=2)
    p.add_argument("--vision-layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=None, help="scale the vocabulary down to N")
    p.add_argument("--seq-length", type=int, default=512)
    p.add_argument("--rounds", type=int, default=2)
    ns = p.parse_args(argv)
    _setup()
    import gc

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device: {device}; LLM layers {ns.llm_layers}, vision layers {ns.vision_layers}, "
          f"vocab {ns.vocab or 'as the preset'}, sequence {ns.seq_length}")
    variants = {"sail": lambda c: sail(c, True), "sail, for a load": lambda c: sail(c, False),
                "megatron-core": megatron_gpt}
    for preset in ns.preset:
        cfg = _config(preset, ns)
        times = {name: [] for name in variants}
        for _ in range(ns.rounds):
            for name, run in variants.items():
                times[name].append(run(cfg))
                gc.collect()
        print(f"{preset} (full shape {full_shape_params(preset, ns) / 1e9:.2f} B parameters)")
        med = {name: (statistics.median(b for b, _ in t), statistics.median(f for _, f in t))
               for name, t in times.items()}
        base = sum(med["megatron-core"])
        for name, (build, first) in med.items():
            print(f"  {name:18s} build {build:7.2f} s  first iteration {first:6.2f} s  "
                  f"total {build + first:7.2f} s  ratio to megatron-core {(build + first) / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
