"""The tensors of a model soup: read every input with the converter's checkpoint reader,
average in fp32, and write through the converter's checkpoint writer (one rank process,
reload-verified). Inputs saved at any layout are read as global tensors, so the soup never
depends on how its inputs were split. ``checkpointing.soup`` decides whether a soup is
allowed; this module checks what only the tensors can show."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from megatron_sail.checkpointing.layout_files import resolve_checkpoint
from megatron_sail.checkpointing.soup import (
    SoupError, lineage_problem, normalised_weights, soup_lineage,
)
from megatron_sail.config import config_from_dict
from megatron_sail.convert.dcp_reader import DistCheckpointReader
from megatron_sail.convert.errors import ConversionError
from megatron_sail.convert.hf_config import architecture_differences
from megatron_sail.convert.importer import write_checkpoint
from megatron_sail.convert.kinds import Index
from megatron_sail.convert.sources import Opened


class SoupValues:
    """The ``Values`` interface of the checkpoint writer: the weighted mean of the inputs'
    value of a key at one (layer[, expert]) index, in the inputs' dtype."""

    def __init__(self, ckpts: list[str], weights: list[float]):
        self.readers = [DistCheckpointReader(Path(c)) for c in ckpts]
        self.weights = weights
        self._cache: tuple = (None, None)
        self._lock = threading.Lock()  # the writer fills shards on several threads

    def keys(self) -> set[str]:
        return set(self.readers[0].model_keys())

    def _layer_mean(self, key: str, layer) -> torch.Tensor:
        """fp32 mean of a whole key (layer None) or of one layer of a stacked key."""
        acc = None
        for reader, weight in zip(self.readers, self.weights):
            part = reader.read([(key, layer)])[0].to(torch.float32)
            acc = part.mul_(weight) if acc is None else acc.add_(part, alpha=weight)
        return acc

    def value(self, key: str, index: Index) -> torch.Tensor:
        layer = index[0] if index else None
        with self._lock:
            if self._cache[0] != (key, layer):
                self._cache = ((key, layer), self._layer_mean(key, layer))
            value = self._cache[1]
        for i in index[1:]:  # an expert of the layer
            value = value[i]
        return value.to(self.readers[0].dtype(key))

    def read_rows_into(self, key, index, start, dest) -> bool:
        return False  # averaged values never come straight from a file


def _check_tensors(dirs: list[Path], readers: list[DistCheckpointReader]) -> None:
    """Same model keys, global shapes and dtypes in every input."""
    first = readers[0]
    want = {k: (tuple(first.tensors[k].size), first.dtype(k)) for k in first.model_keys()}
    for d, reader in zip(dirs[1:], readers[1:]):
        have = {k: (tuple(reader.tensors[k].size), reader.dtype(k)) for k in reader.model_keys()}
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if diff:
            k = diff[0]
            raise SoupError(f"{d}: tensor {k} is {have.get(k)} but {want.get(k)} in {dirs[0]} "
                            f"({len(diff)} differences)")


def write_soup(dirs: list[Path], out: Path, weights: list[float], force: bool,
               progress: bool = False) -> Path:
    readers = [DistCheckpointReader(d) for d in dirs]
    commons = [r.common() for r in readers]
    configs = [config_from_dict(c["config"]) for c in commons]
    for d, cfg in zip(dirs[1:], configs[1:]):
        diff = architecture_differences(configs[0].model, cfg.model)
        if diff:  # never overridable: the weights would not mean the same thing
            raise SoupError(f"{d}: another architecture than {dirs[0]}: {diff[0]}"
                            + (f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""))
    _check_tensors(dirs, readers)
    problem = lineage_problem(dirs)
    if problem and not force:
        raise SoupError(f"{problem}; soups of heterologous checkpoints collapse "
                        f"(--force soups them anyway)")
    lineage = soup_lineage(dirs, weights, forced=bool(problem))
    first = configs[0]
    opened = Opened(first.model, first.train.precision,
                    {"kind": "soup", "ckpts": [str(d) for d in dirs], "weights": weights},
                    commons[0].get("hf_config"))
    origin = {"soup": [str(d.resolve()) for d in dirs], "weights": weights}
    try:
        write_checkpoint(opened, out, origin=origin, progress=progress, lineage=lineage)
    except ConversionError as exc:  # callers of a soup expect checkpoint errors
        raise SoupError(str(exc)) from None
    return Path(out)


def soup_checkpoints(ckpts: list[Path], out: Path, weights: list[float] | None = None,
                     force: bool = False, progress: bool = False) -> Path:
    """Write the weighted average of ``ckpts``' model weights (accumulated in fp32, stored
    in the checkpoints' dtype) to ``out`` (``out/iter_0000000`` + latest file), which
    ``checkpoint.load``, ``sail convert export-hf`` and ``sail forward`` take. Inputs may be
    run ``checkpoints/`` directories or ``iter_*`` directories, saved at any layout.
    Raises ``SoupError`` (or another ``CheckpointError``) when refused."""
    if len(ckpts) < 2:
        raise SoupError(f"a soup needs at least two checkpoints, got {len(ckpts)}")
    dirs = [resolve_checkpoint(c) for c in ckpts]
    weights = normalised_weights(weights, len(dirs))
    if Path(out).exists():
        raise SoupError(f"{out}: already exists; remove it or choose another output path")
    return write_soup(dirs, Path(out), weights, force, progress)
