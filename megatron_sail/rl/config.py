"""The typed configuration of an RL stage, with the SAIL-VL2 report's hyper-parameters as defaults.

Report (RL with verifiable rewards, and mixed-reward RL): 2048 rollouts per episode, mini-batch
512, 8 updates per episode, LR 1e-6, clip-higher 0.20 / 0.28, context 16384 with at most 4096
generated tokens; DAPO for dense models, GSPO for MoE; binary answer and format rewards.

The learning rate is the optimizer's (``optimizer.lr``), not repeated here: ``REPORT_LR`` is the
value the SAIL-VL2 RL stages set it to. Fields use the same ``num`` ranges and ``Literal``
choices as the rest of the config, so the YAML loader can build this dataclass as a section.
"""

from __future__ import annotations

from megatron_sail.config.fields import range_errors
from megatron_sail.errors import shown
from megatron_sail.rl.rewards import REWARDS

from megatron_sail.config.rl import DEFAULT_CLIP, REPORT_LR, Algorithm, RLConfig  # noqa: F401


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
    from megatron_sail.config.loader import _raise_all  # the loader imports the schema, which imports this

    _raise_all([text for _, text in rl_config_errors(cfg, prefix)])


def check_rl_run(cfg) -> None:
    """Everything ``sail rl`` can check before starting ranks, for a whole SailConfig: the
    ``rl`` section's values and relations, and its prompt file; raised together."""
    import os

    from megatron_sail.config.loader import _raise_all

    errors = [text for _, text in rl_config_errors(cfg.rl)]
    if not cfg.rl.data:
        errors.append("rl.data is not set: RL needs prompt records with reference answers "
                      "(a JSONL file in the training format)")
    elif not os.path.isfile(cfg.rl.data):
        errors.append(f"rl.data={cfg.rl.data}: no such file")
    _raise_all(errors)
