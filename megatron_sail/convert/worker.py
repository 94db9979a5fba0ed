"""Entry point of one conversion rank: ``python -m megatron_sail.convert.worker RESULTS_DIR``.

Started by ``procs.Ranks`` with torchrun-style environment variables, before its job is
known: it imports what every job needs and joins the process group, then reads the job spec
from stdin (end of input without one: the caller gave up, exit quietly), runs it on the
Megatron layout the spec's config describes and leaves ``rank<N>.json`` with its result (or
its error) in RESULTS_DIR.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import traceback
import warnings
from pathlib import Path

from megatron_sail.utils.atomic import write_json_atomic


def _write_job(spec: dict, cfg, layout) -> dict:
    import dataclasses
    import time
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from megatron_sail.checkpointing.dist_ckpt import save_checkpoint
    from megatron_sail.checkpointing.layout_files import iteration_dir
    from megatron_sail.utils.atomic import sync_tree
    from megatron_sail.compat.deferred_fsync import fsync_deferred
    from megatron_sail.config import config_to_dict
    from megatron_sail.convert import megatron_side as ms
    from megatron_sail.convert.progress import bytes_read, bytes_under, watch
    from megatron_sail.convert.sources import PRECISIONS, Values

    # the part of the ranks' start-up the caller's own work did not hide
    startup = max(0.0, time.time() - spec["sent_at"])
    clock = [time.perf_counter()]
    views, shards = ms.standalone_shards(ms.build_meta(cfg, layout))
    values = Values.from_spec(spec["source"], cfg.model, PRECISIONS[cfg.train.precision])
    show = torch.distributed.get_rank() == 0 and spec["progress"]
    before = ms.fill(shards, values, show_progress=show)
    mine = ms.shard_bytes(shards)
    everyone = torch.tensor([mine], dtype=torch.int64)
    torch.distributed.all_reduce(everyone)
    clock.append(time.perf_counter())
    common = {"config": config_to_dict(cfg), "converted_from": spec["origin"]}
    if spec.get("hf_config") is not None:
        common["hf_config"] = spec["hf_config"]  # non-architecture fields, for export
    marker = {"iteration": 0, "consumed_samples": 0, "pp_tp": [layout.pp, layout.tp],
              "layout": dataclasses.asdict(layout), "format": "megatron-dist-ckpt/torch_dist",
              "converted_from": spec["origin"]}
    if spec.get("lineage") is not None:  # e.g. a model soup's inputs
        marker["lineage"] = spec["lineage"]
    root = Path(spec["root"])
    # torch.save's zip CRC-32 over every byte (1-3 s per 2.5 GB here) is never checked by
    # torch.load; the reload below compares a checksum of every shard end to end instead
    torch.serialization.set_crc32_options(False)
    with watch("save", int(everyone), bytes_under(root), show), fsync_deferred():
        save_checkpoint(root, 0, views, None, common, marker)
    clock.append(time.perf_counter())
    # The files go to disk while they are reloaded from the page cache; the output is
    # renamed into place only after this sync (and the parent's, which then finds it done).
    with ThreadPoolExecutor(1) as pool:
        synced = pool.submit(sync_tree, root) if torch.distributed.get_rank() == 0 else None
        # Reload-verify at the same layout: every shard this rank wrote must come back bit
        # for bit.
        with watch("reload", mine, bytes_read, show):
            after = ms.reload_fingerprints(shards, iteration_dir(root, 0))
        bad = ms.mismatches_everywhere([ms.shard_name(sh) for sh, a, b
                                        in zip(shards, before, after) if a != b])
        clock.append(time.perf_counter())
        if synced is not None:
            synced.result()
    clock.append(time.perf_counter())
    seconds = [b - a for a, b in zip(clock, clock[1:])]
    return {"reload_mismatches": bad, "parameters": len(shards),
            "seconds": {"start-up": startup,
                        **dict(zip(("fill", "save", "reload", "sync"), seconds))}}


def load_model(ckpt_dir: Path, cfg, layout) -> list:
    """The checkpoint's weights in a model built for ``layout`` (no optimizer, no RNG)."""
    from megatron_sail.checkpointing.dist_ckpt import load_checkpoint
    from megatron_sail.checkpointing.layout_files import CheckpointError
    from megatron_sail.config import config_from_dict
    from megatron_sail.convert import megatron_side as ms
    from megatron_sail.convert.hf_config import architecture_differences

    def same_model(common: dict) -> None:
        diff = architecture_differences(cfg.model, config_from_dict(common["config"]).model)
        if diff:
            raise CheckpointError(f"{ckpt_dir}: architecture changed: {diff}")

    chunks = ms.build_empty(cfg, layout)
    load_checkpoint(Path(ckpt_dir), chunks, optimizer=None, restore_rng=False,
                    validate=same_model)
    return chunks


