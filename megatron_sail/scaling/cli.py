"""``sail scaling sweep | fit``: parse and dispatch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_sail.errors import report_error

USAGE = """sail scaling sweep SWEEP.yaml [key=value ...] [--jobs J] [--nproc-per-node N] [--dry-run]
sail scaling fit RUN_DIR [RUN_DIR ...] [--out DIR] [--tail K] [--skip-fraction F] [--window W]"""


def cmd_sweep(args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="sail scaling sweep",
                                description="run a sweep file's elements here, J at a time "
                                            "(on SLURM: sail slurm sweep with the same file)")
    p.add_argument("file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--jobs", type=int, default=1, help="elements run at the same time")
    p.add_argument("--nproc-per-node", type=int, default=1, help="processes per element")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    ns = p.parse_intermixed_args(args)
    from megatron_sail.config import ConfigError
    from megatron_sail.launch.sweep import SweepError, load_sweep
    from megatron_sail.scaling.sweep import run_local
    from megatron_sail.utils.processes import exit_on_sigterm

    try:
        with exit_on_sigterm():  # the running elements are stopped too, not left behind
            return run_local(load_sweep(ns.file), ns.overrides, max(1, ns.jobs),
                             max(1, ns.nproc_per_node), ns.dry_run)
    except (SweepError, ConfigError) as exc:
        report_error("scaling sweep", str(exc))
        return 2


def cmd_fit(args: list[str]) -> int:
    p = argparse.ArgumentParser(prog="sail scaling fit",
                                description="fit power laws (loss vs compute; loss vs parameters "
                                            "and tokens) to finished runs; write a table and plots")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--out", default=None, help="output directory (default: the runs' parent/fit)")
    p.add_argument("--tail", type=int, default=3,
                   help="final loss = mean of the last K logged losses (default 3)")
    p.add_argument("--skip-fraction", type=float, default=0.5,
                   help="first fraction of each loss curve left off the frontier (default 0.5)")
    p.add_argument("--window", type=int, default=5, help="running-mean window of the curves")
    ns = p.parse_args(args)
    from megatron_sail.scaling.fit import fit_study
    from megatron_sail.scaling.report import table, write
    from megatron_sail.scaling.runs import load_run

    dirs = [d for d in ns.run_dirs if (Path(d) / "metrics.jsonl").is_file()]
    skipped = sorted(set(ns.run_dirs) - set(dirs))
    if skipped:
        print(f"skipping (no metrics.jsonl): {', '.join(skipped)}", file=sys.stderr)
    try:
        runs = [load_run(d, ns.tail) for d in dirs]
        fit = fit_study(runs, ns.skip_fraction, ns.window)
    except (FileNotFoundError, ValueError) as exc:
        report_error("scaling fit", str(exc))
        return 2
    out = Path(ns.out) if ns.out else Path(dirs[0]).absolute().parent / "fit"
    paths = write(fit, out)
    print(table(fit))
    print("wrote " + ", ".join(str(x) for x in paths))
    return 0


COMMANDS = {"sweep": cmd_sweep, "fit": cmd_fit}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])
