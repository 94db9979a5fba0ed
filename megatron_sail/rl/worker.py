"""Entry point of one RL process: ``python -m megatron_sail.rl.worker CONFIG [key=value ...]``.
The training worker (run lock, start-up checks, user errors) with the rl section checked and
the RL loop instead of the training loop. Import-safe (Megatron's async checkpoint workers
re-import __main__)."""

from __future__ import annotations

import sys


def load_rl_config(config_path: str | None, overrides: list[str]):
    """The config with its ``rl`` section checked (every problem at once)."""
    from megatron_sail.config import load_config
    from megatron_sail.rl.config import check_rl_run

    cfg = load_config(config_path, overrides)
    check_rl_run(cfg)
    return cfg


def _rl_trainer(cfg, env):
    from megatron_sail.rl.loop import RLTrainer

    return RLTrainer(cfg, env)


def main(argv: list[str] | None = None) -> int:
    from megatron_sail.training.worker import main as worker_main

    return worker_main(argv, command="rl", load=load_rl_config, make_trainer=_rl_trainer)


if __name__ == "__main__":
    sys.exit(main())
