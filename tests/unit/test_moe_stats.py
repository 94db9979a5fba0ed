"""Routing statistics from a planted routing: counts per layer and token kind, imbalance and
entropy (tokens whose kinds and expert choices are known in advance)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from megatron_sail.training.moe_metrics import RoutingStats, load_entropy, max_over_mean

PAD, CTX = 0, 7


@pytest.fixture
def stats(megatron_single_rank):
    return RoutingStats([], num_layers=2, num_experts=4, pad_id=PAD, img_context_id=CTX)


def test_planted_routing_counts(stats):
    tokens = torch.tensor([[5, CTX, CTX, 9, PAD]])  # b=1, s=5: text, visual, visual, text, pad
    stats.set_tokens(tokens)
    assert stats.token_kinds.tolist() == [1, 2, 2, 1, 0]
    # top-2 routing map for the 5 tokens of layer 1 (router.layer_number is 1-based)
    routing = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [0, 1, 1, 0], [1, 0, 0, 1],
                            [1, 1, 0, 0]], dtype=torch.bool)
    with torch.enable_grad():
        stats._hook(SimpleNamespace(layer_number=2), None, (None, routing))
    with torch.no_grad():  # evaluation / first pass of recompute: not counted
        stats._hook(SimpleNamespace(layer_number=2), None, (None, routing))
    out = stats.metrics()
    text = torch.tensor([2.0, 1, 0, 1])  # tokens 0 and 3
    visual = torch.tensor([0.0, 1, 2, 1])  # tokens 1 and 2
    assert out["moe/layer_1/tokens_per_expert"] == (text + visual).int().tolist()
    assert "moe/layer_0/tokens_per_expert" not in out  # no tokens routed there
    assert out["moe/text/max_over_mean_load"] == pytest.approx(2.0)
    assert out["moe/visual/max_over_mean_load"] == pytest.approx(2.0)
    p = torch.tensor([0.0, 1, 2, 1]) / 4
    expected = -sum(float(x) * math.log(float(x)) for x in p if x > 0) / math.log(4)
    assert out["moe/visual/entropy"] == pytest.approx(expected)
    assert out["moe/layer_1/entropy"] == pytest.approx(load_entropy(text + visual))
    assert stats.metrics().get("moe/layer_1/tokens_per_expert") is None  # reset after reading


def test_balance_measures():
    assert max_over_mean(torch.tensor([3.0, 3, 3, 3])) == 1.0
    assert load_entropy(torch.tensor([3.0, 3, 3, 3])) == pytest.approx(1.0)
    assert max_over_mean(torch.tensor([12.0, 0, 0, 0])) == 4.0
    assert load_entropy(torch.tensor([12.0, 0, 0, 0])) == pytest.approx(0.0)
