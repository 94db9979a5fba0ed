"""Multi-turn chat encoding, with visual placeholders expanded and the loss restricted to
assistant turns, in one of two templates (``CHAT_TEMPLATES``):

``univl-chat`` - the release's ``conversation.py`` (MPT separator style): ``system_template +
sep`` then ``role + message + sep`` per turn, ``sep = <|im_end|>`` with no newline after it,
and its default system message whenever the turns bring none:

    <|im_start|>system\\n{system}<|im_end|><|im_start|>user\\n{user}<|im_end|><|im_start|>assistant\\n{answer}<|im_end|>

``chatml`` - Qwen's ChatML: a newline after every ``<|im_end|>`` and a system turn only when
there is a system text:

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
from typing import Protocol

import torch

from megatron_sail.data.records.record import (
    ASSISTANT,
    IMAGE_PLACEHOLDER,
    SYSTEM,
    USER,
    VIDEO_PLACEHOLDER,
    Turn,
    split_think,
)
from megatron_sail.data.records.special_tokens import IM_END, IM_START, IMG_CONTEXT, IMG_END, IMG_START

# One 448 px tile -> 32x32 patches -> 16x16 tokens after the 2x2 pixel shuffle.
TOKENS_PER_TILE = 256
# The release's default system message (conversation.py, template univl-chat).
UNIVL_SYSTEM_MESSAGE = "你是由抖音内容理解组开发的多模态大模型，英文名叫UniVL, 是一个有用无害的人工智能助手。"


@dataclass(frozen=True)
class ChatTemplate:
    turn_end: str  # closes every turn
    default_system: str | None  # used when the turns have no system turn and none is given


CHAT_TEMPLATES = {
    "univl-chat": ChatTemplate(IM_END, UNIVL_SYSTEM_MESSAGE),
    "chatml": ChatTemplate(f"{IM_END}\n", None),
}
TURN_END = CHAT_TEMPLATES["chatml"].turn_end
_PLACEHOLDERS = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)})")


class ChatTokenizer(Protocol):
    """What the encoders need of a tokenizer: its special ids and plain-text encoding."""

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


def template_texts() -> list[str]:
    """ChatML's fragments between a user text and its answer, so a tokenizer trained for the
    template (the synthetic data's) covers them."""
    return [header(USER), f"{IM_END}\n{header(ASSISTANT)}", TURN_END]


def _user_pieces(text: str, image_tokens: list[int], video_frames: int,
                 frame_tokens: int, turn_end: str) -> list[str | _Visual]:
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
    pieces.append(buf + turn_end)
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


def template(name: str) -> ChatTemplate:
    if name not in CHAT_TEMPLATES:
        raise ValueError(f"unknown chat template {name!r} (choose from {', '.join(CHAT_TEMPLATES)})")
    return CHAT_TEMPLATES[name]


def _after_end(tokenizer: ChatTokenizer, tpl: ChatTemplate) -> list[int]:
    """Ids of what follows ``<|im_end|>`` in a turn's end (ChatML's newline; nothing in univl-chat)."""
    rest = tpl.turn_end[len(IM_END):]
    return tokenizer.encode(rest) if rest else []


def _assistant_ids(tokenizer: ChatTokenizer, text: str, answer_only: bool,
                   tpl: ChatTemplate) -> tuple[list[int], list[bool]]:
    head = header(ASSISTANT)
    ids = tokenizer.encode(head + text)
    context = _common_prefix(ids, tokenizer.encode(head))
    think = split_think(text) if answer_only else None
    if think is not None:
        context = max(context, _common_prefix(ids, tokenizer.encode(head + think[0])))
    flags = [False] * context + [True] * (len(ids) - context)
    after = _after_end(tokenizer, tpl)
    return ids + [tokenizer.eos_id] + after, flags + [True] + [False] * len(after)


def _pieces(turns: Sequence[Turn], image_tiles: Sequence[int], video_frames: int,
            system_message: str | None, tokens_per_tile: int,
            image_tokens: Sequence[int] | None = None,
            tpl: ChatTemplate = CHAT_TEMPLATES["chatml"]) -> list[tuple[str, str | _Visual]]:
    """(role, piece) in order; assistant pieces are their raw texts. Images take
    ``image_tokens`` context tokens each when given (AnyRes), else tiles x tokens_per_tile."""
    tiles = list(image_tokens) if image_tokens is not None \
        else [t * tokens_per_tile for t in image_tiles]
    out: list[tuple[str, str | _Visual]] = []
    system = system_message if system_message is not None else tpl.default_system
    for turn in _with_system(turns, system):
        if turn.role == USER:
            out += [(USER, p) for p in _user_pieces(turn.text, tiles, video_frames, tokens_per_tile,
                                                    tpl.turn_end)]
        elif turn.role == ASSISTANT:
            out.append((ASSISTANT, turn.text))
        else:
            out.append((SYSTEM, header(SYSTEM) + turn.text + tpl.turn_end))
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
    chat_template: str = "chatml",
) -> EncodedConversation:
    """``image_tiles[i]``: tiles of the i-th ``<image>`` (or ``image_tokens[i]``: its context
    tokens, for AnyRes images); ``video_frames``: frames of the ``<video>``;
    ``system_message`` is used when the turns have no system turn (None: the template's
    default). A conversation ending on a user turn (a prompt) ends with the assistant header."""
    tpl = template(chat_template)
    ids: list[int] = []
    flags: list[bool] = []
    visual = 0
    for role, piece in _pieces(turns, image_tiles, video_frames, system_message, tokens_per_tile,
                               image_tokens, tpl):
        if isinstance(piece, _Visual):
            n = piece.tokens
            block = [tokenizer.img_start_id] + [tokenizer.img_context_id] * n + [tokenizer.img_end_id]
            ids += block
            flags += [False] * len(block)
            visual += n
        elif role == ASSISTANT:
            turn_ids, turn_flags = _assistant_ids(tokenizer, piece, loss == "answer_only", tpl)
            ids += turn_ids
            flags += turn_flags
        else:
            piece_ids = tokenizer.encode(piece)
            ids += piece_ids
            flags += [False] * len(piece_ids)
    if turns and turns[-1].role == USER:   # a generation prompt: the answer follows
        head = tokenizer.encode(header(ASSISTANT))
        ids += head
        flags += [False] * len(head)

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
    chat_template: str = "chatml",
) -> int:
    """``len(encode_conversation(...).tokens)`` from tile and frame counts alone (text is
    tokenized; no media is decoded, no tensors are built). The loss mode does not matter."""
    tpl = template(chat_template)
    total = 0
    for role, piece in _pieces(turns, image_tiles, video_frames, system_message, tokens_per_tile,
                               image_tokens, tpl):
        if isinstance(piece, _Visual):
            total += piece.tokens + 2
        elif role == ASSISTANT:
            total += (len(tokenizer.encode(header(ASSISTANT) + piece)) + 1
                      + len(_after_end(tokenizer, tpl)))
        else:
            total += len(tokenizer.encode(piece))
    if turns and turns[-1].role == USER:
        total += len(tokenizer.encode(header(ASSISTANT)))
    return total


def render(turns: Sequence[Turn], image_tiles: Sequence[int] = (), video_frames: int = 0,
           tokens_per_tile: int = TOKENS_PER_TILE, system_message: str | None = None,
           chat_template: str = "chatml") -> str:
    """The conversation as the text the ids encode (for inspection and reference checks)."""
    tpl = template(chat_template)
    out = []
    for role, piece in _pieces(turns, image_tiles, video_frames, system_message, tokens_per_tile,
                               None, tpl):
        if isinstance(piece, _Visual):
            out.append(IMG_START + IMG_CONTEXT * piece.tokens + IMG_END)
        elif role == ASSISTANT:
            out.append(header(ASSISTANT) + piece + tpl.turn_end)
        else:
            out.append(piece)
    if turns and turns[-1].role == USER:
        out.append(header(ASSISTANT))
    return "".join(out)
