"""Shared fixtures. Multi-process tests start real ``sail train`` runs (2 processes, gloo);
in-process tests get a one-rank Megatron world with the CPU compatibility layer."""

from __future__ import annotations

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "examples", "tiny", "pretrain.yaml")


@pytest.fixture(scope="session")
def megatron_single_rank():
    """One-process torch.distributed + Megatron parallel state (TP = PP = 1)."""
    import torch

    from megatron_sail.config import load_config
    from megatron_sail.config.layout import resolve_layout
    from megatron_sail.distributed.runtime import detect_env, init_model_parallel, init_process_group

    if not torch.distributed.is_initialized():
        for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_ID"):
            os.environ.pop(key, None)
        init_process_group(detect_env())
        init_model_parallel(resolve_layout(load_config(None, []), 1), seed=1234)
    yield


@pytest.fixture
def build_tiny(megatron_single_rank):
    """``build_tiny(*overrides)`` -> (cfg, layout, model chunk) on the one-rank world."""
    from megatron_sail.config import load_config
    from megatron_sail.config.layout import resolve_layout
    from megatron_sail.models.builder import build_model

    def build(*overrides, img_context_id: int = 5):
        cfg = load_config(TINY, list(overrides))
        layout = resolve_layout(cfg, 1)
        model = build_model(cfg, layout, img_context_id).chunks[0]
        return cfg, layout, model

    return build


class SailRunner:
    """Runs the real CLI (``sail train ... --nproc-per-node N``) in a subprocess."""

    def __init__(self, tmp_path_factory):
        self.tmp = tmp_path_factory

    def train(self, out_dir, *overrides, nproc: int = 2, config: str = TINY,
              timeout: int = 600, expect_ok: bool = True):
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "megatron_sail.cli", "train", config,
               f"run.output_dir={out_dir}", *overrides, "--nproc-per-node", str(nproc)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        if expect_ok and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
        return proc

    @staticmethod
    def metrics(out_dir) -> list[dict]:
        import json

        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]

    @staticmethod
    def losses(out_dir) -> dict[int, float]:
        return {r["iteration"]: r["loss"] for r in SailRunner.metrics(out_dir)}


@pytest.fixture(scope="session")
def sail(tmp_path_factory):
    return SailRunner(tmp_path_factory)


def assert_close_losses(actual: dict, expected: dict, iterations, rel: float = 1e-4):
    for it in iterations:
        a, e = actual[it], expected[it]
        assert abs(a - e) <= rel * abs(e), f"iteration {it}: loss {a} vs {e} (rel {abs(a - e) / abs(e):.2e})"
