"""Episode metrics from planted scores and update results."""

import pytest
import torch

from megatron_sail.rl.losses import PolicyLoss
from megatron_sail.rl.metrics import episode_metrics
from megatron_sail.rl.rewards import ScoredBatch


def update(clip, kl, ref=None):
    t = torch.tensor
    return PolicyLoss(t(0.0), t(clip), t(kl), None if ref is None else t(ref))


def test_metrics_of_an_episode():
    scored = ScoredBatch(total=[2.0, 1.0, 0.0, 1.0],
                         parts={"boxed_answer": [1.0, 0.0, 0.0, 1.0],
                                "think_format": [1.0, 1.0, 0.0, 0.0]},
                         unscored={"judge": 2})
    m = episode_metrics(scored, [10, 20, 30, 40], groups_kept=1, groups_total=2,
                        updates=[update(0.1, 0.01), update(0.3, 0.03)])
    assert m == pytest.approx({"rl/reward_mean": 1.0, "rl/response_length_mean": 25.0,
                               "rl/groups_kept": 1.0, "rl/groups_kept_fraction": 0.5,
                               "rl/accuracy": 0.5, "rl/format_reward": 0.5,
                               "rl/unscored/judge": 2.0, "rl/clip_fraction": 0.2,
                               "rl/approx_kl": 0.02})


def test_kl_only_with_a_reference_and_accuracy_from_the_judge_without_boxed_answer():
    scored = ScoredBatch(total=[1.0, 0.0], parts={"judge": [1.0, 0.0]})
    m = episode_metrics(scored, [1, 1], 2, 2, [update(0.0, 0.0, 0.5), update(0.0, 0.0, 0.7)])
    assert m["rl/accuracy"] == 0.5 and m["rl/kl"] == pytest.approx(0.6)
    assert "rl/format_reward" not in m
    with pytest.raises(ValueError):
        episode_metrics(scored, [1], 2, 2, [])
