"""Peak dense tensor-core throughput of the GPUs we plan for (the MFU denominator) and their
memory. Dense figures from NVIDIA's data sheets (the "with sparsity" numbers are 2x these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class GpuSpec:
    name: str
    peak_tflops: dict[str, float]  # by compute precision: bf16, fp8
    memory_gib: float


GPUS: dict[str, GpuSpec] = {
    "h100": GpuSpec("H100 SXM", {"bf16": 989.4, "fp8": 1978.9}, 80.0),
    "h100-pcie": GpuSpec("H100 PCIe", {"bf16": 756.0, "fp8": 1513.0}, 80.0),
    # H200 has the H100 SXM's tensor cores with more, faster memory.
    "h200": GpuSpec("H200 SXM", {"bf16": 989.4, "fp8": 1978.9}, 141.0),
}


def compute_precision(fp8: Optional[str]) -> str:
    """FP8 runs count against the FP8 peak, everything else against BF16 (fp32 training on a
    GPU uses TF32 tensor cores, but BF16 is the honest reference for MFU)."""
    return "fp8" if fp8 else "bf16"


def peak_tflops(gpu: str = "h100", precision: str = "bf16",
                override: Optional[float] = None) -> float:
    """Dense peak TFLOP/s of one GPU; ``override`` (a ``hardware.peak_tflops`` setting) wins."""
    if override is not None:
        if override <= 0:
            raise ValueError(f"hardware.peak_tflops={override} must be positive")
        return override
    if gpu not in GPUS:
        raise ValueError(f"unknown hardware.gpu '{gpu}' (choose from {', '.join(GPUS)} or set "
                         f"hardware.peak_tflops)")
    table = GPUS[gpu].peak_tflops
    if precision not in table:
        raise ValueError(f"no peak for precision '{precision}' (have {', '.join(table)})")
    return table[precision]
