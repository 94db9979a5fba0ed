"""AdaLRS's slope estimate and decision rule on planted loss sequences (no training), its
config checks, and the soup's weight and lineage rules on planted checkpoint descriptions."""

from __future__ import annotations

import json

import pytest

from megatron_sail.config.schema import AdaLRSConfig
from megatron_sail.training.adalrs import KEEP, RAISE, ROLLBACK, SearchRule, loss_slope


def test_slope_of_a_line_is_exact_and_ignores_the_offset():
    assert loss_slope([5.0, 4.5, 4.0, 3.5]) == pytest.approx(-0.5, abs=1e-15)
    assert loss_slope([105.0, 104.5, 104.0, 103.5]) == pytest.approx(-0.5, abs=1e-12)
    assert loss_slope([2.0, 2.0, 2.0]) == 0.0


def test_slope_is_the_least_squares_fit():
    import numpy as np

    losses = [3.1, 2.7, 2.9, 2.2, 2.4, 1.9]
    expected = np.polyfit(np.arange(len(losses)), losses, 1)[0]  # independent reference
    assert loss_slope(losses) == pytest.approx(expected, rel=1e-12)


def _run(rule: SearchRule, slopes: list[float], k: int) -> list[tuple]:
    """Feed windows of k losses whose least-squares slope is each planted slope."""
    out, it, level = [], 0, 10.0
    for slope in slopes:
        for i in range(k):
            it += 1
            decision = rule.observe(it, level + slope * i)
            if decision:
                out.append((it, decision, rule.state.scale))
        level += slope * k
    return out


def test_raises_while_the_descent_steepens_then_rolls_back_and_shrinks():
    cfg = AdaLRSConfig(enabled=True, window=4, alpha=2.0, alpha_decay=0.5, beta=0.5)
    rule = SearchRule(cfg)
    got = _run(rule, [-0.10, -0.20, -0.25, -0.15], 4)
    # window 1: reference -0.10, raise x2; window 2 steeper: raise again by 1 + 1 * 0.5;
    # window 3 steeper: raise by 1.25; window 4 slower: back to 3.0 * beta
    assert [d for _, d, _ in got] == [RAISE, RAISE, RAISE, ROLLBACK]
    assert [s for _, _, s in got] == [2.0, 3.0, 3.75, 1.5]
    assert [i for i, _, _ in got] == [4, 8, 12, 16]
    assert not rule.trial_pending and rule.state.snapshot_iteration is None


def test_snapshot_iteration_is_the_trial_windows_start():
    rule = SearchRule(AdaLRSConfig(enabled=True, window=3))
    _run(rule, [-0.1], 3)
    assert rule.trial_pending and rule.state.snapshot_iteration == 3
    assert rule.state.reference == pytest.approx(-0.1)


def test_equal_slope_is_not_an_improvement():
    rule = SearchRule(AdaLRSConfig(enabled=True, window=3, beta=0.25))
    got = _run(rule, [-0.1, -0.1], 3)
    assert [d for _, d, _ in got] == [RAISE, ROLLBACK] and rule.state.scale == 0.25


def test_bounds_search_end_and_convergence_keep_the_scale():
    capped = SearchRule(AdaLRSConfig(enabled=True, window=2, alpha=4.0, max_scale=4.0))
    # raised to the cap; the steeper trial is confirmed but cannot raise further
    assert [d for _, d, _ in _run(capped, [-0.1, -0.2, -0.3], 2)] == [RAISE, KEEP, KEEP]
    assert capped.state.scale == 4.0 and not capped.trial_pending

    ended = SearchRule(AdaLRSConfig(enabled=True, window=2, search_iters=2))
    assert [d for _, d, _ in _run(ended, [-0.1, -0.2, -0.3], 2)] == [KEEP, KEEP, KEEP]

    floor = SearchRule(AdaLRSConfig(enabled=True, window=2, beta=0.1, min_scale=0.5))
    assert [d for _, d, s in _run(floor, [-0.2, -0.1], 2)] == [RAISE, ROLLBACK]
    assert floor.state.scale == 0.5

    # alpha_n = 1 + (alpha - 1) * decay^n: after enough changes the search stops raising
    done = SearchRule(AdaLRSConfig(enabled=True, window=2, alpha=2.0, alpha_decay=0.1))
    done.state.changes = 4  # alpha_n = 1.0001: within CONVERGED (1e-3) of 1
    assert [d for _, d, _ in _run(done, [-0.1], 2)] == [KEEP]


