"""``sail convert import-hf`` and ``init-from``: validated Hugging Face weights -> a Megatron
distributed checkpoint that ``sail train checkpoint.load=...`` starts from.

The parent validates everything it can from headers and config files, then N = TP x PP rank
processes build the model at that layout, fill and save it, reload it and compare every
parameter bit for bit. The result is ``OUT/iter_0000000`` + ``latest_checkpointed_iteration.txt``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from megatron_sail.config import ConfigError, SailConfig, config_to_dict
from megatron_sail.config.layout import resolve_layout
from megatron_sail.convert.errors import ConversionError, listing
from megatron_sail.convert.outputs import staging_dir
from megatron_sail.convert.procs import peak_rss, run_ranks
from megatron_sail.convert.sources import Opened


@dataclass
class WriteReport:
    out: Path
    config: SailConfig
    seconds: float
    peak_rss: int  # bytes, summed over the rank processes
    parameters: int  # parameter tensors, summed over ranks
    phases: dict  # seconds of rank 0's fill / save / reload steps


def write_checkpoint(opened: Opened, out: str | Path, tp: int = 1, pp: int = 1, ep: int = 1,
                     origin: dict | None = None, progress: bool = True) -> WriteReport:
    cfg = SailConfig(model=opened.model)
    cfg.train.precision = opened.precision
    par = cfg.parallel
    par.tensor_model_parallel_size, par.pipeline_model_parallel_size = tp, pp
    par.expert_model_parallel_size = ep
    try:
        layout = resolve_layout(cfg, tp * pp)
    except ConfigError as exc:
        raise ConversionError(f"cannot write this model at --tp {tp} --pp {pp} --ep {ep}: "
                              f"{exc}") from None
    start = time.perf_counter()
    with staging_dir(out) as tmp:
        spec = {"config": config_to_dict(cfg), "source": opened.spec, "root": str(tmp),
                "origin": origin or opened.spec, "hf_config": opened.hf_config,
                "progress": progress}
        results = run_ranks("write", spec, layout.world_size)
        bad = results[0]["reload_mismatches"]
        if bad:
            raise ConversionError(listing(f"the checkpoint written at TP={tp} PP={pp} did not "
                                          f"reload bit for bit", bad))
    return WriteReport(Path(out), cfg, time.perf_counter() - start, peak_rss(results),
                       sum(r["parameters"] for r in results), results[0]["seconds"])
