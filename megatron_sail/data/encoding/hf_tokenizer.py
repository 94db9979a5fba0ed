"""The release's Hugging Face (Qwen) tokenizer through the ``tokenizers`` library, with the
same interface as ``SentencePieceTokenizer``; ``load_tokenizer`` picks either from a path.

A directory with ``tokenizer.json`` is loaded as is. Without it (the SAIL-VL2 release ships
only ``vocab.json`` + ``merges.txt``), the byte-level BPE is assembled the way Qwen2's
tokenizer defines it: NFC normalisation, Qwen's pre-tokenisation regex, byte-level mapping,
and the added tokens from ``tokenizer_config.json`` / ``added_tokens.json`` matched before
anything else, so ``<IMG_CONTEXT>`` or ``<think>`` inside text become single ids.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Protocol

from megatron_sail.data.encoding.conversation import ChatTokenizer
from megatron_sail.data.records.special_tokens import SPECIAL_TOKENS, SpecialTokenIds

# Qwen2/Qwen3 pre-tokenisation: contractions, letter runs with one leading non-letter, single
# digits, punctuation runs, newline runs, other whitespace.
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


class Tokenizer(ChatTokenizer, Protocol):
    """What the data pipeline needs from a tokenizer (SentencePiece or Hugging Face)."""

    @property
    def vocab_size(self) -> int: ...
    def token_id(self, piece: str) -> int: ...
    def decode(self, ids: Iterable[int]) -> str: ...


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None


def _added_tokens(directory: str) -> list:
    """(id, AddedToken) from tokenizer_config.json (with their flags) and any extra ones
    from added_tokens.json, ordered by id."""
    from tokenizers import AddedToken

    found: dict[int, AddedToken] = {}
    config_path = os.path.join(directory, "tokenizer_config.json")
    if os.path.isfile(config_path):
        for idx, spec in _read_json(config_path).get("added_tokens_decoder", {}).items():
            found[int(idx)] = AddedToken(
                spec["content"], single_word=spec.get("single_word", False),
                lstrip=spec.get("lstrip", False), rstrip=spec.get("rstrip", False),
                normalized=spec.get("normalized", False), special=spec.get("special", False))
    added_path = os.path.join(directory, "added_tokens.json")
    if os.path.isfile(added_path):
        for content, idx in _read_json(added_path).items():
            found.setdefault(int(idx), AddedToken(content, normalized=False, special=False))
    return sorted(found.items())


def _build_bpe(directory: str):
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizerBackend
    from tokenizers.models import BPE

    vocab, merges = (os.path.join(directory, n) for n in ("vocab.json", "merges.txt"))
    for path in (vocab, merges):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{directory}: no tokenizer.json and no {os.path.basename(path)}")
    tok = HFTokenizerBackend(BPE.from_file(vocab, merges, unk_token=None, fuse_unk=False,
                                           byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    # One by one in id order: each new token takes the next free id, which must be its own.
    for idx, token in _added_tokens(directory):
        existing = tok.token_to_id(token.content)
        if existing is None:
            tok.add_tokens([token])
        got = tok.token_to_id(token.content)
        if got != idx:
            raise ValueError(f"{directory}: added token {token.content!r} should have id {idx} "
                             f"but gets {got}; the vocabulary and the added tokens disagree")
    return tok


class HFTokenizer(SpecialTokenIds):
    def __init__(self, directory: str) -> None:
        from tokenizers import Tokenizer as HFTokenizerBackend

        if not os.path.isdir(directory):
            raise FileNotFoundError(f"tokenizer directory not found: {directory}")
        self.path = directory
        tokenizer_json = os.path.join(directory, "tokenizer.json")
        if os.path.isfile(tokenizer_json):
            try:
                self._tok = HFTokenizerBackend.from_file(tokenizer_json)
            except Exception as exc:  # the Rust side raises a bare Exception
                raise ValueError(f"corrupt tokenizer file {tokenizer_json}: {exc}") from None
        else:
            self._tok = _build_bpe(directory)
        missing = [t for t in SPECIAL_TOKENS if self._tok.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer in {directory} lacks special tokens {missing}")
        self._init_special_ids()

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_id(self, piece: str) -> int:
        idx = self._tok.token_to_id(piece)
        if idx is None:
            raise KeyError(piece)
        return idx

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def load_tokenizer(path: str) -> Tokenizer:
    """A Hugging Face tokenizer directory (or its tokenizer.json), else a SentencePiece model."""
    if os.path.isdir(path):
        return HFTokenizer(path)
    if os.path.basename(path) == "tokenizer.json":
        return HFTokenizer(os.path.dirname(os.path.abspath(path)))
    from megatron_sail.data.encoding.tokenizer import SentencePieceTokenizer

    return SentencePieceTokenizer(path)
