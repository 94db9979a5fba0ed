"""One training or evaluation step through Megatron's pipeline schedules.

The loss of a micro-batch is the *sum* of its token losses plus its token count; Megatron
(``calculate_per_token_loss``) divides gradients by the global count, so the update equals
that of the mean over all loss tokens of the global batch, whatever the layout.

Under context parallelism every CP rank gets the whole micro-batch (the first stage splices
images into the whole row) and keeps its load-balanced chunks of the labels and the loss mask
(models/context_parallel.py); its loss is the sum over its own tokens, with its own token
count. Megatron's ``finalize_model_grads`` sums the counts, and the DDP wrapper the gradients,
over the data-parallel group with CP (``get_data_parallel_group(with_context_parallel=True)``),
and ``_reduce_losses`` sums over all ranks: the same loss and update as without CP. Position
ids stay whole: they only reach the embedding, before the split; the rotary embedding takes
each chunk's global positions from the CP rank (and the padded ``cu_seqlens`` of a packed row).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Optional

import torch
from megatron.core import parallel_state
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_sail.data.packing.microbatch import MicroBatch, normalize_pixels
from megatron_sail.models.context_parallel import split_for_rank


def comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")


def _loss_func(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    mask = loss_mask.to(per_token_loss.device).float()
    loss_sum = (per_token_loss.float() * mask).sum()
    num_tokens = mask.sum().to(torch.int)
    return loss_sum, num_tokens, {"loss": torch.stack([loss_sum.detach(), num_tokens.float()])}


def _forward_step(data_iterator, model, before_microbatch: Optional[Callable] = None):
    batch: Optional[MicroBatch] = next(data_iterator)
    if batch is None:  # a middle pipeline stage: hidden states come from the previous stage
        return model(None, None), None
    if not model.module.pre_process:  # only the first stage runs the ViT: move no pixels
        batch = replace(batch, pixel_values=None, image_grids=None)
    batch = batch.to(comm_device())
    if batch.pixel_values is not None and batch.pixel_values.dtype == torch.uint8:
        batch.pixel_values = normalize_pixels(batch.pixel_values)
    if before_microbatch is not None:
        before_microbatch(batch)
    labels, loss_mask = _context_parallel_chunks(batch)
    output = model(batch.tokens, batch.position_ids, labels=labels,
                   pixel_values=batch.pixel_values, packed_seq_params=packed_seq_params(batch),
                   image_grids=batch.image_grids)
    return output, partial(_loss_func, loss_mask)


def _context_parallel_chunks(batch: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """This CP rank's chunks of the labels and the loss mask ([b, s] -> [b, s / cp])."""
    cp = parallel_state.get_context_parallel_world_size()
    if cp == 1:
        return batch.labels, batch.loss_mask
    rank = parallel_state.get_context_parallel_rank()
    bounds = None if batch.cu_seqlens is None else batch.cu_seqlens.tolist()
    return tuple(split_for_rank(t, 1, cp, rank, bounds) for t in (batch.labels, batch.loss_mask))


def packed_seq_params(batch: MicroBatch) -> Optional[PackedSeqParams]:
    """Megatron's THD description of a packed row (the same on every pipeline stage). With
    samples padded to a multiple of 2 x CP, the padded bounds (which attention, the rotary
    embedding and the CP split follow) and the real ones are both carried."""
    if batch.cu_seqlens is None:
        return None
    if batch.tokens.shape[0] != 1:
        raise ValueError(f"a packed micro-batch is one row, got {batch.tokens.shape[0]}")
    cu = batch.cu_seqlens.to(torch.int32)
    if batch.cu_seqlens_unpadded is None:
        return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                               max_seqlen_q=batch.max_seqlen, max_seqlen_kv=batch.max_seqlen)
    real = batch.cu_seqlens_unpadded.to(torch.int32)
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=real, cu_seqlens_kv=real,
                           cu_seqlens_q_padded=cu, cu_seqlens_kv_padded=cu,
                           max_seqlen_q=batch.max_seqlen, max_seqlen_kv=batch.max_seqlen)


@dataclass
class StepResult:
    loss_sum: float
    num_tokens: float
    grad_norm: Optional[float] = None

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.num_tokens, 1.0)


def _reduce_losses(losses_reduced: list) -> tuple[float, float]:
    """Global (loss_sum, num_tokens) over all micro-batches and DP ranks, known on all ranks."""
    total = torch.zeros(2, dtype=torch.float64, device=comm_device())
    if parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0:
        for item in losses_reduced:
            total += item["loss"].to(total)
    torch.distributed.all_reduce(total)
    return float(total[0]), float(total[1])


def _iterators(model_chunks, microbatches: list[MicroBatch], all_chunks: bool = False):
    """One iterator per model chunk; only chunks with the embedding or the loss need data
    (unless ``all_chunks``: e.g. MoE routing statistics need every stage's token kinds;
    packed rows: every stage's attention needs the sample boundaries)."""
    all_chunks = all_chunks or any(mb.cu_seqlens is not None for mb in microbatches)
    iterators = []
    for chunk in model_chunks:
        fed = all_chunks or chunk.module.pre_process or chunk.module.post_process
        iterators.append(iter(microbatches if fed else [None] * len(microbatches)))
    return iterators if len(iterators) > 1 else iterators[0]


def run_step(model_chunks, optimizer, scheduler, microbatches: list[MicroBatch],
             seq_length: int, micro_batch_size: int, forward_only: bool = False,
             before_microbatch: Optional[Callable[[MicroBatch], None]] = None,
             lr_scale: float = 1.0) -> StepResult:
    """``lr_scale`` multiplies the scheduled LR of this step (AdaLRS)."""
    if not forward_only:
        for chunk in model_chunks:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
    losses = get_forward_backward_func()(
        forward_step_func=partial(_forward_step, before_microbatch=before_microbatch),
        data_iterator=_iterators(model_chunks, microbatches, before_microbatch is not None),
        model=model_chunks,
        num_microbatches=len(microbatches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    grad_norm = None
    if not forward_only:
        scheduler.step(increment=1)  # iteration k runs with the schedule's lr at step k
        if lr_scale != 1.0:  # the scheduler sets every group's lr afresh each step
            for group in optimizer.param_groups:
                group["lr"] *= lr_scale
        _, grad_norm, _ = optimizer.step()
    loss_sum, num_tokens = _reduce_losses(losses)
    return StepResult(loss_sum, num_tokens, grad_norm)
