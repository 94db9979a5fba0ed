"""Recipe files: validation (every problem at once), the hand-off each stage gets, `sail recipe
show`, and the chained SLURM scripts `sail recipe submit --dry-run` renders."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megatron_sail.config.loader import parse_override
from megatron_sail.recipe.plan import plan_recipe
from megatron_sail.recipe.schema import RecipeError, load_recipe
from tests.helpers import REPO, TINY
from tests.recipe.harness import command, tiny_recipe

RECIPES = Path(REPO) / "examples" / "recipes"


def _write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def _overrides(plan) -> dict:
    return {".".join(parse_override(o)[0]): parse_override(o)[1] for o in plan.train.overrides}


def test_every_problem_of_a_recipe_is_reported_together(tmp_path):
    path = _write(tmp_path, {"base": TINY, "colour": 1, "stages": [
        {"name": "vit-warmup", "init": "none", "trainable": ["adapter", "eyes"]},
        {"name": "pretraining", "trainable": ["llm"]},
        {"name": "pretrain-basic", "reinit": ["adapter"], "lr": 1},
        {"name": "vit-align"},
        {"name": "soup", "kind": "soup", "source": "sft", "runs": []},
        {"name": "rl-mixed", "kind": "reinforce"},
    ]})
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    for expected in ("unknown key(s) ['colour']",
                     "stage vit-warmup: trainable must be a list of vision, adapter, llm",
                     "unknown stage name 'pretraining'",
                     "stage pretrain-basic: unknown key(s) ['lr']",
                     "stage vit-align comes after pretrain-basic",
                     "stage soup.runs must be a non-empty list",
                     "stage soup: source 'sft' must name an earlier stage",
                     "stage rl-mixed: kind 'reinforce' must be one of train, soup, rl"):
        assert expected in message, message
    assert len(message.splitlines()) == 8


def test_stage_configs_are_validated_up_front_naming_the_stage(tmp_path):
    path = _write(tmp_path, {"base": TINY, "stages": [
        {"name": "vit-warmup", "init": "none", "set": {"optimizer.lrr": 1}},
        {"name": "vit-align", "set": {"train": {"global_batch_size": 3}}},
    ]})
    with pytest.raises(RecipeError) as info:
        plan_recipe(load_recipe(path), tmp_path / "root", world=2)
    message = str(info.value)
    assert message.startswith("stage vit-warmup: ") and "optimizer.lrr" in message.splitlines()[0]
    align = message[message.index("stage vit-align: "):]
    assert "global_batch_size" in align


def test_hand_off_loads_the_previous_output_freezes_and_reinitialises(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path))
    root = tmp_path / "root"
    plans = {p.stage.name: p for p in plan_recipe(recipe, root, world=2)}
    warmup = _overrides(plans["vit-warmup"])
    assert warmup["checkpoint.load"] is None and warmup["model.freeze"] == ["vision", "llm"]
    basic = _overrides(plans["pretrain-basic"])
    assert basic["checkpoint.load"] == str(root / "03-vit-knowledge" / "checkpoints")
    assert basic["checkpoint.reinit"] == ["adapter"] and basic["model.freeze"] == ["vision", "llm"]
    assert plans["pretrain-basic"].train.cfg.checkpoint.reinit == ["adapter"]
    assert _overrides(plans["longcot-sft"])["checkpoint.load"] == str(root / "07-soup" / "checkpoint")
    # the RL stage hands off like a training stage, and runs the RL worker
    rl = plans["rl-reasoning"]
    assert _overrides(rl)["checkpoint.load"] == str(root / "08-longcot-sft" / "checkpoints")
    assert rl.train.worker == "megatron_sail.rl.worker" and rl.train.cfg.rl.algorithm == "dapo"
    assert plans["sft"].train.worker == "megatron_sail.training.worker"
    assert (_overrides(plans["think-fusion-sft"])["checkpoint.load"]
            == str(root / "09-rl-reasoning" / "checkpoints"))
    soup = plans["soup"]
    assert [r.run_dir for r in soup.soup_runs] == [root / "07-soup" / "runs" / "seed-2"]
    rerun = soup.soup_runs[0].cfg
    assert rerun.train.seed == 2 and rerun.checkpoint.load == str(root / "05-pretrain-multitask" / "checkpoints")
    assert soup.soup_inputs == (root / "06-sft" / "checkpoints",
                                root / "07-soup" / "runs" / "seed-2" / "checkpoints")
    assert all(p.run_dir.name[:3] == f"{p.index + 1:02d}-" for p in plans.values())


def test_reinit_needs_loaded_weights_and_names_parts():
    from megatron_sail.config import ConfigError, load_config
    from megatron_sail.config.validation import resolve_layout

    cfg = load_config(TINY, ["checkpoint.reinit=[adapter,eyes]"])
    with pytest.raises(ConfigError) as info:
        resolve_layout(cfg, 1)
    assert "checkpoint.reinit has ['eyes']" in str(info.value)
    assert "without checkpoint.load every part is fresh already" in str(info.value)


def _sail(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def test_show_prints_the_chain(tmp_path):
    proc = _sail("recipe", "show", str(tiny_recipe(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[2:]}
    assert rows["pretrain-basic"][:6] == ["pretrain-basic", "train", "adapter", "vit-knowledge",
                                          "+", "fresh"]
    assert rows["soup"][:4] == ["soup", "soup", "-", "average"]
    assert rows["rl-reasoning"][:4] == ["rl-reasoning", "rl", "(dapo)", "vision,adapter,llm"]
    assert rows["rl-reasoning"][-1] == "records.jsonl"


@pytest.mark.parametrize("name", ["sailvl2-2b", "sailvl2-8b", "sailvl2-a3b", "tiny"])
def test_shipped_recipes_load_and_use_the_stage_names(name):
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    names = [s.name for s in recipe.stages]
    assert names[:5] == ["vit-warmup", "vit-align", "vit-knowledge", "pretrain-basic",
                         "pretrain-multitask"]
    assert names[-5:] == ["soup", "longcot-sft", "rl-reasoning", "think-fusion-sft", "rl-mixed"]
    basic = recipe.stages[names.index("pretrain-basic")]
    assert basic.trainable == ("adapter",) and basic.reinit == ("adapter",)
    assert "optimizer.adalrs.enabled=true" in basic.overrides


@pytest.mark.parametrize("args, message", [
    (["run", "RECIPE", "--out", "ROOT", "--until", "rl-everything"],
     "no stage 'rl-everything' in this recipe"),
    (["run", "RECIPE", "--out", "ROOT", "--nproc-per-node", "0"], "needs a positive integer"),
    (["run", "RECIPE"], "the following arguments are required: --out"),
    (["run", "missing.yaml", "--out", "ROOT"], "recipe file not found"),
    (["status", "ROOT"], "not made by sail recipe run or submit"),
    (["show", "RECIPE", "stages=1"], "override 'stages=1': unknown config key 'stages'"),
    (["run", "RECIPE", "--out", "ROOT", "--only", "sft"], "stage sft starts from"),
    (["submit", "RECIPE", "--gpus-per-node", "0", "--ntasks-per-node", "2"],
     "the following arguments are required: --out"),
])
def test_errors_are_one_line_and_exit_2(tmp_path, args, message):
    recipe = str(tiny_recipe(tmp_path))
    args = [recipe if a == "RECIPE" else str(tmp_path / "root") if a == "ROOT" else a
            for a in args]
    proc = _sail("recipe", *args)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"sail recipe {args[0]}: error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "root").exists()


def test_submit_chains_the_stage_jobs_with_afterok(tmp_path):
    proc = _sail("recipe", "submit", str(tiny_recipe(tmp_path)), "--out", str(tmp_path / "root"),
                 "--until", "think-fusion-sft", "--gpus-per-node", "0", "--ntasks-per-node", "2",
                 "--dry-run")
    assert proc.returncode == 0, proc.stderr
    jobs = re.findall(r"^#### stage job (\S+): (\S+) \((.*)\)$", proc.stdout, re.M)
    assert [(label, dep) for label, _, dep in jobs] == [
        ("vit-warmup", "no dependency"), ("vit-align", "afterok:<vit-warmup>"),
        ("vit-knowledge", "afterok:<vit-align>"), ("pretrain-basic", "afterok:<vit-knowledge>"),
        ("pretrain-multitask", "afterok:<pretrain-basic>"), ("sft", "afterok:<pretrain-multitask>"),
        ("soup/seed-2", "afterok:<sft>"), ("soup", "afterok:<soup/seed-2>"),
        ("longcot-sft", "afterok:<soup>"), ("rl-reasoning", "afterok:<longcot-sft>"),
        ("think-fusion-sft", "afterok:<rl-reasoning>")]
    scripts = proc.stdout.split("#### stage job ")[1:]
    assert all("#SBATCH --requeue" in s and "#SBATCH --signal=B:USR1@" in s for s in scripts)
    assert "#SBATCH --dependency=afterok:<vit-warmup>" in scripts[1]
    assert "#SBATCH --kill-on-invalid-dep=yes" in scripts[1]
    soup = scripts[7]
    assert "#SBATCH --ntasks-per-node=1" in soup
    assert f"recipe run {tmp_path / 'tiny.yaml'} --out {tmp_path / 'root'} --only soup" in soup
    assert 'megatron_sail.cli rl "$RUN_DIR/slurm/config.yaml"' in scripts[9]  # sail rl
    assert 'rl "$RUN_DIR/slurm/config.yaml"' not in scripts[8]
    assert not (tmp_path / "root").exists()  # a dry run writes nothing


def test_status_tells_running_from_interrupted_and_not_started(tmp_path):
    import json
    import os
    import socket

    from megatron_sail.recipe.report import status
    from megatron_sail.recipe.runner import RUNNER_FILE

    root = tmp_path / "root"
    plans = plan_recipe(load_recipe(tiny_recipe(tmp_path)), root, world=2)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a process id that has ended
    for stage, pid in (("01-vit-warmup", child.pid), ("02-vit-align", os.getpid())):
        (root / stage).mkdir(parents=True)
        (root / stage / RUNNER_FILE).write_text(
            json.dumps({"pid": pid, "host": socket.gethostname()}))
    (root / "02-vit-align" / "metrics.jsonl").write_text(
        json.dumps({"iteration": 3, "loss": 2.5}) + "\n")
    rows = {line.split()[0]: line for line in status(plans).splitlines()[2:]}
    assert "interrupted (rerun to resume)" in rows["01-vit-warmup"]
    assert "running" in rows["02-vit-align"] and "3/8" in rows["02-vit-align"]
    assert "2.5000" in rows["02-vit-align"]
    assert "not started" in rows["03-vit-knowledge"]
    assert "not souped yet" in rows["07-soup"] and "not started" in rows["07-soup/seed-2"]
