"""The RL config: the report's defaults, per-algorithm clip ranges, all problems together."""

import dataclasses

import pytest

from megatron_sail.config.loader import ConfigError
from megatron_sail.rl.config import REPORT_LR, RLConfig, check_rl_config, rl_config_errors


def test_defaults_are_the_reports():
    cfg = RLConfig()
    check_rl_config(cfg)
    assert cfg.rollouts_per_episode == 2048
    assert (cfg.mini_batch_size, cfg.updates_per_episode) == (512, 8)
    assert cfg.clip_range() == (0.20, 0.28)
    assert (cfg.max_context, cfg.max_new_tokens, cfg.kl_coeff) == (16384, 4096, 0.0)
    assert REPORT_LR == 1e-6
    assert cfg.reward_weight_map() == {"boxed_answer": 1.0, "think_format": 1.0}


def test_clip_range_per_algorithm_and_explicit_values_win():
    assert RLConfig(algorithm="grpo").clip_range() == (0.20, 0.20)
    assert RLConfig(algorithm="gspo").clip_range() == (3e-4, 4e-4)
    assert RLConfig(algorithm="gspo", clip_eps_low=0.2, clip_eps_high=0.28).clip_range() == \
        (0.2, 0.28)


def test_every_problem_is_reported_together():
    cfg = dataclasses.replace(RLConfig(), group_size=1, mini_batch_size=300, top_p=1.5,
                              max_new_tokens=20000, clip_eps_low=0.3, clip_eps_high=0.1,
                              rewards=["boxed_answer", "bleu", "judge"], reward_weights=[1.0])
    keys = [k for k, _ in rl_config_errors(cfg)]
    assert keys == ["rl.group_size", "rl.top_p", "rl.mini_batch_size", "rl.max_new_tokens",
                    "rl.clip_eps_high", "rl.rewards", "rl.reward_weights", "rl.judge_checkpoint"]
    with pytest.raises(ConfigError, match="8 configuration problems") as info:
        check_rl_config(cfg)
    message = str(info.value)
    assert "rl.group_size=1 must be >= 2" in message
    assert "'bleu'" in message and "known: boxed_answer" in message


def test_a_single_problem_is_one_line():
    with pytest.raises(ConfigError, match=r"^rl.mini_batch_size=4096 must divide the 2048"):
        check_rl_config(RLConfig(mini_batch_size=4096))


def test_the_yaml_loader_builds_the_rl_section():
    """The lead wires RLConfig into the run config as a section: its field types must be ones
    the loader coerces (Literal, Optional, lists from YAML or comma-separated overrides)."""
    from megatron_sail.config.loader import _build

    errors = []
    cfg = _build(RLConfig, {"algorithm": "gspo", "group_size": "4", "rewards": "boxed_answer",
                            "reward_weights": [1], "top_k": "none", "clip_eps_high": 0.001},
                 RLConfig(), "rl.", {}, errors)
    assert errors == []
    assert (cfg.algorithm, cfg.group_size, cfg.rewards, cfg.reward_weights, cfg.top_k) == \
        ("gspo", 4, ["boxed_answer"], [1.0], None)
    assert cfg.clip_range() == (3e-4, 1e-3)
    _build(RLConfig, {"algorithm": "ppo", "bogus": 1}, RLConfig(), "rl.", {}, errors)
    assert len(errors) == 2 and "must be one of dapo, gspo, grpo" in errors[0]
