"""Read a megatron_sail distributed checkpoint tensor by tensor - one layer of a stacked
tensor at a time - without Megatron, process groups or the layout it was saved with.

Megatron's ``torch_dist`` backend stores every sharded key as one global tensor in
PyTorch's distributed-checkpoint (DCP) format, whatever TP/PP/EP wrote it; DCP can read
any region of it. Only the model is read; optimizer state and RNG are skipped.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import LoadPlan

from megatron_sail.checkpointing.layout_files import CheckpointError, refuse_unsafe_pickles
from megatron_sail.compat.dist_ckpt_internals import EMBEDDED_COMMON_KEY, has_embedded_common
from megatron_sail.compat.torch_dcp import create_read_items_for_chunk_list
from megatron_sail.convert.errors import ConversionError, inventory_problems

# = checkpointing.dist_ckpt.COMMON_KEY; that module imports Megatron, which export does not need
COMMON_KEY = "sail"
# Optimizer state: "optimizer.*", or "chained_N.optimizer.*" when Megatron chains optimizers
# (an MoE model's expert and dense parameters have one each); RNG state.
_NOT_MODEL = re.compile(r"(chained_\d+\.)?optimizer\.|rng_state")


class _CachedReader(FileSystemReader):
    """DCP re-reads the metadata on every load; read it once."""

    _metadata = None

    def read_metadata(self):
        if self._metadata is None:
            self._metadata = super().read_metadata()
        return self._metadata


class _RegionPlanner(DefaultLoadPlanner):
    """Loads a region (e.g. one layer) of each requested global tensor into a tensor of the
    region's shape: ``offsets[key]`` is where the region starts."""

    def __init__(self, offsets: dict[str, tuple[int, ...]]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.offsets = offsets

    def create_local_plan(self) -> LoadPlan:
        items = []
        for key, tensor in self.state_dict.items():
            region = ChunkStorageMetadata(offsets=torch.Size(self.offsets[key]),
                                          sizes=tensor.shape)
            stored = self.metadata.state_dict_metadata[key]
            items += create_read_items_for_chunk_list(key, stored, [region])
        return LoadPlan(items)

    def lookup_tensor(self, index):
        return self.state_dict[index.fqn]


class _RawBytesPlanner(DefaultLoadPlanner):
    """Hands stored objects over as their bytes: DCP's default planner unpickles them with
    ``weights_only=False``, which a checkpoint from elsewhere must never reach."""

    def __init__(self):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        self.state_dict[read_item.dest_index.fqn] = io.BytesIO(value.read())


class DistCheckpointReader:
    def __init__(self, ckpt_dir: Path):
        self.ckpt_dir = Path(ckpt_dir)
        backends = self._backends()
        # megatron-core < 0.19: common state in common.pt ("common_backend": "torch");
        # >= 0.19: inside the .distcp files, no common backend
        self._embedded_common = has_embedded_common(self.ckpt_dir)
        common_kind = None if self._embedded_common else "torch"
        kinds = (backends.get("sharded_backend"), backends.get("common_backend"))
        if kinds != ("torch_dist", common_kind):
            raise CheckpointError(f"{self.ckpt_dir}: unsupported checkpoint backends {backends} "
                                  f"(expected torch_dist + torch, or torch_dist alone without "
                                  f"common.pt)")
        refuse_unsafe_pickles(self.ckpt_dir)  # and restricts the reads below
        self._reader = _CachedReader(str(self.ckpt_dir))
        try:
            metadata = self._reader.read_metadata()
        except Exception as exc:  # DCP raises assorted errors for unreadable metadata
            raise CheckpointError(f"{self.ckpt_dir}: unreadable checkpoint metadata: "
                                  f"{exc}") from None
        self.tensors: dict[str, TensorStorageMetadata] = {
            k: v for k, v in metadata.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)}

    def _backends(self) -> dict:
        path = self.ckpt_dir / "metadata.json"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{path}: unreadable: {exc}") from None

    def common(self) -> dict:
        """The plain state saved next to the tensors (config, train state, ...)."""
        path = self.ckpt_dir / "common.pt"
        try:
            if self._embedded_common:
                path = self.ckpt_dir / f"{EMBEDDED_COMMON_KEY} in the .distcp files"
                common = torch.load(self._embedded_common_bytes(), map_location="cpu",
                                    weights_only=True)[0]
            else:
                common = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch.load raises many kinds for a bad file
            raise CheckpointError(f"{path}: unreadable common state: {exc}") from None
        if COMMON_KEY not in common or "config" not in common[COMMON_KEY]:
            raise CheckpointError(f"{self.ckpt_dir}: not written by megatron_sail (no config)")
        return common[COMMON_KEY]

    def _embedded_common_bytes(self) -> io.BytesIO:
        """megatron-core >= 0.19: the common state, torch-saved as a one-element list."""
        state = {EMBEDDED_COMMON_KEY: io.BytesIO()}
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, storage_reader=self._reader, planner=_RawBytesPlanner(), no_dist=True)
        return state[EMBEDDED_COMMON_KEY]

    def model_keys(self) -> list[str]:
        return [k for k in self.tensors if not _NOT_MODEL.match(k)]

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].properties.dtype

    def check(self, expected: dict[str, tuple[int, ...]]) -> None:
        """The checkpoint's model tensors are exactly ``expected`` (global shapes)."""
        present = {k: self.tensors[k].size for k in self.model_keys()}
        parts = inventory_problems(present, expected, sorted(set(present) - set(expected)),
                                   "tensors no mapping covers", "stored", "expected")
        if parts:
            raise ConversionError(f"{self.ckpt_dir}: does not match its stored model config\n"
                                  + "\n".join(parts))

    def read(self, requests: list[tuple[str, Optional[int]]]) -> list[torch.Tensor]:
        """Tensors for (key, layer) pairs of distinct keys, in one DCP pass; layer None
        reads the whole tensor, a layer index reads that slice of a stacked tensor."""
        if len({key for key, _ in requests}) != len(requests):
            raise ValueError("one read per key at a time")
        state, offsets = {}, {}
        for key, layer in requests:
            size = tuple(self.tensors[key].size)
            shape = size if layer is None else (1, *size[1:])
            state[key] = torch.empty(shape, dtype=self.dtype(key))
            offsets[key] = ((0 if layer is None else layer,) + (0,) * (len(size) - 1))[: len(size)]
        try:
            with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
                warnings.simplefilter("ignore", UserWarning)
                dcp.load(state, storage_reader=self._reader, planner=_RegionPlanner(offsets),
                         no_dist=True)
        except Exception as exc:  # CheckpointException and I/O errors: name the checkpoint
            raise CheckpointError(f"{self.ckpt_dir}: cannot read {[k for k, _ in requests]}: "
                                  f"{exc}") from None
        return [state[key] if layer is None else state[key][0] for key, layer in requests]
