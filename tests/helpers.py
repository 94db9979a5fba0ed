"""Helpers shared by the test modules: run the real CLI and compare losses."""

from __future__ import annotations

import math
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "examples", "tiny", "pretrain.yaml")
# Shared fixtures live next to the repository (../shared), never at a machine's absolute path.
SHARED = os.path.join(os.path.dirname(REPO), "shared")
RELEASE_FIXTURE = os.path.join(SHARED, "fixtures", "sailvl2-2b-release")

FP32_EPS = 2.0 ** -23  # unit roundoff of float32 (torch.finfo(torch.float32).eps)
# Tail factor of the probabilistic rounding-error bound below: the worst of ~1e4 output
# elements, and the gain of normalisation/softmax layers (Lipschitz constant about 1).
ROUNDING_FACTOR = 4.0


def fp32_tolerance(max_abs: float, reduction: int, depth: int) -> float:
    """Largest difference expected between two fp32 computations of the same network that
    only sum in different orders (Megatron vs a reference implementation).

    A dot product of length n rounds with a relative error of about sqrt(n) * eps (the
    errors are independent: a random walk, not the worst case n * eps); ``depth`` layers
    in sequence add theirs in quadrature; the residual stream carries the output's scale, so
    the bound is relative to the largest output magnitude. ``reduction`` is the longest sum
    (hidden, FFN or sequence length), ``depth`` the number of layers on the path."""
    return ROUNDING_FACTOR * max_abs * FP32_EPS * math.sqrt(reduction) * math.sqrt(depth)


def require_shared(path: str):
    """Skip-mark for tests that need a fixture from ../shared; in CI (``CI=true``) a missing
    fixture is an error instead, so a lane never passes by skipping them."""
    import pytest

    if os.path.exists(path):
        return []
    if os.environ.get("CI") == "true":
        raise FileNotFoundError(f"{path}: shared test fixture missing (CI=true: not skipping)")
    return pytest.mark.skip(reason=f"shared fixture {path} missing")


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
