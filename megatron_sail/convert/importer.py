"""``sail convert import-hf`` and ``init-from``: validated Hugging Face weights -> a Megatron
distributed checkpoint that ``sail train checkpoint.load=...`` starts from.

The parent validates everything it can from headers and config files, then one rank process
per rank of the layout (TP x PP, and the data-parallel ranks EP > TP needs) fills the shards
it saves, saves them, reloads them and compares each bit for bit. Replicas, which Megatron
does not save, are never materialised. The result is ``OUT/iter_0000000`` +
``latest_checkpointed_iteration.txt``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from megatron_sail.config import ConfigError, SailConfig, config_to_dict
from megatron_sail.config.validation import resolve_layout
from megatron_sail.convert.errors import ConversionError, listing
from megatron_sail.utils.atomic import staging_dir
from megatron_sail.convert.procs import Ranks, peak_rss

if TYPE_CHECKING:  # sources imports torch, which the rank processes should not wait for
    from megatron_sail.convert.sources import Opened


@dataclass
class WriteReport:
    out: Path
    config: SailConfig
    seconds: float
    processes: int
    peak_rss: int  # bytes, summed over the rank processes
    parameters: int  # parameter shards saved, summed over ranks
    phases: dict  # seconds of rank 0's start-up / fill / save / reload steps


def write_world_size(tp: int, pp: int, ep: int) -> int:
    """Ranks that write a model at TP x PP x EP. Experts are split over the ranks of one
    pipeline stage (TP x DP), so EP > TP needs data-parallel replicas: the smallest such
    world is PP x lcm(TP, EP)."""
    return pp * math.lcm(tp, ep) if min(tp, pp, ep) >= 1 else tp * pp


def write_checkpoint(opened: "Opened", out: str | Path, tp: int = 1, pp: int = 1, ep: int = 1,
                     origin: dict | None = None, progress: bool = True,
                     ranks: Optional[Ranks] = None, lineage: Optional[dict] = None) -> WriteReport:
    """``ranks``: processes already started for this layout (see ``write_world_size``); they
    run this one job and are stopped on return."""
    cfg = SailConfig(model=opened.model)
    cfg.train.precision = opened.precision
    par = cfg.parallel
    par.tensor_model_parallel_size, par.pipeline_model_parallel_size = tp, pp
    par.expert_model_parallel_size = ep
    world = write_world_size(tp, pp, ep)
    try:
        layout = resolve_layout(cfg, world)
    except ConfigError as exc:
        raise ConversionError(f"cannot write this model at --tp {tp} --pp {pp} --ep {ep}: "
                              f"{exc}") from None
    if ranks is not None and ranks.world_size != world:
        raise ValueError(f"{ranks.world_size} ranks were started for a layout of {world}")
    start = time.perf_counter()
    # the ranks stop before the staging directory is removed, so an interrupted job cannot
    # write into it after its removal
    with staging_dir(out) as tmp, (ranks or Ranks(world)) as procs:
        spec = {"config": config_to_dict(cfg), "source": opened.spec, "root": str(tmp),
                "origin": origin or opened.spec, "hf_config": opened.hf_config,
                "progress": progress, "lineage": lineage}
        results = procs.run("write", spec)
        bad = results[0]["reload_mismatches"]
        if bad:
            raise ConversionError(listing(f"the checkpoint written at TP={tp} PP={pp} EP={ep} "
                                          f"did not reload bit for bit", bad))
    return WriteReport(Path(out), cfg, time.perf_counter() - start, world, peak_rss(results),
                       sum(r["parameters"] for r in results), results[0]["seconds"])
