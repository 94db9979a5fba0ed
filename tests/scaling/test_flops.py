"""FLOPs accounting against an independent count written per token from parameter counts
(the ``6 N D`` view), with the architecture numbers typed in from the published tables."""

from __future__ import annotations

import json

import pytest

from megatron_sail import cli
from megatron_sail.config import load_config
from megatron_sail.costs.flops import (
    Conventions, batch_flops, mfu, sample_flops, train_flops_per_iteration,
)
from megatron_sail.costs.hardware import peak_tflops
from megatron_sail.costs.shapes import PUBLISHED, shape_from_preset
from tests.helpers import TINY

# SAIL-ViT-Huge and the Qwen3 backbones (notes/sailvl2-architecture.md).
VIT = dict(layers=24, hidden=1536, ffn=4096, patch=14, patches=1024)
LLMS = {
    "sailvl2-2b": dict(layers=28, hidden=2048, heads=16, kv=8, hd=128, ffn=6144),
    "sailvl2-8b": dict(layers=36, hidden=4096, heads=32, kv=8, hd=128, ffn=12288),
    "sailvl2-a3b": dict(layers=48, hidden=2048, heads=32, kv=4, hd=128, experts=128, topk=8,
                        expert_ffn=768),
}
VOCAB = 151936


def independent_train_flops(name: str, seq: int, tiles: int) -> dict[str, float]:
    """Forward = 2 x (weights a token touches) x tokens + the attention score/value products;
    training = 3 x forward, except that the patch conv never computes an input gradient."""
    v, m = VIT, LLMS[name]
    vit_weights_per_patch = v["layers"] * (4 * v["hidden"] ** 2 + 3 * v["hidden"] * v["ffn"])
    conv_per_patch = 3 * v["patch"] ** 2 * v["hidden"]
    patches = v["patches"] * tiles
    vit_attention = v["layers"] * 4 * v["patches"] ** 2 * v["hidden"] * tiles
    conv = 2 * conv_per_patch * patches
    vision = 3 * (2 * vit_weights_per_patch * patches + vit_attention + conv) - conv

    merged_tokens = patches // 4
    adapter = 3 * 2 * merged_tokens * (4 * v["hidden"] * m["hidden"] + m["hidden"] ** 2)

    attention_weights = m["hidden"] * m["hd"] * (2 * m["heads"] + 2 * m["kv"])
    if "experts" in m:
        mlp_weights = m["hidden"] * m["experts"] + m["topk"] * 3 * m["hidden"] * m["expert_ffn"]
    else:
        mlp_weights = 3 * m["hidden"] * m["ffn"]
    per_token = m["layers"] * (attention_weights + mlp_weights) + m["hidden"] * VOCAB
    causal_scores = m["layers"] * 2 * (seq * seq / 2) * m["heads"] * m["hd"] * 2
    llm = 3 * (2 * per_token * seq + causal_scores)
    return {"vision": vision, "adapter": adapter, "llm": llm, "total": vision + adapter + llm}


@pytest.mark.parametrize("name", list(LLMS))
def test_presets_agree_with_independent_count(name):
    ours = sample_flops(shape_from_preset(name), 8192, 6)
    ref = independent_train_flops(name, 8192, 6)
    for part in ("vision", "adapter", "llm"):
        assert ours.parts[part].total == pytest.approx(ref[part], rel=0.02), part
    assert ours.total == pytest.approx(ref["total"], rel=0.02)


def test_a3b_counts_activated_experts_only():
    a3b = sample_flops(shape_from_preset("sailvl2-a3b"), 4096, 1).parts["llm"].items
    dense_equivalent = 48 * 3 * 2 * 4096 * 2048 * 768 * 128  # all 128 experts
    assert a3b["experts"] == pytest.approx(dense_equivalent * 8 / 128)


def test_published_a3b_matches_the_preset_once_it_exists():
    from megatron_sail.config.presets import PRESETS

    if "sailvl2-a3b" not in PRESETS:
        pytest.skip("the sailvl2-a3b preset is not in this tree yet")
    assert shape_from_preset("sailvl2-a3b") == PUBLISHED["sailvl2-a3b"]


def test_frozen_parts_backward():
    shape = shape_from_preset("sailvl2-2b")
    full = sample_flops(shape, 8192, 6)
    adapter_only = sample_flops(shape, 8192, 6, frozen=("vision", "llm"))
    vision, llm = adapter_only.parts["vision"], adapter_only.parts["llm"]
    assert vision.backward == 0  # first part, frozen: no autograd graph at all
    # frozen LLM after a trainable adapter: input gradients only (weights 1x, attention 2x)
    items = full.parts["llm"].items
    weights = sum(v for k, v in items.items() if k != "attention")
    assert llm.backward == pytest.approx(weights + 2 * items["attention"])
    assert adapter_only.parts["adapter"].total == full.parts["adapter"].total
    # nothing trainable before a frozen ViT + adapter: LLM-only training keeps full LLM cost
    llm_only = sample_flops(shape, 8192, 6, frozen=("vision", "adapter"))
    assert llm_only.parts["adapter"].backward == 0
    assert llm_only.parts["llm"].total == full.parts["llm"].total


