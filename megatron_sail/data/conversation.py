"""Multi-turn chat encoding in the release's ChatML template, with visual placeholders
expanded and the loss restricted to assistant turns.

    <|im_start|>system\\n{system}<|im_end|>\\n          (only when there is a system text)
    <|im_start|>user\\n{user}<|im_end|>\\n
    <|im_start|>assistant\\n{answer}<|im_end|>\\n      ... repeated per turn

- ``<image>`` -> ``<img>`` + ``<IMG_CONTEXT>`` x (tokens_per_tile x tiles of that image) + ``</img>``.
- ``<video>`` -> ``Frame1: <image>\\nFrame2: <image>...FrameK: <image>`` with one tile per frame
  (InternVL's video convention: 1-based frame labels, frames joined by newlines; the
  ``\\n`` that usually follows ``<video>`` then ends the last frame's line).
- Targets: every assistant turn's text and its closing ``<|im_end|>``; the role header and
  the newline after ``<|im_end|>`` are context. With ``loss="answer_only"`` a leading
  ``<think>...</think>`` block (and the whitespace after it) is context too.
- ``<think>``, ``</think>`` and ``\\boxed{}`` are ordinary text here; the tokenizer maps the
  think tags to their single ids.

Text between special tokens is tokenized as one string, exactly as a Hugging Face tokenizer
does for the rendered conversation, so ids match ``apply_chat_template``. Where a loss boundary
falls inside such a string (after ``assistant\\n`` or after the think block) the boundary token
is the first one that is not entirely context.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from megatron_sail.data.chat import ChatTokenizer
from megatron_sail.data.records import (
    ASSISTANT,
    IMAGE_PLACEHOLDER,
    SYSTEM,
    USER,
    VIDEO_PLACEHOLDER,
    Turn,
    split_think,
)
from megatron_sail.data.special_tokens import IM_END, IM_START, IMG_CONTEXT, IMG_END, IMG_START

# One 448 px tile -> 32x32 patches -> 16x16 tokens after the 2x2 pixel shuffle.
TOKENS_PER_TILE = 256
TURN_END = f"{IM_END}\n"
_PLACEHOLDERS = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)})")


@dataclass
class EncodedConversation:
    """One sample, unpadded (length n); padding and packing come later."""

    tokens: torch.Tensor  # int64 [n]
    labels: torch.Tensor  # int64 [n]; labels[i] = tokens[i + 1], labels[n - 1] = pad
    loss_mask: torch.Tensor  # float32 [n]; 1 where labels[i] is a target
    position_ids: torch.Tensor  # int64 [n], 0..n-1
    num_visual_tokens: int


@dataclass(frozen=True)
class _Visual:
    tokens: int  # <IMG_CONTEXT> tokens of the block


def header(role: str) -> str:
    return f"{IM_START}{role}\n"


def _user_pieces(text: str, image_tokens: list[int], video_frames: int,
                 frame_tokens: int) -> list[str | _Visual]:
    """The user turn as alternating text and visual blocks; ``image_tokens`` is consumed."""
    pieces: list[str | _Visual] = []
    buf = header(USER)
    for part in _PLACEHOLDERS.split(text):
        if part == IMAGE_PLACEHOLDER:
            if not image_tokens:
                raise ValueError("more <image> placeholders than images")
            pieces += [buf, _Visual(image_tokens.pop(0))]
            buf = ""
        elif part == VIDEO_PLACEHOLDER:
            if video_frames < 1:
                raise ValueError("a <video> placeholder but no video frames")
            for i in range(1, video_frames + 1):
                buf += ("\n" if i > 1 else "") + f"Frame{i}: "
                pieces += [buf, _Visual(frame_tokens)]
                buf = ""
        else:
            buf += part
    pieces.append(buf + TURN_END)
    return pieces


def _with_system(turns: Sequence[Turn], system_message: str | None) -> list[Turn]:
    turns = list(turns)
    if system_message is not None and (not turns or turns[0].role != SYSTEM):
        turns.insert(0, Turn(SYSTEM, system_message))
    return turns


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _assistant_ids(tokenizer: ChatTokenizer, text: str, answer_only: bool) -> tuple[list[int], list[bool]]:
    head = header(ASSISTANT)
    ids = tokenizer.encode(head + text)
    context = _common_prefix(ids, tokenizer.encode(head))
    think = split_think(text) if answer_only else None
    if think is not None:
        context = max(context, _common_prefix(ids, tokenizer.encode(head + think[0])))
    flags = [False] * context + [True] * (len(ids) - context)
    newline = tokenizer.encode("\n")
    return ids + [tokenizer.eos_id] + newline, flags + [True] + [False] * len(newline)


def _pieces(turns: Sequence[Turn], image_tiles: Sequence[int], video_frames: int,
            system_message: str | None, tokens_per_tile: int,
            image_tokens: Sequence[int] | None = None) -> list[tuple[str, str | _Visual]]:
    """(role, piece) in order; assistant pieces are their raw texts. Images take
    ``image_tokens`` context tokens each when given (AnyRes), else tiles x tokens_per_tile."""
    tiles = list(image_tokens) if image_tokens is not None \
        else [t * tokens_per_tile for t in image_tiles]
    out: list[tuple[str, str | _Visual]] = []
    for turn in _with_system(turns, system_message):
        if turn.role == USER:
            out += [(USER, p) for p in _user_pieces(turn.text, tiles, video_frames, tokens_per_tile)]
        elif turn.role == ASSISTANT:
            out.append((ASSISTANT, turn.text))
        else:
            out.append((SYSTEM, header(SYSTEM) + turn.text + TURN_END))
    if tiles:
        raise ValueError(f"{len(tiles)} image(s) left without an <image> placeholder")
    return out


def encode_conversation(
    tokenizer: ChatTokenizer,
    turns: Sequence[Turn],
    image_tiles: Sequence[int] = (),
    video_frames: int = 0,
    loss: str = "all_assistant",
    tokens_per_tile: int = TOKENS_PER_TILE,
    system_message: str | None = None,
    image_tokens: Sequence[int] | None = None,
) -> EncodedConversation:
    """``image_tiles[i]``: tiles of the i-th ``<image>`` (or ``image_tokens[i]``: its context
    tokens, for AnyRes images); ``video_frames``: frames of the ``<video>``;
    ``system_message`` is used when the turns have no system turn."""
    ids: list[int] = []
    flags: list[bool] = []
    visual = 0
    for role, piece in _pieces(turns, image_tiles, video_frames, system_message, tokens_per_tile,
                               image_tokens):
        if isinstance(piece, _Visual):
            n = piece.tokens
            block = [tokenizer.img_start_id] + [tokenizer.img_context_id] * n + [tokenizer.img_end_id]
            ids += block
            flags += [False] * len(block)
            visual += n
        elif role == ASSISTANT:
            turn_ids, turn_flags = _assistant_ids(tokenizer, piece, loss == "answer_only")
            ids += turn_ids
            flags += turn_flags
        else:
            piece_ids = tokenizer.encode(piece)
            ids += piece_ids
            flags += [False] * len(piece_ids)

    n = len(ids)
    tokens = torch.tensor(ids, dtype=torch.int64)
    labels = torch.full((n,), tokenizer.pad_id, dtype=torch.int64)
    labels[:-1] = tokens[1:]
    # Position i predicts token i + 1: the target flags shift left by one.
    loss_mask = torch.zeros(n, dtype=torch.float32)
    loss_mask[:-1] = torch.tensor(flags[1:], dtype=torch.float32)
    return EncodedConversation(tokens, labels, loss_mask, torch.arange(n, dtype=torch.int64), visual)


def encoded_length(
    tokenizer: ChatTokenizer,
    turns: Sequence[Turn],
    image_tiles: Sequence[int] = (),
    video_frames: int = 0,
    tokens_per_tile: int = TOKENS_PER_TILE,
    system_message: str | None = None,
    image_tokens: Sequence[int] | None = None,
) -> int:
    """``len(encode_conversation(...).tokens)`` from tile and frame counts alone (text is
    tokenized; no media is decoded, no tensors are built). The loss mode does not matter."""
    total = 0
    for role, piece in _pieces(turns, image_tiles, video_frames, system_message, tokens_per_tile,
                               image_tokens):
        if isinstance(piece, _Visual):
            total += piece.tokens + 2
        elif role == ASSISTANT:
            total += len(tokenizer.encode(header(ASSISTANT) + piece)) + 1 + len(tokenizer.encode("\n"))
        else:
            total += len(tokenizer.encode(piece))
    return total


def render(turns: Sequence[Turn], image_tiles: Sequence[int] = (), video_frames: int = 0,
           tokens_per_tile: int = TOKENS_PER_TILE, system_message: str | None = None) -> str:
    """The conversation as the text the ids encode (for inspection and reference checks)."""
    out = []
    for role, piece in _pieces(turns, image_tiles, video_frames, system_message, tokens_per_tile):
        if isinstance(piece, _Visual):
            out.append(IMG_START + IMG_CONTEXT * piece.tokens + IMG_END)
        elif role == ASSISTANT:
            out.append(header(ASSISTANT) + piece + TURN_END)
        else:
            out.append(piece)
    return "".join(out)
