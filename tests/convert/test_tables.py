"""Mapping tables and config translation against ground truth: the real SAIL-VL2-2B release
index and config, and transformers' own Aimv2VisionModel / Qwen3ForCausalLM state dicts."""

from __future__ import annotations

import json
import math

import pytest

from megatron_sail.config import load_config
from megatron_sail.convert import hf_config
from megatron_sail.convert.tables import qwen3, qwen3_dense, sail_vit, sailvl_release
from tests.convert.fixtures import LLM, RELEASE, VIT


def test_release_config_gives_the_2b_preset_and_consumes_every_released_name():
    cfg = json.loads((RELEASE / "config.json").read_text())
    model = hf_config.release_model(cfg, has_lm_head=True)
    assert model.preset == "sailvl2-2b"  # shapes derived from config.json equal the preset
    assert model.llm.tie_word_embeddings is False  # the stored lm_head is used untied
    assert hf_config.img_context_id(RELEASE, model.llm.vocab_size) == 151671

    index = json.loads((RELEASE / "model.safetensors.index.json").read_text())
    table = sailvl_release(model)
    shapes = table.import_shapes()
    assert set(shapes) == set(index["weight_map"]) and len(shapes) == 490
    # bf16 bytes of the derived shapes = the release's total size
    assert sum(math.prod(s) for s in shapes.values()) * 2 == index["metadata"]["total_size"]
    assert set(table.export_shapes()) == set(shapes)


def test_tied_release_has_no_output_layer_and_exports_lm_head():
    cfg = json.loads((RELEASE / "config.json").read_text())
    model = hf_config.release_model(cfg, has_lm_head=False)
    table = sailvl_release(model)
    assert "language_model.lm_head.weight" not in table.import_shapes()
    assert "language_model.lm_head.weight" in table.export_shapes()
    assert "language_model.output_layer.weight" not in table.megatron_shapes()


def test_aimv2_and_qwen3_tables_match_transformers_state_dicts():
    from transformers import Aimv2VisionConfig, Aimv2VisionModel, Qwen3Config, Qwen3ForCausalLM

    vcfg = Aimv2VisionConfig(**VIT, num_channels=3, qkv_bias=False, mlp_bias=False, use_head=False)
    vision_arch, problems = hf_config.aimv2_vision(vcfg.to_dict())
    assert not problems
    expected = {k: tuple(v.shape) for k, v in Aimv2VisionModel(vcfg).state_dict().items()}
    assert sail_vit(vision_arch, "aimv2", "").import_shapes() == expected

    for tied in (False, True):
        lcfg = Qwen3Config(**{k: v for k, v in LLM.items() if k != "rope_theta"},
                           rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                           tie_word_embeddings=tied)
        llm_arch, problems = hf_config.qwen3_llm(lcfg.to_dict(), tied)
        assert not problems and llm_arch.rope_theta == 1e6 and llm_arch.vocab_size == 300
        expected = {k: tuple(v.shape) for k, v in Qwen3ForCausalLM(lcfg).state_dict().items()}
        if tied:
            expected.pop("lm_head.weight", None)
        assert qwen3_dense(llm_arch, "").import_shapes() == expected


def test_qwen3_moe_table_consumes_transformers_saved_layout(tmp_path):
    """transformers 5 writes per-expert tensors and ``num_local_experts`` (``num_experts``
    null) although it fuses the experts in memory."""
    from tests.convert.fixtures import save_qwen3_moe

    expected = {k: tuple(v.shape) for k, v in save_qwen3_moe(tmp_path, 4).items()}
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg.get("num_experts") is None and cfg["num_local_experts"] == 8
    arch, problems = hf_config.qwen3_llm(cfg, tied=False)
    assert not problems, problems
    assert (arch.num_experts, arch.moe_router_topk, arch.moe_ffn_hidden_size) == (8, 2, 48)
    table = qwen3(arch, "")
    assert table.import_shapes() == expected == table.export_shapes()
    assert expected["model.layers.3.mlp.experts.7.down_proj.weight"] == (64, 48)
    stored = table.megatron_shapes()
    # [layers, global expert, gate; up, hidden] and [layers, global expert, hidden, ffn]
    assert stored[_EXPERTS + "linear_fc1.weight"] == (4, 8, 96, 64)
    assert stored[_EXPERTS + "linear_fc2.weight"] == (4, 8, 64, 48)
    assert stored["language_model.decoder.layers.mlp.router.weight"] == (4, 8, 64)


_EXPERTS = "language_model.decoder.layers.mlp.experts.experts."


