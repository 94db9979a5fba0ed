"""What the training loop logs about speed: model TFLOP/s per GPU and MFU, per step."""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import Optional

from megatron_sail.costs.flops import batch_flops, mfu, train_flops_per_iteration
from megatron_sail.costs.shapes import ModelShape, shape_from_config
from megatron_sail.costs.hardware import compute_precision, peak_tflops


@dataclass(frozen=True)
class ThroughputMeter:
    flops_per_iteration: float  # model FLOPs of one optimizer step (all ranks together)
    num_devices: int
    peak_tflops: Optional[float]  # per device; None: no MFU (a CPU without a stated peak)
    shape: Optional[ModelShape] = None  # for steps over real samples (batch_flops)
    frozen: tuple[str, ...] = ()

    @classmethod
    def for_run(cls, cfg, world_size: int, on_gpu: bool, gpu: str = "h100",
                peak_override: Optional[float] = None) -> "ThroughputMeter":
        """``gpu`` / ``peak_override``: the proposed ``hardware.gpu`` / ``hardware.peak_tflops``.
        On a CPU, MFU against a GPU's peak means nothing: it is logged only with an override."""
        peak = None
        if on_gpu or peak_override is not None:
            peak = peak_tflops(gpu, compute_precision(cfg.model.fp8), peak_override)
        return cls(train_flops_per_iteration(cfg), world_size, peak, shape_from_config(cfg),
                   tuple(cfg.model.freeze))

    def metrics(self, step_time_s: float,
                samples: Optional[Sequence[tuple[int, int]]] = None) -> dict[str, float]:
        """``samples`` (tokens, visual tokens) of a real-data step; None: the synthetic
        global batch the config describes."""
        flops = self.flops_per_iteration if samples is None else batch_flops(
            self.shape, samples, self.frozen)
        out = {"model_tflops_per_device": flops / step_time_s / self.num_devices / 1e12}
        if self.peak_tflops is not None:
            out["mfu"] = mfu(flops, step_time_s, self.num_devices, self.peak_tflops)
        return out
