"""Save and load training state in Megatron's distributed checkpoint format.

Model and optimizer are stored as layout-independent sharded tensors (the distributed
optimizer ``fully_reshardable``), so a checkpoint loads under another
TP/PP/VPP/DP layout. Everyone writes into ``iter_N.tmp``; rank 0 then adds the description
file and renames, so a checkpoint is complete or absent.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject
from torch.distributed.checkpoint.api import CheckpointException as TorchCheckpointException

from megatron_sail.checkpointing.layout_files import (
    CheckpointError, iteration_dir, publish, read_marker, refuse_unsafe_pickles,
)
from megatron_sail.compat.dist_ckpt_internals import has_embedded_common, local_write_results
from megatron_sail.compat.versions import installed_megatron_core

COMMON_KEY = "sail"


def _metadata() -> dict:
    return {
        "dp_cp_group": parallel_state.get_data_parallel_group(with_context_parallel=True),
        "distrib_optim_sharding_type": "fully_reshardable",
    }


def _unwrap(chunks) -> list:
    """Model chunks without their DDP wrapper: checkpoint keys are the model's own."""
    return [getattr(chunk, "module", chunk) for chunk in chunks]


def model_sharded_state_dict(chunks) -> dict:
    meta = _metadata()
    chunks = _unwrap(chunks)
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict(metadata=meta)}
    return {f"model{i}": c.sharded_state_dict(metadata=meta) for i, c in enumerate(chunks)}


def _rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def _restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _rng_object(state) -> ShardedObject:
    pp, tp = (parallel_state.get_pipeline_model_parallel_world_size(),
              parallel_state.get_tensor_model_parallel_world_size())
    return ShardedObject(
        "rng_state", state, (pp, tp),
        (parallel_state.get_pipeline_model_parallel_rank(),
         parallel_state.get_tensor_model_parallel_rank()),
        replica_id=parallel_state.get_data_parallel_rank(with_context_parallel=True),
    )


def _has_params(optimizer) -> bool:
    """A pipeline stage whose parts are all frozen owns no optimizer state to save or load."""
    return optimizer is not None and any(g["params"] for g in optimizer.param_groups)


def save_checkpoint(root: Path, iteration: int, chunks, optimizer, common: dict,
                    marker: dict, keep_last: Optional[int] = None,
                    also: Optional[Callable[[Path], None]] = None) -> Path:
    """Collective: every rank calls it. ``common`` (plain values) is stored once.
    ``also(directory)`` (collective) adds to the checkpoint before it is published."""
    root = Path(root)
    final = iteration_dir(root, iteration)
    tmp = final.with_name(final.name + ".tmp")
    rank = torch.distributed.get_rank()
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    torch.distributed.barrier()
    state = model_sharded_state_dict(chunks)
    if _has_params(optimizer):
        state["optimizer"] = optimizer.sharded_state_dict(state, metadata=_metadata())
    state["rng_state"] = _rng_object(_rng_state())
    state[COMMON_KEY] = common
    local_write_results()
    dist_checkpointing.save(state, str(tmp))
    torch.distributed.barrier()
    if also is not None:
        also(tmp)
        torch.distributed.barrier()
    if rank == 0:
        publish(tmp, final, iteration, marker, keep_last)
    torch.distributed.barrier()
    return final