def test_a3b_release_names_and_size():
    """SAIL-VL2-A3B: Qwen3-30B-A3B under ``language_model.``, per-expert names; the LLM's
    parameter count is Qwen3-30B-A3B's 30,532,122,624."""
    model = load_config(None, ["model.preset=sailvl2-a3b"]).model
    cfg = hf_config.release_config(model, "bfloat16", None, keep_auto_map=False)
    assert cfg["llm_config"]["model_type"] == "qwen3_moe" and cfg["llm_config"]["num_experts"] == 128
    again = hf_config.release_model(cfg, has_lm_head=True)
    assert again.preset == "sailvl2-a3b" and again.llm == model.llm
    shapes = sailvl_release(again).import_shapes()
    llm = {k: v for k, v in shapes.items() if k.startswith("language_model.")}
    assert sum(math.prod(s) for s in llm.values()) == 30_532_122_624
    assert shapes["language_model.model.layers.47.mlp.experts.127.gate_proj.weight"] == (768, 2048)
    assert shapes["language_model.model.layers.47.mlp.experts.127.down_proj.weight"] == (2048, 768)
    assert shapes["language_model.model.layers.0.mlp.gate.weight"] == (128, 2048)
    assert len(llm) == 3 + 48 * (9 + 128 * 3)


@pytest.mark.filterwarnings("ignore:The legacy GroupedMLP will be deprecated")
def test_moe_table_matches_sequential_and_grouped_gemm_experts(megatron_single_rank,
                                                               monkeypatch):
    """The expert keys and global shapes the table targets are those of Megatron's sequential
    experts (what conversion builds) and of grouped-GEMM experts (what GPU training uses): one
    format. GroupedMLP is only constructed here (its kernels need a GPU package)."""
    import dataclasses

    import torch
    from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec
    from megatron.core.transformer.moe import experts
    from megatron.core.transformer.spec_utils import ModuleSpec, build_module

    from megatron_sail.config.validation import resolve_layout
    from megatron_sail.convert.megatron_side import sharded_tensors
    from megatron_sail.models.builder import llm_config

    # megatron-core 0.19 removed the grouped-GEMM experts that need no Transformer Engine
    # (GroupedMLP; TEGroupedMLP cannot be built on CPU): there only the sequential ones are
    # compared, and the grouped-GEMM format rests on the earlier releases' check.
    kinds = [(False, "SequentialMLP")]
    if hasattr(experts, "GroupedMLP"):
        monkeypatch.setattr(experts.gg, "assert_grouped_gemm_is_available", lambda: None)
        kinds.append((True, "GroupedMLP"))
    cfg = load_config(None, ["model.preset=tiny-moe"])
    layout = resolve_layout(cfg, 1)
    table = qwen3(cfg.model.llm).megatron_shapes()
    prefix = "language_model.decoder.layers.mlp."

    class Layer(torch.nn.Module):  # the MLP of layer 1 of 4, as the decoder block stacks it
        def __init__(self, grouped: bool):
            super().__init__()
            tc = dataclasses.replace(llm_config(cfg, layout), moe_grouped_gemm=grouped)
            spec = get_moe_module_spec(use_te=False, num_experts=8, moe_grouped_gemm=grouped)
            # a ModuleSpec up to megatron-core 0.18, a builder (functools.partial) from 0.19
            self.mlp = build_module(spec, config=tc) if isinstance(spec, ModuleSpec) \
                else spec(config=tc)

        def sharded_state_dict(self):
            return self.mlp.sharded_state_dict(prefix=prefix, sharded_offsets=((0, 1, 4),))

    for grouped, kind in kinds:
        layer = Layer(grouped)
        assert type(layer.mlp.experts).__name__ == kind
        found = {sh.key: tuple(sh.global_shape) for sh in sharded_tensors(layer)}
        assert found == {k: v for k, v in table.items()
                         if k.startswith((prefix + "router.", prefix + "experts."))}, kind


def test_export_config_regenerates_architecture_and_keeps_the_rest():
    base = json.loads((RELEASE / "config.json").read_text())
    model = load_config(None, ["model.preset=sailvl2-2b"]).model
    out = hf_config.release_config(model, "bfloat16", base, keep_auto_map=True)
    for part in ("vision_config", "llm_config"):
        for key, value in out[part].items():
            if key != "tie_word_embeddings":  # regenerated from the model: untied here
                assert base[part].get(key) == value or key not in base[part], (part, key)
    assert out["llm_config"]["tie_word_embeddings"] is False
    assert out["auto_map"] == base["auto_map"] and out["template"] == base["template"]
    assert hf_config.release_model(out, has_lm_head=True).llm == model.llm
    plain = hf_config.release_config(model, "bfloat16", base, keep_auto_map=False)
    assert "auto_map" not in plain and "auto_map" not in plain["vision_config"]
