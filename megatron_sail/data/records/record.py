"""Conversation records in the InternVL / SAIL-VL JSONL format.

One JSON object per line::

    {"id": "optional", "image": "a.jpg" | ["a.jpg", "b.png"], "video": "clip.mp4",
     "conversations": [{"from": "system", "value": "..."},        # optional, first only
                       {"from": "human", "value": "<image>\\nWhat is this?"},
                       {"from": "gpt", "value": "A cat."}, ...],
     "loss": "all_assistant" | "answer_only", "thinking": false}

- ``from`` is ``human``/``user``, ``gpt``/``assistant`` or ``system``. After an optional
  leading system turn, turns alternate user, assistant, ..., ending with an assistant turn.
- ``<image>`` placeholders (user turns only) match the images one to one, in order. With a
  single image and no placeholder, ``<image>\\n`` is prepended to the first user turn
  (InternVL's rule); likewise ``<video>\\n`` for a video without its placeholder.
- ``loss`` (default ``all_assistant``): every assistant turn is a target, including its
  closing ``<|im_end|>``. ``answer_only`` (think-fusion SFT): in each assistant turn that opens
  with a ``<think>...</think>`` block, that block and the whitespace right after it are
  context; only the rest of the turn (the answer) and its ``<|im_end|>`` are targets.
  Assistant turns without a think block are targets in full.
- ``thinking: true`` (a CoT sample of think-fusion SFT): the question is asked in thinking
  mode - ``THINKING_PROMPT``, the prompt of the SAIL-VL2-Thinking release, is appended to every
  user turn exactly as the release's usage code does (``question + cot_prompt``, no separator)
  - and every assistant turn must open with a ``<think>...</think>`` block. The prompt is
  part of the parsed text, so records written back (``to_json``, shards) carry it and no flag.
  Think-fusion mixes such records (loss on reasoning and answer) with direct-answer records
  (``loss: answer_only``) at the ratio of their blend weights.
- Other keys (``width``, ``height``, ...) are ignored. Relative media paths resolve against
  the JSONL file's directory, or against ``root`` when one is given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from megatron_sail.data.records.special_tokens import IM_END, IM_START, IMG_CONTEXT, THINK_END, THINK_START
from megatron_sail.errors import UserError

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
SYSTEM, USER, ASSISTANT = "system", "user", "assistant"
ROLE_NAMES = {"system": SYSTEM, "human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT}
LOSS_MODES = ("all_assistant", "answer_only")
# The SAIL-VL2-Thinking release's usage code appends this to the question (`cot_prompt`).
THINKING_PROMPT = ("You FIRST think about the reasoning process as an internal monologue and then "
                   "provide the final answer. The reasoning process MUST BE enclosed within "
                   "<think> </think> tags. The final answer MUST BE put in \\boxed{}.")
# Text that would break the template or the visual-token count if it appeared literally.
FORBIDDEN_TEXT = (IMG_CONTEXT, IM_START, IM_END)


class RecordError(UserError, ValueError):
    """A record that cannot be used; ``str()`` is ``source:line: reason``."""

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        self.source, self.line, self.reason = source, line, reason
        where = source if line is None else f"{source}:{line}"
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Turn:
    role: str  # system | user | assistant
    text: str


@dataclass(frozen=True)
class Record:
    """A parsed conversation. ``images``/``video`` are media references: resolved file paths
    for JSONL records, member names for records read back from shards."""

    source: str
    line: int | None
    turns: tuple[Turn, ...]
    images: tuple[str, ...] = ()
    video: str | None = None
    loss: str = "all_assistant"
    id: str | None = None

    @property
    def where(self) -> str:
        return self.source if self.line is None else f"{self.source}:{self.line}"

    @property
    def media(self) -> tuple[str, ...]:
        """All media references, images first, then the video."""
        return self.images + ((self.video,) if self.video is not None else ())

    def to_json(self) -> dict:
        """The record in its file format (placeholders already normalised)."""
        out: dict = {}
        if self.id is not None:
            out["id"] = self.id
        if self.images:
            out["image"] = list(self.images)
        if self.video is not None:
            out["video"] = self.video
        out["conversations"] = [{"from": _FILE_ROLE[t.role], "value": t.text} for t in self.turns]
        if self.loss != "all_assistant":
            out["loss"] = self.loss
        return out

    def with_media(self, images: tuple[str, ...], video: str | None) -> "Record":
        return replace(self, images=images, video=video)


_FILE_ROLE = {SYSTEM: "system", USER: "human", ASSISTANT: "gpt"}


def split_think(text: str) -> tuple[str, str] | None:
    """``(think part, answer)`` for an assistant text that opens with a think block; the think
    part runs through ``</think>`` and the whitespace after it. None without a think block."""
    stripped = text.lstrip()
    if not stripped.startswith(THINK_START):
        return None
    end = text.find(THINK_END)
    if end < 0:
        return None
    cut = end + len(THINK_END)
    while cut < len(text) and text[cut].isspace():
        cut += 1
    return text[:cut], text[cut:]


def _media_list(value, key: str, err: Callable[[str], RecordError]) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise err(f"'{key}' must be a path or a non-empty list of paths, got {value!r}")
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise err(f"'{key}' has an entry that is not a non-empty path: {item!r}")
    return items


def _resolve(path: str, base_dir: str | None) -> str:
    if base_dir is None or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base_dir, path))


def _parse_turns(conversations, err: Callable[[str], RecordError]) -> list[Turn]:
    if not isinstance(conversations, list) or not conversations:
        raise err("'conversations' must be a non-empty list")
    turns = []
    for i, item in enumerate(conversations):
        if not isinstance(item, dict):
            raise err(f"conversations[{i}] must be an object with 'from' and 'value', got {item!r}")
        role = ROLE_NAMES.get(item.get("from"))
        if role is None:
            raise err(f"conversations[{i}].from is {item.get('from')!r}; "
                      f"expected one of {sorted(ROLE_NAMES)}")
        text = item.get("value")
        if not isinstance(text, str):
            raise err(f"conversations[{i}].value must be a string, got {text!r}")
        for bad in FORBIDDEN_TEXT:
            if bad in text:
                raise err(f"conversations[{i}].value contains the reserved token {bad!r}")
        turns.append(Turn(role, text))
    return turns


def _check_alternation(turns: list[Turn], err: Callable[[str], RecordError]) -> None:
    body = turns[1:] if turns[0].role == SYSTEM else turns
    if not body:
        raise err("conversations has a system turn but no user/assistant turns")
    for i, turn in enumerate(body):
        index = i + len(turns) - len(body)
        expected = USER if i % 2 == 0 else ASSISTANT
        if turn.role != expected:
            what = "a system turn is only allowed first" if turn.role == SYSTEM else \
                f"expected {expected} (turns alternate user, assistant)"
            raise err(f"conversations[{index}] is from {turn.role}: {what}")
    if body[-1].role != ASSISTANT:
        raise err("the last turn must be an assistant turn (nothing to learn from a trailing user turn)")


def _normalise_placeholders(turns: list[Turn], num_images: int, has_video: bool,
                            err: Callable[[str], RecordError]) -> list[Turn]:
    for i, turn in enumerate(turns):
        if turn.role != USER and (IMAGE_PLACEHOLDER in turn.text or VIDEO_PLACEHOLDER in turn.text):
            raise err(f"conversations[{i}] is from {turn.role} but has a media placeholder; "
                      f"placeholders belong in user turns")
    first_user = next(i for i, t in enumerate(turns) if t.role == USER)
    for placeholder, count in ((IMAGE_PLACEHOLDER, num_images), (VIDEO_PLACEHOLDER, int(has_video))):
        found = sum(t.text.count(placeholder) for t in turns)
        if found == 0 and count == 1:
            # InternVL's convention for single-media records without a placeholder.
            turns[first_user] = Turn(USER, f"{placeholder}\n{turns[first_user].text}")
        elif found != count:
            kind = "images" if placeholder == IMAGE_PLACEHOLDER else "videos"
            raise err(f"{found} {placeholder} placeholder(s) but {count} {kind}")
    return turns


def _ask_for_thinking(turns: list[Turn], err: Callable[[str], RecordError]) -> list[Turn]:
    for i, turn in enumerate(turns):
        if turn.role == ASSISTANT and split_think(turn.text) is None:
            raise err(f"'thinking' is true but conversations[{i}] does not open with a "
                      f"{THINK_START}...{THINK_END} block")
    return [Turn(USER, t.text + THINKING_PROMPT) if t.role == USER else t for t in turns]


def parse_record(obj, source: str, line: int | None, base_dir: str | None = None) -> Record:
    """Validate one decoded JSON object. ``base_dir`` resolves relative media paths
    (None keeps references as they are, e.g. shard member names)."""

    def err(reason: str) -> RecordError:
        return RecordError(source, line, reason)

    if not isinstance(obj, dict):
        raise err(f"a record must be a JSON object, got {type(obj).__name__}")
    if "conversations" not in obj:
        raise err("missing 'conversations'")
    turns = _parse_turns(obj["conversations"], err)
    _check_alternation(turns, err)

    images = _media_list(obj["image"], "image", err) if obj.get("image") is not None else []
    video = None
    if obj.get("video") is not None:
        if not isinstance(obj["video"], str) or not obj["video"].strip():
            raise err(f"'video' must be one path, got {obj['video']!r}")
        video = obj["video"]
    turns = _normalise_placeholders(turns, len(images), video is not None, err)

    loss = obj.get("loss", "all_assistant")
    if loss not in LOSS_MODES:
        raise err(f"'loss' is {loss!r}; expected one of {list(LOSS_MODES)}")
    if loss == "answer_only":
        for i, turn in enumerate(turns):
            if turn.role == ASSISTANT and turn.text.lstrip().startswith(THINK_START) \
                    and split_think(turn.text) is None:
                raise err(f"conversations[{i}] opens {THINK_START} but never closes it with {THINK_END}")

    thinking = obj.get("thinking", False)
    if not isinstance(thinking, bool):
        raise err(f"'thinking' must be true or false, got {thinking!r}")
    if thinking:
        turns = _ask_for_thinking(turns, err)

    record_id = obj.get("id")
    if record_id is not None and not isinstance(record_id, (str, int)):
        raise err(f"'id' must be a string or an integer, got {record_id!r}")
    return Record(
        source=source,
        line=line,
        turns=tuple(turns),
        images=tuple(_resolve(p, base_dir) for p in images),
        video=None if video is None else _resolve(video, base_dir),
        loss=loss,
        id=None if record_id is None else str(record_id),
    )


def parse_line(raw: str | bytes, source: str, line: int, base_dir: str | None = None) -> Record:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(source, line, f"not UTF-8: {exc}") from None
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        # A record is one line: the column is the useful part of the position.
        raise RecordError(source, line, f"malformed JSON: {exc.msg} at column {exc.colno}") from None
    return parse_record(obj, source, line, base_dir)


def iter_jsonl(path: str, root: str | None = None,
               on_error: Callable[[RecordError], None] | None = None) -> Iterator[Record]:
    """Records of a JSONL file in order; blank lines are skipped. A bad line raises
    ``RecordError`` unless ``on_error`` takes it (then reading goes on)."""
    base_dir = media_base(path, root)
    for line_no, raw in iter_lines(path):
        try:
            yield parse_line(raw, path, line_no, base_dir)
        except RecordError as exc:
            if on_error is None:
                raise
            on_error(exc)


def media_base(jsonl_path: str, root: str | None = None) -> str:
    """The directory relative media paths of ``jsonl_path`` resolve against."""
    return os.path.abspath(root) if root is not None else os.path.dirname(os.path.abspath(jsonl_path))


def iter_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of the non-blank lines of a file."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise RecordError(path, None, f"cannot open: {exc.strerror}") from None
    with f:
        for line_no, raw in enumerate(f, start=1):
            if raw.strip():
                yield line_no, raw
