"""The multimodal loader: blend -> sample stream -> planned global batches -> this rank's
micro-batches, decoded by worker processes ahead of time.

Everything the model sees is a pure function of the blend, the seed and a small state:

- stream position ``p`` -> (dataset, sample) by the blend schedule (``blend.BlendSchedule``);
- each global batch is planned from metadata alone (lengths, visual tokens) by every rank
  alike: packed rows (``packing_plan``) or, without packing, the next ``G`` good samples;
- the rows are dealt to data-parallel ranks balancing visual tokens (``packing_balance``), so
  rows, loss and the stream do not depend on the DP size;
- the state between global batches (``PackingState``: next position + carried samples) and
  the skip counters go into checkpoints, so a resumed run (any DP size) sees exactly the
  samples an uninterrupted run would have.

Bad samples are skipped and counted by kind, never fatal: those found while planning
(malformed lines, missing media, unreadable headers, too long) never enter a batch; those
found only when decoding (corrupt pixels, undecodable video) keep their planned place as a
padding segment outside the loss, so the batch layout stays deterministic.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch

from megatron_sail.data.packing.microbatch import MicroBatch, collate
from megatron_sail.data.records.blend import BlendSchedule
from megatron_sail.data.packing.balance import deal_rows, packing_stats
from megatron_sail.data.packing.collate import collate_packed, padded_infos, padded_length
from megatron_sail.data.packing.plan import (
    GlobalBatchPlan, PackedRow, PackingState, SampleInfo, plan_global_batch,
)
from megatron_sail.data.records.record import RecordError
from megatron_sail.data.encoding.sample_encoder import SampleEncoder, SampleError
from megatron_sail.data.loader.sources import SampleSource
from megatron_sail.errors import UserError

MALFORMED = "malformed_record"


class DataStateError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class LoaderSettings:
    seq_length: int
    global_batch: int  # packed rows with packing, else samples
    micro_batch: int  # 1 with packing (a packed row is a micro-batch)
    packing: bool = True
    buffer_size: Optional[int] = None  # packing lookahead in samples; None: 4 x global_batch
    num_workers: int = 2
    prefetch: int = 2  # micro-batches per worker in flight
    spawn_workers: bool = False  # spawn instead of fork (decoders that use CUDA)
    # Packed samples are padded to a multiple of this (2 x CP under context parallelism);
    # the planner places them at their padded lengths.
    segment_multiple: int = 1


@dataclass(frozen=True)
class Skip:
    position: int
    dataset: str
    kind: str
    where: str

    def as_dict(self) -> dict:
        return {"position": self.position, "dataset": self.dataset, "kind": self.kind,
                "where": self.where}


def _kind(exc: Exception) -> str:
    return exc.kind.value if isinstance(exc, SampleError) else MALFORMED


class BlendedSamples:
    """Stream position -> plan (cached) and encoding, over the blend's sources."""

    def __init__(self, sources: Sequence[SampleSource], weights: Sequence[float], seed: int,
                 encoder: SampleEncoder):
        self.sources = list(sources)
        self.schedule = BlendSchedule([len(s) for s in sources], list(weights), seed,
                                      in_order=[s.in_order for s in sources])
        self.encoder = encoder
        self._infos: dict[int, Optional[SampleInfo]] = {}
        self.failures: dict[int, Skip] = {}

    def fingerprint(self) -> dict:
        """What the stream depends on, to refuse resuming over a different blend."""
        return {"datasets": [s.name for s in self.sources],
                "sizes": [len(s) for s in self.sources],
                "weights": self.schedule.weights, "seed": self.schedule.seed}

    def info(self, position: int) -> Optional[SampleInfo]:
        if position not in self._infos:
            d, index = self.schedule.source_of(position)
            try:
                plan = self.sources[d].plan(index, self.encoder)
                self._infos[position] = SampleInfo(position, plan.length, plan.visual_tokens)
            except (SampleError, RecordError) as exc:
                self._infos[position] = None
                self.failures[position] = self.skip(position, exc)
        return self._infos[position]

    def skip(self, position: int, exc: Exception) -> Skip:
        d, _ = self.schedule.source_of(position)
        return Skip(position, self.sources[d].name, _kind(exc), str(exc))

    def forget_before(self, position: int, keep: Sequence[int] = ()) -> None:
        """Drop cached plans the planner will not ask for again."""
        keep = set(keep)
        for p in [p for p in self._infos if p < position and p not in keep]:
            del self._infos[p]
            self.failures.pop(p, None)

    def encode(self, position: int):
        d, index = self.schedule.source_of(position)
        return self.sources[d].encode(index, self.encoder)


@dataclass(frozen=True)
class MicroBatchSpec:
    """One micro-batch of one rank: rows of (position, planned length)."""

    batch: int
    rows: tuple[tuple[tuple[int, int], ...], ...]


