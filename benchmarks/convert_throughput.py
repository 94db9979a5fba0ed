"""Conversion throughput and memory on a synthetic release-layout checkpoint.

    python benchmarks/convert_throughput.py [--gb 2.5] [--tp 1] [--repeat 2] [--workdir /tmp/x]
    python benchmarks/convert_throughput.py --preset sailvl2-a3b --ep 2   # Qwen3-MoE

Writes a bf16 SAIL-VL2 release checkpoint of about the given size (the preset's SAIL-ViT-Huge
and vocabulary; LLM layers added until the size is reached: one A3B layer is 1.2 GiB, so its
checkpoints start at 3.7 GiB), then times, in the same run and on the same warm page cache:
  * plain safetensors read + write of the same bytes (load_file -> save_file per shard, in
    this process), once as it is and once with each file fsynced before the next,
  * ``sail convert import-hf`` and ``sail convert export-hf`` (the real CLI, subprocesses),
and prints throughput ratios and peak memory summed over all processes of each command
(target <= 1.2 x checkpoint size + 1 GiB).

The throughput target (>= 0.5) is judged against the synced copy. Both conversions put their
output on disk before they publish it (a power cut must not leave a complete-looking but
partly unwritten checkpoint), which a plain save_file does not: that copy only fills the
page cache, and on this kind of machine syncing alone takes two to three times as long as
the whole unsynced copy. The ratio against the unsynced copy is printed as well.

Every timed step runs ``--repeat`` times, interleaved, and the fastest run of each counts
(shared machines are noisy; the best run is each command's own speed). Each command also
runs once with its memory sampled, apart from the timed runs (reading a large process's
PSS costs about 50 ms of CPU, which would slow a timed run on a small machine). Memory is
the peak, sampled every 20 ms, of the summed proportional set size (PSS) of the command's
process tree: Megatron's checkpoint writer forks helper processes that share the parent's
tensors copy-on-write, and summed RSS would count those pages once per process. The sum of
each process's own peak RSS is printed too (an upper bound that double-counts them). Dirty
pages are flushed before every timed step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from safetensors.torch import load_file, save_file

from megatron_sail.config import load_config
from megatron_sail.convert.hf_config import release_config
from megatron_sail.convert.tables import sailvl_release

GiB = 2**30


def synthetic_release(directory: Path, target_bytes: int, preset: str = "sailvl2-2b",
                      shard_bytes: int = 2**30) -> int:
    """A bf16 release-layout checkpoint of at least ``target_bytes`` (LLM layers added until
    it is reached, at most the preset's: 5.1 GiB for the 2B model); returns its size."""
    cfg = load_config(None, [f"model.preset={preset}"])
    model = cfg.model
    for layers in range(1, model.llm.num_layers + 1):
        model.llm.num_layers = layers
        shapes = sailvl_release(model).import_shapes()
        total = sum(math.prod(s) for s in shapes.values()) * 2
        if total >= target_bytes:
            break
    directory.mkdir(parents=True)
    config = release_config(model, "bfloat16", None, keep_auto_map=False)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    gen = torch.Generator().manual_seed(0)
    weight_map, shard, size, index = {}, {}, 0, 0

    def flush():
        nonlocal shard, size, index
        if shard:
            index += 1
            name = f"model-{index:05d}.safetensors"
            save_file(shard, str(directory / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
            shard, size = {}, 0

    for name, shape in shapes.items():
        t = torch.empty(shape, dtype=torch.bfloat16).uniform_(-0.05, 0.05, generator=gen)
        if size and size + t.numel() * 2 > shard_bytes:
            flush()
        shard[name] = t
        size += t.numel() * 2
    flush()
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    print(f"synthetic checkpoint: {total / GiB:.2f} GiB, {len(shapes)} tensors, "
          f"LLM layers {model.llm.num_layers}, {index} files")
    return total


def plain_copy(src: Path, dst: Path, fsync: bool = False) -> float:
    dst.mkdir()
    os.sync()
    start = time.perf_counter()
    for f in sorted(src.glob("*.safetensors")):
        save_file(load_file(str(f)), str(dst / f.name), metadata={"format": "pt"})
        if fsync:
            fd = os.open(dst / f.name, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    seconds = time.perf_counter() - start
    shutil.rmtree(dst)
    return seconds


@dataclasses.dataclass
class Run:
    seconds: float
    pss_peak: int  # max over time of the summed PSS of the process tree
    rss_peak_sum: int  # sum over processes of each one's own peak RSS (double-counts sharing)
    output: str


def run(cmd: list[str], sample_memory: bool) -> Run:
    """Run ``cmd`` after flushing dirty pages; with ``sample_memory`` a thread samples its
    process tree's memory meanwhile (which costs CPU: time such runs apart)."""
    os.sync()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    peaks: dict[int, int] = {}
    sampled = 0
    done = threading.Event()

    def sample():
        nonlocal sampled
        while not done.is_set():
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            total = 0
            for p in procs:
                try:
                    total += p.memory_full_info().pss
                    # VmHWM: the process's own peak RSS, spikes between samples included
                    peaks[p.pid] = max(peaks.get(p.pid, 0), _hwm(p.pid))
                except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError,
                        ProcessLookupError):
                    continue
            sampled = max(sampled, total)
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    if sample_memory:
        thread.start()
    out, _ = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    if sample_memory:
        thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return Run(seconds, sampled, sum(peaks.values()), out)


def _hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.5,
                    help="checkpoint size in GiB (>= 2; at most the whole model: 5.1 for the 2B; "
                    "at least 3.7 for the A3B)")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--ep", type=int, default=1, help="expert parallel size (MoE presets)")
    ap.add_argument("--preset", default="sailvl2-2b", help="sailvl2-2b (default), sailvl2-8b "
                    "or sailvl2-a3b (Qwen3-MoE)")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs of each step; the "
                    "fastest counts")
    ap.add_argument("--workdir", default=None)
    ns = ap.parse_args()
    work = Path(ns.workdir or tempfile.mkdtemp(prefix="sail-convert-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        hf = work / "hf"
        for old in ("ckpt", "exported", "plain", "warmup"):
            shutil.rmtree(work / old, ignore_errors=True)
        if (hf / "model.safetensors.index.json").is_file():  # reuse a --workdir's checkpoint
            size = sum(f.stat().st_size for f in hf.glob("*.safetensors"))
            print(f"reusing {hf}: {size / GiB:.2f} GiB")
        else:
            size = synthetic_release(hf, int(ns.gb * GiB), ns.preset)
        plain_copy(hf, work / "warmup")  # same warm page cache for everything below
        sail = [sys.executable, "-m", "megatron_sail.cli", "convert"]
        import_cmd = sail + ["import-hf", "--hf", str(hf), "--out", str(work / "ckpt"),
                             "--tp", str(ns.tp), "--ep", str(ns.ep)]
        export_cmd = sail + ["export-hf", "--ckpt", str(work / "ckpt"), "--out",
                             str(work / "exported")]
        imp_memory = run(import_cmd, sample_memory=True)
        exp_memory = run(export_cmd, sample_memory=True)
        times: dict[str, list[float]] = {"plain": [], "synced": [], "import": [], "export": []}
        outputs = {}
        for _ in range(ns.repeat):
            times["plain"].append(plain_copy(hf, work / "plain"))
            times["synced"].append(plain_copy(hf, work / "plain", fsync=True))
            shutil.rmtree(work / "exported")
            exp = run(export_cmd, sample_memory=False)
            shutil.rmtree(work / "ckpt")
            imp = run(import_cmd, sample_memory=False)
            times["export"].append(exp.seconds)
            times["import"].append(imp.seconds)
            outputs = {"import": imp.output, "export": exp.output}
        best = {k: min(v) for k, v in times.items()}
        budget = 1.2 * size + GiB
        print(f"load avg {os.getloadavg()[0]:.1f}; best of {ns.repeat}: plain safetensors "
              f"read+write {best['plain']:.1f} s ({size / GiB / best['plain']:.2f} GiB/s), synced "
              f"{best['synced']:.1f} s ({size / GiB / best['synced']:.2f} GiB/s)")
        for name, memory in (("import", imp_memory), ("export", exp_memory)):
            seconds = best[name]
            ratio = best["synced"] / seconds
            print(f"{name}-hf TP={ns.tp} EP={ns.ep}: {seconds:.1f} s (runs: "
                  f"{', '.join(f'{t:.1f}' for t in times[name])}); throughput ratio {ratio:.2f} "
                  f"vs the synced copy (target >= 0.5: {'ok' if ratio >= 0.5 else 'MISSED'}), "
                  f"{best['plain'] / seconds:.2f} vs the unsynced copy; peak memory "
                  f"{memory.pss_peak / GiB:.2f} GiB summed PSS, target {budget / GiB:.2f} GiB "
                  f"({'ok' if memory.pss_peak <= budget else 'MISSED'}); sum of per-process peak "
                  f"RSS {memory.rss_peak_sum / GiB:.2f} GiB")
        print("\n".join(line for line in (outputs["import"] + outputs["export"]).splitlines()
                        if line.startswith("wrote")))
    finally:
        if not ns.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
