"""The ``sail`` command line: argument order, start-up validation errors and usage."""

from __future__ import annotations

import pytest

from tests.helpers import TINY
from megatron_sail import cli


def run(capsys, *args):
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_options_and_overrides_in_any_order():
    assert cli._split_train_args(["a=1", "--nproc-per-node", "2", TINY, "b.c=x"]) == \
        (TINY, ["a=1", "b.c=x"], 2)
    assert cli._split_train_args(["--nproc-per-node=4", TINY]) == (TINY, [], 4)
    with pytest.raises(cli.UsageError, match="positive integer"):
        cli._split_train_args([TINY, "--nproc-per-node", "zero"])
    with pytest.raises(cli.UsageError, match="second config"):
        cli._split_train_args([TINY, TINY])
    with pytest.raises(cli.UsageError, match="unknown option"):
        cli._split_train_args([TINY, "--fast"])


@pytest.mark.parametrize("args, message", [
    (["train.nonsense=1"], "unknown config key 'train.nonsense'"),
    (["parallel.tensor_model_parallel_size=3", "--nproc-per-node", "3"],
     "does not divide the LLM's 4 attention heads"),
    (["parallel.tensor_model_parallel_size=2", "parallel.pipeline_model_parallel_size=2",
      "--nproc-per-node", "2"], "world size 2 is not divisible"),
    (["model.fp8=hybrid", "train.precision=bf16"], "Transformer Engine"),
    (["model.transformer_impl=transformer_engine"], "needs Transformer Engine and a CUDA GPU"),
    (["train.global_batch_size=6", "--nproc-per-node", "2", "train.micro_batch_size=2"],
     "global_batch_size=6 is not divisible"),
    (["model.freeze=vision,eyes"], "model.freeze has ['eyes']"),
])
def test_startup_errors_are_one_clear_message(capsys, args, message):
    code, out, err = run(capsys, "train", TINY, *args)
    assert code == 2
    assert err.startswith("sail train: error:") and message in err
    assert "Traceback" not in err


def test_missing_config_file(capsys):
    code, _, err = run(capsys, "train", "no/such.yaml")
    assert code == 2 and "config file not found: no/such.yaml" in err


def test_usage(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "sail train CONFIG.yaml" in out
    code, _, err = run(capsys, "frobnicate")
    assert code == 2 and "sail train" in err


@pytest.mark.parametrize("command", [
    "train", "plot", "convert", "convert import-hf", "convert export-hf", "convert init-from",
    "convert verify", "forward", "slurm", "slurm submit", "slurm sweep", "slurm status", "flops",
    "plan", "scaling", "scaling sweep", "scaling fit", "data", "data check", "data prepare",
    "rl", "rl filter", "curate", "slurm curate"])
def test_every_command_answers_help(capsys, command):
    try:
        code = cli.main([*command.split(), "--help"])
    except SystemExit as exc:   # argparse's --help
        code = exc.code
    out = capsys.readouterr().out
    assert code == 0 and ("usage" in out.lower() or f"sail {command}" in out), out


def test_top_level_help_lists_every_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in cli.COMMANDS:
        assert f"sail {command} " in out, command


@pytest.mark.parametrize("args, message", [
    (["plot", "/nonexistent/run"], "/nonexistent/run/metrics.jsonl: no metrics"),
    (["plan", "--preset", "tiny", "--gpus", "1", "--micro-batch", "0"],
     "--micro-batch must be > 0, got 0"),
    (["flops", "--preset", "tiny", "--seq-length", "64", "--tiles", "-3"],
     "--tiles must be > 0, got -3.0"),
    (["train", TINY, "--nproc-per-node", "x" * 5000], "got 'xxxx"),
    (["train", TINY, "train.global_batch_size=16000000"],   # 2.2 TiB of synthetic samples
     "train.global_batch_size=16000000: a step builds 16000000 samples"),
])
def test_bad_input_is_one_bounded_line(capsys, args, message):
    code, _, err = run(capsys, *args)
    assert code == 2 and err.startswith(f"sail {args[0]}: error: ") and message in err
    assert len(err.splitlines()) == 1 and len(err) < 400 and "Traceback" not in err


def test_an_empty_run_directory_cannot_be_plotted(capsys, tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    code, _, err = run(capsys, "plot", str(tmp_path))
    assert code == 2 and "no iteration logged yet" in err
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1, "loss": 2.0, "lr": 0.1}\nnot json\n')
    code, _, err = run(capsys, "plot", str(tmp_path))
    assert code == 2 and f"{tmp_path}/metrics.jsonl:2: not a JSON line" in err
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 1, "loss": 2.0, "lr": 0.1}\n')
    code, _, err = run(capsys, "plot", str(tmp_path), "--out", str(tmp_path / "no/such/dir.png"))
    assert code == 2 and "cannot write the plot" in err


def test_ctrl_c_is_one_line_and_130(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "plot", interrupted)
    code, _, err = run(capsys, "plot", "x")
    assert code == 130 and err == "sail plot: interrupted\n"


def test_only_rank_0_reports(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    code, _, err = run(capsys, "train", TINY, "optimizer.lr=-1")
    assert code == 2 and err == ""
    monkeypatch.setenv("RANK", "0")
    code, _, err = run(capsys, "train", TINY, "optimizer.lr=-1")
    assert code == 2 and "optimizer.lr=-1.0 must be >= 0" in err


def test_alias_bomb_config_is_refused_by_sail_train(capsys, tmp_path):
    from tests.unit.test_config import ALIAS_BOMB

    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB)
    code, _, err = run(capsys, "train", str(path))
    assert code == 2 and err == (f"sail train: error: {path}: more than 100000 YAML nodes once "
                                 "aliases are expanded (an alias bomb?)\n")