class _MicroBatchBuilder(torch.utils.data.Dataset):
    """Decodes and collates a micro-batch (runs in loader workers)."""

    def __init__(self, samples: BlendedSamples, settings: LoaderSettings, pad_id: int):
        self.samples, self.settings, self.pad_id = samples, settings, pad_id

    def __len__(self) -> int:  # specs come from the sampler; the length is nominal
        return 2**62

    def _sample(self, position: int, length: int, skips: list[Skip]) -> dict:
        try:
            enc = self.samples.encode(position)
            multiple = self.settings.segment_multiple if self.settings.packing else 1
            if padded_length(len(enc.tokens), multiple) != length:  # plan and encoding agree
                raise SampleError(enc.where, f"encodes to {len(enc.tokens)} tokens but was "
                                  f"planned at {length}", "malformed_record")
            return {"tokens": enc.tokens, "labels": enc.labels, "loss_mask": enc.loss_mask,
                    "position_ids": enc.position_ids, "pixel_values": enc.pixel_values,
                    "image_grids": enc.image_grids}
        except (SampleError, RecordError) as exc:
            skips.append(self.samples.skip(position, exc))
            return self._filler(length)

    def _filler(self, length: int) -> dict:
        """A failed sample keeps its planned place: padding, outside the loss."""
        pad = torch.full((length,), self.pad_id, dtype=torch.int64)
        return {"tokens": pad, "labels": pad.clone(), "loss_mask": torch.zeros(length),
                "position_ids": torch.arange(length), "pixel_values": None, "image_grids": None}

    def __getitem__(self, spec: MicroBatchSpec) -> tuple[MicroBatch, list[Skip]]:
        skips: list[Skip] = []
        seq = self.settings.seq_length
        if self.settings.packing:
            (row,) = spec.rows
            samples = [self._sample(p, n, skips) for p, n in row]
            return collate_packed(samples, seq, self.pad_id,
                                  self.settings.segment_multiple), skips
        samples = [_pad(self._sample(p, n, skips), seq, self.pad_id) for ((p, n),) in spec.rows]
        return collate(samples), skips


def _as_is(item):
    return item


def _pad(sample: dict, seq_length: int, pad_id: int) -> dict:
    n = sample["tokens"].numel()
    out = dict(sample)
    for key, fill in (("tokens", pad_id), ("labels", pad_id), ("loss_mask", 0)):
        full = torch.full((seq_length,), fill, dtype=sample[key].dtype)
        full[:n] = sample[key]
        out[key] = full
    out["position_ids"] = torch.arange(seq_length)
    return out


def _plan_unpacked(stream, state: PackingState, seq_length: int, count: int
                   ) -> tuple[GlobalBatchPlan, PackingState]:
    """The next ``count`` good samples in stream order, one per row."""
    rows, skipped, position = [], [], state.next_position
    while len(rows) < count:
        info = stream(position)
        if info is None:
            skipped.append(position)
        else:
            rows.append(PackedRow((info,)))
        position += 1
    return GlobalBatchPlan(seq_length, tuple(rows), tuple(skipped), 0), PackingState(position)


@dataclass
class GlobalBatch:
    """What one rank gets for one training step."""

    microbatches: list[MicroBatch]  # this rank's, in order
    metrics: dict  # packing statistics and cumulative skip counters (the same on all ranks)
    skips: list[Skip]  # samples skipped in this global batch, on any rank
    positions: tuple[int, ...]  # stream positions of all samples of the global batch
    shapes: tuple[tuple[int, int], ...]  # (tokens, visual tokens) of each of them


@dataclass
class _Planned:
    state_before: PackingState
    state_after: PackingState
    plan: GlobalBatchPlan
    ranks: list[list[PackedRow]]
    skips: list[Skip] = field(default_factory=list)


