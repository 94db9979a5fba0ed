"""What runs inside the Megatron rank processes: lay out this rank's part of the model, fill
it from a source through the sharded state dict, save, reload and compare; run a forward pass
and gather the logits.

Writing builds the model on the meta device only, for its sharded state dict: each sharded
tensor knows its global key, layer (and expert) and offsets, so TP, PP, VPP, EP and the
replicated ViT all come out of Megatron itself. Each main replica then gets its own CPU
buffer, filled straight from the source and saved (see ``standalone_shards``). The forward
pass builds the chunks with uninitialised CPU parameters that the checkpoint overwrites (a
random initialisation would cost about a minute per billion parameters on a CPU).
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

import torch
from megatron.core import parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from megatron_sail.compat.dist_ckpt_internals import spread_main_replicas
from megatron_sail.compat.sharded_tensors import is_flat_slice, is_main_replica, stacked_axes
from megatron_sail.config.validation import Layout
from megatron_sail.config.schema import SailConfig
from megatron_sail.convert.errors import ConversionError, listing
from megatron_sail.convert.progress import Progress
from megatron_sail.models.builder import build_model

if TYPE_CHECKING:
    from megatron_sail.convert.sources import Values


def build_meta(cfg: SailConfig, layout: Layout) -> list:
    img_id = cfg.model.img_context_token_id
    with torch.device("meta"):
        return build_model(cfg, layout, -1 if img_id is None else img_id).chunks


def build_empty(cfg: SailConfig, layout: Layout) -> list:
    chunks = build_meta(cfg, layout)
    made: dict[int, torch.nn.Parameter] = {}
    for chunk in chunks:
        for module in chunk.modules():
            own = list(module.named_parameters(recurse=False, remove_duplicate=False))
            for name, param in own:
                if not param.is_meta:
                    continue
                if id(param) not in made:  # a shared parameter stays shared
                    real = torch.nn.Parameter(torch.empty_like(param, device="cpu"),
                                              requires_grad=param.requires_grad)
                    real.__dict__.update(param.__dict__)  # Megatron's TP/SP attributes
                    made[id(param)] = real
                setattr(module, name, made[id(param)])
            meta = [n for n, b in module.named_buffers(recurse=False) if b.is_meta]
            if meta:
                raise RuntimeError(f"{type(module).__name__} has buffers {meta} that would need "
                                   f"initialising; they cannot be built on the meta device")
    return chunks


def _flatten(item) -> Iterator[ShardedTensor]:
    if isinstance(item, ShardedTensor):
        yield item
    elif isinstance(item, ShardedTensorFactory):
        # views into the parameter (e.g. the [gate_i; up_i] halves, one expert of a group)
        yield from _flatten(item.build())
    elif isinstance(item, dict):
        for value in item.values():
            yield from _flatten(value)
    elif isinstance(item, (list, tuple)):
        for value in item:
            yield from _flatten(value)


def sharded_tensors(chunk) -> list[ShardedTensor]:
    """Every sharded tensor of the chunk's state dict (objects such as ``_extra_state`` are
    not weights)."""
    return list(_flatten(chunk.sharded_state_dict()))


def _row_slab(sh: ShardedTensor) -> Optional[int]:
    """First row when this shard is whole rows of its (per-layer) tensor, else None."""
    lead = stacked_axes(sh)
    local = sh.local_shape[len(sh.local_shape) - (len(sh.global_shape) - lead):]
    full = tuple(sh.global_shape[lead:])
    offsets = sh.global_offset[lead:]
    if len(full) and tuple(local[1:]) == full[1:] and not any(offsets[1:]):
        return offsets[0]
    return None


@dataclass
class SaveView:
    """A model chunk as ``checkpointing.dist_ckpt.save_checkpoint`` sees it: its sharded
    state dict (so conversion saves through the same code path as training)."""

    state: dict

    def sharded_state_dict(self, metadata: Optional[dict] = None) -> dict:
        return self.state


def _flattened(state: dict) -> dict:
    """The state dict with every sharded item as its plain sharded tensors (a factory's
    views, e.g. the [gate_i; up_i] halves, become one entry each)."""
    out = {}
    for name, item in state.items():
        if isinstance(item, dict):
            out[name] = _flattened(item)
        elif isinstance(item, (ShardedTensor, ShardedTensorFactory)):
            out.update({f"{name}.{i}": sh for i, sh in enumerate(_flatten(item))})
        else:  # _extra_state objects and the like, saved as they are
            out[name] = item
    return out


def _standalone(state: dict, shards: list[ShardedTensor]) -> dict:
    out = {}
    for name, item in state.items():
        if isinstance(item, dict):
            out[name] = _standalone(item, shards)
        elif isinstance(item, ShardedTensor):
            if not is_flat_slice(item) and is_main_replica(item):
                sh = dataclasses.replace(item, data=torch.empty(item.data.shape,
                                                                dtype=item.dtype))
                shards.append(sh)
                out[name] = sh
        else:
            out[name] = item
    return out


def standalone_shards(chunks) -> tuple[list[SaveView], list[ShardedTensor]]:
    """Collective: what this rank saves, from its meta-device chunks: the main replicas it
    was given, each with a CPU buffer of its own, the other replicas left out (Megatron
    writes main replicas only).

    Buffers instead of parameters keep memory at one copy of the checkpoint summed over the
    ranks at any layout: data-parallel replicas (EP > TP) and a ViT replicated over TP are
    never materialised, and Megatron's writer, which clones every tensor that is a view (the
    [gate; up] halves of each gated fc1 - two thirds of an MoE model's experts), finds none.
    """
    from megatron_sail.checkpointing.dist_ckpt import model_sharded_state_dict

    states = [_flattened(model_sharded_state_dict([c])["model"]) for c in chunks]
    # Megatron's size-balanced choice of which rank saves each replicated shard, as its fully
    # parallel save does, instead of always the first replica: a replicated ViT (TP > 1) or
    # the dense part of an MoE model (EP > TP) would otherwise all be filled, saved and
    # verified by one rank while the others wait.
    spread_main_replicas(states, torch.distributed.group.WORLD)
    shards: list[ShardedTensor] = []
    views = [SaveView(_standalone(state, shards)) for state in states]
    return views, shards


@torch.no_grad()
def fill(shards: list[ShardedTensor], values: "Values", show_progress: bool) -> list[int]:
    """Give every shard its values - read straight into its buffer where its rows are whole
    rows of the HF tensors, otherwise cut from the full value - and return their
    fingerprints. Shards are filled and fingerprinted on one thread a core."""
    unmapped = sorted({sh.key for sh in shards if sh.key not in values.keys()})
    if unmapped:
        raise ConversionError(listing("model tensors that no mapping table covers", unmapped))
    progress = Progress("fill", len(shards), show_progress, shard_bytes(shards))

    def fill_one(sh: ShardedTensor) -> int:
        _fill_one(sh, values)
        return _digest(sh.data)

    nbytes = 0
    with _per_core_threads() as pool:
        digests = []
        for i, (sh, digest) in enumerate(zip(shards, pool.map(fill_one, shards))):
            digests.append(digest)
            nbytes += sh.data.nbytes
            progress.update(i + 1, nbytes)
        return digests


def _fill_one(sh: ShardedTensor, values: "Values") -> None:
    lead = stacked_axes(sh)  # stacked axes: layer, and the global expert index
    index = tuple(sh.global_offset[:lead])
    start = _row_slab(sh)
    if start is not None and values.read_rows_into(sh.key, index, start, sh.data):
        return
    full = values.value(sh.key, index)
    if tuple(full.shape) != tuple(sh.global_shape[lead:]):
        raise ConversionError(f"{sh.key}: mapped value is {list(full.shape)}, the model "
                              f"expects {list(sh.global_shape[lead:])}")
    local = sh.local_shape[len(sh.local_shape) - (len(sh.global_shape) - lead):]
    region = tuple(slice(o, o + n) for o, n in zip(sh.global_offset[lead:], local))
    sh.data.copy_(full[region].reshape(sh.data.shape))


def shard_bytes(shards: list[ShardedTensor]) -> int:
    return sum(sh.data.nbytes for sh in shards)


def shard_name(sh: ShardedTensor) -> str:
    return f"{sh.key}{list(sh.global_offset)}"


def _digest(t: torch.Tensor) -> int:
    # CRC-32: position-sensitive and twice as fast as SHA-1 here; this guards against lost,
    # misplaced or corrupted bytes, not against an adversary
    return zlib.crc32(t.detach().reshape(-1).view(torch.uint8).numpy())


def _per_core_threads() -> ThreadPoolExecutor:
    # zlib and file reads release the GIL: one thread a core
    return ThreadPoolExecutor(max(1, torch.get_num_threads()))


def _fingerprints(tensors: list[torch.Tensor]) -> list[int]:
    """A checksum of each tensor's bytes."""
    with _per_core_threads() as pool:
        return list(pool.map(_digest, tensors))