def test_state_round_trips_and_continues_identically():
    cfg = AdaLRSConfig(enabled=True, window=3)
    slopes = [-0.1, -0.2, -0.15, -0.3, -0.05]
    straight = SearchRule(cfg)
    ref = _run(straight, slopes, 3)
    first = SearchRule(cfg)
    levels = []
    part = _run(first, slopes[:2], 3)
    # stop mid-window: two losses of window 3 seen, then save and restore
    level = 10.0 + (-0.1 - 0.2) * 3
    for i in range(2):
        levels.append(first.observe(7 + i, level - 0.15 * i))
    second = SearchRule.from_state_dict(cfg, json.loads(json.dumps(first.state_dict())))
    rest = [(9, second.observe(9, level - 0.15 * 2), second.state.scale)]
    rest += [(it + 9, d, s) for it, d, s in _run(second, slopes[3:], 3)]
    assert part + rest == [(it, d, s) for it, d, s in ref]
    assert levels == [None, None]


def test_config_problems_are_named():
    from megatron_sail.config import ConfigError, load_config

    load_config(None, ["optimizer.adalrs.enabled=true"])  # the defaults are valid
    with pytest.raises(ConfigError) as err:
        load_config(None, ["optimizer.adalrs.window=1", "optimizer.adalrs.alpha=1.0",
                           "optimizer.adalrs.alpha_decay=0.0", "optimizer.adalrs.beta=1.5",
                           "optimizer.adalrs.min_scale=2.0", "optimizer.adalrs.search_iters=0"])
    for key in ("window=1", "alpha=1", "alpha_decay=0", "beta=1.5", "min_scale=2", "search_iters=0"):
        assert f"optimizer.adalrs.{key}" in str(err.value)


def test_config_key_loads_from_overrides():
    from megatron_sail.config import load_config

    cfg = load_config(None, ["optimizer.adalrs.enabled=true", "optimizer.adalrs.window=7"])
    assert cfg.optimizer.adalrs.enabled and cfg.optimizer.adalrs.window == 7


def test_soup_weights_are_normalised_and_checked():
    from megatron_sail.checkpointing.soup import SoupError, normalised_weights

    assert normalised_weights(None, 4) == [0.25] * 4
    assert normalised_weights([1, 1, 2], 3) == [0.25, 0.25, 0.5]
    for bad in ([1, 2], [1, -1, 1], [0, 0, 0], [1, float("nan"), 1]):
        with pytest.raises(SoupError):
            normalised_weights(bad, 3)


def _planted(tmp_path, name: str, lineage: dict | None):
    d = tmp_path / name
    d.mkdir()
    marker = {"iteration": 1}
    if lineage is not None:
        marker["lineage"] = lineage
    (d / "sail_checkpoint.json").write_text(json.dumps(marker))
    return d


def test_homology_is_decided_from_the_recorded_parent(tmp_path):
    from megatron_sail.checkpointing.layout_files import run_lineage, stamped
    from megatron_sail.checkpointing.soup import lineage_problem

    parent = stamped(run_lineage({"id": "p", "seed": 1}, "arch", None), 10)
    other = stamped(run_lineage({"id": "q", "seed": 1}, "arch", None), 10)
    a = _planted(tmp_path, "a", stamped(run_lineage({"id": "a", "seed": 1}, "arch", parent), 5))
    b = _planted(tmp_path, "b", stamped(run_lineage({"id": "b", "seed": 2}, "arch", parent), 5))
    c = _planted(tmp_path, "c", stamped(run_lineage({"id": "c", "seed": 2}, "arch", other), 5))
    old = _planted(tmp_path, "old", None)
    assert lineage_problem([a, b]) is None
    assert "p@10" in lineage_problem([a, c]) and "q@10" in lineage_problem([a, c])
    assert "no recorded parent" in lineage_problem([old, a])
