import json
import math
import random
from collections import Counter

import pytest
import torch

from megatron_sail.data.packing import plan as packing_plan
from megatron_sail.data.encoding.conversation import encode_conversation
from megatron_sail.data.records.record import ASSISTANT, USER, Turn
from megatron_sail.data.packing import (
    PackedRow,
    PackingState,
    SampleInfo,
    collate_packed,
    deal_rows,
    packing_stats,
    plan_global_batch,
)
from megatron_sail.data.encoding.tokenizer import SentencePieceTokenizer

SEQ, ROWS, BUFFER = 512, 8, 32


def mixed_stream(seed: int, seq: int = SEQ, bad: float = 0.03):
    """Log-normal lengths (median seq / 5), 70% of samples with 1-6 tiles of 32 visual
    tokens, a few bad samples. Pure in the position, like the loader's metadata stream."""

    def stream(position: int):
        r = random.Random(seed * 1_000_003 + position)
        if r.random() < bad:
            return None
        length = min(seq, max(1, round(r.lognormvariate(math.log(seq / 5), 0.8))))
        tiles = min(r.randint(1, 6), length // 32) if r.random() < 0.7 else 0
        return SampleInfo(position, length, 32 * tiles)

    return stream


def table_stream(lengths: list[int], visual: list[int] | None = None):
    def stream(position: int):
        v = visual[position] if visual else 0
        return SampleInfo(position, lengths[position], v)

    return stream


def run(stream, batches: int, state: PackingState = PackingState(), **kw):
    kw = {"seq_length": SEQ, "rows": ROWS, "buffer_size": BUFFER, **kw}
    plans = []
    for _ in range(batches):
        plan, state = plan_global_batch(stream, state, **kw)
        plans.append(plan)
    return plans, state


# -- planning ---------------------------------------------------------------------------------

def test_every_position_placed_once_skipped_or_carried() -> None:
    plans, state = run(mixed_stream(0), 60)
    placed = [p for plan in plans for row in plan.rows for p in row.positions]
    skipped = [p for plan in plans for p in plan.skipped]
    assert len(placed) == len(set(placed))
    assert skipped and not set(skipped) & set(placed)
    assert sorted(placed + skipped + list(state.carry)) == list(range(state.next_position))
    for plan in plans:
        assert len(plan.rows) == ROWS
        assert [r.samples[0].position for r in plan.rows] == sorted(r.samples[0].position for r in plan.rows)
        for row in plan.rows:
            assert 0 < row.tokens <= SEQ
            assert list(row.positions) == sorted(row.positions)


def test_carry_is_next_batch_buffer_head() -> None:
    # rows=1, seq 10: [6, 6, 3] -> row {0, 2}, sample 1 (6) carried; then it is placed first.
    stream = table_stream([6, 6, 3, 4, 2, 9, 1, 1])
    plan, state = plan_global_batch(stream, PackingState(), seq_length=10, rows=1, buffer_size=3)
    assert plan.rows[0].positions == (0, 2) and state == PackingState(3, (1,))
    plan, state = plan_global_batch(stream, state, seq_length=10, rows=1, buffer_size=3)
    assert plan.rows[0].positions == (1, 3) and state == PackingState(5, (4,))
    plan, state = plan_global_batch(stream, state, seq_length=10, rows=1, buffer_size=3)
    assert plan.rows[0].positions == (5, 6) and state == PackingState(7, (4,))


def test_carry_stays_in_stream_order_and_progress_is_made() -> None:
    stream = mixed_stream(1)
    state = PackingState()
    for _ in range(40):
        before = state
        plan, state = plan_global_batch(stream, state, SEQ, ROWS, BUFFER)
        assert list(state.carry) == sorted(state.carry)
        assert set(state.carry) <= set(before.carry) | set(range(before.next_position, state.next_position))
        fresh = state.next_position - before.next_position - len(plan.skipped)
        assert len(state.carry) == len(before.carry) + fresh - plan.num_samples
        assert plan.num_samples >= ROWS  # every row holds a sample


def test_resume_from_saved_state_replays_exactly() -> None:
    stream = mixed_stream(2)
    uninterrupted, _ = run(stream, 30)
    _, saved = run(stream, 10)
    restored = PackingState.from_dict(json.loads(json.dumps(saved.as_dict())))
    assert restored == saved
    resumed, _ = run(stream, 20, state=restored)
    assert resumed == uninterrupted[10:]


def test_small_buffer_tops_up_to_a_batch_of_tokens() -> None:
    # buffer_size == rows with short samples: the token floor still fills every row.
    plans, _ = run(table_stream([40] * 2000), 5, buffer_size=ROWS)
    for plan in plans:
        assert all(row.tokens == 480 for row in plan.rows)  # 12 x 40 per 512-token row


def test_starvation_guard_places_an_old_sample() -> None:
    # Row of 100: sample 0 (60) always loses to a fresh 70; it would wait forever.
    stream = table_stream([60] + [70] * 200)
    kw = {"seq_length": 100, "rows": 1, "buffer_size": 2}
    plans, state = run(stream, 50, overdue_after=10**6, **kw)
    assert state.carry == (0,) and all(p.overdue == 0 for p in plans)

    plans, state = run(stream, 50, overdue_after=10, **kw)
    first = next(i for i, p in enumerate(plans) if 0 in p.rows[0].positions)
    assert plans[first].overdue == 1 and 0 not in state.carry
    assert first == 10  # its lag passes 10 positions (one per batch here) after 10 batches


def test_exchanges_even_out_rows_without_changing_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = mixed_stream(3, seq=2048)
    kw = {"seq_length": 2048, "rows": 32, "buffer_size": 160}
    balanced, state = run(stream, 10, **kw)
    monkeypatch.setattr(packing_plan, "MAX_EXCHANGES", 0)
    greedy, greedy_state = run(stream, 10, **kw)
    assert state == greedy_state
    spread = {"balanced": 0.0, "greedy": 0.0}
    for b, g in zip(balanced, greedy):
        assert sorted(p for r in b.rows for p in r.positions) == sorted(p for r in g.rows for p in r.positions)
        assert all(r.tokens <= 2048 for r in b.rows)
        spread["balanced"] += max(r.visual_tokens for r in b.rows) / (sum(r.visual_tokens for r in b.rows) / 32)
        spread["greedy"] += max(r.visual_tokens for r in g.rows) / (sum(r.visual_tokens for r in g.rows) / 32)
    assert spread["balanced"] < 0.9 * spread["greedy"]


@pytest.mark.parametrize("info, match", [
    (SampleInfo(0, SEQ + 1, 0), "tokens"),
    (SampleInfo(0, 0, 0), "tokens"),
    (SampleInfo(0, 10, 11), "visual"),
    (SampleInfo(5, 10, 0), "position"),
])
def test_rejects_bad_metadata(info: SampleInfo, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_global_batch(lambda p: info, PackingState(), SEQ, ROWS, BUFFER)


def test_rejects_bad_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = mixed_stream(0)
    with pytest.raises(ValueError, match="buffer_size"):
        plan_global_batch(stream, PackingState(), SEQ, rows=8, buffer_size=4)
    with pytest.raises(ValueError, match="overdue_after"):
        plan_global_batch(stream, PackingState(), SEQ, ROWS, BUFFER, overdue_after=-1)
    monkeypatch.setattr(packing_plan, "MAX_SKIP_RUN", 50)
    with pytest.raises(RuntimeError, match="all bad"):  # fails instead of hanging
        plan_global_batch(lambda p: None, PackingState(), SEQ, ROWS, BUFFER)
    for bad in [(5, (5,)), (5, (3, 2)), (5, (1, 1)), (-1, ())]:
        with pytest.raises(ValueError, match="packing state"):
            PackingState(*bad)
    with pytest.raises(ValueError, match="bad"):  # a carried sample must stay good
        plan_global_batch(lambda p: None, PackingState(3, (1,)), SEQ, ROWS, BUFFER)


# -- dealing to data-parallel ranks -----------------------------------------------------------

def test_deal_is_a_partition_for_every_dp_size() -> None:
    plans, _ = run(mixed_stream(4), 5, rows=16, buffer_size=64)
    for plan in plans:
        for dp in (1, 2, 4, 8, 16):
            ranks = deal_rows(plan, dp)
            assert len(ranks) == dp and all(len(r) == 16 // dp for r in ranks)
            assert Counter(row for rank in ranks for row in rank) == Counter(plan.rows)
            order = {row: i for i, row in enumerate(plan.rows)}
            assert all([order[r] for r in rank] == sorted(order[r] for r in rank) for rank in ranks)
        assert deal_rows(plan, 1) == [list(plan.rows)]
    with pytest.raises(ValueError, match="evenly"):
        deal_rows(plans[0], 3)


def _row(visual: int, tokens: int, position: int) -> PackedRow:
    return PackedRow((SampleInfo(position, tokens, visual),))


def _plan(rows: list[PackedRow]):
    return packing_plan.GlobalBatchPlan(SEQ, tuple(rows), (), 0)


def test_deal_balances_visual_tokens_exactly_when_possible() -> None:
    plan = _plan([_row(v, 500, i) for i, v in enumerate([80, 70, 60, 50, 40, 30, 20, 10])])
    ranks = deal_rows(plan, 2)
    assert [sum(r.visual_tokens for r in rank) for rank in ranks] == [180, 180]
    # A text-only batch balances tokens instead.
    plan = _plan([_row(0, t, i) for i, t in enumerate([500, 400, 300, 300, 200, 100])])
    assert [sum(r.tokens for r in rank) for rank in deal_rows(plan, 2)] == [900, 900]


def test_deal_balance_on_a_realistic_mix() -> None:
    plans, _ = run(mixed_stream(5, seq=2048), 10, seq_length=2048, rows=64, buffer_size=320)
    for plan in plans:
        dealt = packing_stats(deal_rows(plan, 8), 2048)
        contiguous = packing_stats([list(plan.rows[k:k + 8]) for k in range(0, 64, 8)], 2048)
        assert dealt["visual_tokens_rank_imbalance"] <= 1.05
        assert dealt["visual_tokens_rank_imbalance"] <= contiguous["visual_tokens_rank_imbalance"]
        assert dealt["packing_efficiency"] == contiguous["packing_efficiency"] == plan.efficiency > 0.95


def test_packing_stats() -> None:
    ranks = [[_row(100, 400, 0), _row(0, 512, 1)], [_row(300, 300, 2), _row(0, 100, 3)]]
    stats = packing_stats(ranks, SEQ)
    assert stats["packing_efficiency"] == pytest.approx(1312 / 2048)
    assert stats["packed_rows"] == 4 and stats["packed_samples"] == 4
    assert stats["visual_tokens_per_rank_max"] == 300 and stats["visual_tokens_per_rank_mean"] == 200
    assert stats["visual_tokens_rank_imbalance"] == 1.5
    assert stats["tokens_per_rank_max"] == 912 and stats["tokens_per_rank_mean"] == 656


# -- collating one packed row -----------------------------------------------------------------

def _sample(n: int, base: int, tiles: int = 0) -> dict:
    tokens = torch.arange(base, base + n)
    labels = torch.cat([tokens[1:], torch.tensor([-1])])  # the encoder's own end label
    loss_mask = torch.ones(n)
    loss_mask[-1] = 0
    pixels = torch.full((tiles, 3, 4, 4), base % 256, dtype=torch.uint8) if tiles else None
    return {"tokens": tokens, "labels": labels, "loss_mask": loss_mask,
            "position_ids": torch.arange(n), "pixel_values": pixels}


def test_collate_packed_row_layout() -> None:
    text = _sample(3, 200)
    text["pixel_values"] = torch.zeros((0, 3, 4, 4), dtype=torch.uint8)  # the encoder's "no tiles"
    samples = [_sample(5, 100, tiles=2), text, _sample(4, 300, tiles=1)]
    mb = collate_packed(samples, seq_length=16, pad_id=0)
    assert mb.tokens.shape == mb.labels.shape == mb.position_ids.shape == mb.loss_mask.shape == (1, 16)
    assert mb.tokens.dtype == mb.labels.dtype == mb.position_ids.dtype == torch.int64
    assert mb.loss_mask.dtype == torch.float32
    assert mb.cu_seqlens.dtype == torch.int32 and mb.cu_seqlens.tolist() == [0, 5, 8, 12, 16]
    assert mb.max_seqlen == 5
    assert mb.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3]
    assert mb.tokens[0, :12].tolist() == [100, 101, 102, 103, 104, 200, 201, 202, 300, 301, 302, 303]
    assert (mb.tokens[0, 12:] == 0).all() and (mb.labels[0, 12:] == 0).all()
    # No sample predicts the next one's first token; the encoder's mask stands at the end.
    for end in (5, 8, 12):
        assert mb.labels[0, end - 1] == -1 and mb.loss_mask[0, end - 1] == 0
    assert mb.labels[0, :4].tolist() == [101, 102, 103, 104]
    assert mb.loss_mask[0].tolist() == [1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert mb.pixel_values.shape == (3, 3, 4, 4) and mb.pixel_values.dtype == torch.uint8
    assert mb.pixel_values[:, 0, 0, 0].tolist() == [100, 100, 300 % 256]


def test_collate_full_row_has_no_padding_segment() -> None:
    mb = collate_packed([_sample(10, 0), _sample(6, 50)], seq_length=16, pad_id=0)
    assert mb.cu_seqlens.tolist() == [0, 10, 16] and mb.max_seqlen == 10
    assert mb.pixel_values is None
    text = _sample(4, 0)
    text["pixel_values"] = torch.zeros((0, 3, 4, 4), dtype=torch.uint8)
    assert collate_packed([text], seq_length=16, pad_id=0).pixel_values is None
    # The padding segment counts towards max_seqlen (attention kernels see it).
    assert collate_packed([_sample(2, 0)], seq_length=16, pad_id=0).max_seqlen == 14


def test_collate_rejects_overflow_and_ragged_samples() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        collate_packed([_sample(10, 0), _sample(7, 0)], seq_length=16, pad_id=0)
    ragged = _sample(4, 0)
    ragged["labels"] = ragged["labels"][:3]
    with pytest.raises(ValueError, match="labels"):
        collate_packed([ragged], seq_length=16, pad_id=0)


def test_collate_encoded_chat_samples(tokenizer: SentencePieceTokenizer) -> None:
    """Real encoder output: each segment's loss targets are exactly
    that sample's answer, and nothing is learned across the boundary."""
    answers = ["a red circle.", "two blue squares on the left.", "nothing."]
    samples = []
    for k, answer in enumerate(answers):
        image = "<image>\n" if k % 2 else ""
        enc = encode_conversation(tokenizer, [Turn(USER, image + "What is shown?"), Turn(ASSISTANT, answer)],
                                  [1] * (k % 2), tokens_per_tile=4)
        samples.append({"tokens": enc.tokens, "labels": enc.labels, "loss_mask": enc.loss_mask,
                        "position_ids": enc.position_ids, "pixel_values": None})
    mb = collate_packed(samples, seq_length=128, pad_id=tokenizer.pad_id)
    bounds = mb.cu_seqlens.tolist()
    for k, answer in enumerate(answers):
        start, end = bounds[k], bounds[k + 1]
        mask = mb.loss_mask[0, start:end].bool()
        assert tokenizer.decode(mb.labels[0, start:end][mask]) == answer + "<|im_end|>"
        assert mb.labels[0, end - 1] == tokenizer.pad_id and mb.loss_mask[0, end - 1] == 0
        assert mb.position_ids[0, start:end].tolist() == list(range(end - start))
    assert bounds[-1] == 128 and mb.loss_mask[0, bounds[-2]:].sum() == 0
