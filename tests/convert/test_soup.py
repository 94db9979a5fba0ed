"""``sail soup`` on real training runs: two SFT runs of one parent (different seeds, saved at
different layouts) souped with equal weights equal the element-wise mean of their exported
tensors; other parents are refused unless --force, other architectures always; the soup
loads in a new run and exports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_sail.convert.exporter import export_checkpoint
from megatron_sail.convert.safetensors_io import SafetensorsDir
from tests.helpers import REPO

SHORT = ["checkpoint.save_interval=null", "run.tensorboard=false"]


def soup(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megatron_sail.cli", "soup", *map(str, args)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)


def marker(ckpt: Path) -> dict:
    from megatron_sail.checkpointing.layout_files import read_marker, resolve_checkpoint

    return read_marker(resolve_checkpoint(ckpt))


@pytest.fixture(scope="module")
def runs(sail, tmp_path_factory):
    root = tmp_path_factory.mktemp("soup")
    sail.train(root / "parent", "train.train_iters=2", *SHORT, nproc=1)
    parent = root / "parent" / "checkpoints"
    sail.train(root / "a", "train.train_iters=2", "train.seed=1", f"checkpoint.load={parent}",
               *SHORT, nproc=1)
    sail.train(root / "b", "train.train_iters=2", "train.seed=2", f"checkpoint.load={parent}",
               "parallel.tensor_model_parallel_size=2", *SHORT, nproc=2)
    # a grandchild: same architecture, another parent
    sail.train(root / "c", "train.train_iters=1", f"checkpoint.load={root / 'a' / 'checkpoints'}",
               *SHORT, nproc=1)
    sail.train(root / "arch", "train.train_iters=1", "model.llm.num_layers=2", *SHORT, nproc=1)
    return {name: root / name / "checkpoints" for name in ("parent", "a", "b", "c", "arch")} | {
        "root": root}


@pytest.fixture(scope="module")
def equal_soup(runs):
    out = runs["root"] / "soup_ab"
    proc = soup(runs["a"], runs["b"], "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


def _exported(ckpt: Path, out: Path) -> SafetensorsDir:
    export_checkpoint(ckpt, out, progress=False)
    return SafetensorsDir(out)


def test_runs_record_their_lineage(runs):
    parent, a, b = marker(runs["parent"]), marker(runs["a"]), marker(runs["b"])
    assert parent["lineage"]["parent"] is None  # from scratch: its own identity only
    assert parent["lineage"]["run"]["seed"] == 1234
    assert a["lineage"]["parent"] == parent["lineage"] == b["lineage"]["parent"]
    assert a["lineage"]["arch"] == b["lineage"]["arch"] != marker(runs["arch"])["lineage"]["arch"]
    assert marker(runs["c"])["lineage"]["parent"]["parent"] == parent["lineage"]  # recursive


def test_equal_soup_is_the_mean_of_the_exported_tensors(runs, equal_soup, tmp_path):
    a = _exported(runs["a"], tmp_path / "a")
    b = _exported(runs["b"], tmp_path / "b")
    s = _exported(equal_soup, tmp_path / "soup")
    assert a.names == s.names
    assert any(not torch.equal(a.read(n), b.read(n)) for n in a.names)
    for name in a.names:
        mean = (a.read(name).float() + b.read(name).float()) / 2
        torch.testing.assert_close(s.read(name).float(), mean, rtol=0, atol=1e-6)
        assert s.read(name).dtype == a.read(name).dtype
    lineage = marker(equal_soup)["lineage"]
    assert [x["checkpoint"] for x in lineage["inputs"]] == [
        marker(runs["a"])["lineage"]["checkpoint"], marker(runs["b"])["lineage"]["checkpoint"]]
    assert lineage["parent"] == marker(runs["parent"])["lineage"]


def test_weights_are_normalised(runs, tmp_path):
    from megatron_sail.convert.soup import soup_checkpoints

    out = soup_checkpoints([runs["a"], runs["b"]], tmp_path / "w", weights=[1.0, 3.0])
    a = _exported(runs["a"], tmp_path / "ea")
    b = _exported(runs["b"], tmp_path / "eb")
    s = _exported(out, tmp_path / "es")
    for name in a.names:
        want = 0.25 * a.read(name).float() + 0.75 * b.read(name).float()
        torch.testing.assert_close(s.read(name).float(), want, rtol=0, atol=1e-6)


def test_another_parent_is_refused_unless_forced(runs):
    out = runs["root"] / "soup_ac"
    proc = soup(runs["a"], runs["c"], "--out", out)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.startswith("sail soup: error: not homologous") and "--force" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    forced = soup(runs["a"], runs["c"], "--out", out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert marker(out)["lineage"]["run"]["forced"] is True


def test_another_architecture_is_refused_even_when_forced(runs):
    from megatron_sail.checkpointing.soup import SoupError
    from megatron_sail.convert.soup import soup_checkpoints

    out = runs["root"] / "soup_arch"
    for extra in ([], ["--force"]):
        proc = soup(runs["a"], runs["arch"], "--out", out, *extra)
        assert proc.returncode == 2 and not out.exists()
        assert proc.stderr.startswith("sail soup: error:")
        assert "another architecture" in proc.stderr and "model.llm.num_layers" in proc.stderr
    with pytest.raises(SoupError):
        soup_checkpoints([runs["a"], runs["arch"]], out, force=True)


def test_bad_requests_are_one_line_errors(runs, tmp_path):
    for args in ([runs["a"], "--out", tmp_path / "x"],
                 [runs["a"], runs["b"], "--out", tmp_path / "x", "--weights", "1,x"],
                 [runs["a"], runs["b"], "--out", tmp_path / "x", "--weights", "1"],
                 [runs["a"], tmp_path / "missing", "--out", tmp_path / "x"],
                 [runs["a"], runs["b"], "--out", runs["root"]]):
        proc = soup(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("sail soup: error:") and "Traceback" not in proc.stderr


def test_soup_starts_a_new_run_that_exports(sail, runs, equal_soup, tmp_path):
    sail.train(tmp_path / "next", "train.train_iters=1", f"checkpoint.load={equal_soup}",
               *SHORT, nproc=1)
    lineage = marker(tmp_path / "next" / "checkpoints")["lineage"]
    assert lineage["parent"]["checkpoint"] == marker(equal_soup)["lineage"]["checkpoint"]
    assert _exported(tmp_path / "next" / "checkpoints", tmp_path / "next_hf").names


def test_sail_forward_takes_the_soup(equal_soup, tmp_path):
    from safetensors.torch import load_file, save_file

    # text only: no <IMG_CONTEXT> (id 5) without pixel_values
    save_file({"input_ids": torch.arange(10, 18).unsqueeze(0)}, str(tmp_path / "in.safetensors"))
    proc = subprocess.run([sys.executable, "-m", "megatron_sail.cli", "forward", "--ckpt",
                           str(equal_soup), "--inputs", str(tmp_path / "in.safetensors"),
                           "--out", str(tmp_path / "out.safetensors"),
                           "--img-context-token-id", "5"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    logits = load_file(str(tmp_path / "out.safetensors"))["logits"]
    assert logits.shape[:2] == (1, 8) and torch.isfinite(logits).all()


def test_moe_soup_of_runs_saved_at_different_expert_parallelism(sail, tmp_path):
    """Experts are stacked per layer in the checkpoint: each is averaged with its namesake,
    whether its run kept all experts on one rank (EP=1) or split them (EP=2)."""
    moe = ["model.preset=tiny-moe", "train.train_iters=1", *SHORT]
    sail.train(tmp_path / "parent", *moe, nproc=1)
    load = f"checkpoint.load={tmp_path / 'parent' / 'checkpoints'}"
    sail.train(tmp_path / "a", *moe, load, "train.seed=1", nproc=1)
    sail.train(tmp_path / "b", *moe, load, "train.seed=2", "parallel.expert_model_parallel_size=2",
               nproc=2)
    proc = soup(tmp_path / "a" / "checkpoints", tmp_path / "b" / "checkpoints",
                "--out", tmp_path / "soup")
    assert proc.returncode == 0, proc.stderr
    a = _exported(tmp_path / "a" / "checkpoints", tmp_path / "ea")
    b = _exported(tmp_path / "b" / "checkpoints", tmp_path / "eb")
    s = _exported(tmp_path / "soup", tmp_path / "es")
    experts = [n for n in a.names if ".mlp.experts." in n]
    assert experts and any(not torch.equal(a.read(n), b.read(n)) for n in experts)
    for name in a.names:
        mean = (a.read(name).float() + b.read(name).float()) / 2
        torch.testing.assert_close(s.read(name).float(), mean, rtol=0, atol=1e-6)
