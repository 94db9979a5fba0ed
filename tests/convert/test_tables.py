"""Mapping tables and config translation against ground truth: the real SAIL-VL2-2B release
index and config, and transformers' own Aimv2VisionModel / Qwen3ForCausalLM state dicts."""

from __future__ import annotations

import json
import math

from megatron_sail.config import load_config
from megatron_sail.convert import hf_config
from megatron_sail.convert.tables import qwen3_dense, sail_vit, sailvl_release
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
