"""Training throughput, MFU and peak memory of megatron_sail on one GPU, against plain
Megatron-Core, in one run.

    python benchmarks/gpu_throughput.py            # the four cases below (estimated 6 min, one H100)
    python benchmarks/gpu_throughput.py --levers   # each performance.* lever against all off
    python benchmarks/gpu_throughput.py --cpu      # the same cases at the tiny model's widths

Cases (bf16, the local spec, the config's default speed levers):
- ``gpt``: plain Megatron-Core ``GPTModel`` of sailvl2-2b's LLM widths (8 layers, seq 4096)
  with the same layer spec and fusions, trained by Megatron's DDP, distributed optimizer and
  schedule on random tokens;
- ``sail-text``: megatron_sail's ``Trainer`` on the same tokens, no images. Its tokens/s over
  ``gpt``'s is the wrapper's overhead (the goal: at least 0.95);
- ``sail-images``: the same shape on synthetic caption samples (one 448 px tile each);
- ``full``: sailvl2-2b with all 28 LLM layers at seq 8192, rows packed from 4 samples (one
  tile each), with the lightest recompute the memory planner fits in 90% of the GPU.

Every case runs in a fresh process: a trained model stays allocated after its ``Trainer`` is
deleted, even after ``gc.collect()`` (no Python object refers to it: the references are held
on the C++ side, presumably by the gradient hooks Megatron's DDP puts on autograd nodes), so
in one process a case's peak includes the previous cases' weights, gradients and Adam state.
That is what made an earlier version of this benchmark report 81.6 GiB for the unfused
attention, run after the SDPA case, where the planner said 54.7.
Reported per case: median step time after the warm-up steps, tokens/s, model TFLOP/s
(``megatron_sail.costs.flops``; packed samples counted at their own length), MFU against the
GPU's dense bf16 peak, ``torch.cuda.max_memory_allocated`` and the planner's estimate. On CPU
the memory columns stay empty (no allocator counters) and MFU needs ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKED_SAMPLES = 4  # samples per packed row in the ``full`` case

# Every lever off, then each on alone (``--levers``), on the sail-images shape
LEVERS_OFF = ["performance.rmsnorm=unfused", "performance.swiglu_fusion=false",
              "performance.cross_entropy_fusion=false", "performance.grad_reduce_dtype=fp32"]
LEVERS = {
    "levers-off": [],
    "+rmsnorm": ["performance.rmsnorm=fused"],
    "+swiglu": ["performance.swiglu_fusion=true"],
    "+cross-entropy": ["performance.cross_entropy_fusion=true"],
    "+bf16-grads": ["performance.grad_reduce_dtype=bf16"],
    "+cuda-graphs": ["performance.cuda_graphs=true"],
    "unfused-attention": ["model.attention=unfused"],
    # for reference where Transformer Engine is installed (a config error elsewhere)
    "transformer-engine": ["model.transformer_impl=transformer_engine"],
}


def _shapes(ns) -> dict:
    """The model and run shape of each case, for the GPU or (``--cpu``) the tiny widths."""
    if ns.cpu:
        small = dict(preset="tiny", llm_layers=4, vision_layers=None, seq=256)
        full = dict(preset="tiny", llm_layers=None, vision_layers=None, seq=512)
    else:
        small = dict(preset="sailvl2-2b", llm_layers=8, vision_layers=None, seq=4096)
        full = dict(preset="sailvl2-2b", llm_layers=None, vision_layers=None, seq=8192)
    return {"gpt": small, "sail-text": small, "sail-images": small, "full": full}


def _overrides(shape: dict, ns, extra: list[str]) -> list[str]:
    out = [f"model.preset={shape['preset']}",
           "train.precision=bf16", f"data.seq_length={shape['seq']}",
           "train.micro_batch_size=1", f"train.global_batch_size={ns.global_batch}",
           # one sample per row, padded to seq_length; ``full`` packs rows of its own
           "data.packing=false",
           f"train.train_iters={10 ** 6}", "train.eval_interval=null",
           "checkpoint.save_interval=null", "run.tensorboard=false"]
    if shape["llm_layers"]:
        out.append(f"model.llm.num_layers={shape['llm_layers']}")
    return out + extra


# -- one case, in its own process ----------------------------------------------------------

def _text_batches(cfg, seed: int):
    """Random-token rows without images, the same for the plain GPT and megatron_sail."""
    import torch

    from megatron_sail.data.packing.microbatch import MicroBatch

    g = torch.Generator().manual_seed(seed)
    seq, rows = cfg.data.seq_length, cfg.train.global_batch_size
    out = []
    for _ in range(rows):
        vocab = cfg.model.llm.vocab_size  # above the special tokens (no <IMG_CONTEXT>)
        tokens = torch.randint(min(1000, vocab // 2), vocab, (1, seq), generator=g)
        out.append(MicroBatch(tokens, torch.arange(seq)[None], torch.roll(tokens, -1, 1),
                              torch.ones(1, seq), None))
    return out


def _pack(microbatches: list, k: int) -> list:
    """Rows of k samples each, one THD row per micro-batch: positions restart at every
    sample, images stay in order, ``cu_seqlens`` marks the boundaries."""
    import torch

    from megatron_sail.data.packing.microbatch import MicroBatch

    rows = []
    for i in range(0, len(microbatches), k):
        group = microbatches[i:i + k]
        cat = lambda name: torch.cat([getattr(b, name) for b in group], dim=1)  # noqa: E731
        lengths = [b.tokens.shape[1] for b in group]
        bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        pixels = [b.pixel_values for b in group if b.pixel_values is not None]
        rows.append(MicroBatch(cat("tokens"), cat("position_ids"), cat("labels"),
                               cat("loss_mask"), torch.cat(pixels) if pixels else None,
                               cu_seqlens=bounds, max_seqlen=max(lengths)))
    return rows


def _timed(step, ns) -> tuple[list[float], float]:
    """Step times (seconds) and the loss of the last step."""
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times, loss = [], float("nan")
    for i in range(ns.warmup + ns.steps):
        sync()
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
        print(f"  step {i + 1}/{ns.warmup + ns.steps}: {times[-1]:.3f} s, loss {loss:.4f}",
              file=sys.stderr, flush=True)
    return times[ns.warmup:], loss


def _plain_gpt(cfg, ns) -> tuple[list[float], float]:
    """Megatron-Core's GPTModel alone, built and trained the way Megatron's examples do."""
    from functools import partial

    import torch
    from megatron.core.distributed import finalize_model_grads
    from megatron.core.models.gpt import GPTModel
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_sail.config.validation import resolve_layout
    from megatron_sail.distributed.runtime import detect_env, init_model_parallel, init_process_group
    from megatron_sail.models.builder import llm_config
    from megatron_sail.models.specs import llm_block_spec
    from megatron_sail.training.optimizer import build_optimizer, build_scheduler, wrap_ddp

    init_process_group(detect_env())
    layout = resolve_layout(cfg, 1, torch.cuda.is_available())
    init_model_parallel(layout, cfg.train.seed)
    config = llm_config(cfg, layout)
    llm = cfg.model.llm
    model = GPTModel(config=config,
                     transformer_layer_spec=llm_block_spec(
                         "local", llm.num_layers, attention_kernel=cfg.model.attention,
                         fused_norm=cfg.performance.rmsnorm == "fused"),
                     vocab_size=layout.padded_vocab_size,
                     max_sequence_length=llm.max_position_embeddings,
                     share_embeddings_and_output_weights=llm.tie_word_embeddings,
                     position_embedding_type="rope", rotary_base=int(llm.rope_theta))
    with torch.no_grad():
        for name, p in model.named_parameters():  # norms at one, the rest as our init draws
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, cfg.model.init_std)
    if torch.cuda.is_available():
        model.cuda()
    chunks = wrap_ddp(cfg, [model], config, 1, torch.cuda.is_available())
    optimizer = build_optimizer(cfg, chunks)
    scheduler = build_scheduler(cfg, optimizer, 10 ** 6)
    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = chunks[0].no_sync
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    batches = _text_batches(cfg, cfg.train.seed)

    def loss_func(mask, per_token):
        total, count = (per_token.float() * mask).sum(), mask.sum().to(torch.int)
        return total, count, {"loss": torch.stack([total.detach(), count.float()])}

    def forward_step(data_iterator, m):
        b = next(data_iterator).to(device)  # from the host, as a data loader hands it over
        return (m(b.tokens, b.position_ids, attention_mask=None, labels=b.labels),
                partial(loss_func, b.loss_mask))

    def step() -> float:
        chunks[0].train()
        chunks[0].zero_grad_buffer()
        optimizer.zero_grad()
        losses = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter(batches), model=chunks,
            num_microbatches=len(batches), seq_length=cfg.data.seq_length, micro_batch_size=1,
            forward_only=False)
        scheduler.step(increment=1)
        optimizer.step()
        total = sum(x["loss"] for x in losses)
        return float(total[0] / total[1])

    return _timed(step, ns)


def _sail(case: str, cfg, ns) -> tuple[list[float], float]:
    from megatron_sail.distributed.runtime import detect_env
    from megatron_sail.training.trainer import Trainer

    trainer = Trainer(cfg, detect_env())
    if case == "sail-text":
        batches = _text_batches(cfg, cfg.train.seed)
    else:
        _, batches = trainer.run_iteration()  # built once: data preparation is not timed
        if case == "full":
            batches = _pack(batches, PACKED_SAMPLES)
    try:
        return _timed(lambda: trainer.run_iteration(batches)[0].loss, ns)
    finally:
        if trainer.metrics:
            trainer.metrics.close()


def _planned(cfg, case: str) -> float:
    from megatron_sail.scaling.memory import estimate, from_config, peak_stage

    shape, par, work = from_config(cfg, 1, device="gpu")
    if case == "sail-text" or case == "gpt":
        work = dataclasses.replace(work, tiles=0)
    if case == "full":  # rows of PACKED_SAMPLES samples, one tile each
        work = dataclasses.replace(work, seq_length=work.seq_length * PACKED_SAMPLES,
                                   tiles=PACKED_SAMPLES,
                                   global_batch_size=work.global_batch_size // PACKED_SAMPLES)
    return peak_stage(estimate(shape, par, work)).total


def _model_flops(cfg, case: str) -> float:
    from megatron_sail.costs.flops import batch_flops, train_flops_per_iteration
    from megatron_sail.costs.shapes import shape_from_config

    if case == "full":  # each packed sample at its own length, with its tile
        shape = shape_from_config(cfg)
        return batch_flops(shape, [(cfg.data.seq_length, shape.tokens_per_tile)]
                           * cfg.train.global_batch_size, cfg.model.freeze)
    return train_flops_per_iteration(cfg, 0 if case in ("gpt", "sail-text") else None)


def run_case(spec: dict) -> dict:
    """One case in this process (``--run-case``): rows, tokens and timing."""
    import torch

    from megatron_sail.compat.startup import check_stack
    from megatron_sail.config import load_config
    from megatron_sail.distributed.cpu_compat import import_megatron
    from megatron_sail.distributed.runtime import shutdown

    import_megatron()
    check_stack()
    case, ns = spec["case"], argparse.Namespace(**spec["ns"])
    cfg = load_config(None, spec["overrides"])
    if case == "full":  # the trainer makes samples of seq / k tokens; rows pack k of them
        cfg.data.seq_length //= PACKED_SAMPLES
        cfg.train.global_batch_size *= PACKED_SAMPLES
    planned = _planned(cfg, case)
    flops = _model_flops(cfg, case)
    try:
        times, loss = _plain_gpt(cfg, ns) if case == "gpt" else _sail(case, cfg, ns)
    finally:
        shutdown()
    step = statistics.median(times)
    rows_tokens = cfg.train.global_batch_size * cfg.data.seq_length
    on_gpu = torch.cuda.is_available()
    return {"step_time": step, "tokens_per_s": rows_tokens / step, "tflops": flops / step / 1e12,
            "loss": loss, "planned_gib": planned / 2 ** 30,
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if on_gpu else None}


# -- the driver ------------------------------------------------------------------------------

def _recompute_that_fits(shape: dict, ns, extra: list[str], capacity: float | None) -> list[str]:
    """The lightest recompute whose plan fits ``capacity`` bytes (none on CPU)."""
    from megatron_sail.config import load_config

    options = [[], ["model.llm_recompute=selective"], ["model.llm_recompute=full"],
               ["model.llm_recompute=full", "model.vision_recompute=full"]]
    if capacity is None:
        return options[0]
    for option in options:
        cfg = load_config(None, _overrides(shape, ns, extra + option))
        cfg.data.seq_length //= PACKED_SAMPLES
        cfg.train.global_batch_size *= PACKED_SAMPLES
        if _planned(cfg, "full") <= capacity:
            return option
    return options[-1]


def _spawn(index: int, kind: str, overrides: list[str], ns, tmp: str) -> dict:
    """Run one case (``kind``: gpt | sail-text | sail-images | full) in a fresh process."""
    from megatron_sail.distributed.runtime import free_port

    spec = Path(tmp) / f"case{index}.json"
    out = Path(tmp) / f"case{index}.result.json"
    overrides = [*overrides, f"run.output_dir={tmp}/run{index}"]
    spec.write_text(json.dumps({"case": kind, "overrides": overrides, "ns": vars(ns)}))
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(free_port()), PYTHONPATH=str(REPO))
    for key in ("SLURM_PROCID", "SLURM_STEP_ID"):
        env.pop(key, None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--run-case", str(spec), "--case-out", str(out)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not out.exists():
        oom = any("OutOfMemoryError" in line or "out of memory" in line for line in log)
        at = max((i for i, line in enumerate(log) if "Error" in line), default=len(log) - 1)
        # the error line and the reasons a ConfigError lists below it
        reasons = [log[at].strip()] + [line.strip() for line in log[at + 1:]
                                        if line.startswith("  - ")]
        return {"failed": "out of GPU memory" if oom else " ".join(reasons)[:300]}
    result = json.loads(out.read_text())
    result.update(wall_s=time.perf_counter() - t0)
    return result


def _peak(ns) -> float | None:
    import torch

    from megatron_sail.costs.hardware import peak_tflops

    if ns.peak_tflops:
        return ns.peak_tflops
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    kind = "h200" if "H200" in name else "h100-pcie" if ("H100" in name and "PCIe" in name) \
        else "h100" if "H100" in name else None
    if kind is None:
        raise SystemExit(f"unknown GPU '{name}': pass --peak-tflops (dense bf16 TFLOP/s)")
    return peak_tflops(kind, "bf16")


def _table(results: list[dict], peak: float | None) -> list[str]:
    lines = [f"{'case':28s} {'step s':>7s} {'tokens/s':>9s} {'TFLOP/s':>8s} {'MFU':>6s} "
             f"{'max alloc GiB':>13s} {'planned GiB':>11s}"]
    if not peak:
        lines[0] = lines[0].replace("TFLOP/s", "GFLOP/s")
    for r in results:
        if "failed" in r:
            lines.append(f"{r['case']:28s} failed: {r['failed']}")
            continue
        mfu = f"{r['tflops'] / peak:6.1%}" if peak else f"{'n/a':>6s}"
        mem = f"{r['peak_gib']:13.1f}" if r["peak_gib"] is not None else f"{'n/a':>13s}"
        lines.append(f"{r['case']:28s} {r['step_time']:7.3f} {r['tokens_per_s']:9.0f} "
                     f"{r['tflops'] * (1 if peak else 1e3):8.1f} {mfu} {mem} "
                     f"{r['planned_gib']:11.3g}")
    by = {r["case"]: r for r in results if "failed" not in r}
    if "gpt" in by and "sail-text" in by:
        ratio = by["sail-text"]["tokens_per_s"] / by["gpt"]["tokens_per_s"]
        lines.append(f"wrapper overhead: sail-text / gpt tokens/s = {ratio:.3f} (goal >= 0.95)")
    base = by.get("levers-off")
    for name, r in by.items():
        if base and name != "levers-off" and name in LEVERS:
            lines.append(f"{name} / levers-off: tokens/s x{r['tokens_per_s'] / base['tokens_per_s']:.3f}")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="the tiny model's widths, on CPU")
    p.add_argument("--levers", action="store_true",
                   help="each speed lever against all off, on the sail-images shape")
    p.add_argument("--cases", default=None,
                   help="comma-separated subset of the cases (with --levers: of the levers)")
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 8; 3 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3; 1 on CPU)")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--run-case", default=None, help=argparse.SUPPRESS)
    p.add_argument("--case-out", default=None, help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.run_case:
        result = run_case(json.loads(Path(ns.run_case).read_text()))
        Path(ns.case_out).write_text(json.dumps(result))
        return 0

    import torch

    if not ns.cpu and not torch.cuda.is_available():
        print("gpu_throughput: no CUDA GPU here (--cpu runs the scaled-down cases)", file=sys.stderr)
        return 2
    ns.steps = ns.steps or (3 if ns.cpu else 8)
    ns.warmup = ns.warmup or (1 if ns.cpu else 3)
    peak = _peak(ns)
    shapes = _shapes(ns)
    capacity = None if ns.cpu else 0.9 * torch.cuda.get_device_properties(0).total_memory
    child = argparse.Namespace(steps=ns.steps, warmup=ns.warmup)
    known = LEVERS if ns.levers else shapes
    wanted = ns.cases.split(",") if ns.cases else list(known)
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; choose from {', '.join(known)}")
    if ns.levers:  # (label, kind, overrides)
        runs = [(name, "sail-images",
                 _overrides(shapes["sail-images"], ns, LEVERS_OFF + LEVERS[name]))
                for name in wanted]
    else:
        runs = []
        for case in wanted:
            extra = _recompute_that_fits(shapes[case], ns, [], capacity) if case == "full" else []
            runs.append((case + (f" ({', '.join(extra)})" if extra else ""), case,
                         _overrides(shapes[case], ns, extra)))
    device = "CPU" if ns.cpu else torch.cuda.get_device_name(0)
    print(f"{device}; bf16, local spec, micro-batch 1, global batch {ns.global_batch}, median of "
          f"{ns.steps} steps after {ns.warmup}; peak "
          + (f"{peak:.0f} TFLOP/s" if peak else "unknown (MFU n/a)"), flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="sail-gpu-bench-") as tmp:
        for i, (name, kind, overrides) in enumerate(runs):
            print(f"[{i + 1}/{len(runs)}] {name} ...", flush=True)
            result = _spawn(i, kind, overrides, child, tmp)
            result["case"] = name
            results.append(result)
            done = "failed: " + result["failed"] if "failed" in result else \
                f"{result['tokens_per_s']:.0f} tokens/s in {result['wall_s']:.0f} s"
            print(f"    {done}", flush=True)
    print("\n".join(_table(results, peak)))
    if ns.json:
        Path(ns.json).write_text(json.dumps({"device": device, "peak_tflops": peak,
                                             "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
