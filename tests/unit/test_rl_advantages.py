"""Group-relative advantages and dynamic sampling on hand-computed groups."""

import math

import pytest

from megatron_sail.rl.advantages import (group_advantages, informative_groups, kept_rollouts,
                                         prompts_to_draw)


def test_advantages_use_the_group_mean_and_sample_std():
    # group [1, 0, 0, 0]: mean 0.25; sample variance (0.5625 + 3 * 0.0625) / 3 = 0.25, std 0.5
    # -> advantages 0.75 / 0.5 = 1.5 and -0.25 / 0.5 = -0.5 (eps 1e-6 shifts the 7th digit)
    # group [1, 1, 0, 0]: mean 0.5, sample std sqrt(1/3) -> +-0.5 * sqrt(3) = +-0.8660254
    adv = group_advantages([1, 0, 0, 0, 1, 1, 0, 0], group_size=4)
    assert adv[:4].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], rel=1e-5)
    h = 0.5 * math.sqrt(3)
    assert adv[4:].tolist() == pytest.approx([h, h, -h, -h], rel=1e-5)


def test_an_all_equal_group_has_zero_advantage_and_is_dropped():
    rewards = [1, 1, 0, 1, 0.5, 0.5]
    assert group_advantages(rewards, 2).tolist()[4:] == [0.0, 0.0]
    assert informative_groups(rewards, 2).tolist() == [False, True, False]
    assert kept_rollouts(rewards, 2) == [2, 3]


def test_rewards_must_fill_whole_groups():
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages([1, 0, 1, 0], 3)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages([1, 0], 1)


def test_prompts_to_draw_follows_the_observed_keep_rate():
    assert prompts_to_draw(needed_groups=8, kept_groups=8, drawn_groups=10) == 0
    # kept 3 of 8 drawn: rate 0.375; 5 missing -> ceil(5 / 0.375) = ceil(13.33) = 14
    assert prompts_to_draw(8, 3, 8) == 14
    # kept 4 of 8: rate 0.5; 4 missing -> exactly 8
    assert prompts_to_draw(8, 4, 8) == 8
    # nothing kept: the floor 0.05 -> 2 missing / 0.05 = 40
    assert prompts_to_draw(2, 0, 16) == 40
    # nothing drawn yet: assume every group is kept
    assert prompts_to_draw(4, 0, 0) == 4
    with pytest.raises(ValueError):
        prompts_to_draw(4, 5, 3)