def _forward_job(spec: dict, cfg, layout) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    from megatron_sail.convert import megatron_side as ms

    chunks = load_model(Path(spec["ckpt"]), cfg, layout)
    inputs = load_file(spec["inputs"])
    pixels = inputs.get("pixel_values")
    logits = ms.forward_logits(chunks, layout, inputs["input_ids"],
                               None if pixels is None else pixels.to(torch.float32),
                               cfg.model.llm.vocab_size, spec["pad_id"])
    if logits is not None and ms.is_logits_writer():
        save_file({"logits": logits.contiguous()}, spec["out"])
    return {}


JOBS = {"write": _write_job, "forward": _forward_job}


def _job(name: str):
    """A job of this module by name, or the ``megatron_sail.<module>:<function>`` entry point
    of a command built on conversion (``sail generate``): the caller names its own job, so
    that convert/ never imports the layers above it."""
    if name in JOBS:
        return JOBS[name]
    module, _, function = name.partition(":")
    if not module.startswith("megatron_sail.") or not function:
        raise ValueError(f"unknown rank job {name!r}")
    import importlib

    return getattr(importlib.import_module(module), function)


def _start_up() -> None:
    """Imports and process group: everything that does not depend on the job."""
    from megatron_sail.compat.eager_import import preload_dynamo
    from megatron_sail.compat.startup import check_stack
    from megatron_sail.distributed.cpu_compat import import_megatron

    import_megatron()
    check_stack()
    preload_dynamo()  # off the job's critical path
    from megatron.core import dist_checkpointing  # noqa: F401

    from megatron_sail.convert import megatron_side  # noqa: F401
    from megatron_sail.distributed.runtime import detect_env, init_process_group

    init_process_group(detect_env())


def _run(spec: dict) -> dict:
    from megatron_sail.config import config_from_dict
    from megatron_sail.config.validation import resolve_layout
    from megatron_sail.distributed.runtime import init_model_parallel

    cfg = config_from_dict(spec["config"])
    layout = resolve_layout(cfg, int(os.environ["WORLD_SIZE"]))
    init_model_parallel(layout, cfg.train.seed)
    return _job(spec["job"])(spec, cfg, layout)


def _meant_for_the_user(exc: BaseException) -> bool:
    """A clear error about the input (exit 2), rather than a bug (exit 1, with traceback)."""
    try:
        from megatron_sail.checkpointing.layout_files import CheckpointError
        from megatron_sail.compat.versions import CompatError
        from megatron_sail.config import ConfigError
        from megatron_sail.convert.errors import ConversionError
    except Exception:  # noqa: BLE001 - the package itself failed to import
        return False
    return isinstance(exc, (ConversionError, CheckpointError, ConfigError, CompatError))


def main(argv: list[str]) -> int:
    warnings.filterwarnings("ignore", module=r"megatron\..*")
    warnings.filterwarnings("ignore", message=r".*(Apex|Transformer Engine) (is|are) not installed")
    warnings.filterwarnings("ignore", message=r".*use DTensor instead.*", category=FutureWarning)
    results_dir = Path(argv[0])
    rank = int(os.environ["RANK"])
    result: dict = {}
    code = 0
    try:
        _start_up()
        text = sys.stdin.read()
        if not text:  # no job: the caller stopped before sending one
            os._exit(0)
        result = _run(json.loads(text))
        result["ok"] = True
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit non-zero
        if _meant_for_the_user(exc):
            result, code = {"ok": False, "error": str(exc)}, 2
        else:
            result, code = {"ok": False, "error": traceback.format_exc()}, 1
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = results_dir / f"rank{rank}.json"
    write_json_atomic(out, result)  # before shutting down: a failed peer may leave collectives hanging
    if code == 0:
        from megatron_sail.distributed.runtime import shutdown

        shutdown()
    # The result is on disk: skip the interpreter's teardown of torch and the job's tensors.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
