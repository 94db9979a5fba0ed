"""``sail rl``: the RL command family (``sail rl filter ...``)."""

from __future__ import annotations

import sys

USAGE = """usage: sail rl filter --ckpt CKPT --input DATA.jsonl --out DIR [--k 4] [--drop-unsolved]
                      [--temperature 1.0] [--top-p P] [--top-k K] [--seed S] [--max-new-tokens N]
                      [--tp N] [--pp N] [--tokenizer DIR] [--batch-size B]

  filter   pass@k filtering of an RL data set with a checkpoint (sail rl filter --help)"""

SUBCOMMANDS = {"filter": "megatron_sail.rl.filter_cli"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in SUBCOMMANDS:
        from megatron_sail.errors import report_error, shown

        report_error("rl", f"unknown subcommand {shown(argv[0])} (known: {', '.join(SUBCOMMANDS)})")
        return 2
    import importlib

    return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
