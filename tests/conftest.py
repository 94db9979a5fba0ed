"""Shared fixtures. Multi-process tests start real ``sail train`` runs (2 processes, gloo);
in-process tests get a one-rank Megatron world with the CPU compatibility layer."""

from __future__ import annotations

import os

import pytest

from megatron_sail.compat.startup import check_stack
from megatron_sail.distributed.cpu_compat import import_megatron
from tests.helpers import TINY, SailRunner

import_megatron()  # before any test module imports Megatron-Core
check_stack()  # a stack megatron_sail does not support fails here, once, with the reason


# Marks by area (registered in pytest.ini), so that new tests there get them too:
# ``megatron`` - the version-compatibility set (CI's Python 3.12 lane runs exactly these);
# ``slow`` - starts rank processes (training, conversion, SLURM jobs): ``-m "not slow"`` is the
# quick developer run.
_MEGATRON_AREAS = ("distributed", "convert", "compat", "test_reference_parity.py")
_SLOW_AREAS = ("distributed", "slurm", "recipe")
_MEGATRON_FIXTURES = {"megatron_single_rank", "sail", "imported"}
_SLOW_FIXTURES = {"sail", "imported"}
# Features built on the paths the layout, checkpoint, MoE, conversion and parity tests already run
# on both lanes: they run on lane 1 only, which keeps CI within its time budget.
_ONE_LANE_MODULES = {"test_adalrs.py", "test_run_dir_rules.py", "test_soup.py",
                     "test_generate_cli.py", "test_rl_filter_cli.py", "test_curate_model.py",
                     "test_rl_loop.py", "test_train_errors.py", "test_fusions_parallel.py",
                     "test_rl_judge.py"}


def pytest_collection_modifyitems(config, items):
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        area = os.path.relpath(str(item.path), tests_dir).split(os.sep)[0]
        fixtures = set(item.fixturenames)
        if (area in _MEGATRON_AREAS or fixtures & _MEGATRON_FIXTURES) \
                and item.path.name not in _ONE_LANE_MODULES:
            item.add_marker(pytest.mark.megatron)
        if area in _SLOW_AREAS or fixtures & _SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def megatron_single_rank():
    """One-process torch.distributed + Megatron parallel state (TP = PP = 1)."""
    import torch

    from megatron_sail.config import load_config
    from megatron_sail.config.validation import resolve_layout
    from megatron_sail.distributed.runtime import detect_env, init_model_parallel, init_process_group

    if not torch.distributed.is_initialized():
        for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_ID"):
            os.environ.pop(key, None)
        init_process_group(detect_env())
        init_model_parallel(resolve_layout(load_config(None, []), 1), seed=1234)
    yield


@pytest.fixture
def build_tiny(megatron_single_rank):
    """``build_tiny(*overrides)`` -> (cfg, layout, model chunk) on the one-rank world."""
    from megatron_sail.config import load_config
    from megatron_sail.config.validation import resolve_layout
    from megatron_sail.models.builder import build_model

    def build(*overrides, img_context_id: int = 5):
        cfg = load_config(TINY, list(overrides))
        layout = resolve_layout(cfg, 1)
        model = build_model(cfg, layout, img_context_id).chunks[0]
        return cfg, layout, model

    return build


@pytest.fixture(scope="session")
def sail():
    return SailRunner()
