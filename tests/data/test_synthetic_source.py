"""The synthetic shapes data as a source of the multimodal loader: a pure function of
(seed, split, index), split streams that never meet, the mismatched-image control, and the
same chat encoder and tiling as every real record."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from megatron_sail.config import load_config
from megatron_sail.data.encoding.conversation import encode_conversation
from megatron_sail.data.encoding.sample_encoder import SampleEncoder
from megatron_sail.data.loader.build import (
    TRAIN, VAL, VAL_MISMATCHED, build_batches, validation_streams,
)
from megatron_sail.data.loader.synthetic_source import SYNTHETIC_LENGTH, SyntheticSource, split_seed
from megatron_sail.data.records.blend import BlendSchedule
from megatron_sail.data.records.record import parse_record
from megatron_sail.data.records.synthetic import make_sample
from tests.helpers import TINY

SIZE, TOKENS = 56, 4


@pytest.fixture(scope="module")
def encoder(tokenizer):
    return SampleEncoder(tokenizer, image_size=SIZE, tokens_per_tile=TOKENS, seq_length=96)


def test_sample_is_the_generated_caption_through_the_chat_encoder(tokenizer, encoder):
    source = SyntheticSource(seed=3, split="val", image_size=SIZE)
    sample = make_sample(split_seed(3, "val"), 9, SIZE)
    enc = source.encode(9, encoder)
    # The same record as a JSONL line, encoded directly: identical ids, labels and loss mask.
    rec = parse_record({"image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\n" + sample.question},
        {"from": "gpt", "value": sample.answer}]}, "mem", 1, None)
    ref = encode_conversation(tokenizer, rec.turns, [1], tokens_per_tile=TOKENS)
    assert torch.equal(enc.tokens, ref.tokens) and torch.equal(enc.labels, ref.labels)
    assert torch.equal(enc.loss_mask, ref.loss_mask)
    assert tokenizer.decode(enc.labels[enc.loss_mask.bool()]) == sample.answer + "<|im_end|>"
    # One uint8 tile: the drawn pixels exactly (PNG is lossless, the image is tile-sized).
    assert enc.pixel_values.dtype == torch.uint8 and enc.pixel_values.shape == (1, 3, SIZE, SIZE)
    assert torch.equal(enc.pixel_values[0], torch.tensor(sample.image).permute(2, 0, 1))
    assert enc.num_visual_tokens == TOKENS
    plan = source.plan(9, encoder)
    assert (plan.length, plan.visual_tokens, plan.num_tiles) == (len(enc.tokens), TOKENS, 1)


def test_pure_function_of_seed_split_and_index(encoder):
    torch.manual_seed(0)
    np.random.seed(0)
    a = SyntheticSource(1, "train", SIZE).encode(42, encoder)
    torch.manual_seed(99)
    np.random.seed(99)
    b = SyntheticSource(1, "train", SIZE).encode(42, encoder)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pixel_values, b.pixel_values)
    c = SyntheticSource(2, "train", SIZE).encode(42, encoder)
    assert not torch.equal(a.pixel_values, c.pixel_values)


def test_splits_never_share_a_stream():
    train, val = SyntheticSource(0, "train", SIZE), SyntheticSource(0, "val", SIZE)
    images = [{s.media(i).read("image.png") for i in range(100)} for s in (train, val)]
    assert len(images[0]) == len(images[1]) == 100 and images[0].isdisjoint(images[1])
    assert len({split_seed(s, sp) for s in range(50) for sp in ("train", "val")}) == 100
    with pytest.raises(ValueError, match="split"):
        SyntheticSource(0, "test", SIZE)


def test_mismatched_control_shows_the_next_samples_image(encoder):
    matched = SyntheticSource(5, "val", SIZE)
    swapped = SyntheticSource(5, "val", SIZE, mismatched=True)
    assert swapped.name != matched.name  # a different stream to the loader's fingerprint
    for i in (0, 7):
        m, s, following = (matched.encode(i, encoder), swapped.encode(i, encoder),
                           matched.encode(i + 1, encoder))
        assert torch.equal(s.tokens, m.tokens) and torch.equal(s.loss_mask, m.loss_mask)
        assert torch.equal(s.pixel_values, following.pixel_values)
        assert not torch.equal(s.pixel_values, m.pixel_values)


def test_effectively_infinite_without_per_sample_memory():
    source = SyntheticSource(0, "train", SIZE)
    assert len(source) == SYNTHETIC_LENGTH == 2**31 - 1
    with pytest.raises(IndexError):
        source.record(SYNTHETIC_LENGTH)
    start = time.perf_counter()
    schedule = BlendSchedule([len(source)], [1.0], seed=0, in_order=[source.in_order])
    assert [schedule.source_of(p) for p in (0, 5, 2**31 - 2)] == [(0, 0), (0, 5), (0, 2**31 - 2)]
    # In order: no permutation of 2**31 samples (seconds and 8 GiB) was built.
    assert time.perf_counter() - start < 1.0 and not schedule._perms[0]


def _cfg(*extra):
    return load_config(TINY, ["train.global_batch_size=4", *extra])


@pytest.mark.parametrize("packing", [False, True])
def test_loader_streams_of_the_synthetic_config(tokenizer, packing):
    # Samples take 51 tokens (16 visual): rows of 128 hold two.
    extra = [f"data.packing={packing}"] + (["train.micro_batch_size=1", "data.seq_length=128"]
                                           if packing else [])
    cfg = _cfg(*extra)
    assert validation_streams(cfg) == {"val_loss": VAL, "val_loss_mismatched_images": VAL_MISMATCHED}
    train = build_batches(cfg, tokenizer, TRAIN, 0, 1, num_workers=0)
    batch = train.next_global_batch()
    if packing:  # rows of 128 tokens holding several samples each
        assert len(batch.microbatches) == 4 and len(batch.positions) > 4
        assert all(mb.tokens.shape == (1, 128) and len(mb.cu_seqlens) > 2
                   for mb in batch.microbatches)
    else:  # one sample per row: samples 0..3 of the train split, in index order
        assert batch.positions == (0, 1, 2, 3)
        assert sum(mb.tokens.shape[0] for mb in batch.microbatches) == 4
    pixels = torch.cat([mb.pixel_values for mb in batch.microbatches])
    assert pixels.dtype == torch.uint8 and len(pixels) == len(batch.positions)
    size = cfg.model.vision.image_size
    first = make_sample(split_seed(cfg.train.seed, "train"), batch.positions[0], size).image
    assert pixels.shape[1:] == (3, size, size)
    assert torch.equal(pixels[0], torch.tensor(first).permute(2, 0, 1))
    # The data-parallel halves are the same global batch.
    halves = [build_batches(cfg, tokenizer, TRAIN, r, 2, num_workers=0).next_global_batch()
              for r in (0, 1)]
    assert halves[0].positions == batch.positions
    def rows(batches):
        return sorted(row.tolist() for b in batches for mb in b.microbatches for row in mb.tokens)

    assert rows(halves) == rows([batch])
    val = build_batches(cfg, tokenizer, VAL, 0, 1, num_workers=0).next_global_batch()
    assert not torch.equal(torch.cat([mb.pixel_values for mb in val.microbatches])[0], pixels[0])


def test_checkpoints_from_before_the_loader_resume_at_consumed_samples(tokenizer):
    """A synthetic run's checkpoint without loader state read samples [0, consumed_samples)
    one per row: unpacked, the loader goes on from there; packed, it is refused by name."""
    from megatron_sail.checkpointing.layout_files import CheckpointError
    from megatron_sail.training.trainer import TrainState, _loader_state

    cfg = _cfg("data.packing=false")
    fresh = build_batches(cfg, tokenizer, TRAIN, 0, 1, num_workers=0)
    common = {"train_state": {"iteration": 3, "consumed_samples": 12}}
    state = _loader_state(cfg, common, TrainState(3, 12), fresh.samples.fingerprint())
    resumed = build_batches(cfg, tokenizer, TRAIN, 0, 1, state=state, num_workers=0)
    assert resumed.next_global_batch().positions == (12, 13, 14, 15)
    assert _loader_state(cfg, {**common, "data": {"x": 1}}, TrainState(), {}) == {"x": 1}
    assert _loader_state(cfg, {}, TrainState(), {}) is None  # a fresh run or checkpoint.load
    with pytest.raises(CheckpointError, match="data.packing=false"):
        _loader_state(_cfg("data.packing=true", "train.micro_batch_size=1"), common,
                      TrainState(3, 12), {})


def test_a_sequence_too_short_for_the_synthetic_data_is_a_config_error(tokenizer):
    """Skipping too-long samples would never end here: every generated sample is that long."""
    from megatron_sail.config import ConfigError

    loader = build_batches(_cfg("data.packing=false", "data.seq_length=32"), tokenizer, TRAIN,
                           0, 1, num_workers=0)
    with pytest.raises(ConfigError, match=r"data.seq_length=32 is too short for the synthetic "
                                          r"data: sample 0 needs \d+ tokens \(16 visual"):
        loader.next_global_batch()
