"""The training loop, top to bottom: set up, resume, step, log, evaluate, checkpoint."""

from __future__ import annotations

import dataclasses
import time
import uuid
from pathlib import Path

import torch
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads

from megatron_sail.checkpointing.dist_ckpt import load_checkpoint, save_checkpoint
from megatron_sail.checkpointing.layout_files import (
    CheckpointError, architecture_fingerprint, checkpoint_lineage, latest_checkpoint,
    resolve_checkpoint, run_lineage, stamped,
)
from megatron_sail.config import ConfigError, SailConfig, config_to_dict, save_config
from megatron_sail.config.validation import Layout, resolve_layout
from megatron_sail.data.loader.build import TRAIN, build_batches, validation_streams
from megatron_sail.data.packing.plan import PackingState
from megatron_sail.data.encoding.hf_tokenizer import load_tokenizer
from megatron_sail.data.encoding.tokenizer import SentencePieceTokenizer, load_or_train_synthetic_tokenizer
from megatron_sail.distributed.runtime import (
    DistEnv, data_sharing_group, init_model_parallel, init_process_group,
    transformer_engine_available,
)
from megatron_sail.models.builder import MODULE_PREFIX, build_model, num_vision_blocks
from megatron_sail.models.init import initialize_weights
from megatron_sail.training.metrics import MetricsWriter, Progress, truncate_after
from megatron_sail.training.moe_metrics import RoutingStats
from megatron_sail.training.throughput import ThroughputMeter
from megatron_sail.training.adalrs import AdaLRS
from megatron_sail.training.optimizer import (
    build_optimizer, build_scheduler, resume_conflicts, sync_params, wrap_ddp,
)
from megatron_sail.training.signals import StopRequest
from megatron_sail.training.startup import StartupClock
from megatron_sail.utils.logs import get_logger
from megatron_sail.training.step import run_step


ADALRS_SNAPSHOT = "adalrs_snapshot"  # inside a checkpoint: the pending AdaLRS trial's start


@dataclasses.dataclass
class TrainState:
    iteration: int = 0
    consumed_samples: int = 0
    lr_decay_iters: int = 0


log = get_logger("megatron_sail.training")


def _lr_decay_iters(cfg: SailConfig) -> int:
    """Explicit, or train_iters of the first start (at least one step past warm-up)."""
    opt = cfg.optimizer
    if opt.lr_decay_iters is None:
        return max(cfg.train.train_iters, opt.lr_warmup_iters + 1)
    if opt.lr_decay_style != "constant" and opt.lr_decay_iters <= opt.lr_warmup_iters:
        raise ConfigError(f"optimizer.lr_decay_iters={opt.lr_decay_iters} must exceed "
                          f"optimizer.lr_warmup_iters={opt.lr_warmup_iters}")
    return opt.lr_decay_iters


def _tokenizer(cfg: SailConfig, output_dir: Path):
    if cfg.data.tokenizer:
        return load_tokenizer(cfg.data.tokenizer)
    path = output_dir / "tokenizer.model"
    if torch.distributed.get_rank() == 0:
        load_or_train_synthetic_tokenizer(str(path))
    torch.distributed.barrier()
    return SentencePieceTokenizer(str(path))


def _check_compatible(stored: dict, cfg: SailConfig, ckpt: Path) -> None:
    """Architecture and Adam's constants must match; parallel layout, batch sizes, lengths
    and the LR schedule may change (see build_scheduler)."""
    conflicts = resume_conflicts(stored, cfg)
    if conflicts:
        raise CheckpointError(f"{ckpt}: cannot resume with " + "; ".join(conflicts))
    current = config_to_dict(cfg)["model"]
    for part in ("vision", "adapter", "llm"):
        for key, value in stored["model"][part].items():
            if current[part].get(key) != value:
                raise CheckpointError(
                    f"{ckpt}: incompatible with this config: model.{part}.{key} is "
                    f"{value!r} in the checkpoint but {current[part].get(key)!r} now")


def _loader_state(cfg: SailConfig, common: dict, state: TrainState, fingerprint: dict):
    """The checkpoint's loader state. Checkpoints written before the synthetic data went
    through the loader have none: those runs read samples [0, consumed_samples) of the train
    split, one per row, which is where an unpacked loader resumes. Packed, that position has
    no equivalent, so such a checkpoint must resume with data.packing=false."""
    if not common or "data" in common or cfg.data.dataset != "synthetic":
        return common.get("data")
    if cfg.data.packing:
        raise CheckpointError("the checkpoint's synthetic data was read unpacked (it has no "
                              "data-loader state): resume it with data.packing=false")
    return {"packing": PackingState(state.consumed_samples).as_dict(), "skipped": {},
            "blend": fingerprint, "packing_enabled": False}


