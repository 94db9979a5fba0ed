"""Power-law fits: synthetic laws are recovered; a real sweep of tiny runs is fitted and plotted
with compute from the FLOPs accounting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from megatron_sail import cli
from megatron_sail.config import config_from_dict
from megatron_sail.scaling.fit import fit_power_law, fit_study, lower_envelope
from megatron_sail.costs.flops import train_flops_per_iteration
from megatron_sail.scaling.runs import RunPoint
from tests.helpers import TINY


def test_recovers_a_synthetic_exponent_within_2_percent():
    rng = np.random.default_rng(7)
    compute = np.geomspace(1e15, 1e21, 30)
    loss = 6.0 * compute ** -0.05 * np.exp(rng.normal(0, 0.005, compute.size))
    law = fit_power_law(loss, C=compute)
    assert law.exponents[0] == pytest.approx(0.05, rel=0.02)
    assert 0 < law.exponent_stderr[0] < 0.002
    assert law.k == pytest.approx(6.0, rel=0.1)


def test_recovers_parameter_and_token_exponents():
    rng = np.random.default_rng(3)
    n, d = np.meshgrid(np.geomspace(1e6, 1e9, 4), np.geomspace(1e8, 1e11, 4))
    n, d = n.ravel(), d.ravel()
    loss = 40 * n ** -0.34 * d ** -0.28 * np.exp(rng.normal(0, 0.003, n.size))
    law = fit_power_law(loss, N=n, D=d)
    assert law.exponents == pytest.approx([0.34, 0.28], rel=0.02)
    # the reported errors are the scatter one would see across noise draws
    assert np.all(law.exponent_stderr < 0.01)


def test_uncertainty_needs_more_points_than_coefficients():
    with pytest.raises(ValueError, match="cannot fit"):
        fit_power_law([1.0, 2.0], C=[1.0, 2.0])
    with pytest.raises(ValueError, match="do not vary independently"):
        fit_power_law([1.0, 2.0, 3.0, 4.0], N=[1, 2, 3, 4], D=[1, 2, 3, 4])


def test_frontier_of_synthetic_curves():
    """Runs whose losses follow one law of compute, and a smaller model that flattens out:
    the frontier keeps the law's points and the fit recovers its exponent."""
    runs = []
    for i, flops in enumerate((1e12, 4e12, 1.6e13)):
        it = np.arange(1, 201)
        loss = 8.0 * (it * flops) ** -0.1
        if i == 0:
            loss = np.maximum(loss, 8.0 * (150 * flops) ** -0.1)  # capacity-limited
        runs.append(RunPoint(f"r{i}", "", 1e6 * 4 ** i, 1000, flops, it.tolist(), loss.tolist(),
                             float(loss[-1]), 200))
    fit = fit_study(runs, skip_fraction=0.1, window=1)
    assert fit.vs_compute.exponents[0] == pytest.approx(0.1, rel=0.02)
    assert lower_envelope(np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0, 4.0])).tolist() == [0, 2]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """Four real runs: two LLM widths x two lengths, run by `sail scaling sweep`."""
    root = tmp_path_factory.mktemp("sweep")
    spec = root / "sweep.yaml"
    spec.write_text(yaml.safe_dump({
        "config": TINY,
        "overrides": {"run.output_dir": str(root / "runs"), "run.tensorboard": False,
                      "train.eval_interval": None, "checkpoint.save_interval": None,
                      "optimizer.lr_warmup_iters": 2},
        "list": [{"model.llm.hidden_size": 32, "model.llm.ffn_hidden_size": 96},
                 {"model.llm.hidden_size": 96, "model.llm.ffn_hidden_size": 256}],
        "grid": {"train.train_iters": [20, 40]},
    }))
    assert cli.main(["scaling", "sweep", str(spec), "--jobs", "2"]) == 0
    return spec, root / "runs"


@pytest.mark.slow
@pytest.mark.megatron  # real tiny training runs
def test_sweep_skips_finished_elements(tiny_sweep, capsys):
    spec, _ = tiny_sweep
    assert cli.main(["scaling", "sweep", str(spec)]) == 0
    assert "4 elements, 4 already finished" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.megatron  # real tiny training runs
def test_fit_and_plot_real_tiny_runs(tiny_sweep, capsys):
    _, runs = tiny_sweep
    out = runs / "fit"
    dirs = sorted(str(p) for p in runs.iterdir() if (p / "metrics.jsonl").is_file())
    assert len(dirs) == 4
    assert cli.main(["scaling", "fit", *dirs, "--out", str(out)]) == 0
    assert "loss vs compute" in capsys.readouterr().out
    result = json.loads((out / "scaling_fit.json").read_text())
    for run in result["runs"]:  # compute is the FLOPs accounting of the run's own config
        stored = (Path(run["run_dir"]) / "config.yaml").read_text()
        cfg = config_from_dict(yaml.safe_load(stored))
        expected = train_flops_per_iteration(cfg) * cfg.train.train_iters
        assert run["compute"] == pytest.approx(expected)
    vs_c = result["loss_vs_compute"]
    assert vs_c["exponents"]["C"] > 0 and 0 < vs_c["exponent_stderr"]["C"] < vs_c["exponents"]["C"]
    vs_nd = result["loss_vs_params_tokens"]
    assert set(vs_nd["exponents"]) == {"N", "D"} and vs_nd["n_points"] == 4
    assert all(np.isfinite(v) for v in vs_nd["exponent_stderr"].values())
    for png in ("loss_vs_compute.png", "loss_vs_params_tokens.png"):
        assert (out / png).stat().st_size > 10_000
    assert "| run | N (params)" in (out / "scaling_fit.md").read_text()
