"""The RL loop, top to bottom: per episode, sample prompts, generate groups of rollouts with the
policy being trained, score them, keep the informative groups (dynamic sampling, refilling from
more prompts), compute group-relative advantages, then ``updates_per_episode`` clipped policy
updates through Megatron's pipeline schedule and the distributed optimizer.

The run is a training run in every other respect (``Trainer``): the same model build, optimizer,
checkpoints, lineage, run lock, metrics file and resume. One checkpoint iteration is one
episode (``train.train_iters`` episodes). What an episode asks and samples is a pure function of
(seed, episode, round, DP rank), so resuming at episode k continues exactly.

Data parallelism: each DP rank generates for its share of the episode's prompts (every rank of
a model replica generates the same rows); the rollouts are gathered so that every rank sees the
whole episode, and each mini-batch is split again over the DP ranks for the update.
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Optional

import numpy as np
import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_sail.config import ConfigError, SailConfig
from megatron_sail.distributed.runtime import DistEnv
from megatron_sail.rl.advantages import group_advantages, informative_groups, prompts_to_draw
from megatron_sail.rl.data import draw_prompts, load_rl_prompts
from megatron_sail.rl.episode import (
    RLMicroBatch, minibatch_rows, micro_batch, pack_episode, rank_rows,
)
from megatron_sail.rl.losses import LOSSES, PolicyLoss
from megatron_sail.rl.metrics import episode_metrics
from megatron_sail.rl.rewards import Sample, ScoredBatch, build_rewards
from megatron_sail.rl.rollouts import vocab_parallel_token_logprobs
from megatron_sail.training.metrics import Progress
from megatron_sail.training.step import comm_device
from megatron_sail.training.trainer import Trainer
from megatron_sail.utils.logs import get_logger

log = get_logger("megatron_sail.rl")

STATS = 6  # loss sum, loss count, clip x tokens, approx_kl x tokens, ref_kl x tokens, tokens


def cut_at_end(tokens: list[int], eos: set[int]) -> list[int]:
    """The tokens up to and including the first end token."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i + 1]
    return tokens


def _generation_seed(seed: int, episode: int, round_: int, dp_rank: int) -> int:
    return int(np.random.default_rng([seed, episode, round_, dp_rank, 1]).integers(2 ** 31))