def _val_text(record: dict):
    if "val_loss" not in record:
        return None
    text = f"val {record['val_loss']:.4f}"
    if "val_loss_mismatched_images" in record:
        text += f" (mismatched images {record['val_loss_mismatched_images']:.4f})"
    return text


class Trainer:
    def __init__(self, cfg: SailConfig, env: DistEnv):
        self.cfg, self.env = cfg, env
        clock = StartupClock()
        with clock.phase("process groups"):
            init_process_group(env)
            self.layout: Layout = resolve_layout(cfg, env.world_size, torch.cuda.is_available(),
                                                 transformer_engine_available())
            init_model_parallel(self.layout, cfg.train.seed)
        try:
            self.throughput = ThroughputMeter.for_run(
                cfg, env.world_size, torch.cuda.is_available(), cfg.hardware.gpu,
                cfg.hardware.peak_tflops)
        except ValueError as exc:  # unknown hardware.gpu / non-positive peak
            raise ConfigError(str(exc)) from None
        self.output_dir = Path(cfg.run.output_dir)
        self.ckpt_root = self.output_dir / "checkpoints"
        if env.rank == 0:
            self.ckpt_root.mkdir(parents=True, exist_ok=True)
        torch.distributed.barrier()

        tokenizer = _tokenizer(cfg, self.output_dir)
        if tokenizer.vocab_size > cfg.model.llm.vocab_size:
            raise ConfigError(f"tokenizer has {tokenizer.vocab_size} tokens but "
                              f"model.llm.vocab_size is {cfg.model.llm.vocab_size}")
        if cfg.model.img_context_token_id is None:
            cfg.model.img_context_token_id = tokenizer.img_context_id

        # A checkpoint about to be loaded holds every weight: drawing them first is wasted.
        self._latest = latest_checkpoint(self.ckpt_root)
        restoring = self._latest is not None or bool(cfg.checkpoint.load)
        with clock.phase("model build"):
            build = build_model(cfg, self.layout, cfg.model.img_context_token_id,
                                initialize=not restoring)
            self.model = wrap_ddp(cfg, build.chunks, build.llm_config, self.layout.dp,
                                  torch.cuda.is_available())
            self.optimizer = build_optimizer(cfg, self.model)
        clock.note("model build", "weights not initialised: loaded from the checkpoint"
                   if restoring else "weights initialised")
        llm_config = build.llm_config
        llm_config.finalize_model_grads_func = finalize_model_grads
        llm_config.grad_scale_func = self.optimizer.scale_loss
        no_sync = [m.no_sync for m in self.model]
        llm_config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync

        self.state = TrainState(lr_decay_iters=_lr_decay_iters(cfg))
        self.resumed_from = self.parent = None
        with clock.phase("checkpoint load"):
            common = self._resume_or_init()
        self.lineage = common.get("lineage") or self._new_lineage()
        self.adalrs = None
        if cfg.optimizer.adalrs.enabled:
            self.adalrs = AdaLRS(cfg.optimizer.adalrs, self.model, self.optimizer,
                                 common.get("adalrs"))
            if self.resumed_from is not None:
                self.adalrs.load_snapshot(self.resumed_from / ADALRS_SNAPSHOT)
        if cfg.optimizer.lr_decay_iters is not None:  # explicit: wins over the first start's
            self.state.lr_decay_iters = _lr_decay_iters(cfg)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.state.lr_decay_iters,
                                         common.get("scheduler", {}).get("num_steps", 0))
        cfg.optimizer.lr_decay_iters = self.state.lr_decay_iters  # config.yaml: what runs

        self.tokenizer = tokenizer
        with clock.phase("data start-up"):
            self.data = self._batches(TRAIN)
            state = _loader_state(cfg, common, self.state, self.data.samples.fingerprint())
            if state is not None:
                self.data.load_state_dict(state)
        self.validation = validation_streams(cfg)  # metric name -> stream
        self.routing = None
        if cfg.model.llm.is_moe:
            self.routing = RoutingStats(self.model, cfg.model.llm.num_layers,
                                        cfg.model.llm.num_experts, tokenizer.pad_id,
                                        cfg.model.img_context_token_id)

        self.metrics = None
        if env.rank == 0:
            save_config(cfg, self.output_dir / "config.yaml")
            truncate_after(self.output_dir / "metrics.jsonl", self.state.iteration)
            self.metrics = MetricsWriter(self.output_dir, cfg.run.tensorboard)
        self.stop = StopRequest()
        log.info(clock.line())

    # -- checkpoints ----------------------------------------------------------------------
    def _resume_or_init(self) -> dict:
        latest = self._latest
        if latest is not None:
            common = load_checkpoint(latest, self.model, self.optimizer,
                                     validate=lambda c: _check_compatible(c["config"], self.cfg, latest))
            self.state = TrainState(**common["train_state"])
            self.resumed_from = latest
            log.info(f"resumed from {latest} at iteration {self.state.iteration}")
            return common
        if self.cfg.checkpoint.load:
            source = resolve_checkpoint(self.cfg.checkpoint.load)
            load_checkpoint(source, self.model, optimizer=None, restore_rng=False,
                            validate=lambda c: _check_compatible(c["config"], self.cfg, source))
            self.parent = checkpoint_lineage(source)
            log.info(f"initialised weights from {source}")
            if self.cfg.checkpoint.reinit:
                self._reinit(self.cfg.checkpoint.reinit)
            # The weights changed behind the optimizer: where it keeps its own fp32 copies
            # (bf16 training), they must be taken from the loaded model.
            self.optimizer.reload_model_params()
        return {}

    def _new_lineage(self) -> dict:
        """A run's identity (agreed by every rank), architecture and parent checkpoint."""
        run_id = [uuid.uuid4().hex[:16]]
        torch.distributed.broadcast_object_list(run_id, src=0)
        run = {"id": run_id[0], "seed": self.cfg.train.seed,
               "output_dir": str(self.output_dir.resolve())}
        return run_lineage(run, architecture_fingerprint(config_to_dict(self.cfg)), self.parent)

    def _reinit(self, parts: list[str]) -> None:
        """Re-draw ``parts`` after loading, with the draws a fresh run of this seed makes."""
        cfg = self.cfg
        num_layers = {"llm": cfg.model.llm.num_layers,
                      "vision": num_vision_blocks(cfg.model.vision)[0]}
        prefixes = tuple(f"{MODULE_PREFIX[p]}." for p in parts)
        initialize_weights([getattr(c, "module", c) for c in self.model], cfg.train.seed,
                           cfg.model.init_std, num_layers, prefixes)
        log.info(f"re-initialised {', '.join(parts)} from seed {cfg.train.seed}")

    def save(self) -> Path:
        sync_params(self.model)
        it = self.state.iteration
        common = {
            "train_state": dataclasses.asdict(self.state),
            "scheduler": self.scheduler.state_dict(),
            "config": config_to_dict(self.cfg),
            "lineage": self.lineage,
        }
        if self.adalrs is not None:
            common["adalrs"] = self.adalrs.state_dict()
        common["data"] = self.data.state_dict()
        marker = {
            "iteration": it,
            "consumed_samples": self.state.consumed_samples,
            "pp_tp": [self.layout.pp, self.layout.tp],
            "layout": dataclasses.asdict(self.layout),
            "format": "megatron-dist-ckpt/torch_dist",
            "lineage": stamped(self.lineage, it),
        }
        snapshot = (lambda d: self.adalrs.save_snapshot(d / ADALRS_SNAPSHOT)) if self.adalrs else None
        path = save_checkpoint(self.ckpt_root, it, self.model, self.optimizer, common, marker,
                               self.cfg.checkpoint.keep_last, also=snapshot)
        log.info(f"saved checkpoint {path}")
        return path

    # -- data and steps ---------------------------------------------------------------------
    def _batches(self, stream: str, num_workers=None):
        """This rank's loader of ``stream``; one rank per data-parallel replica (TP x PP x CP)
        decodes, the others receive (every rank keeps the loader state)."""
        return build_batches(self.cfg, self.tokenizer, stream,
                             parallel_state.get_data_parallel_rank(), self.layout.dp,
                             parallel_state.get_data_parallel_group(),
                             num_workers=num_workers, share_group=data_sharing_group())

    def evaluate(self) -> dict[str, float]:
        """Loss on the first ``eval_iters`` global batches of each validation stream (synthetic
        data: the held-out split, and the same with every image swapped for another sample's,
        which shows how much the model relies on what it sees)."""
        cfg = self.cfg
        out = {}
        for name, stream in self.validation.items():
            batches = self._batches(stream, num_workers=0)
            loss_sum = tokens = 0.0
            for _ in range(cfg.train.eval_iters):
                result = run_step(self.model, self.optimizer, self.scheduler,
                                  batches.next_global_batch().microbatches,
                                  cfg.data.seq_length, cfg.train.micro_batch_size,
                                  forward_only=True)
                loss_sum, tokens = loss_sum + result.loss_sum, tokens + result.num_tokens
            batches.close()
            out[name] = loss_sum / max(tokens, 1.0)
        return out

    def run_iteration(self, microbatches: list | None = None) -> tuple:
        """One training step, nothing else (no logging, evaluation or checkpoint): on the
        next global batch of the run's data, or on ``microbatches`` when given. Returns the
        step's result and the micro-batches it ran, which a caller may feed again to keep
        data preparation out of a timing (benchmarks, the memory measurement)."""
        samples = None
        if microbatches is None:
            batch = self.data.next_global_batch()
            microbatches, samples = batch.microbatches, len(batch.shapes)
        result = self._step(microbatches)
        if samples is not None:  # micro-batches fed again are not new data
            self.state.consumed_samples += samples
        return result, microbatches

    def _step(self, microbatches: list):
        """Forward, backward and the optimizer step on ``microbatches`` (routing statistics
        and the AdaLRS trial's LR scale included); the iteration counter advances."""
        for chunk in self.model:
            chunk.train()
        if self.routing:
            self.routing.reset_step()
        result = run_step(self.model, self.optimizer, self.scheduler, microbatches,
                          self.cfg.data.seq_length, self.cfg.train.micro_batch_size,
                          before_microbatch=self.routing.observe if self.routing else None,
                          lr_scale=self.adalrs.scale if self.adalrs else 1.0)
        if self.routing:
            self.routing.end_step(self.layout.num_microbatches)
        self.state.iteration += 1
        return result

    def train(self) -> int:
        cfg, state = self.cfg, self.state
        train = cfg.train
        lay = self.layout
        log.info(f"layout: world {lay.world_size} = TP {lay.tp} x PP {lay.pp}"
                 f"{f' x CP {lay.cp}' if lay.cp > 1 else ''} x DP {lay.dp}"
                f" (VPP {lay.vpp}, SP {lay.sequence_parallel}, vision TP {lay.vision_tp}),"
                f" {lay.num_microbatches} micro-batches/step, output {self.output_dir}")
        progress = Progress(state.iteration, train.train_iters)
        last_saved = state.iteration if state.iteration else None
        while state.iteration < train.train_iters:
            t0 = time.perf_counter()
            batch = self.data.next_global_batch()
            data_metrics, skips, shapes = batch.metrics, batch.skips, batch.shapes
            result = self._step(batch.microbatches)
            elapsed = time.perf_counter() - t0
            # The samples' own tokens, padding not counted.
            samples, tokens = len(shapes), sum(n for n, _ in shapes)
            state.consumed_samples += samples
            if skips and self.metrics:
                self.metrics.skipped(state.iteration, [s.as_dict() for s in skips])
            record = {
                "iteration": state.iteration,
                "loss": result.loss,
                "lr": self.scheduler.get_lr(self.optimizer.param_groups[0]),
                "grad_norm": float(result.grad_norm) if result.grad_norm is not None else None,
                "tokens_per_sec": tokens / elapsed,
                "loss_tokens": int(result.num_tokens),
                "consumed_samples": state.consumed_samples,
                "step_time_s": elapsed,
                **self.throughput.metrics(elapsed, shapes),
                **data_metrics,
            }
            if self.adalrs:  # may roll the weights back, before evaluation and saving
                record.update(self.adalrs.step(state.iteration, result.loss))
            if train.eval_interval and state.iteration % train.eval_interval == 0:
                for chunk in self.model:
                    chunk.eval()
                record.update(self.evaluate())
            log_now = (state.iteration % train.log_interval == 0
                       or state.iteration == train.train_iters or "adalrs/decision" in record)
            if log_now and self.routing:
                record.update(self.routing.metrics())  # collective
            if self.metrics and log_now:
                self.metrics.write(record)
                progress.show(state.iteration, record["loss"], record["lr"], _val_text(record))

            stop = self.stop.agreed()
            interval = cfg.checkpoint.save_interval
            exit_now = bool(train.exit_interval and state.iteration % train.exit_interval == 0)
            if stop or exit_now or (interval and state.iteration % interval == 0):
                self.save()
                last_saved = state.iteration
            if stop or exit_now:
                why = f"signal {self.stop.received}" if stop else f"exit_interval {train.exit_interval}"
                log.info(f"stopping at iteration {state.iteration} ({why}); rerun to resume")
                return 0
        if last_saved != state.iteration:
            self.save()
        log.info(f"done: {state.iteration} iterations")
        return 0

    def close(self) -> None:
        self.data.close()
        if self.metrics:
            self.metrics.close()
            from megatron_sail.errors import UserError
            from megatron_sail.training.plot import plot_runs

            try:
                print(f"loss curves: {plot_runs([str(self.output_dir)])}", flush=True)
            except UserError:   # stopped before the first logged iteration: nothing to plot
                pass
