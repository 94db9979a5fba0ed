"""Entry point of one training process: ``python -m megatron_sail.training.worker CONFIG
[key=value ...]``. Import-safe (Megatron's async checkpoint workers re-import __main__)."""

from __future__ import annotations

import sys


def run_worker(config_path: str | None, overrides: list[str]) -> int:
    from megatron_sail.compat.startup import check_stack
    from megatron_sail.distributed.cpu_compat import import_megatron

    import_megatron()
    check_stack()
    from megatron_sail.config import load_config
    from megatron_sail.distributed.runtime import detect_env, shutdown
    from megatron_sail.training.trainer import Trainer

    cfg = load_config(config_path, overrides)
    trainer = Trainer(cfg, detect_env())
    try:
        return trainer.train()
    finally:
        trainer.close()
        shutdown()


def main(argv: list[str] | None = None) -> int:
    from megatron_sail.training.signals import record_early_signals

    record_early_signals()
    from megatron_sail.checkpointing.layout_files import CheckpointError
    from megatron_sail.compat.versions import CompatError
    from megatron_sail.config import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = argv[0] if argv and "=" not in argv[0] else None
    overrides = argv[1:] if config_path else argv
    try:
        return run_worker(config_path, overrides)
    except (ConfigError, CheckpointError, CompatError) as exc:
        print(f"sail train: error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
