"""What the training loop logs about speed: model TFLOP/s per GPU and MFU, per step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_sail.scaling.flops import mfu, train_flops_per_iteration
from megatron_sail.scaling.hardware import compute_precision, peak_tflops


@dataclass(frozen=True)
class ThroughputMeter:
    flops_per_iteration: float  # model FLOPs of one optimizer step (all ranks together)
    num_devices: int
    peak_tflops: Optional[float]  # per device; None: no MFU (a CPU without a stated peak)

    @classmethod
    def for_run(cls, cfg, world_size: int, on_gpu: bool, gpu: str = "h100",
                peak_override: Optional[float] = None) -> "ThroughputMeter":
        """``gpu`` / ``peak_override``: the proposed ``hardware.gpu`` / ``hardware.peak_tflops``.
        On a CPU, MFU against a GPU's peak means nothing: it is logged only with an override."""
        peak = None
        if on_gpu or peak_override is not None:
            peak = peak_tflops(gpu, compute_precision(cfg.model.fp8), peak_override)
        return cls(train_flops_per_iteration(cfg), world_size, peak)

    def metrics(self, step_time_s: float) -> dict[str, float]:
        out = {"model_tflops_per_device":
               self.flops_per_iteration / step_time_s / self.num_devices / 1e12}
        if self.peak_tflops is not None:
            out["mfu"] = mfu(self.flops_per_iteration, step_time_s, self.num_devices,
                             self.peak_tflops)
        return out
