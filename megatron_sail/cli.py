"""The ``sail`` command: parses arguments and dispatches; the work happens elsewhere."""

from __future__ import annotations

import argparse
import os
import sys

from megatron_sail.errors import UsageError, UserError, is_first_rank, report_error, shown

USAGE = """sail train CONFIG.yaml [key=value ...] [--nproc-per-node N]
sail plot RUN_DIR... [--out FILE.png]
sail convert import-hf | export-hf | init-from | verify ...  (sail convert --help)
sail forward --ckpt DIR --inputs IN.safetensors --out OUT.safetensors [--tp N] [--pp N]
sail generate --ckpt DIR --prompt TEXT [--image PATH ...] [--video PATH] | --input IN.jsonl --output OUT.jsonl |
              --inputs IN.safetensors --out OUT.safetensors  [--max-new-tokens N] [--temperature T] ...
sail rl CONFIG.yaml [key=value ...] [--nproc-per-node N]  (RL: DAPO, GSPO, GRPO)
sail rl filter --ckpt DIR --input DATA.jsonl --out DIR [--k 4] [--drop-unsolved] ...  (pass@k filtering)
sail slurm submit CONFIG.yaml [key=value ...] --nodes N --gpus-per-node G [options] [--dry-run]
sail slurm sweep SWEEP.yaml --nodes N --gpus-per-node G [options] [--dry-run]
sail slurm status RUN_DIR
sail flops --preset NAME --seq-length L [--tiles T] [--freeze ...] [--json]
sail plan --preset NAME --gpus N [--gpu-mem 80]
sail scaling sweep SWEEP.yaml | sail scaling fit RUN_DIR...
sail data check PATH... | sail data prepare JSONL... --out DIR  (JSONL, shard dirs, blends)
sail curate SPEC.yaml --out DIR [--workers N] [--shard I/N]  (data curation: filters, dedup, judges)
sail soup CKPT CKPT... --out DIR [--weights w1,w2,...] [--force]
sail recipe run|show|status|submit RECIPE.yaml|ROOT ...  (the SAIL-VL2 stage chain)
every command answers --help"""

TRAIN_USAGE = """usage: sail train [CONFIG.yaml] [key=value ...] [--nproc-per-node N]

Train (or resume) the run in run.output_dir. CONFIG.yaml and dotted key=value overrides, in any
order, give the configuration (README: "Configuration"); without CONFIG.yaml the defaults.
  --nproc-per-node N   local processes (ranks); under torchrun or srun the launcher decides
  -h, --help           this help"""


def _split_train_args(args: list[str]) -> tuple[str | None, list[str], int]:
    """Options and overrides in any order: one config path, key=value pairs, --nproc-per-node."""
    config, overrides, nproc = None, [], 1
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--nproc-per-node") or arg.startswith("--nproc_per_node"):
            value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            i += 0 if "=" in arg else 1
            if not value.isdigit() or int(value) < 1:
                raise UsageError(f"--nproc-per-node needs a positive integer, got {shown(value)}")
            nproc = int(value)
        elif arg.startswith("-"):
            raise UsageError(f"unknown option {shown(arg)}")
        elif "=" in arg:
            overrides.append(arg)
        elif config is None:
            config = arg
        else:
            raise UsageError(f"a second config file {shown(arg)} (already have {shown(config)})")
        i += 1
    return config, overrides, nproc


def _externally_launched() -> bool:
    return ("RANK" in os.environ and "WORLD_SIZE" in os.environ) or "SLURM_STEP_ID" in os.environ


