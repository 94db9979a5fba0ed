"""Dependencies point one way: a package of megatron_sail imports only packages of LOWER
layers (and itself); packages of one layer do not import each other. Imports inside functions
count too - a lazy import is still a dependency. Benchmarks and tools never import the tests.

The order, lowest first (README "Layout" shows the same):
  errors               the user-error base class and bounded messages
  utils                atomic outputs, process control
  compat               every touch of non-public Megatron-Core / torch API
  config               typed configs, presets, the layout check
  distributed          process groups, the local launcher, the CPU layer
  costs, data, models, checkpointing
                       FLOP and shape arithmetic; records to batches; the model; the on-disk
                       checkpoint format
  training, convert, launch
                       the loop; HF <-> Megatron conversion and its rank processes; SLURM
  generation           generate() on the Megatron model (runs on conversion's rank processes)
  rl                   the RL loop on training and generation
  recipe, scaling, curation
                       built on training, conversion, generation, rl and launch
  cli                  the `sail` command
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "megatron_sail"

LAYERS = [
    {"errors"},
    {"utils"},
    {"compat"},
    {"config"},
    {"distributed"},
    {"costs", "data", "models", "checkpointing"},
    {"training", "convert", "launch"},
    {"generation"},
    {"rl"},
    {"recipe", "scaling", "curation"},
    {"cli"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def imported_modules(path: Path) -> set[str]:
    """Absolute module names ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def top_package(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def test_every_package_has_a_layer():
    packages = {top_package(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert packages - set(LEVEL) == set(), "place new packages in LAYERS (and the README)"


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = top_package(path)
        if source == "__init__":
            continue
        targets = {m.split(".")[1] for m in imported_modules(path)
                   if m.startswith("megatron_sail.") and m.split(".")[1] in LEVEL}
        for target in sorted(targets - {source}):
            if LEVEL[target] >= LEVEL[source]:
                wrong.append(f"{path.relative_to(REPO)} ({source}, layer {LEVEL[source]}) "
                             f"imports {target} (layer {LEVEL[target]})")
    assert wrong == []


# Inside data/, the stages in pipeline order; the `sail data` commands (check.py, cli.py) on top.
DATA_STAGES = ["records", "media", "encoding", "packing", "loader", "check", "cli"]


def test_data_stages_import_only_earlier_stages():
    data = PACKAGE / "data"
    stage_of = {name: level for level, name in enumerate(DATA_STAGES)}
    wrong = []
    for path in sorted(data.rglob("*.py")):
        source = path.relative_to(data).with_suffix("").parts[0]
        if source == "__init__":
            continue
        assert source in stage_of, f"place {path.relative_to(REPO)} in DATA_STAGES"
        for module in sorted(imported_modules(path)):
            parts = module.split(".")
            if parts[:2] != ["megatron_sail", "data"] or len(parts) < 3 or parts[2] not in stage_of:
                continue
            if stage_of[parts[2]] > stage_of[source]:
                wrong.append(f"{path.relative_to(REPO)} ({source}) imports {module}")
    assert wrong == []


def test_benchmarks_and_tools_never_import_tests():
    wrong = [f"{path.relative_to(REPO)}: {module}"
             for folder in ("benchmarks", "tools") for path in sorted((REPO / folder).rglob("*.py"))
             for module in sorted(imported_modules(path))
             if module == "tests" or module.startswith("tests.")]
    assert wrong == []
