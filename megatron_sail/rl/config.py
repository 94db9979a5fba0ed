"""The typed configuration of an RL stage, with the SAIL-VL2 report's hyper-parameters as defaults.

Report (RL with verifiable rewards, and mixed-reward RL): 2048 rollouts per episode, mini-batch
512, 8 updates per episode, LR 1e-6, clip-higher 0.20 / 0.28, context 16384 with at most 4096
generated tokens; DAPO for dense models, GSPO for MoE; binary answer and format rewards.

The learning rate is the optimizer's (``optimizer.lr``), not repeated here: ``REPORT_LR`` is the
value the SAIL-VL2 RL stages set it to. Fields use the same ``num`` ranges and ``Literal``
choices as the rest of the config, so the YAML loader can build this dataclass as a section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from megatron_sail.config.fields import num, range_errors
from megatron_sail.config.loader import _raise_all
from megatron_sail.errors import shown
from megatron_sail.rl.rewards import REWARDS

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

    @property
    def rollouts_per_episode(self) -> int:
        return self.group_size * self.prompts_per_episode

    def clip_range(self) -> tuple[float, float]:
        low, high = DEFAULT_CLIP[self.algorithm]
        return (low if self.clip_eps_low is None else self.clip_eps_low,
                high if self.clip_eps_high is None else self.clip_eps_high)

    def reward_weight_map(self) -> dict[str, float]:
        return dict(zip(self.rewards, self.reward_weights))


def rl_config_errors(cfg: RLConfig, prefix: str = "rl.") -> list[tuple[str, str]]:
    """``(key, message)`` for every value outside its range and every broken relation, all
    together (same shape as ``config.fields.range_errors``)."""
    errors = range_errors(cfg, prefix)
    key = lambda name: f"{prefix}{name}"  # noqa: E731
    if cfg.mini_batch_size > cfg.rollouts_per_episode or \
            cfg.rollouts_per_episode % cfg.mini_batch_size:
        errors.append((key("mini_batch_size"),
                       f"{key('mini_batch_size')}={cfg.mini_batch_size} must divide the "
                       f"{cfg.rollouts_per_episode} rollouts per episode (group_size "
                       f"{cfg.group_size} x prompts_per_episode {cfg.prompts_per_episode})"))
    if cfg.max_new_tokens >= cfg.max_context:
        errors.append((key("max_new_tokens"),
                       f"{key('max_new_tokens')}={cfg.max_new_tokens} leaves no room for the "
                       f"prompt in {key('max_context')}={cfg.max_context}"))
    low, high = cfg.clip_range()
    if cfg.algorithm != "grpo" and high < low:
        errors.append((key("clip_eps_high"), f"{key('clip_eps_high')}={high:g} must be >= "
                                             f"{key('clip_eps_low')}={low:g} (clip-higher)"))
    unknown = [r for r in cfg.rewards if r not in REWARDS]
    if unknown:
        errors.append((key("rewards"), f"{key('rewards')} has unknown reward(s) "
                                       f"{', '.join(map(shown, unknown))} "
                                       f"(known: {', '.join(REWARDS)})"))
    if len(set(cfg.rewards)) != len(cfg.rewards):
        errors.append((key("rewards"), f"{key('rewards')} names a reward twice"))
    if not cfg.rewards:
        errors.append((key("rewards"), f"{key('rewards')} is empty: RL needs a reward"))
    if len(cfg.reward_weights) != len(cfg.rewards):
        errors.append((key("reward_weights"),
                       f"{key('reward_weights')} has {len(cfg.reward_weights)} weights for "
                       f"{len(cfg.rewards)} rewards"))
    if "judge" in cfg.rewards and not cfg.judge_checkpoint:
        errors.append((key("judge_checkpoint"),
                       f"the judge reward needs {key('judge_checkpoint')}, the model it asks"))
    return errors


def check_rl_config(cfg: RLConfig, prefix: str = "rl.") -> None:
    """Raise one ConfigError listing every problem of ``cfg``."""
    _raise_all([text for _, text in rl_config_errors(cfg, prefix)])
