"""The ``rl`` section of a config: the RL stage's hyper-parameters, with the SAIL-VL2 report's
values as defaults (its relations are checked in ``megatron_sail.rl.config``). Here, in config/,
so that the config schema can hold it without importing the RL package."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from megatron_sail.config.fields import num

REPORT_LR = 1e-6
Algorithm = Literal["dapo", "gspo", "grpo"]

# Clip range (eps_low, eps_high) when the config leaves it unset. DAPO: the report's clip-higher.
# GRPO: symmetric. GSPO: the GSPO paper's range - its ratio is the geometric mean of the token
# ratios over a sequence, which stays within a few 1e-4 of 1, so 0.2 would never clip.
DEFAULT_CLIP = {"dapo": (0.20, 0.28), "grpo": (0.20, 0.20), "gspo": (3e-4, 4e-4)}


@dataclass
class RLConfig:
    algorithm: Algorithm = "dapo"  # dapo (dense, report) | gspo (MoE, report) | grpo (baseline)
    group_size: int = num(8, ge=2)  # rollouts per prompt (the report gives only rollouts/episode)
    prompts_per_episode: int = num(256, ge=1)  # x group_size = 2048 rollouts per episode
    mini_batch_size: int = num(512, ge=1)  # rollouts per optimizer update
    updates_per_episode: int = num(8, ge=1)  # optimizer updates per episode, cycling mini-batches
    clip_eps_low: Optional[float] = num(None, ge=0, lt=1)  # None: DEFAULT_CLIP[algorithm]
    clip_eps_high: Optional[float] = num(None, ge=0)
    kl_coeff: float = num(0.0, ge=0)  # > 0 needs a frozen reference model (DAPO drops the KL)
    max_context: int = num(16384, ge=1)  # prompt + response tokens
    max_new_tokens: int = num(4096, ge=1)
    temperature: float = num(1.0, gt=0)
    top_p: float = num(1.0, gt=0, le=1)
    top_k: Optional[int] = num(None, ge=1)
    dynamic_sampling: bool = True  # drop all-equal-reward groups, refill from more prompts
    max_refill_rounds: int = num(4, ge=0)  # extra generation rounds per episode to refill the batch
    rewards: list[str] = field(default_factory=lambda: ["boxed_answer", "think_format"])
    reward_weights: list[float] = field(default_factory=lambda: [1.0, 1.0])
    judge_template: Optional[str] = None  # None: rewards.DEFAULT_JUDGE_TEMPLATE
    judge_verdict: Literal["yes_no", "score"] = "yes_no"
    judge_retries: int = num(2, ge=0)  # extra asks for an unparseable verdict, then scored 0
    judge_checkpoint: Optional[str] = None  # the model the judge reward asks
    # The RL loop (``sail rl CONFIG``): episodes are ``train.train_iters``, one checkpoint
    # iteration per episode; prompts are the records of ``data`` (training format, a reference
    # answer each: see ``rl/data.py``), sampled from ``train.seed`` and the episode number.
    data: Optional[str] = None
    thinking: bool = False  # ask every prompt in the release's thinking mode
    generation_batch_size: int = num(64, ge=1)  # rollouts generated together on one DP rank

    @property
    def rollouts_per_episode(self) -> int:
        return self.group_size * self.prompts_per_episode

    def clip_range(self) -> tuple[float, float]:
        low, high = DEFAULT_CLIP[self.algorithm]
        return (low if self.clip_eps_low is None else self.clip_eps_low,
                high if self.clip_eps_high is None else self.clip_eps_high)

    def reward_weight_map(self) -> dict[str, float]:
        return dict(zip(self.rewards, self.reward_weights))
