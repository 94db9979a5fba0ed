"""``sail curate SPEC.yaml --out DIR [--workers N] [--shard I/N]``."""

from __future__ import annotations

import argparse
import signal
import sys

from megatron_sail.errors import UserError, check_option_ranges, report_error

DESCRIPTION = """Curate a data set: the stages of SPEC.yaml (decodable, resolution, caption_length,
ngram_repetition, dedup, judge, rebalance, caption_to_qa; examples/curation/) run in order over
its inputs (JSONL files or prepared shard directories). Writes DIR/kept.jsonl, DIR/dropped.jsonl
(each record with a "curation" field: stage, reason, scores), DIR/report.json and DIR/plots/.

Resumable: finished work is kept under DIR/.curate; rerunning the same command after a crash
or kill continues where it stopped and ends with the same output as an uninterrupted run.
--shard I/N runs one of N cooperating processes (e.g. SLURM array elements, see
`sail slurm curate`): they share DIR (a shared filesystem) and wait for each other at global
stages (dedup, rebalance), so all N must be able to run at the same time."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sail curate", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", metavar="SPEC.yaml")
    p.add_argument("--out", required=True, metavar="DIR", help="output (and work) directory")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="this process is shard I of N (0-based), or 'array': the SLURM array "
                        "element's index and count")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def main(argv: list[str]) -> int:
    ns = _parser().parse_args(argv)
    from megatron_sail.utils.processes import exit_on_sigterm
    from megatron_sail.curation.runner import Assignment, parse_shard, run_curation

    try:
        check_option_ranges(ns, positive=("workers",))
        shard, shards = parse_shard(ns.shard) if ns.shard else (0, 1)
        with exit_on_sigterm():
            report = run_curation(ns.spec, ns.out, Assignment(shard, shards, ns.workers), ns.quiet)
    except UserError as exc:
        report_error("curate", str(exc))
        return 2
    except KeyboardInterrupt:
        print("sail curate: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    except SystemExit as exc:   # SIGTERM (exit_on_sigterm): finished chunks are kept
        if exc.code == 128 + signal.SIGTERM:
            print("sail curate: terminated; rerun the same command to continue", file=sys.stderr)
        raise
    print(f"sail curate: {report['in']} records: kept {report['kept']}, dropped "
          f"{report['dropped']} -> {ns.out}/kept.jsonl, dropped.jsonl, report.json")
    for stage in report["stages"]:
        reasons = ", ".join(f"{r} {n}" for r, n in stage["reasons"].items())
        print(f"  {stage['stage']}: {stage['in']} in, {stage['dropped']} dropped"
              + (f" ({reasons})" if reasons else ""))
    return 0
