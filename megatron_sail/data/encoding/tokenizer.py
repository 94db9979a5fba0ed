"""SentencePiece tokenizer with SAIL-VL2's special tokens, plus a tiny trainer
for the synthetic dataset so the quickstart needs no downloaded vocabulary."""

from __future__ import annotations

import io
import os
from collections.abc import Iterable

import sentencepiece as spm

from megatron_sail.data.encoding.conversation import template_texts
from megatron_sail.data.records.special_tokens import SPECIAL_TOKENS, SpecialTokenIds
from megatron_sail.data.records.synthetic import corpus
from megatron_sail.utils.atomic import write_bytes_atomic

__all__ = [
    "SPECIAL_TOKENS",
    "SentencePieceTokenizer",
    "load_or_train_synthetic_tokenizer",
    "synthetic_training_texts",
    "train_synthetic_tokenizer",
]


class SentencePieceTokenizer(SpecialTokenIds):
    def __init__(self, model_path: str) -> None:
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"tokenizer model not found: {model_path}")
        with open(model_path, "rb") as f:
            proto = f.read()
        self.model_path = model_path
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(proto)
        except Exception as e:  # sentencepiece raises bare RuntimeError/OSError
            raise ValueError(f"corrupt sentencepiece model {model_path}: {e}") from e
        if self._sp.get_piece_size() == 0:
            raise ValueError(f"corrupt sentencepiece model {model_path}: empty vocabulary")
        missing = [t for t in SPECIAL_TOKENS if self._lookup(t) is None]
        if missing:
            raise ValueError(f"tokenizer model {model_path} lacks special tokens {missing}")
        self._init_special_ids()

    def _lookup(self, piece: str) -> int | None:
        # piece_to_id maps unknown pieces to unk instead of failing.
        idx = self._sp.piece_to_id(piece)
        if idx == self._sp.unk_id() and piece != self._sp.id_to_piece(idx):
            return None
        return idx

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def token_id(self, piece: str) -> int:
        idx = self._lookup(piece)
        if idx is None:
            raise KeyError(piece)
        return idx

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        # Accepts tensors/arrays too; sentencepiece wants plain ints.
        return self._sp.decode([int(i) for i in ids])


def _train_proto(texts: list[str], vocab_size: int) -> bytes:
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        # "\n" is a symbol of its own so the chat template survives round-trips.
        user_defined_symbols=[*SPECIAL_TOKENS, "\n"],
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        # Identity normalisation and no dummy prefix make decode(encode(s)) == s.
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        character_coverage=1.0,
        # Single thread, no sampling and no shuffling make the output bytes deterministic.
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return out.getvalue()


def synthetic_training_texts() -> list[str]:
    return corpus() + template_texts()


def train_synthetic_tokenizer(path: str, vocab_size: int = 256) -> SentencePieceTokenizer:
    try:
        proto = _train_proto(synthetic_training_texts(), vocab_size)
    except RuntimeError as e:
        raise ValueError(f"cannot train synthetic tokenizer with vocab_size={vocab_size}: {e}") from e
    # Several ranks may train concurrently; each writes identical bytes, readers never see a
    # partial file.
    write_bytes_atomic(path, proto)
    return SentencePieceTokenizer(path)


def load_or_train_synthetic_tokenizer(path: str, vocab_size: int = 256) -> SentencePieceTokenizer:
    if os.path.exists(path):
        return SentencePieceTokenizer(path)
    return train_synthetic_tokenizer(path, vocab_size)
