"""The start-up check: a megatron-core outside the supported range is one clear error (the
installed version is faked through the function that reads it); a touch point whose target
changed shape fails the check instead of patching nothing; every compatibility module with a
``check()`` is registered."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import megatron_sail.compat
from megatron_sail import cli
from megatron_sail.compat import moe_alltoall, startup, versions
from megatron_sail.compat.versions import SUPPORTED_MEGATRON_CORE, CompatError
from tests.helpers import TINY

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("found", ["0.16.0", "0.15.3", "0.20.0", "0.20.0rc1", "1.0.0", "dev"])
def test_outside_the_range_is_refused(monkeypatch, found):
    monkeypatch.setattr(versions, "installed_megatron_core", lambda: found)
    monkeypatch.setattr(startup, "_checked", False)
    with pytest.raises(CompatError) as err:
        startup.check_stack()
    assert str(err.value) == (
        f"megatron-core {found} is installed, but megatron_sail supports "
        f"megatron-core{SUPPORTED_MEGATRON_CORE} (install e.g. "
        f"'megatron-core{SUPPORTED_MEGATRON_CORE}')")


@pytest.mark.parametrize("found", ["0.16.1", "0.17.1", "0.18.2", "0.19.2", "0.19.9"])
def test_inside_the_range_is_accepted(monkeypatch, found):
    monkeypatch.setattr(versions, "installed_megatron_core", lambda: found)
    assert versions.check_megatron_core_version() == found


def test_sail_train_refuses_an_unsupported_release_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(versions, "installed_megatron_core", lambda: "0.21.0")
    assert cli.main(["train", str(TINY), "train.train_iters=1"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"sail train: error: megatron-core 0.21.0 is installed, but "
                                f"megatron_sail supports megatron-core{SUPPORTED_MEGATRON_CORE} "
                                f"(install e.g. 'megatron-core{SUPPORTED_MEGATRON_CORE}')"]


def test_setup_declares_the_checked_range():
    setup = (ROOT / "setup.py").read_text()
    assert re.findall(r'"megatron-core([^"]*)"', setup) == [SUPPORTED_MEGATRON_CORE]


def test_the_installed_stack_passes(monkeypatch):
    monkeypatch.setattr(startup, "_checked", False)
    startup.check_stack()


def test_a_changed_target_fails_the_check_loudly(monkeypatch):
    from megatron.core.tensor_parallel import mappings

    def forward(ctx, group, tensor, splits):  # a release that renamed/reordered arguments
        return tensor

    monkeypatch.setattr(mappings._AllToAll, "forward", staticmethod(forward))
    monkeypatch.setattr(startup, "_checked", False)
    with pytest.raises(RuntimeError, match="_AllToAll.forward"):
        moe_alltoall.check()
    with pytest.raises(CompatError, match=r"moe_alltoall: _AllToAll\.forward"):
        startup.check_stack()


def test_a_removed_target_fails_the_check_loudly(monkeypatch):
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    monkeypatch.delattr(filesystem_async, "_results_queue")
    monkeypatch.setattr(startup, "_checked", False)
    with pytest.raises(CompatError, match="dist_ckpt_internals: .*_results_queue is gone"):
        startup.check_stack()


def test_every_module_with_a_check_is_registered():
    with_check = set()
    for info in pkgutil.iter_modules(megatron_sail.compat.__path__):
        name = f"megatron_sail.compat.{info.name}"
        if callable(getattr(importlib.import_module(name), "check", None)):
            with_check.add(name)
    assert with_check == set(startup.CHECKED_MODULES)