def test_causal_convention():
    shape = shape_from_preset("sailvl2-2b")
    half = sample_flops(shape, 8192, 1).parts["llm"].items["attention"]
    full = sample_flops(shape, 8192, 1, conventions=Conventions(causal_halved=False))
    assert full.parts["llm"].items["attention"] == pytest.approx(2 * half)


def test_too_many_tiles_for_the_sequence():
    with pytest.raises(ValueError, match="more than seq_length"):
        sample_flops(shape_from_preset("sailvl2-2b"), 1024, 6)


def test_train_flops_per_iteration_of_the_tiny_config():
    cfg = load_config(TINY, ["model.freeze=vision"])
    shape = shape_from_preset("tiny")
    per_sample = sample_flops(shape, cfg.data.seq_length, 1, ("vision",)).total
    assert shape.tokens_per_tile == 16  # 112 px tiles: 8x8 patches, 2x2 merge
    assert train_flops_per_iteration(cfg) == pytest.approx(cfg.train.global_batch_size * per_sample)


def test_real_data_steps_count_each_packed_sample_at_its_own_length():
    """A packed row of samples attends within each sample: its FLOPs are the sum of the
    samples' own, less than one sample of the row's length (causal attention is quadratic)."""
    shape = shape_from_preset("sailvl2-2b")
    samples = [(1500, 512), (2000, 0), (4000, 1536)]
    own = sum(sample_flops(shape, n, v / 256).total for n, v in samples)
    assert batch_flops(shape, samples) == pytest.approx(own)
    assert batch_flops(shape, samples + samples[:1]) == pytest.approx(
        own + sample_flops(shape, 1500, 2).total)
    row = sample_flops(shape, 7500, 8).total
    assert own < row
    # the difference is exactly the cross-sample attention a packed row does not compute
    diff = row - own
    llm = shape.llm
    cross = 3 * llm.num_layers * 2 * 2 * llm.q_dim * (7500 ** 2 - sum(n * n for n, _ in samples)) / 2
    assert diff == pytest.approx(cross, rel=1e-9)


def test_mfu_and_peaks():
    assert peak_tflops("h100", "bf16") == pytest.approx(989.4)
    assert peak_tflops("h200", "fp8") == pytest.approx(1978.9)
    assert peak_tflops("h100", "bf16", override=500.0) == 500.0
    with pytest.raises(ValueError, match="unknown hardware.gpu"):
        peak_tflops("a100")
    # 8 GPUs at 989.4 TFLOP/s for 2 s = 15830 TFLOP; half of it done
    assert mfu(0.5 * 8 * 989.4e12 * 2.0, 2.0, 8, 989.4) == pytest.approx(0.5)


def test_vision_blocks_mirror_the_model():
    from megatron_sail.config.presets import VisionArch
    from megatron_sail.models.vision import num_vision_blocks
    from megatron_sail.costs.shapes import vision_blocks

    for k in (-1, 0, 5, -2, -24):
        arch = VisionArch(select_layer=k)
        assert vision_blocks(arch) == num_vision_blocks(arch)[0]


def test_cli_json(capsys):
    code = cli.main(["flops", "--preset", "sailvl2-8b", "--seq-length", "8192", "--tiles", "6",
                     "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["total"] == pytest.approx(independent_train_flops("sailvl2-8b", 8192, 6)["total"],
                                         rel=0.02)
    assert {"vision", "adapter", "llm", "total", "conventions"} <= set(out)
    assert out["conventions"]["causal_attention"].startswith("halved")
    assert out["visual_tokens"] == 256 * 6


def test_cli_table_and_freeze(capsys):
    code = cli.main(["flops", "--preset", "sailvl2-2b", "--tiles", "2", "--freeze", "vision"])
    out = capsys.readouterr().out
    assert code == 0 and "vision" in out and "no" in out.splitlines()[2]
    assert cli.main(["flops", "--preset", "sailvl2-2b", "--freeze", "eyes"]) == 2


def test_throughput_meter_for_the_trainer():
    from megatron_sail.training.throughput import ThroughputMeter

    cfg = load_config(TINY, ["train.precision=bf16"])
    flops = train_flops_per_iteration(cfg)
    cpu = ThroughputMeter.for_run(cfg, world_size=2, on_gpu=False)
    assert cpu.metrics(0.5) == {"model_tflops_per_device": pytest.approx(flops / 0.5 / 2 / 1e12)}
    gpu = ThroughputMeter.for_run(cfg, world_size=8, on_gpu=True, gpu="h200")
    assert gpu.peak_tflops == pytest.approx(989.4)
    assert gpu.metrics(2.0)["mfu"] == pytest.approx(flops / (2.0 * 8 * 989.4e12))
    stated = ThroughputMeter.for_run(cfg, world_size=1, on_gpu=False, peak_override=1.0)
    assert stated.metrics(1.0)["mfu"] == pytest.approx(flops / 1e12)
