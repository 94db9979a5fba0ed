"""Start-up: a model built for a checkpoint load draws no weights, and the load then sets
every one of them (none keeps the unset memory the build left); the start-up line accounts
for the whole time before the first iteration."""

from __future__ import annotations

import time

import pytest
import torch

from megatron_sail.training.startup import StartupClock


def test_build_for_a_checkpoint_load_skips_the_initialiser(build_tiny, monkeypatch):
    from megatron_sail.models import builder

    def refuse(*args, **kwargs):
        raise AssertionError("initialize_weights called for weights a checkpoint overwrites")

    monkeypatch.setattr(builder, "initialize_weights", refuse)
    with pytest.raises(AssertionError, match="initialize_weights called"):
        build_tiny()  # the default build draws the weights
    from megatron_sail.config import load_config
    from megatron_sail.config.validation import resolve_layout
    from tests.helpers import TINY

    cfg = load_config(TINY, [])
    builder.build_model(cfg, resolve_layout(cfg, 1), 5, initialize=False)


def test_the_load_sets_every_weight_of_an_uninitialised_build(build_tiny, tmp_path):
    from megatron_sail.checkpointing.dist_ckpt import load_checkpoint, save_checkpoint
    from megatron_sail.checkpointing.layout_files import iteration_dir
    from megatron_sail.config import load_config
    from megatron_sail.config.validation import resolve_layout
    from megatron_sail.models.builder import build_model
    from tests.helpers import TINY

    _, _, saved = build_tiny()
    save_checkpoint(tmp_path, 1, [saved], optimizer=None, common={}, marker={"iteration": 1})
    cfg = load_config(TINY, [])
    empty = build_model(cfg, resolve_layout(cfg, 1), 5, initialize=False).chunks[0]
    with torch.no_grad():
        for tensor in empty.state_dict().values():
            if torch.is_tensor(tensor) and tensor.is_floating_point():
                tensor.fill_(float("nan"))  # what unset memory may hold
    load_checkpoint(iteration_dir(tmp_path, 1), [empty], optimizer=None, restore_rng=False)
    expected = saved.state_dict()
    for key, tensor in empty.state_dict().items():
        if torch.is_tensor(tensor):
            assert torch.equal(tensor, expected[key]), key


def test_the_startup_line_accounts_for_all_the_time():
    clock = StartupClock()
    with clock.phase("model build"):
        time.sleep(0.05)
    clock.note("model build", "weights initialised")
    line = clock.line()
    assert line.startswith("start-up ") and " before the first iteration: imports " in line
    assert " s (weights initialised), other " in line
    total = float(line.split()[1])
    parts = [float(p.split(" s")[0].split()[-1]) for p in line.split(": ", 1)[1].split(", ")]
    assert abs(sum(parts) - total) <= 0.05 * len(parts)  # rounding of each part only
