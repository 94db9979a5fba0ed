"""What runs inside the Megatron rank processes: build this rank's model chunks without
initialising them, fill them from a source through the sharded state dict, save, reload and
compare; run a forward pass and gather the logits.

The chunks are built on the meta device, then each parameter gets uninitialised CPU storage:
every value is overwritten anyway, and the random initialisation would cost about a minute per
billion parameters on a CPU and twice the model's memory. Filling follows the same sharded
state dict as ``models.init.initialize_weights``: each sharded tensor knows its global key,
layer and offsets, so TP, PP, VPP and the replicated ViT all come out of Megatron itself.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Optional

import torch
from megatron.core import parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

from megatron_sail.config.layout import Layout
from megatron_sail.config.schema import SailConfig
from megatron_sail.convert.errors import ConversionError, listing
from megatron_sail.convert.progress import Progress
from megatron_sail.models.builder import build_model

if TYPE_CHECKING:
    from megatron_sail.convert.sources import Values


def build_empty(cfg: SailConfig, layout: Layout) -> list:
    img_id = cfg.model.img_context_token_id
    with torch.device("meta"):
        chunks = build_model(cfg, layout, -1 if img_id is None else img_id).chunks
    made: dict[int, torch.nn.Parameter] = {}
    for chunk in chunks:
        for module in chunk.modules():
            for name, param in list(module._parameters.items()):
                if param is None or not param.is_meta:
                    continue
                if id(param) not in made:  # a shared parameter stays shared
                    real = torch.nn.Parameter(torch.empty_like(param, device="cpu"),
                                              requires_grad=param.requires_grad)
                    real.__dict__.update(param.__dict__)  # Megatron's TP/SP attributes
                    made[id(param)] = real
                module._parameters[name] = made[id(param)]
            meta = [n for n, b in module._buffers.items() if b is not None and b.is_meta]
            if meta:
                raise RuntimeError(f"{type(module).__name__} has buffers {meta} that would need "
                                   f"initialising; they cannot be built on the meta device")
    return chunks


def sharded_tensors(chunk) -> list[ShardedTensor]:
    out = []
    for item in chunk.sharded_state_dict().values():
        if isinstance(item, ShardedTensorFactory):
            built = item.build()  # views into the parameter (e.g. the [gate_i; up_i] halves)
            out += list(built.values() if isinstance(built, dict) else built)
        elif isinstance(item, ShardedTensor):
            out.append(item)
    return out


def _row_slab(sh: ShardedTensor) -> Optional[int]:
    """First row when this shard is whole rows of its (per-layer) tensor, else None."""
    lead = sh.prepend_axis_num
    local = sh.local_shape[len(sh.local_shape) - (len(sh.global_shape) - lead):]
    full = tuple(sh.global_shape[lead:])
    offsets = sh.global_offset[lead:]
    if len(full) and tuple(local[1:]) == full[1:] and not any(offsets[1:]):
        return offsets[0]
    return None


@torch.no_grad()
def fill(chunks, values: "Values", show_progress: bool) -> None:
    """Give every sharded tensor of this rank its values: read straight into the parameter
    where its rows are whole rows of the HF tensors, otherwise cut from the full value."""
    work = [sh for chunk in chunks for sh in sharded_tensors(chunk) if sh.flattened_range is None]
    unmapped = sorted({sh.key for sh in work if sh.key not in values.keys()})
    if unmapped:
        raise ConversionError(listing("model tensors that no mapping table covers", unmapped))
    progress = Progress("fill", len(work), show_progress)
    nbytes = 0
    for i, sh in enumerate(work):
        lead = sh.prepend_axis_num  # 1 for tensors stacked over layers
        layer = sh.global_offset[0] if lead else None
        start = _row_slab(sh)
        if start is None or not values.read_rows_into(sh.key, layer, start, sh.data):
            full = values.value(sh.key, layer)
            if tuple(full.shape) != tuple(sh.global_shape[lead:]):
                raise ConversionError(f"{sh.key}: mapped value is {list(full.shape)}, the model "
                                      f"expects {list(sh.global_shape[lead:])}")
            local = sh.local_shape[len(sh.local_shape) - (len(sh.global_shape) - lead):]
            index = tuple(slice(o, o + n) for o, n in zip(sh.global_offset[lead:], local))
            sh.data.copy_(full[index].reshape(sh.data.shape))
        nbytes += sh.data.numel() * sh.data.element_size()
        progress.update(i + 1, nbytes)


def _parameters(chunks):
    seen = set()
    for i, chunk in enumerate(chunks):
        for name, param in chunk.named_parameters():
            if id(param) not in seen:
                seen.add(id(param))
                yield f"chunk{i}.{name}", param


def fingerprints(chunks) -> dict[str, str]:
    """A hash of every local parameter's bytes (hashlib releases the GIL: one thread a core)."""
    def digest(p: torch.Tensor) -> str:
        return hashlib.sha1(p.detach().reshape(-1).view(torch.uint8).numpy()).hexdigest()

    params = dict(_parameters(chunks))
    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        return dict(zip(params, pool.map(digest, params.values())))


@torch.no_grad()
def poison(chunks) -> None:
    """NaN everywhere, so a tensor that a reload misses cannot pass the comparison."""
    for _, p in _parameters(chunks):
        p.fill_(float("nan"))


def mismatches_everywhere(local: list[str]) -> list[str]:
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, local)
    return [f"rank {r}: {name}" for r, names in enumerate(gathered) for name in names]


def is_logits_writer() -> bool:
    return (parallel_state.is_pipeline_last_stage(ignore_virtual=True)
            and parallel_state.get_tensor_model_parallel_rank() == 0)


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
