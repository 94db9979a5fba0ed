"""Running a curation: chunks of each phase by local worker processes and/or SLURM array
elements, global decisions once a phase is complete, then the outputs.

Order of work: within a phase chunks may finish in any order on any worker; a global stage
decides only after all of them, over every record in input order. That is what makes the
outcome independent of ``--workers`` and ``--shard``, and of kills and reruns: every piece of
work is a pure function of the spec, the inputs and the finished work before it.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from megatron_sail.curation.atomic import write_json_atomic
from megatron_sail.curation.items import Chunk, Item, read_chunk, read_items, write_items
from megatron_sail.curation.load import load_spec
from megatron_sail.curation.plan import Phase, WorkDir, make_phases, open_work
from megatron_sail.curation.progress import RecordProgress

POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Assignment:
    """Which chunks this process owns: chunk k belongs to shard ``k % shards``."""
    shard: int = 0
    shards: int = 1
    workers: int = 1

    def owns(self, chunk: int) -> bool:
        return chunk % self.shards == self.shard


# -- one chunk of one phase (runs in a worker process) -----------------------------------------
_LOADED: dict[str, tuple] = {}


def _phases_of(spec_path: str) -> list[Phase]:
    if spec_path not in _LOADED:
        _LOADED[spec_path] = tuple(make_phases(load_spec(spec_path)))
    return list(_LOADED[spec_path])


def apply_decision(items: list[Item], changes: dict) -> None:
    for item in items:
        change = changes.get(str(item.i))
        if change:
            item.scores.update(change.get("scores", {}))
            item.extra.update(change.get("extra", {}))
            if change.get("drop"):
                item.drop = change["drop"]
        item.features = {}


def phase_input(work: WorkDir, phases: list[Phase], number: int, chunk: Chunk) -> list[Item]:
    """The items entering phase ``number`` for ``chunk``: all of them for the first phase
    (records that are not usable already dropped), the survivors of the phase before."""
    if number == 1:
        return read_chunk(chunk)
    items = list(read_items(work.chunk_file(number - 1, chunk.index)))
    if phases[number - 2].global_stage is not None:
        apply_decision(items, work.chunk_decision(number - 1, chunk.index))
    return [item for item in items if item.alive]


def _run_stage(stage, position: int, items: list[Item], method: str = "run") -> None:
    live = [item for item in items if item.alive]
    getattr(stage, method)(live)
    for item in live:
        if item.drop is not None and "step" not in item.drop:
            item.drop["step"] = position


def run_chunk(spec_path: str, work_root: str, number: int, chunk_json: dict) -> int:
    """Phase ``number`` on one chunk; writes its work file."""
    phases = _phases_of(spec_path)
    phase = phases[number - 1]
    work = WorkDir(Path(work_root))
    chunk = Chunk(**chunk_json)
    items = phase_input(work, phases, number, chunk)
    for item in items:
        if item.drop is not None and "step" not in item.drop:
            item.drop["step"] = -1          # dropped while reading
    for position, stage in phase.map_stages:
        _run_stage(stage, position, items)
    if phase.global_stage is not None:
        _run_stage(phase.global_stage[1], phase.global_stage[0], items, "features")
    write_items(work.chunk_file(number, chunk.index), items)
    return chunk.count      # progress counts the input records a chunk covers


# -- a global decision ---------------------------------------------------------------------------
def decide(work: WorkDir, phase: Phase, chunks: list[Chunk]) -> None:
    """Run the phase's global stage over every live item in input order and store what it
    changed (the same file whichever process writes it)."""
    if work.decision_file(phase.number).is_file():
        return
    position, stage = phase.global_stage
    live, chunk_of = [], {}
    for c in chunks:
        for item in read_items(work.chunk_file(phase.number, c.index)):
            if item.alive:
                live.append(item)
                chunk_of[item.i] = c.index
    before = {item.i: (dict(item.scores), dict(item.extra)) for item in live}
    plot = stage.decide(live)
    changes: dict[int, dict] = {c.index: {} for c in chunks}
    for item in live:
        scores, extra = before[item.i]
        change = {}
        new_scores = {k: v for k, v in item.scores.items() if scores.get(k) != v}
        new_extra = {k: v for k, v in item.extra.items() if extra.get(k) != v}
        if new_scores:
            change["scores"] = new_scores
        if new_extra:
            change["extra"] = new_extra
        if item.drop is not None:
            change["drop"] = dict(item.drop, step=position)
        if change:
            changes[chunk_of[item.i]][str(item.i)] = change
    for index, chunk_changes in changes.items():
        write_json_atomic(work.chunk_decision_file(phase.number, index), chunk_changes)
    write_json_atomic(work.decision_file(phase.number), {"plot": plot})   # last: complete


# -- the whole run ----------------------------------------------------------------------------
def _wait_for_others(work: WorkDir, number: int, chunks: list[Chunk], assignment: Assignment,
                     progress: RecordProgress) -> None:
    """Array elements meet at the end of each phase: the global decision needs every chunk.
    (An element that died is not replaced: the line names the shards still owing chunks.)"""
    while True:
        missing = [c for c in chunks if not work.done(number, c.index)]
        if not missing:
            return
        owing = sorted({c.index % assignment.shards for c in missing})
        progress.waiting(len(chunks) - len(missing), len(chunks), owing)
        time.sleep(POLL_SECONDS)


def _run_pending(spec_path: str, work: WorkDir, number: int, pending: list[Chunk],
                 workers: int, progress: RecordProgress) -> None:
    if workers <= 1 or len(pending) <= 1:
        for chunk in pending:
            progress.advance(run_chunk(spec_path, str(work.root), number, chunk.to_json()))
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        # Submitted in input order: the earliest chunks finish first, so a killed run leaves
        # a prefix of finished work for the rerun.
        futures = {pool.submit(run_chunk, spec_path, str(work.root), number, c.to_json())
                   for c in pending}
        while futures:
            done, futures = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                if future.exception() is not None:
                    for other in futures:
                        other.cancel()
                    raise future.exception()
                progress.advance(future.result())


def run_curation(spec_path: str | Path, out: str | Path, assignment: Assignment,
                 quiet: bool = False) -> dict:
    """Everything this process owns; the outputs once every chunk of every phase is done.
    Every array element ends by writing the same outputs (whichever renames last wins with
    identical bytes). Returns the report."""
    from megatron_sail.curation.outputs import write_outputs

    spec = load_spec(spec_path)
    phases = make_phases(spec)
    out = Path(out).absolute()
    work, chunks = open_work(spec, out, phases)
    for phase in phases:
        pending = [c for c in chunks
                   if assignment.owns(c.index) and not work.done(phase.number, c.index)]
        progress = RecordProgress(f"phase {phase.number}/{len(phases)} ({phase.title})",
                                  sum(c.count for c in pending), quiet)
        _run_pending(str(spec.path), work, phase.number, pending, assignment.workers, progress)
        _wait_for_others(work, phase.number, chunks, assignment, progress)
        if phase.global_stage is not None:
            decide(work, phase, chunks)
        progress.finish()
    return write_outputs(spec, out, work, phases, chunks)


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (0 <= I < N), or ``array``: this SLURM array element of an array of N."""
    from megatron_sail.errors import UsageError

    if text == "array":
        index, count = os.environ.get("SLURM_ARRAY_TASK_ID"), os.environ.get("SLURM_ARRAY_TASK_COUNT")
        if not (index and count and index.isdigit() and count.isdigit()):
            raise UsageError("--shard array needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT "
                             "(run it as an element of a SLURM array job)")
        text = f"{index}/{count}"
    parts = text.split("/")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or not int(parts[0]) < int(parts[1]):
        raise UsageError(f"--shard must be I/N with 0 <= I < N (or 'array'), got {text!r}")
    return int(parts[0]), int(parts[1])