def cmd_train(args: list[str], worker: str = "megatron_sail.training.worker",
              usage: str = TRAIN_USAGE, check=None) -> int:
    """``sail train``; ``sail rl CONFIG`` is the same launch with the RL worker and ``check``
    (more checks of the loaded config, raising a user error)."""
    if any(a in ("-h", "--help") for a in args):
        print(usage)
        return 0
    if _externally_launched():  # this process is a rank: keep a scheduler's early warning
        from megatron_sail.training.signals import record_early_signals

        record_early_signals()
    from megatron_sail.config import ConfigError, load_config
    from megatron_sail.config.validation import resolve_layout, step_memory_error
    from megatron_sail.distributed.runtime import detect_env, transformer_engine_available

    config, overrides, nproc = _split_train_args(args)
    cfg = load_config(config, overrides)
    if check is not None:
        check(cfg)
    if _externally_launched():
        world = detect_env().world_size
        if nproc > 1:
            raise UsageError("--nproc-per-node is for local launches; under torchrun/srun "
                             "the launcher sets the number of processes")
    else:
        world = nproc
    import torch

    layout = resolve_layout(cfg, world, torch.cuda.is_available(), transformer_engine_available())
    local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE") or ""
    local_ranks = int(local) if local.isdigit() else nproc
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    problem = step_memory_error(cfg, layout, local_ranks, memory)
    if problem:
        raise ConfigError(problem)

    worker_args = ([config] if config else []) + overrides
    if _externally_launched() or nproc == 1:
        import importlib

        return importlib.import_module(worker).main(worker_args)
    from megatron_sail.distributed.launcher import launch_local
    from megatron_sail.training.run_lock import hold_run_dir

    with hold_run_dir(cfg.run.output_dir):   # for all local ranks, before any of them starts
        return launch_local(nproc, worker_args, module=worker)


def cmd_plot(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sail plot", description="plot a run's loss curves")
    parser.add_argument("run_dir", nargs="+")
    parser.add_argument("--out", default=None, help="PNG path (default RUN_DIR/loss.png)")
    ns = parser.parse_args(args)
    from megatron_sail.training.plot import plot_runs

    out = plot_runs(ns.run_dir, ns.out)
    print(f"wrote {out}")
    return 0


def _delegate(module: str):
    """Sub-command families live with their area: ``megatron_sail.<area>.cli.main(args)``."""

    def run(args: list[str]) -> int:
        import importlib

        return importlib.import_module(module).main(args)

    return run


def _slurm(args: list[str]) -> int:
    """``sail slurm ...``; ``sail slurm curate`` lives with curation, and an RL run's checks
    with rl/, layers above launch/."""
    if args and args[0] == "curate":
        return _delegate("megatron_sail.curation.slurm_job")(args[1:])
    if args and args[0] == "submit" and "--rl" in args:
        from megatron_sail.launch.cli import cmd_submit
        from megatron_sail.rl.config import check_rl_run

        return cmd_submit(args[1:], check=check_rl_run)
    return _delegate("megatron_sail.launch.cli")(args)


def _rl(args: list[str]) -> int:
    """``sail rl CONFIG``: ``sail train``'s launch with the RL worker and the rl section's
    checks; ``sail rl filter ...`` and the rest: rl/'s command family."""
    from megatron_sail.rl import cli as rl_cli

    if rl_cli.is_training(args):
        from megatron_sail.rl.config import check_rl_run

        return cmd_train(args, worker="megatron_sail.rl.worker", usage=rl_cli.USAGE,
                         check=check_rl_run)
    return rl_cli.main(args)


COMMANDS = {
    "train": cmd_train,
    "plot": cmd_plot,
    "convert": _delegate("megatron_sail.convert.cli"),
    "forward": _delegate("megatron_sail.convert.forward_cli"),
    "generate": _delegate("megatron_sail.generation.cli"),
    "rl": _rl,
    "slurm": _slurm,
    "flops": _delegate("megatron_sail.scaling.flops_cli"),
    "plan": _delegate("megatron_sail.scaling.plan_cli"),
    "scaling": _delegate("megatron_sail.scaling.cli"),
    "data": _delegate("megatron_sail.data.cli"),
    "soup": _delegate("megatron_sail.convert.soup_cli"),
    "curate": _delegate("megatron_sail.curation.cli"),
    "recipe": _delegate("megatron_sail.recipe.cli"),
}


# Commands that run Megatron-Core: refused up front on a release outside the supported range
# (their rank processes also check every compatibility touch point at start-up).
_RUN_MEGATRON = ("train", "convert", "forward")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command = argv[0]
    if len(argv) > 1 and command in ("convert", "slurm", "scaling", "data", "rl") \
            and not argv[1].startswith("-") and not argv[1].endswith((".yaml", ".yml")):
        command = f"{command} {argv[1]}"
    from megatron_sail.compat.versions import check_megatron_core_version

    try:
        if argv[0] in _RUN_MEGATRON and not {"-h", "--help"} & set(argv[1:]):
            check_megatron_core_version()
        return COMMANDS[argv[0]](argv[1:])
    except UserError as exc:
        report_error(command, str(exc))
        return 2
    except KeyboardInterrupt:
        if is_first_rank():
            print(f"sail {command}: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:   # `sail ... | head`: the reader has gone, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
