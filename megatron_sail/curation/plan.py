"""How a curation is cut into work: phases and chunks, and where each piece of finished work
is kept under ``OUT/.curate`` so that a rerun skips it.

A phase is the map stages up to the next global stage, plus that global stage's per-chunk
features; its global decision follows once every chunk of the phase is done. Per chunk and
phase one file holds the items that entered the phase; a global decision writes what it
changed per chunk, then ``decision.json`` (its plot) as the mark that it is complete. All are
written atomically: a file that exists is finished work, and a killed run leaves only
temporary files that the next run overwrites.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from megatron_sail.curation.atomic import write_json_atomic
from megatron_sail.curation.items import Chunk, plan_chunks
from megatron_sail.curation.spec import CurationSpec
from megatron_sail.curation.stages import GlobalStage, MapStage, make_stage
from megatron_sail.errors import UserError

WORK_DIR = ".curate"


@dataclass
class Phase:
    number: int
    map_stages: list[tuple[int, MapStage]]          # (position in the spec, stage)
    global_stage: Optional[tuple[int, GlobalStage]] = None

    @property
    def title(self) -> str:
        names = [s.name for _, s in self.map_stages]
        if self.global_stage:
            names.append(self.global_stage[1].name)
        return ", ".join(names) or "read"


def make_phases(spec: CurationSpec) -> list[Phase]:
    phases: list[Phase] = []
    pending: list[tuple[int, MapStage]] = []
    for position, stage_spec in enumerate(spec.stages):
        stage = make_stage(stage_spec, spec.directory)
        if isinstance(stage, GlobalStage):
            phases.append(Phase(len(phases) + 1, pending, (position, stage)))
            pending = []
        else:
            pending.append((position, stage))
    if pending or not phases:
        phases.append(Phase(len(phases) + 1, pending))
    return phases


def _input_state(path: str) -> list:
    target = Path(path) / "index.json" if os.path.isdir(path) else Path(path)
    stat = target.stat()
    return [path, stat.st_size, stat.st_mtime_ns]


@dataclass
class WorkDir:
    root: Path                 # OUT/.curate

    def phase_dir(self, phase: int) -> Path:
        return self.root / f"phase-{phase:02d}"

    def chunk_file(self, phase: int, chunk: int) -> Path:
        return self.phase_dir(phase) / f"chunk-{chunk:06d}.jsonl"

    def decision_file(self, phase: int) -> Path:
        return self.phase_dir(phase) / "decision.json"

    def chunk_decision_file(self, phase: int, chunk: int) -> Path:
        return self.phase_dir(phase) / f"decision-{chunk:06d}.json"

    def chunk_decision(self, phase: int, chunk: int) -> dict:
        """What the global decision of ``phase`` changed in ``chunk``, by item index."""
        return json.loads(self.chunk_decision_file(phase, chunk).read_text(encoding="utf-8"))

    def done(self, phase: int, chunk: int) -> bool:
        return self.chunk_file(phase, chunk).is_file()


def open_work(spec: CurationSpec, out: Path, phases: list[Phase]) -> tuple[WorkDir, list[Chunk]]:
    """The work directory of ``out`` and the chunk table: made on the first run, checked on
    every later one (another spec or changed inputs would mix two curations in one output)."""
    work = WorkDir(out / WORK_DIR)
    fingerprint = hashlib.sha256(json.dumps(
        [spec.fingerprint(), [_input_state(p) for p in spec.inputs]]).encode()).hexdigest()
    plan_file = work.root / "plan.json"
    if plan_file.is_file():
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
        if plan.get("fingerprint") != fingerprint:
            raise UserError(f"{out}: holds the work of another curation (a different spec, or "
                            f"inputs changed since); choose another --out or delete {out}")
        return work, [Chunk(**c) for c in plan["chunks"]]
    chunks = plan_chunks(spec.inputs, spec.chunk_size)
    work.root.mkdir(parents=True, exist_ok=True)
    for phase in phases:
        work.phase_dir(phase.number).mkdir(exist_ok=True)
    write_json_atomic(plan_file, {"fingerprint": fingerprint, "spec": str(spec.path),
                                  "chunks": [c.to_json() for c in chunks]})
    return work, chunks
