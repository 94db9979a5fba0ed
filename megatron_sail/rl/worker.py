"""Entry point of one RL process: ``python -m megatron_sail.rl.worker CONFIG [key=value ...]``.
The training worker's run lock and start-up checks, the RL loop instead of the training loop.
Import-safe (Megatron's async checkpoint workers re-import __main__)."""

from __future__ import annotations

import contextlib
import os
import sys


def load_rl_config(config_path: str | None, overrides: list[str]):
    """The config with its ``rl`` section checked (every problem at once)."""
    from megatron_sail.config import load_config
    from megatron_sail.rl.config import check_rl_run

    cfg = load_config(config_path, overrides)
    check_rl_run(cfg)
    return cfg


def run_worker(config_path: str | None, overrides: list[str]) -> int:
    from megatron_sail.errors import is_first_rank
    from megatron_sail.training.run_lock import hold_run_dir

    cfg = load_rl_config(config_path, overrides)
    owner = os.environ.get("SAIL_LAUNCHER") != "local" and is_first_rank()
    with hold_run_dir(cfg.run.output_dir) if owner else contextlib.nullcontext():
        from megatron_sail.compat.startup import check_stack
        from megatron_sail.distributed.cpu_compat import import_megatron

        import_megatron()
        check_stack()
        from megatron_sail.distributed.runtime import detect_env, shutdown
        from megatron_sail.rl.loop import RLTrainer

        trainer = RLTrainer(cfg, detect_env())
        try:
            return trainer.train()
        finally:
            trainer.close()
            shutdown()


def main(argv: list[str] | None = None) -> int:
    from megatron_sail.training.signals import record_early_signals

    record_early_signals()
    from megatron_sail.errors import UserError, report_error

    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = argv[0] if argv and "=" not in argv[0] else None
    overrides = argv[1:] if config_path else argv
    try:
        return run_worker(config_path, overrides)
    except UserError as exc:
        report_error("rl", str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
