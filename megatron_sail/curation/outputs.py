"""The outputs of a finished curation, assembled from the work files in input order:

- ``kept.jsonl``: the surviving records (QA records where ``caption_to_qa`` ran), each with a
  ``curation`` field holding its scores;
- ``dropped.jsonl``: every other input record unchanged plus ``curation``: the ``stage`` that
  dropped it, the ``reason``, a ``detail`` where there is one, and every score computed so far
  (a line that was not JSON is kept as ``{"raw": TEXT, "curation": ...}``);
- ``report.json``: records in, kept and dropped, and per stage the records it saw and dropped
  by reason;
- ``plots/``: a histogram per score (records per value for words such as yes/no), and per
  rebalance stage the category (or n-gram) distribution before and after.

Every file is written under a temporary name and renamed into place; ``report.json`` last.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from megatron_sail.curation.atomic import write_json_atomic
from megatron_sail.utils.atomic import staged_file
from megatron_sail.curation.items import Chunk, Item, read_items
from megatron_sail.curation.plan import Phase, WorkDir
from megatron_sail.curation.runner import apply_decision
from megatron_sail.curation.spec import CurationSpec

KEPT, DROPPED, REPORT, PLOTS = "kept.jsonl", "dropped.jsonl", "report.json", "plots"


def final_items(work: WorkDir, phases: list[Phase], chunk: Chunk) -> list[Item]:
    """Every record of ``chunk`` in input order with its final state."""
    out: dict[int, Item] = {}
    # Dropped records are found in the work file of the phase that dropped them; decisions
    # of global phases are applied on reading the next phase (or here, for the last one).
    for phase in phases:
        items = list(read_items(work.chunk_file(phase.number, chunk.index)))
        if phase.global_stage is not None:
            apply_decision(items, work.chunk_decision(phase.number, chunk.index))
        for item in items:
            if not item.alive or phase.number == len(phases):
                out[item.i] = item
    return [out[i] for i in sorted(out)]


def _line(item: Item) -> str:
    curation: dict = {}
    if item.drop is not None:
        curation.update({k: v for k, v in item.drop.items() if k != "step"})
    curation["scores"] = item.scores
    curation.update(item.extra)
    record = item.record if isinstance(item.record, dict) else {"raw": item.record}
    return json.dumps({**record, "curation": curation}, ensure_ascii=False) + "\n"


def write_outputs(spec: CurationSpec, out: Path, work: WorkDir, phases: list[Phase],
                  chunks: list[Chunk]) -> dict:
    kept_path, dropped_path = out / KEPT, out / DROPPED
    dropped_at: Counter = Counter()
    reasons: dict[int, Counter] = {}
    scores: dict[str, list] = {}
    total = kept = 0
    # Both files appear together with the report's plots: staged, renamed once all are written.
    with staged_file(kept_path) as kept_tmp, staged_file(dropped_path) as dropped_tmp, \
            open(kept_tmp, "w", encoding="utf-8") as fk, \
            open(dropped_tmp, "w", encoding="utf-8") as fd:
        for chunk in chunks:
            for item in final_items(work, phases, chunk):
                total += 1
                for name, value in item.scores.items():
                    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
                        scores.setdefault(name, []).append(value)
                if item.alive:
                    kept += 1
                    fk.write(_line(item))
                else:
                    step = item.drop.get("step", -1)
                    dropped_at[step] += 1
                    reasons.setdefault(step, Counter())[item.drop["reason"]] += 1
                    fd.write(_line(item))
        report = _report(spec, total, kept, dropped_at, reasons)
        report["plots"] = _plots(out, work, phases, scores)
    write_json_atomic(out / REPORT, report)
    return report


def _report(spec: CurationSpec, total: int, kept: int, dropped_at: Counter,
            reasons: dict[int, Counter]) -> dict:
    stages = []
    entering = total - dropped_at.get(-1, 0)
    for position, stage in enumerate(spec.stages):
        n = dropped_at.get(position, 0)
        stages.append({"stage": stage.name, "in": entering, "kept": entering - n, "dropped": n,
                       "reasons": dict(sorted(reasons.get(position, Counter()).items()))})
        entering -= n
    report = {"spec": str(spec.path), "in": total, "kept": kept, "dropped": total - kept,
              "unreadable_input": {"dropped": dropped_at.get(-1, 0),
                                   "reasons": dict(sorted(reasons.get(-1, Counter()).items()))},
              "stages": stages}
    return report


def _plots(out: Path, work: WorkDir, phases: list[Phase], scores: dict[str, list]) -> list[str]:
    from megatron_sail.curation.plots import bar_before_after, counts, histogram

    directory = out / PLOTS
    directory.mkdir(exist_ok=True)
    written = []
    for name in sorted(scores):
        path = directory / f"score-{_safe(name)}.png"
        values = scores[name]
        if all(isinstance(v, (int, float)) for v in values):
            histogram(path, name, [float(v) for v in values])
        else:   # words (yes/no, categories): records per value
            counts(path, name, values)
        written.append(str(path.relative_to(out)))
    for phase in phases:
        if phase.global_stage is None:
            continue
        plot = json.loads(work.decision_file(phase.number).read_text(encoding="utf-8")).get("plot")
        if plot:
            position, stage = phase.global_stage
            path = directory / f"stage{position}-{stage.name}-distribution.png"
            bar_before_after(path, plot["title"], plot["before"], plot["after"])
            written.append(str(path.relative_to(out)))
    return written


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:80]
