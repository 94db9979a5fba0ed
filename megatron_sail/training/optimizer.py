"""Megatron-Core DDP, distributed optimizer and warm-up + cosine schedule for a config."""

from __future__ import annotations

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_sail.config.performance import overlap_grad_reduce
from megatron_sail.config.schema import SailConfig


def ddp_config_of(cfg: SailConfig, dp: int, cuda_available: bool) -> DistributedDataParallelConfig:
    """Gradient buffers and their reduction (performance.grad_reduce_dtype,
    overlap_grad_reduce, overlap_param_gather; checked in config/performance.py)."""
    perf = cfg.performance
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=perf.grad_reduce_dtype == "fp32",
        overlap_grad_reduce=overlap_grad_reduce(cfg, dp, cuda_available),
        overlap_param_gather=perf.overlap_param_gather,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
    )


def sync_params(ddp_chunks) -> None:
    """With overlapped parameter all-gathers the weights a step updated arrive during the
    next forward; a checkpoint written before it must gather them now."""
    for chunk in ddp_chunks:
        if chunk.ddp_config.overlap_param_gather:
            chunk.start_param_sync(force_sync=True)


def wrap_ddp(cfg: SailConfig, chunks, llm_config, dp: int = 1,
             cuda_available: bool = False) -> list[DistributedDataParallel]:
    ddp_config = ddp_config_of(cfg, dp, cuda_available)
    return [
        DistributedDataParallel(llm_config, ddp_config, chunk,
                                # VPP chunks after the first share the buffers' bucketing rules
                                disable_bucketing=i > 0)
        for i, chunk in enumerate(chunks)
    ]


def build_optimizer(cfg: SailConfig, ddp_chunks):
    opt = cfg.optimizer
    return get_megatron_optimizer(
        MegatronOptimizerConfig(
            optimizer="adam",
            lr=opt.lr,
            min_lr=opt.min_lr,
            weight_decay=opt.weight_decay,
            adam_beta1=opt.adam_beta1,
            adam_beta2=opt.adam_beta2,
            adam_eps=opt.adam_eps,
            clip_grad=cfg.train.clip_grad,
            bf16=cfg.train.precision == "bf16",
            params_dtype=torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32,
            use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
        ),
        ddp_chunks,
    )


def build_scheduler(cfg: SailConfig, optimizer, lr_decay_iters: int,
                    resumed_steps: int = 0) -> OptimizerParamScheduler:
    """Lengths are explicit iteration counts, so raising train_iters later keeps the curve.

    On resume the schedule is the one the current config describes, advanced to the saved
    step: changed optimizer.lr / min_lr / warm-up / decay keys take effect from the resumed
    iteration exactly as a fresh run with them would have them there. Megatron's own
    ``load_state_dict`` would instead keep the checkpoint's values (or mix both), so the
    saved scheduler state contributes only its step count; and the peak and floor that the
    optimizer's parameter groups carry (restored from the checkpoint with its state) are
    the config's again."""
    opt = cfg.optimizer
    for group in optimizer.param_groups:
        group["max_lr"], group["min_lr"] = opt.lr, opt.min_lr
    warmup = min(opt.lr_warmup_iters, lr_decay_iters)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if warmup else opt.lr,
        max_lr=opt.lr,
        min_lr=opt.min_lr,
        lr_warmup_steps=warmup,
        lr_decay_steps=lr_decay_iters,
        lr_decay_style=opt.lr_decay_style,
        start_wd=opt.weight_decay,
        end_wd=opt.weight_decay,
        wd_incr_steps=lr_decay_iters,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=True,
    )
    scheduler.step(increment=resumed_steps)
    return scheduler


# Keys whose change on resume is refused: Adam's saved moments were accumulated with them.
FIXED_ON_RESUME = ("adam_beta1", "adam_beta2", "adam_eps")


def resume_conflicts(stored: dict, cfg: SailConfig) -> list[str]:
    """The optimizer keys a resumed run cannot change, with both values."""
    saved = stored.get("optimizer", {})
    return [f"optimizer.{key} is {saved[key]!r} in the checkpoint but "
            f"{getattr(cfg.optimizer, key)!r} now (Adam's saved moments were accumulated with "
            "it; set it back, or start a new run.output_dir)"
            for key in FIXED_ON_RESUME if key in saved and saved[key] != getattr(cfg.optimizer, key)]
