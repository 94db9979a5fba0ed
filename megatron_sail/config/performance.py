"""The speed levers of ``performance.*``: what each may be combined with, and the values
that ``None`` ("auto") resolves to.

A lever that needs a CUDA GPU is a configuration error elsewhere (never a silent no-op), except
``overlap_grad_reduce``, whose automatic value follows the device: it only pays off where a
reduction can overlap the backward of a GPU, and Megatron runs the same reduction without it.
"""

from __future__ import annotations

from megatron_sail.config.schema import SailConfig


def performance_errors(cfg: SailConfig, cuda_available: bool) -> list[str]:
    perf, model, train = cfg.performance, cfg.model, cfg.train
    errors = []
    if perf.rope_fusion and model.transformer_impl != "transformer_engine":
        errors.append("performance.rope_fusion: Megatron's fused RoPE is a Transformer Engine "
                      "kernel; the local spec has none (set it to false, or use "
                      "model.transformer_impl=transformer_engine)")
    if perf.cross_entropy_fusion and train.precision != "bf16":
        errors.append("performance.cross_entropy_fusion: Megatron's fused cross entropy rounds "
                      "the logits' gradient to bf16; it needs train.precision=bf16")
    if perf.grad_reduce_dtype == "bf16" and train.precision != "bf16":
        errors.append("performance.grad_reduce_dtype=bf16 needs train.precision=bf16")
    if perf.overlap_param_gather:
        if not cfg.parallel.use_distributed_optimizer:
            errors.append("performance.overlap_param_gather needs "
                          "parallel.use_distributed_optimizer=true")
        if perf.overlap_grad_reduce is False:
            errors.append("performance.overlap_param_gather needs "
                          "performance.overlap_grad_reduce (true or null)")
    if perf.cuda_graphs:
        if not cuda_available:
            errors.append("performance.cuda_graphs needs a CUDA GPU")
        if cfg.data.dataset == "blend" and cfg.data.packing:
            errors.append("performance.cuda_graphs needs rows of one fixed shape: set "
                          "data.packing=false (a packed row's segment boundaries are read on "
                          "the host, which a captured graph cannot repeat)")
        if model.llm_recompute is not None:
            errors.append("performance.cuda_graphs cannot capture recomputed layers: set "
                          "model.llm_recompute=null")
    return errors


def cross_entropy_fused(cfg: SailConfig) -> bool:
    fused = cfg.performance.cross_entropy_fusion
    return cfg.train.precision == "bf16" if fused is None else fused


def overlap_grad_reduce(cfg: SailConfig, dp: int, cuda_available: bool) -> bool:
    """``None``: on with a CUDA GPU and more than one data-parallel rank, or when parameter
    all-gathers overlap (Megatron needs both)."""
    perf = cfg.performance
    if perf.overlap_grad_reduce is not None:
        return perf.overlap_grad_reduce
    return perf.overlap_param_gather or (cuda_available and dp > 1)
