"""Helpers shared by the test modules: run the real CLI and compare losses."""

from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "examples", "tiny", "pretrain.yaml")


class SailRunner:
    """Runs the real CLI (``sail train ... --nproc-per-node N``) in a subprocess."""

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


def assert_close_losses(actual: dict, expected: dict, iterations, rel: float = 1e-4):
    for it in iterations:
        a, e = actual[it], expected[it]
        assert abs(a - e) <= rel * abs(e), f"iteration {it}: loss {a} vs {e} (rel {abs(a - e) / abs(e):.2e})"