@torch.no_grad()
def _materialise_optimizer_state(optimizer) -> None:
    """Give a fresh optimizer its per-parameter state (Adam moments and step) so that
    Megatron's distributed optimizer can describe - and then overwrite - it on load. A step
    with zero gradients, lr 0 and no weight decay leaves the parameters unchanged."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = opt.optimizer
        if inner.state:
            continue
        saved = [(g["lr"], g.get("weight_decay", 0.0)) for g in inner.param_groups]
        for group in inner.param_groups:
            group["lr"], group["weight_decay"] = 0.0, 0.0
            for param in group["params"]:
                param.grad = torch.zeros_like(param)
        inner.step()
        for group, (lr, wd) in zip(inner.param_groups, saved):
            group["lr"], group["weight_decay"] = lr, wd
            for param in group["params"]:
                param.grad = None


def load_common(ckpt_dir: Path) -> dict:
    """The checkpoint's plain (non-tensor) state: config, train state, scheduler."""
    refuse_unsafe_pickles(ckpt_dir)
    try:
        common = dist_checkpointing.load_common_state_dict(str(ckpt_dir))
    except (Exception, TorchCheckpointException) as exc:
        if has_embedded_common(ckpt_dir):  # megatron-core < 0.19 only reads common.pt
            raise CheckpointError(
                f"{ckpt_dir}: no common.pt - written by megatron-core >= 0.19, which keeps the "
                f"common state inside the .distcp files; megatron-core "
                f"{installed_megatron_core()} cannot read it ({type(exc).__name__}: {exc}). "
                f"Resume with megatron-core >= 0.19 (Python >= 3.12)") from exc
        raise CheckpointError(f"{ckpt_dir}: unreadable common state: {exc}") from exc
    if COMMON_KEY not in common:
        raise CheckpointError(f"{ckpt_dir}: not written by megatron_sail (no '{COMMON_KEY}' state)")
    return common[COMMON_KEY]


def save_training_state(directory: Path, chunks, optimizer) -> None:
    """Collective: model and optimizer state alone (no RNG, no common state) into the new
    directory ``directory`` - e.g. a second training state kept inside a checkpoint."""
    directory = Path(directory)
    if torch.distributed.get_rank() == 0:
        directory.mkdir(parents=True)
    torch.distributed.barrier()
    state = model_sharded_state_dict(chunks)
    if _has_params(optimizer):
        state["optimizer"] = optimizer.sharded_state_dict(state, metadata=_metadata())
    local_write_results()
    dist_checkpointing.save(state, str(directory))
    torch.distributed.barrier()


def _load_failure(exc: BaseException) -> str:
    """One line for a failed load. torch's CheckpointException carries every rank's
    traceback in its text; the user needs the error and the ranks that met it."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        first = failures[min(failures)]
        inner = first[0] if isinstance(first, tuple) else first
        what = f"{type(inner).__name__}: {inner}" if str(inner) else type(inner).__name__
        ranks = ", ".join(str(r) for r in sorted(failures))
        return (f"{what.splitlines()[0]} reading its tensor files (rank(s) {ranks}); "
                "a file is damaged or incomplete")
    return str(exc) or type(exc).__name__


def _load_tensors(ckpt_dir: Path, chunks, optimizer, rng: bool) -> None:
    state = model_sharded_state_dict(chunks)
    optimizer = optimizer if _has_params(optimizer) else None
    if optimizer is not None:
        _materialise_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=True,
                                                          metadata=_metadata())
    if rng:
        state["rng_state"] = _rng_object(None)
    try:
        loaded = dist_checkpointing.load(state, str(ckpt_dir))
    except (Exception, TorchCheckpointException) as exc:  # all mean "cannot load"
        raise CheckpointError(f"{ckpt_dir}: cannot load checkpoint: {_load_failure(exc)}") from exc
    for i, chunk in enumerate(_unwrap(chunks)):
        chunk.load_state_dict(loaded["model" if len(chunks) == 1 else f"model{i}"])
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
    if "rng_state" in loaded:
        _restore_rng(loaded["rng_state"])


def load_training_state(directory: Path, chunks, optimizer) -> None:
    """Collective: what ``save_training_state`` wrote, at any layout, loaded in place."""
    _load_tensors(Path(directory), chunks, optimizer, rng=False)


def load_checkpoint(ckpt_dir: Path, chunks, optimizer=None, restore_rng: bool = True,
                    validate: Optional[Callable[[dict], None]] = None) -> dict:
    """Collective. Loads model (and optimizer) state in place; returns the common state.
    ``validate(common)`` runs before any tensor is read (e.g. an architecture check)."""
    ckpt_dir = Path(ckpt_dir)
    marker = read_marker(ckpt_dir)
    common = load_common(ckpt_dir)
    if validate is not None:
        validate(common)
    same_layout = marker.get("pp_tp") == [parallel_state.get_pipeline_model_parallel_world_size(),
                                          parallel_state.get_tensor_model_parallel_world_size()]
    _load_tensors(ckpt_dir, chunks, optimizer, rng=restore_rng and same_layout)
    return common
