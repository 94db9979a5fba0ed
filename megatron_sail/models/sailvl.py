"""SAIL-VL: vision encoder -> pixel shuffle + adapter -> embeddings spliced at <IMG_CONTEXT>
-> Qwen3 language model. One instance is one pipeline (or virtual pipeline) stage."""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core import tensor_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.module import MegatronModule

from megatron_sail.models.adapter import VisionAdapter, pixel_shuffle_v2
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
               image_grids: Optional[torch.Tensor] = None) -> torch.Tensor:
        embeds = self.language_model.embedding(input_ids=input_ids, position_ids=position_ids)
        if pixel_values is not None and pixel_values.numel() > 0:
            visual = self._visual(pixel_values, image_grids)
            embeds = splice_visual_embeddings(
                embeds.transpose(0, 1), input_ids, visual, self.img_context_id
            ).transpose(0, 1)
        elif bool((input_ids == self.img_context_id).any()):
            raise ValueError("the batch has <IMG_CONTEXT> tokens but no pixel_values")
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
    ) -> torch.Tensor:
        """First stage: embeds and splices; last stage: per-token fp32 loss [b, s] when
        ``labels`` are given, else vocab-parallel logits [b, s, v/tp]; middle: hidden states.
        ``packed_seq_params`` (THD, one packed row): attention and rotary positions restart at
        every sample boundary. ``image_grids`` [n, 2] (AnyRes): ``pixel_values`` are then the
        images' flattened patches [P, 3*14*14] with these (rows, cols) patch grids."""
        decoder_input = (self._embed(input_ids, position_ids, pixel_values, image_grids)
                         if self.pre_process else None)
        # With labels the last stage returns Megatron's per-token loss [b, s] (fp32), from
        # its fused cross entropy when config.cross_entropy_loss_fusion is set.
        return self.language_model(
            input_ids, position_ids, attention_mask=None, decoder_input=decoder_input,
            labels=labels if self.post_process else None, packed_seq_params=packed_seq_params,
        )
