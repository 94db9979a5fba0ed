"""``sail convert export-hf``: a megatron_sail checkpoint (any TP/PP/EP it was saved with,
with or without optimizer state) -> the official SAIL-VL2 release layout.

Runs in one process without Megatron: tensors are read from the distributed checkpoint one
layer at a time, converted by the mapping table and streamed into safetensors shards, so
memory stays at about one layer. ``--reference`` adds the release's code, tokenizer and
processor files and keeps ``auto_map``.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from megatron_sail.checkpointing.layout_files import resolve_checkpoint
from megatron_sail.config import SailConfig, config_from_dict
from megatron_sail.convert import hf_config
from megatron_sail.convert.dcp_reader import DistCheckpointReader
from megatron_sail.convert.errors import ConversionError
from megatron_sail.convert.kinds import Index, Mapping
from megatron_sail.convert.progress import Progress
from megatron_sail.utils.atomic import SyncBehind, staging_dir
from megatron_sail.convert.safetensors_io import (
    DTYPE_NAMES, INDEX_FILE, SINGLE_FILE, PlannedTensor, ShardedWriter, parse_size,
)
from megatron_sail.convert.tables import Table, sailvl_release

# Release files carried over from --reference (config.json is regenerated, weights are ours).
REFERENCE_FILES = ("*.py", "tokenizer*", "vocab.json", "merges.txt", "added_tokens.json",
                   "special_tokens_map.json", "preprocessor_config.json", "generation_config.json",
                   "chat_template*")
_TORCH_DTYPE = {torch.bfloat16: "bfloat16", torch.float32: "float32", torch.float16: "float16"}


@dataclass
class ExportReport:
    out: Path
    source: Path
    tensors: int
    bytes: int
    seconds: float


Batch = list[tuple[Mapping, Optional[int]]]


def read_batches(table: Table) -> list[Batch]:
    """Conversion order: runs of per-layer mappings go layer by layer (one checkpoint read
    per layer of a run, all experts of that layer at once), the rest one mapping at a time."""
    batches: list[Batch] = []
    run: list[Mapping] = []

    def flush() -> None:
        for layer in range(run[0].layers if run else 0):
            batches.append([(m, layer) for m in run])
        run.clear()

    for m in table.mappings:
        if m.layers and run and run[0].layers == m.layers:
            run.append(m)
            continue
        flush()
        if m.layers:
            run.append(m)
        else:
            batches.append([(m, None)])
    flush()
    return batches


def _per_index(m: Mapping, layer: Optional[int], tensor: Optional[torch.Tensor] = None
               ) -> list[tuple[Index, Optional[torch.Tensor]]]:
    """(index, value) of each tensor a read yields: one, or one per expert of the layer (a
    layer's read holds all its experts, by global index)."""
    if layer is None:
        return [((), tensor)]
    if m.experts:
        return [((layer, e), None if tensor is None else tensor[e]) for e in range(m.experts)]
    return [((layer,), tensor)]


def open_checkpoint(path: str | Path) -> tuple[Path, DistCheckpointReader, SailConfig, dict]:
    ckpt_dir = resolve_checkpoint(path)
    reader = DistCheckpointReader(ckpt_dir)
    common = reader.common()
    return ckpt_dir, reader, config_from_dict(common["config"]), common


def _reference_base(reference: Path, model) -> dict:
    base = hf_config.read_json(reference / "config.json")
    ref_model = hf_config.release_model(base, has_lm_head=not model.llm.tie_word_embeddings)
    diff = hf_config.architecture_differences(ref_model, model)
    if diff:
        raise ConversionError(f"{reference}: --reference describes another model "
                              f"(reference vs checkpoint):\n  - " + "\n  - ".join(diff))
    return base


def export_checkpoint(ckpt: str | Path, out: str | Path, reference: Optional[str | Path] = None,
                      max_shard_size: str = "5GB", progress: bool = True) -> ExportReport:
    start = time.perf_counter()
    ckpt_dir, reader, cfg, common = open_checkpoint(ckpt)
    model = cfg.model
    table = sailvl_release(model)
    reader.check(table.megatron_shapes())
    base = _reference_base(Path(reference), model) if reference else common.get("hf_config")
    carried = _reference_files(Path(reference)) if reference else []

    batches = read_batches(table)
    shapes = table.export_shapes()
    plan = [PlannedTensor(name, reader.dtype(m.megatron), shapes[name])
            for batch in batches for m, layer in batch for index, _ in _per_index(m, layer)
            for name in m.export_names(index)]
    unknown = sorted({str(t.dtype) for t in plan if t.dtype not in DTYPE_NAMES})
    if unknown:
        raise ConversionError(f"{ckpt_dir}: tensors stored as {unknown} cannot be written")
    dtype = _TORCH_DTYPE.get(reader.dtype("language_model.embedding.word_embeddings.weight"),
                             "float32")

    with staging_dir(out) as tmp, ThreadPoolExecutor(1) as writing:
        # Three stages overlap: the next layer is read and converted while this one is
        # written, and what is written goes to disk meanwhile.
        sync = SyncBehind()
        writer = ShardedWriter(tmp, plan, parse_size(max_shard_size), sync)
        bar = Progress("export", len(plan), progress, sum(t.nbytes for t in plan))
        counts = {"tensors": 0, "bytes": 0}

        def write(pairs: list[tuple[str, torch.Tensor]]) -> None:
            for name, value in pairs:
                writer.write(name, value)
                counts["tensors"] += 1
                counts["bytes"] += value.nbytes
                bar.update(counts["tensors"], counts["bytes"])

        written: Optional[Future] = None
        try:
            for batch in batches:
                tensors = reader.read([(m.megatron, layer) for m, layer in batch])
                pairs = [pair for (m, layer), tensor in zip(batch, tensors)
                         for index, part in _per_index(m, layer, tensor)
                         for pair in zip(m.export_names(index), m.to_hf(part))]
                if written is not None:
                    written.result()  # at most two layers in memory
                written = writing.submit(write, pairs)
            if written is not None:
                written.result()
            writer.finish()
        finally:
            if written is not None:
                written.exception()  # let a running write end before closing its file
            writer.abort()
            sync.wait()
        config = hf_config.release_config(model, dtype, base, keep_auto_map=reference is not None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for src in carried:
            shutil.copy2(src, tmp / src.name)
    return ExportReport(Path(out), ckpt_dir, len(plan), counts["bytes"],
                        time.perf_counter() - start)


def _reference_files(reference: Path) -> list[Path]:
    """The release files to carry over. A symbolic link is followed only to a file inside
    ``reference`` - or, for a Hugging Face hub cache snapshot (``.../snapshots/REV``), inside
    that repository's ``blobs/`` - so that an export never copies a file from elsewhere."""
    skip = {"config.json", INDEX_FILE, SINGLE_FILE}
    home = reference.resolve()
    roots = [home] + ([home.parent.parent / "blobs"] if home.parent.name == "snapshots" else [])
    files = []
    for pattern in REFERENCE_FILES:
        for src in sorted(reference.glob(pattern)):
            if src.is_file() and src.name not in skip and not src.name.endswith(".safetensors"):
                target = src.resolve()
                if not any(target.is_relative_to(root) for root in roots):
                    raise ConversionError(f"{src}: links to {target}, outside {reference}; "
                                          f"--reference files are copied only from inside it")
                files.append(src)
    return files
