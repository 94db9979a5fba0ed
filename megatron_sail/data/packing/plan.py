"""Which samples go into which packed row, decided from metadata alone.

A global batch is ``rows`` packed rows of ``seq_length`` tokens. The planner reads the
deterministic sample stream (position -> SampleInfo, or None for a bad sample) into a
lookahead buffer, packs the buffer into the rows and carries what does not fit over to the
next global batch. Nothing is dropped or duplicated, and the whole decision is a pure
function of the stream, the ``PackingState`` and the settings: every rank plans the
same global batch without talking to the others, and a run resumed from a saved state
replays exactly.

The plan does not depend on the data-parallel size; ``packing_balance.deal_rows`` hands the
rows out to ranks afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

# A stream that yields nothing but bad samples for this long is broken; fail instead of hanging.
MAX_SKIP_RUN = 100_000
# Exchange rounds that even out visual tokens across rows after packing (usually stalls sooner).
MAX_EXCHANGES = 64


@dataclass(frozen=True)
class SampleInfo:
    position: int  # index in the deterministic sample stream
    length: int  # tokens, image context tokens included
    visual_tokens: int  # image context tokens (what the ViT produces; its cost)


Stream = Callable[[int], Optional[SampleInfo]]


@dataclass(frozen=True)
class PackingState:
    """Where the stream stands between global batches: the next unread position and the
    samples read but not yet placed, in stream order. Small and JSON-friendly, so it is
    saved in checkpoints instead of ``consumed_samples``."""

    next_position: int = 0
    carry: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        bounds = [-1, *self.carry, self.next_position]
        if not all(a < b for a, b in zip(bounds, bounds[1:])):
            raise ValueError("invalid packing state: carry must be increasing positions in "
                             f"[0, next_position={self.next_position}), got {self.carry[:8]}")

    def as_dict(self) -> dict:
        return {"next_position": self.next_position, "carry": list(self.carry)}

    @classmethod
    def from_dict(cls, d: dict) -> "PackingState":
        return cls(int(d["next_position"]), tuple(int(p) for p in d["carry"]))


@dataclass(frozen=True)
class PackedRow:
    samples: tuple[SampleInfo, ...]  # in stream order; concatenated in this order

    @property
    def tokens(self) -> int:
        return sum(s.length for s in self.samples)

    @property
    def visual_tokens(self) -> int:
        return sum(s.visual_tokens for s in self.samples)

    @property
    def positions(self) -> tuple[int, ...]:
        return tuple(s.position for s in self.samples)


@dataclass(frozen=True)
class GlobalBatchPlan:
    seq_length: int
    rows: tuple[PackedRow, ...]  # ordered by each row's first stream position
    skipped: tuple[int, ...]  # positions the stream reported bad while filling the buffer
    overdue: int  # samples placed ahead of the others by the starvation guard

    @property
    def num_samples(self) -> int:
        return sum(len(r.samples) for r in self.rows)

    @property
    def efficiency(self) -> float:
        """Non-padding fraction of the global batch."""
        return sum(r.tokens for r in self.rows) / (len(self.rows) * self.seq_length)


def plan_global_batch(
    stream: Stream,
    state: PackingState,
    seq_length: int,
    rows: int,
    buffer_size: int,
    overdue_after: Optional[int] = None,
) -> tuple[GlobalBatchPlan, PackingState]:
    """Pack the next global batch; returns it and the state to plan the one after from.

    The lookahead buffer holds the carried samples, then fresh ones from the stream, until it
    has ``buffer_size`` samples and at least a global batch of tokens (so no row can stay
    empty). A global batch's worth of samples is enough: the carry-over already gives the
    packer choice, and a larger buffer mostly delays samples (benchmarks/packing_efficiency.py).
    ``stream`` must be a pure function of the position (carried samples are looked up again),
    defined for every position; epochs and shuffling are the sampler's business.

    Starvation guard: a carried sample is overdue once the stream had moved more than
    ``overdue_after`` positions past it when this batch started (default ``4 * buffer_size``,
    about four global batches). Overdue samples are placed before all others, oldest first.
    Any sample fits an empty row, so at least ``min(overdue, rows)`` of them are placed per
    batch and every sample's wait is bounded.
    """
    if seq_length < 1 or rows < 1:
        raise ValueError(f"seq_length ({seq_length}) and rows ({rows}) must be >= 1")
    if buffer_size < rows:
        raise ValueError(f"buffer_size ({buffer_size}) must be >= rows ({rows}) so that "
                         "every row can get a sample")
    overdue_after = 4 * buffer_size if overdue_after is None else overdue_after
    if overdue_after < 0:
        raise ValueError(f"overdue_after must be >= 0, got {overdue_after}")

    buffer, skipped, next_position = _fill_buffer(stream, state, seq_length, buffer_size,
                                                  rows * seq_length)
    # Only carried samples can be overdue: fresh ones are at or past state.next_position.
    late = state.next_position - overdue_after
    overdue = [s for s in buffer if s.position < late]  # stream order: oldest first
    rest = sorted((s for s in buffer if s.position >= late), key=lambda s: (-s.length, s.position))
    bins = _Bins(rows, seq_length)
    placed_overdue = sum(bins.place(s) for s in overdue)
    for s in rest:
        if bins.max_free >= s.length:  # fast path past samples no row has room for
            bins.place(s)
    bins.even_out_visual(MAX_EXCHANGES)

    packed = sorted((PackedRow(tuple(sorted(b, key=lambda s: s.position))) for b in bins.members),
                    key=lambda r: r.samples[0].position)
    placed = {p for r in packed for p in r.positions}
    carry = tuple(s.position for s in buffer if s.position not in placed)  # buffer: stream order
    plan = GlobalBatchPlan(seq_length, tuple(packed), tuple(skipped), placed_overdue)
    return plan, PackingState(next_position, carry)


def _fill_buffer(stream: Stream, state: PackingState, seq_length: int, min_samples: int,
                 min_tokens: int) -> tuple[list[SampleInfo], list[int], int]:
    """Carried samples, then fresh ones: (buffer in stream order, skipped, next position)."""
    buffer = []
    for p in state.carry:
        info = stream(p)
        if info is None:
            raise ValueError(f"carried sample {p} is now reported bad: the stream must be a "
                             "pure function of the position")
        buffer.append(_checked(info, p, seq_length))
    tokens = sum(s.length for s in buffer)
    position, skipped, skip_run = state.next_position, [], 0
    while len(buffer) < min_samples or tokens < min_tokens:
        info = stream(position)
        if info is None:
            skipped.append(position)
            skip_run += 1
            if skip_run >= MAX_SKIP_RUN:
                raise RuntimeError(f"stream positions {position - skip_run + 1}..{position} "
                                   "are all bad samples")
        else:
            buffer.append(_checked(info, position, seq_length))
            tokens += info.length
            skip_run = 0
        position += 1
    return buffer, skipped, position


def _checked(info: SampleInfo, position: int, seq_length: int) -> SampleInfo:
    # Over-long samples are rejected upstream (the loader returns None for them); reaching
    # here means the loader and the planner disagree about seq_length.
    if info.position != position:
        raise ValueError(f"stream({position}) returned the info of position {info.position}")
    if not 1 <= info.length <= seq_length:
        raise ValueError(f"sample {position} has {info.length} tokens; packing needs "
                         f"1..{seq_length}")
    if not 0 <= info.visual_tokens <= info.length:
        raise ValueError(f"sample {position} has {info.visual_tokens} visual tokens out of "
                         f"{info.length}")
    return info


class _Bins:
    """The rows under construction.

    Placement: decreasing length order and a tightest-fit choice keep padding low. Among the
    rows a visual sample fits, the one with the fewest visual tokens wins (then the tightest
    fit), so image tiles spread over rows; text-only samples fill gaps by tightest fit. Ties
    go to the lowest row index, so the plan is deterministic.
    """

    def __init__(self, rows: int, seq_length: int) -> None:
        self.free = [seq_length] * rows
        self.visual = [0] * rows
        self.members: list[list[SampleInfo]] = [[] for _ in range(rows)]
        self.max_free = seq_length  # nothing longer can be placed

    def place(self, s: SampleInfo) -> bool:
        fits = [i for i, f in enumerate(self.free) if f >= s.length]
        if not fits:
            return False
        if s.visual_tokens:
            best = min(fits, key=lambda i: (self.visual[i], self.free[i], i))
        else:
            best = min(fits, key=lambda i: (self.free[i], i))
        self._add(best, s)
        self.max_free = max(self.free)
        return True

    def even_out_visual(self, max_exchanges: int) -> None:
        """Move visual tokens from the heaviest row to lighter ones, as long as that helps.

        Greedy placement leaves rows whose visual load differs by 2x or more (a few large
        multi-tile samples land together); with few rows per rank the deal cannot undo that,
        and rows are micro-batches, whose ViT time the pipeline waits on. Each exchange moves
        one visual sample of the heaviest row to a lighter row, in return for one of that
        row's samples or nothing, where both rows still fit; it moves the amount closest to
        half their gap, trying the lightest row first. The set of samples, and so the
        efficiency, is unchanged.
        """
        rows = range(len(self.free))
        for _ in range(max_exchanges):
            heavy = max(rows, key=lambda r: (self.visual[r], -r))
            for light in sorted(rows, key=lambda r: (self.visual[r], r)):
                gap = self.visual[heavy] - self.visual[light]
                if gap <= 0:
                    return
                exchange = self._best_exchange(heavy, light, gap)
                if exchange is not None:
                    self._exchange(heavy, light, *exchange)
                    break
            else:
                return

    def _best_exchange(self, heavy: int, light: int, gap: int) -> Optional[tuple[int, int]]:
        """(index in heavy, index in light or -1 for nothing) moving 0 < d < gap visual tokens."""
        free_light = self.free[light]
        backs = [(-1, 0, 0)]  # nothing back, or one of the light row's samples
        backs += [(b, s.length, s.visual_tokens) for b, s in enumerate(self.members[light])]
        best = None
        for a, out in enumerate(self.members[heavy]):
            if not out.visual_tokens:
                continue
            room = self.free[heavy] + out.length  # in the heavy row once `out` has left
            for b, back_length, back_visual in backs:
                moved = out.visual_tokens - back_visual
                fits = back_length <= room and free_light + back_length >= out.length
                if fits and 0 < moved < gap:
                    key = (abs(gap - 2 * moved), a, b)
                    if best is None or key < best:
                        best = key
        return None if best is None else best[1:]

    def _exchange(self, heavy: int, light: int, a: int, b: int) -> None:
        out = self._take(heavy, a)
        if b >= 0:
            self._add(heavy, self._take(light, b))
        self._add(light, out)

    def _add(self, row: int, s: SampleInfo) -> None:
        self.members[row].append(s)
        self.free[row] -= s.length
        self.visual[row] += s.visual_tokens

    def _take(self, row: int, index: int) -> SampleInfo:
        s = self.members[row].pop(index)
        self.free[row] += s.length
        self.visual[row] -= s.visual_tokens
        return s