class RLTrainer(Trainer):
    def __init__(self, cfg: SailConfig, env: DistEnv):
        rl = cfg.rl
        if cfg.optimizer.lr_decay_iters is None:  # the schedule counts optimizer updates
            cfg.optimizer.lr_decay_iters = max(cfg.train.train_iters * rl.updates_per_episode,
                                               cfg.optimizer.lr_warmup_iters + 1)
        if rl.kl_coeff > 0 and not cfg.checkpoint.load:
            raise ConfigError(f"rl.kl_coeff={rl.kl_coeff:g} needs a reference model: set "
                              f"checkpoint.load (the weights the RL stage starts from)")
        if cfg.parallel.context_parallel_size > 1:   # generation runs whole rows
            raise ConfigError(f"parallel.context_parallel_size="
                              f"{cfg.parallel.context_parallel_size}: RL generates its rollouts "
                              f"without context parallelism; use 1")
        super().__init__(cfg, env)
        self.prompts = load_rl_prompts(cfg, self.tokenizer)
        self.dp, self.dp_rank = self.layout.dp, parallel_state.get_data_parallel_rank()
        self.eos = {self.tokenizer.eos_id}
        self.score = self._scorer()
        self.reference = self._reference_model() if rl.kl_coeff > 0 else None

    # -- set-up ---------------------------------------------------------------------------
    def _scorer(self):
        rl = self.cfg.rl
        options = {}
        if "judge" in rl.rewards:
            from megatron_sail.rl.judge import judge_options

            options["judge"] = judge_options(rl)
        return build_rewards(rl.reward_weight_map(), options)

    def _reference_model(self) -> list:
        """The frozen policy the KL term compares against: the stage's starting weights."""
        from megatron_sail.checkpointing.layout_files import resolve_checkpoint
        from megatron_sail.checkpointing.dist_ckpt import load_checkpoint
        from megatron_sail.models.builder import build_model

        build = build_model(self.cfg, self.layout, self.cfg.model.img_context_token_id)
        load_checkpoint(resolve_checkpoint(self.cfg.checkpoint.load), build.chunks,
                        optimizer=None, restore_rng=False)
        for chunk in build.chunks:
            chunk.eval()
            for p in chunk.parameters():
                p.requires_grad_(False)
        return build.chunks

    # -- rollouts -------------------------------------------------------------------------
    def _generate(self, share: list[int], seed: int) -> list[list[int]]:
        from megatron_sail.generation.generate import generate

        rl, P = self.cfg.rl, self.prompts
        rows = [i for i in share for _ in range(rl.group_size)]
        out: list[list[int]] = []
        step = rl.generation_batch_size
        for first in range(0, len(rows), step):
            part = rows[first:first + step]
            new = generate(self.model, self.layout, [P.prompts[i] for i in part],
                           pixel_values=P.pixels_of(part), max_new_tokens=rl.max_new_tokens,
                           temperature=rl.temperature, top_p=rl.top_p, top_k=rl.top_k or 0,
                           seed=seed + first, eos_token_ids=tuple(self.eos),
                           img_context_token_id=self.cfg.model.img_context_token_id,
                           vocab_size=self.tokenizer.vocab_size, pad_id=self.tokenizer.pad_id)
            out += [cut_at_end(g, self.eos) for g in new]
        return out

    def _rollout_round(self, episode: int, round_: int, count: int) -> tuple[list[int], list]:
        """Prompts drawn for this round (every rank alike) and their G responses each."""
        count = math.ceil(count / self.dp) * self.dp
        drawn = draw_prompts(self.cfg.train.seed, episode, round_, count, len(self.prompts))
        per_rank = count // self.dp
        share = drawn[self.dp_rank * per_rank:(self.dp_rank + 1) * per_rank]
        mine = self._generate(share, _generation_seed(self.cfg.train.seed, episode, round_,
                                                       self.dp_rank))
        gathered: list = [None] * self.dp
        torch.distributed.all_gather_object(gathered, mine,
                                            group=parallel_state.get_data_parallel_group())
        responses = [r for part in gathered for r in part]
        return drawn, responses

    def _score(self, prompt_of: list[int], texts: list[str]) -> ScoredBatch:
        """Scored on the first rank (the judge asks a model once), shared with all."""
        P = self.prompts
        box: list = [None]
        if torch.distributed.get_rank() == 0:
            box[0] = self.score([Sample(P.questions[p], t, P.references[p])
                                 for p, t in zip(prompt_of, texts)])
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def collect(self, episode: int):
        """Generate, score and keep informative groups until the episode's prompts are met
        (or ``max_refill_rounds`` more rounds were spent)."""
        rl, G = self.cfg.rl, self.cfg.rl.group_size
        needed = rl.prompts_per_episode
        prompt_of: list[int] = []
        responses: list[list[int]] = []
        kept: list[int] = []        # group numbers over all rounds
        count, round_ = needed, 0
        all_scores: Optional[ScoredBatch] = None
        while True:
            drawn, new = self._rollout_round(episode, round_, count)
            first_group = len(prompt_of) // G
            prompt_of += [p for p in drawn for _ in range(G)]
            responses += new
            texts = [self._answer(r) for r in new]
            scored = self._score(prompt_of[-len(new):], texts)
            keep = informative_groups(scored.total, G) if rl.dynamic_sampling else \
                torch.ones(len(drawn), dtype=torch.bool)
            kept += [first_group + g for g in range(len(drawn)) if bool(keep[g])]
            all_scores = scored if all_scores is None else _concat(all_scores, scored)
            groups = len(prompt_of) // G
            if not rl.dynamic_sampling or len(kept) >= needed or round_ >= rl.max_refill_rounds:
                break
            # DAPO's refill: more prompts at the keep rate seen so far, at most one episode's
            # worth per round (a round of all-equal groups must not ask for 20x more).
            count = min(prompts_to_draw(needed, len(kept), groups), needed)
            round_ += 1
        kept = kept[:needed]
        rows = [g * G + j for g in kept for j in range(G)]
        rewards = [all_scores.total[r] for r in rows]
        advantages = group_advantages(rewards, G) if rows else torch.zeros(0)
        return {"rows": rows, "prompt_of": prompt_of, "responses": responses,
                "scored": all_scores, "groups_total": groups, "groups_kept": len(kept),
                "advantages": advantages}

    def _answer(self, tokens: list[int]) -> str:
        from megatron_sail.generation.cli import answer_text

        return answer_text(self.tokenizer, tokens, self.eos)

    # -- updates --------------------------------------------------------------------------
    def _forward_step(self, mode: str, data_iterator, model):
        mb: Optional[RLMicroBatch] = next(data_iterator)
        if mb is None:  # a middle pipeline stage
            return model(None, None), None
        inner = getattr(model, "module", model)
        device = comm_device()
        tokens = mb.tokens.to(device)
        positions = torch.arange(tokens.shape[1], device=device).expand_as(tokens).contiguous()
        pixels = mb.pixel_values.to(device) if inner.pre_process and \
            mb.pixel_values is not None else None
        return model(tokens, positions, pixel_values=pixels), partial(self._loss, mode, mb)

    def _loss(self, mode: str, mb: RLMicroBatch, output: torch.Tensor):
        rl = self.cfg.rl
        logp = vocab_parallel_token_logprobs(
            output[:, :-1], mb.targets.to(output.device), rl.temperature,
            self.tokenizer.vocab_size, banned=(self.cfg.model.img_context_token_id,))
        # Only response tokens count; a prompt's image placeholders score -inf (never sampled).
        mask = mb.mask.to(logp.device)
        logp = logp.masked_fill(mask == 0, 0.0)
        zero_count = torch.zeros((), dtype=torch.int, device=logp.device)
        if mode in ("old", "ref"):
            setattr(mb, f"{mode}_logp", logp.detach())
            return (logp * 0).sum(), zero_count, {}
        tokens = mask.sum()
        stats = torch.zeros(STATS, dtype=torch.float64, device=logp.device)
        if float(tokens) == 0:  # padding rows only
            return (logp * 0).sum(), zero_count, {"rl": stats}
        low, high = rl.clip_range()
        norm = {"num_tokens": 1.0} if rl.algorithm == "dapo" else {"num_sequences": 1.0}
        res: PolicyLoss = LOSSES[rl.algorithm](
            logp, mb.old_logp, mb.advantages.to(logp.device), mask, eps_low=low, eps_high=high,
            ref_logp=mb.ref_logp, kl_coeff=rl.kl_coeff, **norm)
        count = tokens if rl.algorithm == "dapo" else (mask.sum(dim=1) > 0).sum()
        ref_kl = 0.0 if res.ref_kl is None else float(res.ref_kl)
        stats += torch.tensor([float(res.loss), float(count), float(res.clip_fraction) * tokens,
                               float(res.approx_kl) * tokens, ref_kl * tokens, tokens],
                              dtype=torch.float64, device=logp.device)
        return res.loss, count.to(torch.int), {"rl": stats}

    def _iterators(self, chunks, microbatches: list[RLMicroBatch]):
        out = []
        for chunk in chunks:
            inner = getattr(chunk, "module", chunk)
            needs = inner.pre_process or inner.post_process
            out.append(iter(microbatches if needs else [None] * len(microbatches)))
        return out if len(out) > 1 else out[0]

    def _schedule(self, chunks, microbatches: list[RLMicroBatch], mode: str) -> list:
        return get_forward_backward_func()(
            forward_step_func=partial(self._forward_step, mode),
            data_iterator=self._iterators(chunks, microbatches), model=chunks,
            num_microbatches=len(microbatches), seq_length=microbatches[0].tokens.shape[1],
            micro_batch_size=microbatches[0].tokens.shape[0], forward_only=mode != "update")

    def _reduce(self, losses: list) -> torch.Tensor:
        total = torch.zeros(STATS, dtype=torch.float64, device=comm_device())
        if parallel_state.is_pipeline_last_stage() and \
                parallel_state.get_tensor_model_parallel_rank() == 0:
            for item in losses:
                total += item["rl"].to(total)
        torch.distributed.all_reduce(total)
        return total.cpu()

    def update(self, minibatches: list[tuple[list[RLMicroBatch], int]]) -> list[dict]:
        """Old (and reference) log-probs of every rollout, then the updates, cycling through
        the mini-batches (each with its token count). Returns each update's reduced
        statistics, grad norm and tokens."""
        with torch.no_grad():
            for chunk in self.model:
                chunk.eval()
            for mbs, _ in minibatches:
                self._schedule(self.model, mbs, "old")
                if self.reference is not None:
                    self._schedule(self.reference, mbs, "ref")
        for chunk in self.model:
            chunk.train()
        results = []
        for u in range(self.cfg.rl.updates_per_episode):
            mbs, tokens = minibatches[u % len(minibatches)]
            for chunk in self.model:
                chunk.zero_grad_buffer()
            self.optimizer.zero_grad()
            stats = self._reduce(self._schedule(self.model, mbs, "update"))
            self.scheduler.step(increment=1)
            _, grad_norm, _ = self.optimizer.step()
            results.append({"stats": stats, "grad_norm": grad_norm,
                            "tokens": tokens})
        return results

    def _microbatches(self, got: dict) -> list[tuple[list[RLMicroBatch], int]]:
        rl, P = self.cfg.rl, self.prompts
        multiple = self.layout.tp if self.layout.sequence_parallel else 1
        rows = got["rows"]
        episode = pack_episode(P.prompts, [got["prompt_of"][r] for r in rows],
                               [got["responses"][r] for r in rows], got["advantages"],
                               self.tokenizer.pad_id, multiple)
        out = []
        for mini in minibatch_rows(len(rows), rl.mini_batch_size):
            # A mini-batch is split over DP ranks; each rank's rows over micro-batches.
            mbs = rank_rows(mini, self.dp, self.dp_rank, self.cfg.train.micro_batch_size)
            tokens = sum(episode.rollouts.prompt_lengths[r] + episode.rollouts.response_lengths[r]
                         for r in mini)
            out.append(([micro_batch(episode, r, P.pixels_of) for r in mbs], tokens))
        return out

    # -- the loop -------------------------------------------------------------------------
    def episode_record(self, episode: int) -> dict:
        t0 = time.perf_counter()
        got = self.collect(episode)
        rollout_s = time.perf_counter() - t0
        generated = sum(len(r) for r in got["responses"])
        t1 = time.perf_counter()
        results = self.update(self._microbatches(got)) if got["rows"] else []
        update_s = time.perf_counter() - t1
        updates = [PolicyLoss(loss=r["stats"][0] / max(float(r["stats"][1]), 1.0),
                              clip_fraction=r["stats"][2] / max(float(r["stats"][5]), 1.0),
                              approx_kl=r["stats"][3] / max(float(r["stats"][5]), 1.0),
                              ref_kl=(r["stats"][4] / max(float(r["stats"][5]), 1.0)
                                      if self.reference is not None else None))
                   for r in results]
        record = {
            "iteration": episode + 1,
            "loss": float(np.mean([float(u.loss) for u in updates])) if updates else None,
            "lr": self.scheduler.get_lr(self.optimizer.param_groups[0]),
            "grad_norm": float(results[-1]["grad_norm"]) if results and
            results[-1]["grad_norm"] is not None else None,
            **episode_metrics(got["scored"], [len(r) for r in got["responses"]],
                              got["groups_kept"], got["groups_total"], updates),
            "rl/rollouts": len(got["responses"]),
            "rl/updates": len(updates),
            "rl/rollout_time_s": rollout_s,
            "rl/rollout_tokens_per_sec": generated / max(rollout_s, 1e-9),
            "rl/update_time_s": update_s,
            "rl/update_tokens_per_sec": sum(r["tokens"] for r in results) / max(update_s, 1e-9),
            "consumed_samples": self.state.consumed_samples + got["groups_total"],
            "step_time_s": rollout_s + update_s,
        }
        return record

    def train(self) -> int:
        cfg, state = self.cfg, self.state
        lay, rl = self.layout, cfg.rl
        log.info(f"RL ({rl.algorithm}): world {lay.world_size} = TP {lay.tp} x PP {lay.pp} x DP "
                f"{lay.dp} (EP {lay.ep}), {len(self.prompts)} prompts, {rl.prompts_per_episode}"
                f" x {rl.group_size} rollouts/episode, {rl.updates_per_episode} updates/episode,"
                f" output {self.output_dir}")
        progress = Progress(state.iteration, cfg.train.train_iters)
        last_saved = state.iteration if state.iteration else None
        while state.iteration < cfg.train.train_iters:
            record = self.episode_record(state.iteration)
            state.iteration += 1
            state.consumed_samples = record["consumed_samples"]
            if self.metrics:
                self.metrics.write(record)
                progress.show(state.iteration, record["loss"], record["lr"], _summary(record))
            stop = self.stop.agreed()
            interval = cfg.checkpoint.save_interval
            exit_now = bool(cfg.train.exit_interval
                            and state.iteration % cfg.train.exit_interval == 0)
            if stop or exit_now or (interval and state.iteration % interval == 0):
                last_saved = self._save_if_updated(last_saved)
            if stop or exit_now:
                why = f"signal {self.stop.received}" if stop else \
                    f"exit_interval {cfg.train.exit_interval}"
                log.info(f"stopping at episode {state.iteration} ({why}); rerun to resume")
                return 0
        if last_saved != state.iteration:
            self._save_if_updated(last_saved)
        log.info(f"done: {state.iteration} episodes")
        return 0

    def _save_if_updated(self, last_saved: Optional[int]) -> Optional[int]:
        """Save. Before the first update (every group so far had all-equal rewards) the
        distributed optimizer has no state to describe: it is given Adam's zero state first (a
        zero step at lr 0, weights unchanged), as loading does, so such a run still finishes."""
        if self.scheduler.num_steps == 0:
            from megatron_sail.checkpointing.dist_ckpt import _materialise_optimizer_state

            log.info(f"episode {self.state.iteration}: no update yet (no informative group)")
            _materialise_optimizer_state(self.optimizer)
        self.save()
        return self.state.iteration


def _summary(record: dict) -> str:
    parts = [f"reward {record['rl/reward_mean']:.3f}"]
    if "rl/accuracy" in record:
        parts.append(f"acc {record['rl/accuracy']:.3f}")
    parts.append(f"kept {int(record['rl/groups_kept'])} groups")
    parts.append(f"len {record['rl/response_length_mean']:.1f}")
    return " ".join(parts)


def _concat(a: ScoredBatch, b: ScoredBatch) -> ScoredBatch:
    unscored = dict(a.unscored)
    for name, n in b.unscored.items():
        unscored[name] = unscored.get(name, 0) + n
    return ScoredBatch(a.total + b.total, {k: a.parts[k] + b.parts[k] for k in a.parts}, unscored)
