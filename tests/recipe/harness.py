"""Runs ``sail recipe ...`` the way a user does, in a subprocess, on the tiny recipe."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from tests.helpers import REPO

TINY_RECIPE = Path(REPO) / "examples" / "recipes" / "tiny.yaml"


def tiny_recipe(tmp: Path) -> Path:
    """A copy of the tiny recipe in ``tmp`` (its ``base`` made absolute), for tests to edit."""
    # Paths relative to the recipe (its base; the counting task's data and tokenizer) made
    # absolute, so that the copy finds them.
    rl_dir = (TINY_RECIPE.parent / ".." / "rl").resolve()
    tree = yaml.safe_load(TINY_RECIPE.read_text().replace("../rl/", f"{rl_dir}/"))
    tree["base"] = str((TINY_RECIPE.parent / tree["base"]).resolve())
    path = Path(tmp) / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "megatron_sail.cli", *args]
