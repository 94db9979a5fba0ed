"""Single-turn chat encoding in SAIL-VL2's template:

    <|im_start|>user\\n<img><IMG_CONTEXT>*N</img>\\n{question}<|im_end|>\\n<|im_start|>assistant\\n{answer}<|im_end|>\\n

Loss is taken only where the target is an answer token or the answer's
closing <|im_end|>; the prompt and the assistant header are context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from megatron_sail.data.records.special_tokens import IM_END, IM_START

USER_HEADER = f"{IM_START}user\n"
ASSISTANT_HEADER = f"{IM_END}\n{IM_START}assistant\n"
TURN_END = f"{IM_END}\n"


class ChatTokenizer(Protocol):
    @property
    def pad_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...
    @property
    def img_context_id(self) -> int: ...
    @property
    def img_start_id(self) -> int: ...
    @property
    def img_end_id(self) -> int: ...
    def encode(self, text: str) -> list[int]: ...


@dataclass
class EncodedSample:
    tokens: torch.Tensor  # int64 [seq_length]
    labels: torch.Tensor  # int64 [seq_length], labels[i] == tokens[i + 1]
    loss_mask: torch.Tensor  # float32 [seq_length]
    position_ids: torch.Tensor  # int64 [seq_length]


def template_texts() -> list[str]:
    """Template fragments, so a tokenizer trained for the template covers them."""
    return [USER_HEADER, ASSISTANT_HEADER, TURN_END]


def encode_sample(
    tokenizer: ChatTokenizer,
    question: str,
    answer: str,
    num_image_tokens: int,
    seq_length: int,
    num_images: int = 1,
) -> EncodedSample:
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if num_images > 0 and num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be >= 1 with images, got {num_image_tokens}")

    image_block = [tokenizer.img_start_id, *[tokenizer.img_context_id] * num_image_tokens, tokenizer.img_end_id]
    newline = tokenizer.encode("\n")
    prompt = tokenizer.encode(USER_HEADER)
    for _ in range(num_images):
        prompt += image_block + newline
    prompt += tokenizer.encode(question) + tokenizer.encode(ASSISTANT_HEADER)
    target = tokenizer.encode(answer) + [tokenizer.eos_id]
    ids = prompt + target + newline

    n = len(ids)
    if n > seq_length:
        image_tokens = num_images * len(image_block)
        raise ValueError(
            f"sample needs {n} tokens ({image_tokens} image tokens, {n - image_tokens} text tokens, "
            f"answer {len(target)}) but seq_length is {seq_length}"
        )

    seq = torch.tensor(ids, dtype=torch.int64)
    tokens = torch.full((seq_length,), tokenizer.pad_id, dtype=torch.int64)
    tokens[:n] = seq
    labels = torch.full((seq_length,), tokenizer.pad_id, dtype=torch.int64)
    labels[: n - 1] = seq[1:]
    # Position i predicts token i + 1, so the target span shifts left by one.
    loss_mask = torch.zeros(seq_length, dtype=torch.float32)
    loss_mask[len(prompt) - 1 : len(prompt) + len(target) - 1] = 1.0
    return EncodedSample(
        tokens=tokens,
        labels=labels,
        loss_mask=loss_mask,
        position_ids=torch.arange(seq_length, dtype=torch.int64),
    )
