import os
from pathlib import Path

import pytest
import torch

from megatron_sail.data.records.synthetic import corpus
from megatron_sail.data.encoding.tokenizer import (
    SPECIAL_TOKENS,
    SentencePieceTokenizer,
    load_or_train_synthetic_tokenizer,
    train_synthetic_tokenizer,
)


def test_special_tokens_listed() -> None:
    assert set(SPECIAL_TOKENS) == {
        "<img>", "</img>", "<IMG_CONTEXT>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|endoftext|>",
    }
    assert len(SPECIAL_TOKENS) == 8


def test_training_is_deterministic_and_atomic(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "tok.model", tmp_path / "b" / "tok.model"
    train_synthetic_tokenizer(str(a))
    train_synthetic_tokenizer(str(b))
    assert a.read_bytes() == b.read_bytes()
    # Retraining over an existing file replaces it with identical bytes and leaves no temp files.
    train_synthetic_tokenizer(str(a))
    assert a.read_bytes() == b.read_bytes()
    assert os.listdir(a.parent) == ["tok.model"]


def test_vocab_size_honoured(tmp_path: Path) -> None:
    assert train_synthetic_tokenizer(str(tmp_path / "t.model"), vocab_size=200).vocab_size == 200


def test_special_tokens_are_single_distinct_ids(tokenizer: SentencePieceTokenizer) -> None:
    ids = [tokenizer.token_id(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    for token, idx in zip(SPECIAL_TOKENS, ids):
        assert tokenizer.encode(token) == [idx]
        assert tokenizer.decode([idx]) == token
        assert 0 <= idx < tokenizer.vocab_size
    assert tokenizer.pad_id == tokenizer.token_id("<|endoftext|>")
    assert tokenizer.eos_id == tokenizer.token_id("<|im_end|>")
    assert tokenizer.img_context_id == tokenizer.token_id("<IMG_CONTEXT>")
    assert tokenizer.img_start_id == tokenizer.token_id("<img>")
    assert tokenizer.img_end_id == tokenizer.token_id("</img>")
    # Special tokens embedded in running text still map to their single ids.
    ids = tokenizer.encode("x<IMG_CONTEXT><IMG_CONTEXT>y")
    assert ids.count(tokenizer.img_context_id) == 2


def test_unknown_piece_raises_key_error(tokenizer: SentencePieceTokenizer) -> None:
    with pytest.raises(KeyError, match="<no_such_piece>"):
        tokenizer.token_id("<no_such_piece>")


def test_round_trip(tokenizer: SentencePieceTokenizer) -> None:
    for text in corpus():
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        # The corpus is in-domain: no unknown pieces, and BPE actually compresses it.
        assert tokenizer.token_id("<unk>") not in ids
        assert len(ids) < len(text) / 2
    chat = "<|im_start|>user\n<img><IMG_CONTEXT></img>\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n a  b \n"
    assert tokenizer.decode(tokenizer.encode(chat)) == chat
    assert tokenizer.decode(torch.tensor(tokenizer.encode(chat))) == chat


def test_missing_model_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.model"
    with pytest.raises(FileNotFoundError, match="missing.model"):
        SentencePieceTokenizer(str(path))


def test_corrupt_model_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.model"
    path.write_bytes(b"definitely not a sentencepiece proto")
    with pytest.raises(ValueError, match="corrupt.model"):
        SentencePieceTokenizer(str(path))


def test_load_or_train(tmp_path: Path) -> None:
    path = tmp_path / "tok.model"
    trained = load_or_train_synthetic_tokenizer(str(path), vocab_size=200)
    assert path.exists() and trained.vocab_size == 200
    # An existing file is loaded as is, not retrained with the new size.
    loaded = load_or_train_synthetic_tokenizer(str(path), vocab_size=256)
    assert loaded.vocab_size == 200
    assert loaded.encode("a red circle in the center.") == trained.encode("a red circle in the center.")