class MultimodalBatches:
    """This rank's micro-batches of consecutive global batches, with a checkpointable state."""

    def __init__(self, samples: BlendedSamples, settings: LoaderSettings, pad_id: int,
                 dp_rank: int, dp_size: int, dp_group=None, state: Optional[dict] = None,
                 share_group=None):
        """``dp_group`` None: no gathering of decode-time skips (each rank reports its own).
        ``share_group``: the ranks that consume the same micro-batches (TP x PP of one DP
        rank); its first rank decodes and broadcasts, the others only plan (to keep state)."""
        s = settings
        if s.packing and s.micro_batch != 1:
            raise ValueError(f"with packing a micro-batch is one packed row: micro-batch size "
                             f"must be 1, got {s.micro_batch}")
        if s.global_batch % (s.micro_batch * dp_size):
            raise ValueError(f"global batch {s.global_batch} is not divisible by micro-batch "
                             f"{s.micro_batch} x DP {dp_size}")
        self.samples, self.settings, self.pad_id = samples, settings, pad_id
        self.dp_rank, self.dp_size, self.dp_group = dp_rank, dp_size, dp_group
        self.buffer_size = s.buffer_size or 4 * s.global_batch
        self.skipped: collections.Counter = collections.Counter()
        self._state = PackingState()
        if state is not None:
            self.load_state_dict(state)
        self._iterator: Optional[Iterator] = None
        self._pending: collections.deque[_Planned] = collections.deque()
        self.share_group = None
        if share_group is not None and torch.distributed.get_world_size(share_group) > 1:
            self.share_group = share_group
            self._source = torch.distributed.get_global_rank(share_group, 0)
        self._receiver = (self.share_group is not None
                          and torch.distributed.get_rank(self.share_group) != 0)

    @property
    def num_microbatches(self) -> int:
        return self.settings.global_batch // (self.settings.micro_batch * self.dp_size)

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The state before the next global batch this rank has not consumed."""
        return {"packing": self._state.as_dict(), "skipped": dict(self.skipped),
                "blend": self.samples.fingerprint(), "packing_enabled": self.settings.packing}

    def load_state_dict(self, state: dict) -> None:
        stored, current = state.get("blend"), self.samples.fingerprint()
        if stored != current:
            raise DataStateError(f"the data stream changed since the checkpoint: it was "
                                 f"{json.dumps(stored)}, now {json.dumps(current)}")
        if bool(state.get("packing_enabled")) != self.settings.packing:
            raise DataStateError("data.packing changed since the checkpoint; the stream "
                                 "position cannot carry over")
        self._state = PackingState.from_dict(state["packing"])
        self.skipped = collections.Counter(state.get("skipped", {}))

    # -- planning (main process, ahead of the workers) -------------------------------------
    def _plan(self, state: PackingState) -> tuple[GlobalBatchPlan, PackingState]:
        s = self.settings
        if s.packing:
            return plan_global_batch(padded_infos(self.samples.info, s.segment_multiple), state,
                                     s.seq_length, s.global_batch,
                                     max(self.buffer_size, s.global_batch))
        return _plan_unpacked(self.samples.info, state, s.seq_length, s.global_batch)

    def _plan_batch(self, state: PackingState) -> _Planned:
        plan, after = self._plan(state)
        planned = _Planned(state, after, plan, deal_rows(plan, self.dp_size),
                           [self.samples.failures[p] for p in plan.skipped])
        self.samples.forget_before(after.next_position, after.carry)
        return planned

    def _specs(self) -> Iterator[MicroBatchSpec]:
        state, number = self._state, 0
        while True:
            planned = self._plan_batch(state)
            self._pending.append(planned)
            after = planned.state_after
            rows = planned.ranks[self.dp_rank]
            mbs = self.settings.micro_batch
            for k in range(0, len(rows), mbs):
                yield MicroBatchSpec(number, tuple(
                    tuple((info.position, info.length) for info in row.samples)
                    for row in rows[k:k + mbs]))
            state, number = after, number + 1

    def _loader(self) -> Iterator:
        s = self.settings
        builder = _MicroBatchBuilder(self.samples, s, self.pad_id)
        loader = torch.utils.data.DataLoader(
            builder, sampler=self._specs(), batch_size=None, collate_fn=_as_is,
            num_workers=s.num_workers, prefetch_factor=s.prefetch if s.num_workers else None,
            persistent_workers=False,
            multiprocessing_context="spawn" if s.spawn_workers and s.num_workers else None)
        return iter(loader)

    # -- consumption ----------------------------------------------------------------------
    def next_global_batch(self) -> GlobalBatch:
        """This rank's micro-batches of the next global batch, with its metrics and the samples
        skipped in it (all ranks', gathered over the data-parallel group)."""
        if self._receiver:  # another rank of the model-parallel group decodes
            planned = self._plan_batch(self._state)
            payload: list = [None]
            torch.distributed.broadcast_object_list(payload, src=self._source,
                                                    group=self.share_group)
            items = payload[0]
        else:
            if self._iterator is None:
                self._iterator = self._loader()
            items = [next(self._iterator) for _ in range(self.num_microbatches)]
            planned = self._pending.popleft()
            if self.share_group is not None:
                torch.distributed.broadcast_object_list([items], src=self._source,
                                                        group=self.share_group)
        decode_skips = [skip for _, skips in items for skip in skips]
        if self.dp_size > 1 and self.dp_group is not None:
            gathered: list = [None] * self.dp_size
            torch.distributed.all_gather_object(gathered, decode_skips, group=self.dp_group)
            decode_skips = [skip for part in gathered for skip in part]
        skips = planned.skips + sorted(decode_skips, key=lambda k: k.position)
        self.skipped.update(skip.kind for skip in skips)
        self._state = planned.state_after
        metrics = {**packing_stats(planned.ranks, self.settings.seq_length),
                   "data/skipped": sum(self.skipped.values()),
                   **{f"data/skipped/{kind}": n for kind, n in sorted(self.skipped.items())}}
        infos = [s for row in planned.plan.rows for s in row.samples]
        return GlobalBatch([batch for batch, _ in items], metrics, skips,
                           tuple(s.position for s in infos),
                           tuple((s.length, s.visual_tokens) for s in infos))

    def close(self) -> None:
        self._iterator = None
        self._pending.clear()

