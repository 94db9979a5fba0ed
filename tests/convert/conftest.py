"""Tiny release-layout checkpoints and their imports, made once per test session (each
import starts Megatron rank processes, the slow part of these tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from megatron_sail.convert import cli
from tests.convert.fixtures import write_release


@pytest.fixture(scope="session")
def convert_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="session")
def release(convert_root):
    """``release(name)`` -> directory of a tiny release: fp32 (with lm_head), bf16, tied
    (fp32 without lm_head), or moe (fp32, Qwen3-MoE LLM)."""
    made: dict[str, Path] = {}
    kinds = {"fp32": dict(dtype=torch.float32), "bf16": dict(dtype=torch.bfloat16, seed=10),
             "tied": dict(lm_head=False, seed=20), "moe": dict(moe=True, seed=30)}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = convert_root / f"hf_{name}"
            write_release(made[name], **kinds[name])
        return made[name]

    return get


@pytest.fixture(scope="session")
def imported(release, convert_root):
    """``imported(name)`` -> a checkpoint imported by the CLI: fp32 at TP=1, bf16 at TP=2,
    tied at PP=2, moe at EP=2. The TP=2 and EP=2 imports reload-verify their larger tensors
    in a second pass, as real models do with their embedding and output layer."""
    made: dict[str, Path] = {}
    layouts = {"fp32": [], "bf16": ["--tp", "2"], "tied": ["--pp", "2"], "moe": ["--ep", "2"]}

    def get(name: str) -> Path:
        if name not in made:
            out = convert_root / f"ckpt_{name}"
            with pytest.MonkeyPatch.context() as patch:
                if name in ("bf16", "moe"):
                    patch.setenv("SAIL_CONVERT_LARGE_TENSOR_BYTES", "8192")
                code = cli.main(["import-hf", "--hf", str(release(name)), "--out", str(out),
                                 *layouts[name]])
            assert code == 0, f"import of {name} failed"
            made[name] = out
        return made[name]

    return get
