"""CPU rank processes import Megatron-Core without TorchDynamo/Inductor (seconds per process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.megatron

CHECK = """
import sys
from megatron_sail.distributed.cpu_compat import import_megatron
import_megatron()
import torch
from megatron_sail.models.builder import build_model
from megatron_sail.checkpointing import dist_ckpt
from megatron.core.transformer.moe import router
assert router.jit_fuser(len) is len, "Megatron's fuser decorator still compiles"
assert torch.compile.__module__.startswith("torch"), "torch.compile left patched"
print(sorted(m for m in sys.modules if m.startswith(("torch._dynamo", "torch._inductor"))))
"""


def test_megatron_import_skips_the_compiler():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
