"""Bad input gives one clear error naming every offending tensor or field, before any rank
process is given work (and none is left running); an interrupted conversion leaves no output
behind."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

from megatron_sail.convert import cli, forward_cli
from megatron_sail.convert.forward import write_inputs
from tests.convert.fixtures import edit_common, save_sharded
from tests.convert.test_roundtrip import load_dir
from tests.helpers import REPO


def broken(release_dir: Path, dest: Path, change) -> Path:
    """A copy of a release whose tensors (dict) and config (dict) ``change`` edits."""
    shutil.copytree(release_dir, dest,
                    ignore=shutil.ignore_patterns("*.safetensors", "*.index.json"))
    tensors = load_dir(release_dir)
    config = json.loads((release_dir / "config.json").read_text())
    change(tensors, config)
    save_sharded(dest, tensors)
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def import_error(capsys, hf: Path, out: Path, *extra) -> str:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    code = cli.main(["import-hf", "--hf", str(hf), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("sail convert import-hf: error:"), err
    assert "Traceback" not in err and not out.exists()
    # the rank processes started ahead of the job are stopped, not left waiting for it
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    return err


def test_missing_unexpected_and_misshapen_tensors_are_listed(capsys, release, tmp_path):
    def change(t, cfg):
        del t["language_model.model.layers.3.mlp.up_proj.weight"]
        del t["vision_model.trunk.blocks.1.attn.qkv.weight"]
        t["vision_model.trunk.blocks.1.attn.qkv.bias"] = torch.zeros(192)
        t["mlp1.1.weight"] = torch.zeros(64, 255)

    err = import_error(capsys, broken(release("fp32"), tmp_path / "hf", change), tmp_path / "out")
    assert "missing tensors (2):" in err
    assert "language_model.model.layers.3.mlp.up_proj.weight" in err
    assert "vision_model.trunk.blocks.1.attn.qkv.weight" in err
    assert "unexpected tensors (1):\n    vision_model.trunk.blocks.1.attn.qkv.bias" in err
    assert "mlp1.1.weight: [64, 255] in the checkpoint, [64, 256] expected" in err


def test_moe_missing_misshapen_and_fused_experts_are_named(capsys, release, tmp_path):
    lm = "language_model.model.layers."

    def change(t, cfg):
        del t[lm + "2.mlp.experts.5.down_proj.weight"]
        t[lm + "1.mlp.experts.3.gate_proj.weight"] = torch.zeros(64, 64)
        del t[lm + "0.mlp.gate.weight"]

    err = import_error(capsys, broken(release("moe"), tmp_path / "a", change), tmp_path / "out")
    assert "missing tensors (2):" in err
    assert lm + "2.mlp.experts.5.down_proj.weight" in err and lm + "0.mlp.gate.weight" in err
    assert lm + "1.mlp.experts.3.gate_proj.weight: [64, 64] in the checkpoint, [48, 64]" in err

    def fused(t, cfg):  # transformers 5's in-memory layout, e.g. a raw state_dict() dump
        names = [f"{lm}0.mlp.experts.{e}.{p}_proj.weight" for e in range(8) for p in ("gate", "up")]
        gate_up = torch.stack([torch.cat([t.pop(names[2 * e]), t.pop(names[2 * e + 1])])
                               for e in range(8)])
        t[lm + "0.mlp.experts.gate_up_proj"] = gate_up

    err = import_error(capsys, broken(release("moe"), tmp_path / "b", fused), tmp_path / "out")
    assert "missing tensors (16):" in err
    assert (lm + "0.mlp.experts.gate_up_proj holds all experts of a layer at once") in err
    assert "save_pretrained" in err

    err = import_error(capsys, release("moe"), tmp_path / "out", "--ep", "3")
    assert "--ep 3" in err and "does not divide the 8 experts" in err

    def no_experts_count(t, cfg):
        del cfg["llm_config"]["num_experts"]

    hf = broken(release("moe"), tmp_path / "c", no_experts_count)
    assert "llm_config.num_local_experts is missing" in import_error(capsys, hf, tmp_path / "out")


def test_config_mismatch_and_unsupported_config(capsys, release, tmp_path):
    def wider(t, cfg):
        cfg["llm_config"]["intermediate_size"] = 192

    err = import_error(capsys, broken(release("fp32"), tmp_path / "a", wider), tmp_path / "out")
    assert "shape mismatches (12):" in err and "mlp.gate_proj.weight: [160, 64]" in err

    def unsupported(t, cfg):
        cfg["ps_version"] = "v1"
        cfg["llm_config"]["model_type"] = "llama"
        cfg["llm_config"]["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0}
        cfg["vision_config"]["qkv_bias"] = True

    hf = broken(release("fp32"), tmp_path / "b", unsupported)
    err = import_error(capsys, hf, tmp_path / "out")
    for text in ("ps_version='v1'", "model_type='llama'", "rope scaling 'yarn'",
                 "vision_config.qkv_bias=True"):
        assert text in err, text

    def unnormalised_moe(t, cfg):
        cfg["llm_config"].update(model_type="qwen3_moe", num_experts=8, num_experts_per_tok=2,
                                 moe_intermediate_size=64, norm_topk_prob=False)

    hf = broken(release("fp32"), tmp_path / "c", unnormalised_moe)
    err = import_error(capsys, hf, tmp_path / "out")
    assert "norm_topk_prob=False is not supported" in err


def test_dtypes(capsys, release, tmp_path):
    def mixed(t, cfg):
        t["mlp1.0.weight"] = t["mlp1.0.weight"].half()
        t["mlp1.0.bias"] = t["mlp1.0.bias"].to(torch.int32)

    hf = broken(release("fp32"), tmp_path / "hf", mixed)
    err = import_error(capsys, hf, tmp_path / "out")
    assert "unsupported dtypes" in err and "mlp1.0.bias: I32" in err

    def half(t, cfg):
        t["mlp1.0.weight"] = t["mlp1.0.weight"].half()

    err = import_error(capsys, broken(release("fp32"), tmp_path / "hf2", half), tmp_path / "out")
    assert "stored as F16 x1, F32 x71; pass --dtype bf16 or --dtype fp32" in err


def test_layout_and_output_errors(capsys, release, tmp_path):
    err = import_error(capsys, release("fp32"), tmp_path / "out", "--tp", "3")
    assert "--tp 3" in err and "does not divide the LLM's 4 attention heads" in err
    err = import_error(capsys, release("fp32"), tmp_path / "out", "--ep", "2")
    assert "expert_model_parallel_size=2" in err
    (tmp_path / "exists").mkdir()
    code = cli.main(["import-hf", "--hf", str(release("fp32")), "--out", str(tmp_path / "exists")])
    assert code == 2 and "already exists" in capsys.readouterr().err
    err = import_error(capsys, tmp_path / "nowhere", tmp_path / "out")
    assert "nowhere/config.json: not found" in err


def test_export_verify_forward_errors(capsys, release, imported, tmp_path):
    code = cli.main(["export-hf", "--ckpt", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    # a checkpoint whose stored config no longer matches its tensors
    ckpt = tmp_path / "ckpt"
    shutil.copytree(imported("fp32"), ckpt)
    edit_common(ckpt / "iter_0000000",
                lambda common: common["sail"]["config"]["model"]["llm"].update(ffn_hidden_size=192))
    code = cli.main(["export-hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "shape mismatches" in err
    assert "linear_fc2.weight: [4, 64, 160] stored" in err
    assert not (tmp_path / "o").exists()
    # verify refuses two different models before running anything
    code = cli.main(["verify", "--hf", str(release("bf16")), "--ckpt", str(ckpt)])
    assert code == 2 and "model.llm.ffn_hidden_size: 160 vs 192" in capsys.readouterr().err
    # bad forward inputs
    inputs = tmp_path / "in.safetensors"
    write_inputs(inputs, torch.full((1, 20), 7), torch.zeros(1, 3, 112, 112))
    code = forward_cli.main(["--ckpt", str(imported("fp32")), "--inputs", str(inputs), "--out",
                             str(tmp_path / "l.safetensors"), "--img-context-token-id", "7"])
    err = capsys.readouterr().err
    assert code == 2 and "1 tiles give 16 visual tokens but input_ids has 20 <IMG_CONTEXT>" in err
    write_inputs(inputs, torch.full((1, 4), 400), None)
    code = forward_cli.main(["--ckpt", str(imported("fp32")), "--inputs", str(inputs), "--out",
                             str(tmp_path / "l.safetensors")])
    assert code == 2 and "input_ids must lie in [0, 300)" in capsys.readouterr().err


def test_interrupted_import_leaves_nothing(release, tmp_path):
    out = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-m", "megatron_sail.cli", "convert", "import-hf",
                             "--hf", str(release("fp32")), "--out", str(out), "--pp", "2"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".ckpt.partial-*/iter_*")):  # the ranks are writing
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    ranks = psutil.Process(proc.pid).children(recursive=True)
    assert ranks
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "interrupted" in output, output
    assert not out.exists() and not list(tmp_path.iterdir()), list(tmp_path.iterdir())
    _, alive = psutil.wait_procs(ranks, timeout=10)
    assert not alive  # no rank process left behind


def test_ranks_stop_before_the_staging_directory_is_removed(release, tmp_path, monkeypatch):
    """An interrupted import stops its ranks first: a rank still writing while the staging
    directory is removed would leave part of it behind."""
    from megatron_sail.convert import importer, procs
    from megatron_sail.utils import atomic
    from megatron_sail.convert.sources import open_release

    alive_at_removal = []
    rmtree = shutil.rmtree

    def recording_rmtree(path, *args, **kwargs):
        alive_at_removal.append([p.poll() is None for p in started._procs])
        rmtree(path, *args, **kwargs)

    def interrupted(self, job, spec):  # Ctrl-C while the ranks work
        raise KeyboardInterrupt

    started = procs.Ranks(1)
    monkeypatch.setattr(atomic.shutil, "rmtree", recording_rmtree)
    monkeypatch.setattr(procs.Ranks, "run", interrupted)
    try:
        importer.write_checkpoint(open_release(release("fp32"), None), tmp_path / "ckpt",
                                  ranks=started)
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the interruption was swallowed")
    assert alive_at_removal[-1] == [False]
    assert list(tmp_path.iterdir()) == []


def test_interrupted_export_leaves_nothing(imported, tmp_path, monkeypatch):
    """Ctrl-C after the first layers were written: the write in flight ends, its file is
    closed, and the staging directory goes with it."""
    from megatron_sail.convert.dcp_reader import DistCheckpointReader

    read, calls, staged = DistCheckpointReader.read, [], []

    def read_then_interrupt(self, requests):
        calls.append(len(requests))
        if len(calls) == 4:
            staged.extend(tmp_path.glob(".hf.partial-*/*.safetensors"))
            raise KeyboardInterrupt
        return read(self, requests)

    monkeypatch.setattr(DistCheckpointReader, "read", read_then_interrupt)
    code = cli.main(["export-hf", "--ckpt", str(imported("fp32")), "--out", str(tmp_path / "hf"),
                     "--max-shard-size", "20KB"])
    assert code == 130 and len(calls) == 4 and staged  # part of the export was on disk
    assert list(tmp_path.iterdir()) == []


def test_index_may_name_only_files_inside_the_release(capsys, release, tmp_path):
    for i, outside in enumerate(["../model-00001-of-00002.safetensors", "/etc/passwd"]):
        hf = tmp_path / f"hf{i}"
        shutil.copytree(release("fp32"), hf)
        index_path = hf / "model.safetensors.index.json"
        index = json.loads(index_path.read_text())
        name = sorted(index["weight_map"])[0]
        index["weight_map"][name] = outside
        index_path.write_text(json.dumps(index))
        code = cli.main(["import-hf", "--hf", str(hf), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and not (tmp_path / "o").exists()
        assert err == (f"sail convert import-hf: error: {index_path}: names files outside {hf} "
                       f"(an index may name only files in it): {name}: {outside!r}\n")


def test_reference_files_never_come_from_outside_it(capsys, release, imported, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for release\n")
    ref = tmp_path / "ref"
    shutil.copytree(release("fp32"), ref)
    (ref / "vocab.json").unlink()
    (ref / "vocab.json").symlink_to(secret)
    code = cli.main(["export-hf", "--ckpt", str(imported("fp32")), "--out", str(tmp_path / "o"),
                     "--reference", str(ref)])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "o").exists()
    assert err == (f"sail convert export-hf: error: {ref / 'vocab.json'}: links to {secret}, "
                   f"outside {ref}; --reference files are copied only from inside it\n")
    # a Hugging Face hub cache snapshot links its files into the repository's blobs/
    snapshot = tmp_path / "models--x--y" / "snapshots" / "abc"
    shutil.copytree(release("fp32"), snapshot)
    blobs = tmp_path / "models--x--y" / "blobs"
    blobs.mkdir()
    (snapshot / "vocab.json").rename(blobs / "1234")
    (snapshot / "vocab.json").symlink_to(Path("..", "..", "blobs", "1234"))
    code = cli.main(["export-hf", "--ckpt", str(imported("fp32")), "--out", str(tmp_path / "o"),
                     "--reference", str(snapshot)])
    assert code == 0
    assert not (tmp_path / "o" / "vocab.json").is_symlink()
    assert (tmp_path / "o" / "vocab.json").read_bytes() == (blobs / "1234").read_bytes()
