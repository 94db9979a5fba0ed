"""SAIL-VL: vision encoder -> pixel shuffle + adapter -> embeddings spliced at <IMG_CONTEXT>
-> Qwen3 language model. One instance is one pipeline (or virtual pipeline) stage.

Context parallelism splits the sequence after the splice (models/context_parallel.py): the
first stage embeds and splices the whole row, then keeps its CP rank's load-balanced chunks.
The ViT is not split along the sequence: every CP rank of the first stage runs it on all of
the micro-batch's tiles. Spreading tiles over the CP ranks and all-gathering the visual
embeddings would divide ViT work by CP, but the image tokens of a chunk can come from any tile,
so every rank needs every embedding anyway, and the gradient would need the matching
reduce-scatter of the gathered embeddings plus tile counts that divide by CP; computing it once
per rank needs no collective at all, keeps any tile count valid, and its gradient is already
right: each rank's ViT receives the gradient of the visual tokens in its own chunks, and the
data-parallel reduction, which spans DP x CP, sums them. The cost is ViT compute repeated CP
times, small next to the LLM at the sequence lengths that need CP (an 8k-token chunk per rank
against one ViT pass over the row's tiles).
"""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.module import MegatronModule

from megatron_sail.models.adapter import VisionAdapter, pixel_shuffle_v2
from megatron_sail.models.context_parallel import split_for_rank
from megatron_sail.models.vision import SailViT


def splice_visual_embeddings(text_embeds: torch.Tensor, input_ids: torch.Tensor,
                             visual_embeds: torch.Tensor, img_context_id: int) -> torch.Tensor:
    """Overwrite the embeddings at <IMG_CONTEXT> positions with visual embeddings, in order.

    ``text_embeds`` [b, s, h], ``input_ids`` [b, s], ``visual_embeds`` [n, h] where n must equal
    the number of <IMG_CONTEXT> tokens (tile by tile, token by token, batch-major).
    """
    positions = input_ids == img_context_id
    count = int(positions.sum())
    if count != visual_embeds.shape[0]:
        raise ValueError(
            f"the batch has {count} <IMG_CONTEXT> tokens (id {img_context_id}) but the images "
            f"give {visual_embeds.shape[0]} visual embeddings"
        )
    out = text_embeds.clone()
    out[positions] = visual_embeds.to(out.dtype)
    return out


class SailVLModel(MegatronModule):
    def __init__(
        self,
        language_model: GPTModel,
        vision: Optional[SailViT],
        adapter: Optional[VisionAdapter],
        img_context_id: int,
        vision_replica_rank: Optional[int] = None,
    ):
        super().__init__(config=language_model.config)
        self.language_model = language_model
        self.vision = vision
        self.adapter = adapter
        self.img_context_id = img_context_id
        self.pre_process = language_model.pre_process
        self.post_process = language_model.post_process
        self.share_embeddings_and_output_weights = (
            language_model.share_embeddings_and_output_weights
        )
        self.model_type = language_model.model_type
        # A ViT replicated over the LLM's TP ranks is sharded as if TP were 1; its checkpoint
        # replicas must still be told apart by the global TP rank.
        self.vision_replica_rank = vision_replica_rank

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata=None):
        sharded = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        if self.vision is not None and self.vision_replica_rank is not None:
            for key, item in sharded.items():
                if key.startswith(f"{prefix}vision.") and hasattr(item, "replica_id"):
                    rid = item.replica_id
                    item.replica_id = (rid[0], self.vision_replica_rank, *rid[2:])
        return sharded

    def set_input_tensor(self, input_tensor) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def shared_embedding_or_output_weight(self):
        return self.language_model.shared_embedding_or_output_weight()

    def _visual(self, pixel_values: torch.Tensor, image_grids: Optional[torch.Tensor]):
        if image_grids is None:  # fixed-size tiles [N, 3, H, W]
            return self.adapter(self.vision(pixel_values))
        features = self.vision.forward_packed(pixel_values, image_grids)  # AnyRes
        # each image merged on its own grid, then all tokens through the MLP at once
        return self.adapter.project(torch.cat([pixel_shuffle_v2(f.unsqueeze(0))[0]
                                               for f in features]))

    def _embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
               pixel_values: Optional[torch.Tensor],
               image_grids: Optional[torch.Tensor] = None,
               packed_seq_params: Optional[PackedSeqParams] = None) -> torch.Tensor:
        embeds = self.language_model.embedding(input_ids=input_ids, position_ids=position_ids)
        if pixel_values is not None and pixel_values.numel() > 0:
            visual = self._visual(pixel_values, image_grids)
            embeds = splice_visual_embeddings(
                embeds.transpose(0, 1), input_ids, visual, self.img_context_id
            ).transpose(0, 1)
        elif bool((input_ids == self.img_context_id).any()):
            raise ValueError("the batch has <IMG_CONTEXT> tokens but no pixel_values")
        embeds = _context_parallel_split(embeds, packed_seq_params)  # [s/cp, b, h]
        if self.config.sequence_parallel:
            embeds = tensor_parallel.scatter_to_sequence_parallel_region(embeds.contiguous())
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        labels: Optional[torch.Tensor] = None,
        pixel_values: Optional[torch.Tensor] = None,
        packed_seq_params: Optional[PackedSeqParams] = None,
        image_grids: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        inference_context=None,
    ) -> torch.Tensor:
        """First stage: embeds and splices; last stage: per-token fp32 loss [b, s] when
        ``labels`` are given, else vocab-parallel logits [b, s, v/tp]; middle: hidden states.
        ``packed_seq_params`` (THD, one packed row): attention and rotary positions restart at
        every sample boundary. ``image_grids`` [n, 2] (AnyRes): ``pixel_values`` are then the
        images' flattened patches [P, 3*14*14] with these (rows, cols) patch grids.
        Context parallelism: ``input_ids`` and ``position_ids`` are the whole row (the splice
        needs every <IMG_CONTEXT> position), ``labels`` this CP rank's chunks of it.
        ``inference_context`` (generation's KV cache; ``attention_mask`` [b, 1, s, kv] True
        where masked): logits come gathered over TP, as Megatron requires then."""
        decoder_input = (self._embed(input_ids, position_ids, pixel_values, image_grids,
                                     packed_seq_params)
                         if self.pre_process else None)
        # With labels the last stage returns Megatron's per-token loss [b, s] (fp32), from
        # its fused cross entropy when config.cross_entropy_loss_fusion is set.
        return self.language_model(
            input_ids, position_ids, attention_mask=attention_mask, decoder_input=decoder_input,
            labels=labels if self.post_process else None, packed_seq_params=packed_seq_params,
            inference_context=inference_context,
            runtime_gather_output=True if inference_context is not None else None,
        )


def _context_parallel_split(embeds: torch.Tensor,
                            packed_seq_params: Optional[PackedSeqParams]) -> torch.Tensor:
    """[s, b, h] -> this CP rank's load-balanced chunks [s / cp, b, h] (of every packed
    segment, by the padded ``cu_seqlens``)."""
    cp = parallel_state.get_context_parallel_world_size()
    if cp == 1:
        return embeds
    bounds = None
    if packed_seq_params is not None:
        padded = packed_seq_params.cu_seqlens_q_padded
        bounds = (padded if padded is not None else packed_seq_params.cu_seqlens_q).tolist()
    return split_for_rank(embeds, 0, cp, parallel_state.get_context_parallel_rank(), bounds)