@torch.no_grad()
def _poison(shards: list[ShardedTensor]) -> None:
    """NaN everywhere, so a shard that a reload misses cannot pass the comparison."""
    for sh in shards:
        sh.data.fill_(float("nan"))


# Tensors (per layer and expert) above this many bytes are reloaded last, after the rest is
# released; SAIL_CONVERT_LARGE_TENSOR_BYTES overrides it (tests use it to exercise both
# passes on tiny models).
LARGE_TENSOR_BYTES = 256 * 2**20


def reload_fingerprints(shards: list[ShardedTensor], ckpt_dir: Path) -> list[int]:
    """Collective: the fingerprint of each shard as it reloads from ``ckpt_dir``.

    The reader holds a whole stored item besides its destination while it copies, so the
    largest tensors (embedding, output layer: 0.6 GiB each for a 152k vocabulary) reload in
    a second pass, after every other shard was checked and its buffer released: the peak is
    then the checkpoint plus a small item, not plus the largest ones. Which pass a key takes
    depends only on its global shape, so every rank agrees."""
    limit = int(os.environ.get("SAIL_CONVERT_LARGE_TENSOR_BYTES", LARGE_TENSOR_BYTES))

    def large(sh: ShardedTensor) -> bool:
        per_layer = sh.global_shape[stacked_axes(sh):]
        return math.prod(per_layer) * sh.dtype.itemsize > limit

    out: list[Optional[int]] = [None] * len(shards)
    for second in (False, True):
        picked = [i for i, sh in enumerate(shards) if large(sh) == second]
        part = [shards[i] for i in picked]
        _poison(part)
        for i, fp in zip(picked, _fingerprints(_reload(part, ckpt_dir))):
            out[i] = fp
        for sh in part:  # checked: its buffer is no longer needed
            sh.data = torch.empty(0, dtype=sh.dtype)
    return out


