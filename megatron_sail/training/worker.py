"""Entry point of one training process: ``python -m megatron_sail.training.worker CONFIG
[key=value ...]``. Import-safe (Megatron's async checkpoint workers re-import __main__)."""

from __future__ import annotations

import contextlib
import os
import sys


def _trainer(cfg, env):
    from megatron_sail.training.trainer import Trainer

    return Trainer(cfg, env)


def run_worker(config_path: str | None, overrides: list[str], load=None,
               make_trainer=_trainer) -> int:
    """``load(config_path, overrides)``: the config (default: ``load_config``);
    ``make_trainer(cfg, env)``: the loop to run, built once Megatron is imported."""
    from megatron_sail.config import load_config
    from megatron_sail.errors import is_first_rank
    from megatron_sail.training.run_lock import hold_run_dir

    cfg = (load or load_config)(config_path, overrides)
    # The run's owner locks its directory: rank 0, unless `sail train --nproc-per-node` (the
    # local launcher) already holds it for all of its ranks.
    owner = os.environ.get("SAIL_LAUNCHER") != "local" and is_first_rank()
    with hold_run_dir(cfg.run.output_dir) if owner else contextlib.nullcontext():
        from megatron_sail.compat.startup import check_stack
        from megatron_sail.distributed.cpu_compat import import_megatron

        import_megatron()
        check_stack()
        from megatron_sail.distributed.runtime import detect_env, shutdown

        trainer = None
        try:
            trainer = make_trainer(cfg, detect_env())
            return trainer.train()
        finally:
            if trainer is not None:
                trainer.close()
            # Also when the set-up failed (a bad blend, a corrupt checkpoint): a process group
            # left to the interpreter's exit may abort it ("terminate called without an active
            # exception") after the error line, turning exit code 2 into 134.
            shutdown()


def main(argv: list[str] | None = None, command: str = "train", **run) -> int:
    """``command`` names the errors (``sail <command>: error: ...``); ``run``: ``run_worker``'s
    ``load`` and ``make_trainer`` (the RL worker's)."""
    from megatron_sail.training.signals import record_early_signals

    record_early_signals()
    from megatron_sail.errors import UserError, report_error

    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = argv[0] if argv and "=" not in argv[0] else None
    overrides = argv[1:] if config_path else argv
    try:
        return run_worker(config_path, overrides, **run)
    except UserError as exc:
        report_error(command, str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
