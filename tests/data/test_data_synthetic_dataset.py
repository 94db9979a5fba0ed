import numpy as np
import pytest
import torch

from megatron_sail.data.loader.images import to_pixel_values
from megatron_sail.data.records.synthetic import make_sample
from megatron_sail.data.loader.synthetic_dataset import SyntheticCaptionDataset, split_seed
from megatron_sail.data.encoding.tokenizer import SentencePieceTokenizer

SEQ, TOKENS, SIZE = 96, 16, 56


def _dataset(tokenizer: SentencePieceTokenizer, seed: int = 0, split: str = "train") -> SyntheticCaptionDataset:
    return SyntheticCaptionDataset(tokenizer, seed, image_size=SIZE, num_image_tokens=TOKENS, seq_length=SEQ, split=split)


def test_item_layout(tokenizer: SentencePieceTokenizer) -> None:
    ds = _dataset(tokenizer)
    assert len(ds) >= 2**31
    item = ds[5]
    assert set(item) == {"tokens", "labels", "loss_mask", "position_ids", "pixel_values"}
    for key in ("tokens", "labels", "position_ids"):
        assert item[key].shape == (SEQ,) and item[key].dtype == torch.int64
    assert item["loss_mask"].shape == (SEQ,) and item["loss_mask"].dtype == torch.float32
    assert item["pixel_values"].shape == (1, 3, SIZE, SIZE) and item["pixel_values"].dtype == torch.float32
    assert int((item["tokens"] == tokenizer.img_context_id).sum()) == TOKENS


def test_item_matches_generated_sample(tokenizer: SentencePieceTokenizer) -> None:
    item = _dataset(tokenizer, seed=3, split="val")[9]
    sample = make_sample(split_seed(3, "val"), 9, SIZE)
    assert torch.equal(item["pixel_values"][0], to_pixel_values(sample.image, SIZE))
    assert tokenizer.decode(item["labels"][item["loss_mask"].bool()]) == sample.answer + "<|im_end|>"
    assert sample.question in tokenizer.decode(item["tokens"])


def test_deterministic_and_independent_of_global_rng(tokenizer: SentencePieceTokenizer) -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    a = _dataset(tokenizer, seed=1)[42]
    torch.manual_seed(99)
    np.random.seed(99)
    b = _dataset(tokenizer, seed=1)[42]
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = _dataset(tokenizer, seed=2)[42]
    assert not torch.equal(a["pixel_values"], c["pixel_values"])


def test_splits_are_disjoint(tokenizer: SentencePieceTokenizer) -> None:
    train, val = _dataset(tokenizer, split="train"), _dataset(tokenizer, split="val")
    train_images = {train[i]["pixel_values"].numpy().tobytes() for i in range(200)}
    val_images = {val[i]["pixel_values"].numpy().tobytes() for i in range(200)}
    assert len(train_images) == len(val_images) == 200
    assert train_images.isdisjoint(val_images)
    # Generator seeds never collide across (seed, split) pairs.
    seeds = {split_seed(s, sp) for s in range(50) for sp in ("train", "val")}
    assert len(seeds) == 100


def test_batches_with_default_collate(tokenizer: SentencePieceTokenizer) -> None:
    loader = torch.utils.data.DataLoader(_dataset(tokenizer), batch_size=4, sampler=range(4))
    batch = next(iter(loader))
    assert batch["tokens"].shape == (4, SEQ) and batch["pixel_values"].shape == (4, 1, 3, SIZE, SIZE)


def test_errors(tokenizer: SentencePieceTokenizer) -> None:
    with pytest.raises(ValueError, match="split"):
        _dataset(tokenizer, split="test")
    with pytest.raises(IndexError):
        _dataset(tokenizer)[-1]
    small = SyntheticCaptionDataset(tokenizer, 0, image_size=SIZE, num_image_tokens=TOKENS, seq_length=20)
    with pytest.raises(ValueError, match="seq_length is 20"):
        small[0]
