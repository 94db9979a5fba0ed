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