def _reload(shards: list[ShardedTensor], ckpt_dir: Path) -> list[torch.Tensor]:
    """Collective: the shards' values as stored in ``ckpt_dir`` (read into their buffers).
    Megatron checks that every stored region is read exactly once, as a main replica."""
    from megatron.core import dist_checkpointing

    from megatron_sail.checkpointing.layout_files import refuse_unsafe_pickles

    refuse_unsafe_pickles(ckpt_dir)
    state = {"model": {str(i): sh for i, sh in enumerate(shards)}}
    loaded = dist_checkpointing.load(state, str(ckpt_dir)).get("model", {})  # none: no entry
    return [loaded[str(i)] for i in range(len(shards))]


def mismatches_everywhere(local: list[str]) -> list[str]:
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, local)
    return [f"rank {r}: {name}" for r, names in enumerate(gathered) for name in names]


def is_logits_writer() -> bool:
    """The one rank that holds the logits: last stage, TP rank 0, first data-parallel replica
    (generation with EP > 1 runs data-parallel replicas of the dense part on the same batch)."""
    return (parallel_state.is_pipeline_last_stage(ignore_virtual=True)
            and parallel_state.get_tensor_model_parallel_rank() == 0
            and parallel_state.get_data_parallel_rank() == 0)


@torch.no_grad()
def forward_logits(chunks, layout: Layout, input_ids: torch.Tensor,
                   pixel_values: Optional[torch.Tensor], vocab_size: int,
                   pad_id: int) -> Optional[torch.Tensor]:
    """Full-vocabulary fp32 logits [B, L, vocab_size] on the last pipeline stage, else None.

    With sequence parallelism the sequence is right-padded to a multiple of TP (causal
    attention: padding after a token cannot change its logits) and cut again.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    b, length = input_ids.shape
    pad = (-length) % layout.tp if layout.sequence_parallel else 0
    ids = torch.nn.functional.pad(input_ids, (0, pad), value=pad_id)
    positions = torch.arange(length + pad).unsqueeze(0).expand(b, -1).contiguous()
    for chunk in chunks:
        chunk.eval()
    if layout.pp == 1:
        out = chunks[0](ids, positions, pixel_values=pixel_values)
    else:
        def step(data_iterator, model):
            batch = next(data_iterator)
            return model(*batch), lambda output, non_loss_data=False: output

        store = get_forward_backward_func()(
            forward_step_func=step, data_iterator=iter([(ids, positions, None, pixel_values)]),
            model=chunks, num_microbatches=1, seq_length=length + pad, micro_batch_size=b,
            forward_only=True, collect_non_loss_data=True)
        out = store[0] if parallel_state.is_pipeline_last_stage(ignore_virtual=True) else None
    if out is None or not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    logits = gather_from_tensor_model_parallel_region(out)
    return logits[:, :length, :vocab_size].float()


@torch.no_grad()
def forward_cached(chunks, layout: Layout, input_ids: torch.Tensor,
                   pixel_values: Optional[torch.Tensor], context, first_slot: int,
                   attention_mask: Optional[torch.Tensor], vocab_size: int
                   ) -> Optional[torch.Tensor]:
    """One step of generation with a KV cache: ``input_ids`` [b, s] are the tokens at slots
    ``first_slot..`` of the rows the context is placed at (``compat.inference_context.place``);
    full-vocabulary fp32 logits [b, s or 1, vocab_size] on the last pipeline stage, else None.
    With PP the step goes through the same forward-only schedule as ``forward_logits``, with
    this step's sequence length. ``s`` must already be a multiple of TP under sequence
    parallelism."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_sail.compat.inference_context import active

    b, length = input_ids.shape
    positions = torch.arange(first_slot, first_slot + length).unsqueeze(0).expand(b, -1)
    kwargs = {"pixel_values": pixel_values, "attention_mask": attention_mask,
              "inference_context": context}
    for chunk in chunks:
        chunk.eval()   # before megatron-core 0.18 the cache is used outside training mode only
    with active():
        if layout.pp == 1:
            out = chunks[0](input_ids, positions.contiguous(), **kwargs)
        else:
            def step(data_iterator, model):
                ids, pos = next(data_iterator)
                return model(ids, pos, **kwargs), lambda output, non_loss_data=False: output

            store = get_forward_backward_func()(
                forward_step_func=step, data_iterator=iter([(input_ids, positions.contiguous())]),
                model=chunks, num_microbatches=1, seq_length=length, micro_batch_size=b,
                forward_only=True, collect_non_loss_data=True)
            out = store[0] if parallel_state.is_pipeline_last_stage(ignore_virtual=True) else None
    if out is None or not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return None
    return out[..., :vocab_size].float()   # gathered over TP by the model (inference mode)
