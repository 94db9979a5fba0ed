"""The curation spec (``sail curate SPEC.yaml``): inputs, chunking and an ordered list of
stages, each a typed dataclass of options. Every problem is collected and reported together,
one line each, naming the stage and key (``stages[2] (resolution): min_side=0 must be >= 1``).

Relative paths in the spec (inputs, checkpoints, tokenizers) resolve against the spec file's
directory, so a spec and its data can move together.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from megatron_sail.config.fields import num
from megatron_sail.convert.hf_config import RELEASE_IMG_CONTEXT_ID
from megatron_sail.errors import UserError, shown

TextPart = Literal["assistant", "user", "all"]


class SpecError(UserError, ValueError):
    """A spec that cannot run; the message lists every problem, one per line."""


@dataclass(frozen=True)
class Decodable:
    """Drop records whose media does not fully decode (images) or whose video yields no frames."""
    num_frames: int = num(4, ge=1)     # video frames decoded as the check


@dataclass(frozen=True)
class Resolution:
    min_side: int = num(1, ge=1)
    max_side: Optional[int] = num(None, ge=1)
    max_aspect: Optional[float] = num(None, ge=1)


@dataclass(frozen=True)
class CaptionLength:
    min_words: int = num(1, ge=0)
    max_words: Optional[int] = num(None, ge=1)
    text: TextPart = "assistant"


@dataclass(frozen=True)
class NgramRepetition:
    n: int = num(3, ge=1)
    max_repeat_fraction: float = num(0.3, ge=0, le=1)
    text: TextPart = "assistant"


@dataclass(frozen=True)
class Dedup:
    images: Literal["exact", "perceptual", "none"] = "perceptual"
    text: Literal["exact", "normalized", "none"] = "normalized"
    videos: Literal["exact", "none"] = "exact"
    max_distance: int = num(6, ge=0, le=31)   # perceptual-hash bits that may differ (of 64)


@dataclass(frozen=True)
class ModelSource:
    """A megatron_sail checkpoint run through batched generation."""
    checkpoint: str
    tokenizer: Optional[str] = None
    batch_size: int = num(8, ge=1)
    max_new_tokens: int = num(16, ge=1)
    retry_temperature: float = num(0.7, gt=0)
    img_context_token_id: int = num(RELEASE_IMG_CONTEXT_ID, ge=0)
    tp: int = num(1, ge=1)
    pp: int = num(1, ge=1)
    dtype: Literal["fp32", "bf16"] = "fp32"
    seed: int = 0


@dataclass(frozen=True)
class PythonSource:
    """``module:function`` imported with the spec's directory on ``sys.path``."""
    python: str


@dataclass(frozen=True)
class Judge:
    source: Union[ModelSource, PythonSource]
    keep: dict                       # score name -> rule (">= 3", "== yes")
    prompts: dict = field(default_factory=dict)   # model judges: score name -> (prompt, parser)
    retries: int = num(2, ge=0)


@dataclass(frozen=True)
class Rebalance:
    by: str                          # a record field (dotted path), "clusters" or "ngrams"
    target: Union[str, dict] = "uniform"
    clusters: int = num(8, ge=1)
    n: int = num(2, ge=1)
    max_per_ngram: Optional[int] = num(None, ge=1)
    text: TextPart = "assistant"
    seed: int = 0


@dataclass(frozen=True)
class CaptionToQa:
    source: Union[ModelSource, PythonSource]
    prompt: Optional[str] = None
    retries: int = num(2, ge=0)


OPTION_CLASSES = {"decodable": Decodable, "resolution": Resolution,
                  "caption_length": CaptionLength, "ngram_repetition": NgramRepetition,
                  "dedup": Dedup, "judge": Judge, "rebalance": Rebalance,
                  "caption_to_qa": CaptionToQa}


@dataclass(frozen=True)
class StageSpec:
    name: str
    options: Any
    label: str                        # "stages[2] (resolution)" for messages


@dataclass(frozen=True)
class CurationSpec:
    path: Path
    inputs: list[str]                 # absolute
    stages: list[StageSpec]
    chunk_size: int = 256

    @property
    def directory(self) -> Path:
        return self.path.parent

    def fingerprint(self) -> str:
        """What makes two runs the same curation: the spec's resolved content (not its path)."""
        payload = {"inputs": self.inputs, "chunk_size": self.chunk_size,
                   "stages": [[s.name, _plain(s.options)] for s in self.stages]}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- generic typed construction ---------------------------------------------------------------
def _check_type(value: Any, hint: Any) -> Optional[str]:
    """None when ``value`` fits ``hint``; else what was expected."""
    origin = typing.get_origin(hint)
    if origin is Union:
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        fits = [_check_type(value, a) for a in args if a is not type(None)]
        return None if any(f is None for f in fits) else " or ".join(f for f in fits if f)
    if origin is Literal:
        choices = typing.get_args(hint)
        return None if value in choices else f"one of {list(choices)}"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else "a number"
    if hint is str:
        return None if isinstance(value, str) and value else "a non-empty string"
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is dict or origin is dict:
        return None if isinstance(value, dict) else "a mapping"
    return None


def build(cls: type, raw: dict, where: str, problems: list[str],
          skip: tuple[str, ...] = ()) -> dict:
    """Checked keyword arguments for ``cls`` from ``raw`` (unknown keys, types, choices and
    ranges); problems are appended, one line each, prefixed with ``where``."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            problems.append(f"{where}: unknown key {shown(key)} (known: {', '.join(fields)})")
            continue
        expected = _check_type(value, hints[key])
        if expected:
            problems.append(f"{where}: {key}={shown(value)} must be {expected}")
            continue
        if isinstance(value, int) and not isinstance(value, bool) \
                and hints[key] in (float, Optional[float]):
            value = float(value)
        bounds = fields[key].metadata.get("range")
        problem = bounds.violation(value) if bounds is not None and value is not None else None
        if problem:
            problems.append(f"{where}: {key}={shown(value)} {problem}")
            continue
        kwargs[key] = value
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in raw:
            problems.append(f"{where}: missing key '{name}'")
    return kwargs


def resolve_path(value: str, base: Path) -> str:
    return value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))
