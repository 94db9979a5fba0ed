"""The memory planner against real tiny CPU runs: peak live tensor bytes of the real trainer
(model, DDP buffers, distributed optimizer, data, activations) over two training steps."""

from __future__ import annotations

import pytest

from megatron_sail import cli
from megatron_sail.config import load_config
from megatron_sail.scaling.memory import (
    GIB, Parallel, Workload, count_params, estimate, from_config,
)
from megatron_sail.scaling.planner import plan
from megatron_sail.costs.shapes import shape_from_config, shape_from_preset
from tests.helpers import TINY

LONG = ["data.seq_length=256", "train.micro_batch_size=4"]  # activations dominate
SINGLE_RANK = {
    "long": LONG,
    "long_unfused_attention": LONG + ["model.attention=unfused"],
    "long_full_recompute": LONG + ["model.llm_recompute=full", "model.vision_recompute=full"],
    "long_bf16_selective": LONG + ["train.precision=bf16", "model.llm_recompute=selective"],
    "adapter_only": ["model.freeze=vision,llm"],
    "moe": ["model.preset=tiny-moe", "data.seq_length=128"],
}
TWO_RANKS = {
    "tp2_sp": LONG + ["parallel.tensor_model_parallel_size=2"],
    "pp2": ["data.seq_length=256", "parallel.pipeline_model_parallel_size=2"],
}


@pytest.fixture(scope="module")
def tokenizer_override(tmp_path_factory):
    from megatron_sail.data.encoding.tokenizer import train_synthetic_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    train_synthetic_tokenizer(str(path))
    return f"data.tokenizer={path}"


def _compare(cases: dict, nproc: int, tokenizer_override: str) -> list[str]:
    from megatron_sail.scaling.measure import measure

    overrides = [[tokenizer_override, *ovr] for ovr in cases.values()]
    measured = measure(TINY, overrides, nproc=nproc)
    report = []
    for name, ovr, ranks in zip(cases, overrides, measured):
        shape, par, work = from_config(load_config(TINY, ovr), nproc, device="cpu")
        stages = estimate(shape, par, work)
        for m in ranks:
            stage = stages[m.rank // (par.tp * par.dp) if par.pp > 1 else 0]
            ratio = stage.total / m.peak_bytes
            report.append(f"{name} rank {m.rank}: estimate {stage.total / 1e6:.2f} MB, "
                          f"measured {m.peak_bytes / 1e6:.2f} MB, ratio {ratio:.3f}")
            assert 0.8 <= ratio <= 1.2, report[-1]
            # before the first step: weights, the fp32 gradient buffer and, in bf16, the
            # distributed optimizer's fp32 main weights (a third of its state; Adam's moments
            # appear at the first step)
            main_weights = stage.optimizer / 3 if work.precision == "bf16" else 0.0
            expected = stage.params + stage.grads + main_weights
            assert m.setup_bytes == pytest.approx(expected, rel=0.05), name
    return report


@pytest.mark.slow
@pytest.mark.megatron  # measured in real training processes
def test_estimates_within_20_percent_of_single_rank_runs(tokenizer_override):
    print("\n".join(_compare(SINGLE_RANK, 1, tokenizer_override)))


@pytest.mark.slow
@pytest.mark.megatron  # measured in real training processes
def test_estimates_within_20_percent_with_tp_and_pp(tokenizer_override):
    print("\n".join(_compare(TWO_RANKS, 2, tokenizer_override)))


def test_live_tensor_bytes_counts_storages_once_until_freed():
    import torch

    from megatron_sail.scaling.live_memory import LiveTensorBytes

    with LiveTensorBytes() as live:
        a = torch.zeros(1000)  # 4000 bytes
        view = a.view(10, 100)  # same storage: not counted again
        b = a + 1  # 4000 more
        assert live.live == 8000
        del b
        assert live.live == 4000 and live.peak == 8000
        del a, view
        assert live.live == 0


@pytest.mark.parametrize("overrides", [
    ("model.llm.hidden_size=48", "model.llm.ffn_hidden_size=96"),
    ("model.preset=tiny-moe",),
    ("model.llm.tie_word_embeddings=false", "model.vision.select_layer=0", "data.image_size=56"),
])
def test_parameter_counts_match_the_built_model(build_tiny, overrides):
    cfg, _, model = build_tiny(*overrides)
    counted = count_params(shape_from_config(cfg))
    assert sum(p.numel() for p in model.parameters()) == sum(counted.values())
    assert sum(p.numel() for p in model.vision.parameters()) == counted["vision"]
    assert sum(p.numel() for p in model.adapter.parameters()) == counted["adapter"]


def test_published_parameter_totals():
    """Parameter totals of the model table (vision 0.6-0.7B; LLM 2.0B / 8.2B / 30.5B)."""
    for name, llm_total in (("sailvl2-2b", 2.03e9), ("sailvl2-8b", 8.19e9),
                            ("sailvl2-a3b", 30.53e9)):
        c = count_params(shape_from_preset(name))
        assert c["llm_layers"] + c["embeddings"] == pytest.approx(llm_total, rel=0.01), name
        assert c["vision"] == pytest.approx(0.68e9, rel=0.02)


def test_sharding_rules():
    shape = shape_from_preset("sailvl2-8b")
    work = Workload(seq_length=8192, tiles=6)
    base = estimate(shape, Parallel(tp=1, pp=1, dp=8), work)[0]
    tp4 = estimate(shape, Parallel(tp=4, pp=1, dp=2), work)[0]
    no_dist = estimate(shape, Parallel(tp=1, pp=1, dp=8, distributed_optimizer=False), work)[0]
    assert base.optimizer == pytest.approx(no_dist.optimizer / 8)
    assert base.grads == pytest.approx(2 * base.params)  # fp32 grads of bf16 weights
    assert tp4.activations < base.activations / 3  # sequence parallel shards everything
    full = estimate(shape, Parallel(tp=1, pp=1, dp=8, llm_recompute="full",
                                    vision_recompute="full"), work)[0]
    assert full.activations < base.activations / 8  # layer inputs only (one layer re-run apart)
    # 1F1B: stage 0 holds pp micro-batches, the last stage one, and owns the logits
    stages = estimate(shape, Parallel(tp=1, pp=4, dp=2, first_stage_llm_layers=6), work)
    assert [s.detail["microbatches_in_flight"] for s in stages] == [4, 3, 2, 1]
    assert stages[-1].extras > stages[1].extras


def test_plan_ranks_feasible_layouts():
    shape = shape_from_preset("sailvl2-8b")
    plans = plan(shape, 64, 80.0, Workload(seq_length=8192, tiles=6))
    feasible = [p for p in plans if p.fits]
    assert feasible and plans[: len(feasible)] == feasible  # feasible ones first
    assert all(p.peak.total <= 76 * GIB for p in feasible)
    times = [p.relative_time for p in feasible]
    assert times == sorted(times)
    one_gpu_layout = [p for p in plans if p.par.tp == p.par.pp == 1 and p.par.llm_recompute is None]
    assert not one_gpu_layout[0].fits  # 8B unsharded at 8192 tokens does not fit 80 GB


def test_plan_cli(capsys):
    code = cli.main(["plan", "--preset", "sailvl2-8b", "--gpus", "64", "--gpu-mem", "80",
                     "--tiles", "6", "--top", "5"])
    out = capsys.readouterr().out
    assert code == 0 and "layouts fit" in out
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 5 and all(" yes " in r for r in rows)
    code = cli.main(["plan", "--preset", "sailvl2-a3b", "--gpus", "16", "--json"])
    assert code == 0 and '"ep"' in capsys.readouterr().out
