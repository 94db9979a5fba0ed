"""``sail rl``: RL training (``sail rl CONFIG.yaml [key=value ...]``) and the RL command family
(``sail rl filter ...``)."""

from __future__ import annotations

import sys

USAGE = """usage: sail rl CONFIG.yaml [key=value ...] [--nproc-per-node N]
       sail rl filter --ckpt CKPT --input DATA.jsonl --out DIR [--k 4] [--drop-unsolved]
                      [--temperature 1.0] [--top-p P] [--top-k K] [--seed S] [--max-new-tokens N]
                      [--tp N] [--pp N] [--tokenizer DIR] [--batch-size B]

  CONFIG   RL with verifiable rewards (or resume it) in run.output_dir: a training config with
           an rl section (rl.algorithm dapo|gspo|grpo, rl.data, rl.rewards, ...; README: "RL");
           train.train_iters episodes, checkpoint.load the starting weights
  filter   pass@k filtering of an RL data set with a checkpoint (sail rl filter --help)"""

SUBCOMMANDS = {"filter": "megatron_sail.rl.filter_cli"}


def is_training(argv: list[str]) -> bool:
    """``sail rl CONFIG.yaml ...`` (training, launched by ``sail``'s main like ``sail train``,
    a layer above this package) rather than a subcommand."""
    return bool(argv) and argv[0] not in SUBCOMMANDS and (
        argv[0].endswith((".yaml", ".yml")) or "=" in argv[0] or argv[0].startswith("--nproc"))


def main(argv: list[str]) -> int:
    """The subcommands (``filter``), usage and unknown words; training is ``is_training``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in SUBCOMMANDS:
        import importlib

        return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
    from megatron_sail.errors import report_error, shown

    report_error("rl", f"unknown subcommand {shown(argv[0])} (known: {', '.join(SUBCOMMANDS)}; "
                       f"or a CONFIG.yaml to train)")
    return 2
