"""HF -> Megatron -> HF is bit-exact for every tensor and dtype at TP=1 (fp32), TP=2 (bf16),
PP=2 (fp32, tied embeddings) and, for a Qwen3-MoE LLM, EP=2, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megatron_sail.convert import cli

LAYOUTS = {"fp32": [1, 1], "bf16": [1, 2], "tied": [2, 1], "moe": [1, 1]}  # pp_tp of each import


def load_dir(directory: Path) -> dict[str, torch.Tensor]:
    index = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    out = {}
    for file in sorted(set(index.values())):
        out.update(load_file(str(directory / file)))
    assert set(out) == set(index)
    return out


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_roundtrip_is_bit_exact(name, release, imported, tmp_path):
    src, ckpt = release(name), imported(name)
    marker = json.loads((ckpt / "iter_0000000" / "sail_checkpoint.json").read_text())
    assert marker["pp_tp"] == LAYOUTS[name]
    assert marker["layout"]["ep"] == (2 if name == "moe" else 1)
    out = tmp_path / "exported"
    # a run-style checkpoints dir for one case, an iter_* dir for the others
    source = ckpt if name == "fp32" else ckpt / "iter_0000000"
    args = ["export-hf", "--ckpt", str(source), "--out", str(out), "--reference", str(src)]
    assert cli.main(args + (["--max-shard-size", "20KB"] if name == "bf16" else [])) == 0

    before, after = load_dir(src), load_dir(out)
    extra = set(after) - set(before)
    assert set(before) <= set(after)
    for key, value in before.items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
    if name == "tied":  # the release code reads lm_head from the weights: write the tied copy
        assert extra == {"language_model.lm_head.weight"}
        assert torch.equal(after["language_model.lm_head.weight"],
                           before["language_model.model.embed_tokens.weight"])
    else:
        assert not extra
    if name == "bf16":
        index = json.loads((out / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 2  # sharded by --max-shard-size

    src_cfg, out_cfg = (json.loads((d / "config.json").read_text()) for d in (src, out))
    for part in ("vision_config", "llm_config"):
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "image_size", "patch_size", "num_key_value_heads", "head_dim", "vocab_size",
                    "rms_norm_eps", "rope_theta", "max_position_embeddings"):
            assert out_cfg[part].get(key) == src_cfg[part].get(key), (part, key)
    assert out_cfg["llm_config"]["tie_word_embeddings"] is (name == "tied")
    moe_fields = ("model_type", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
                  "norm_topk_prob", "architectures")
    for key in moe_fields if name == "moe" else ():
        assert out_cfg["llm_config"][key] == src_cfg["llm_config"][key], key
    assert out_cfg["llm_config"]["torch_dtype"] == str(before["mlp1.0.weight"].dtype)[6:]
    assert out_cfg["auto_map"] == src_cfg["auto_map"] and out_cfg["template"] == src_cfg["template"]
    for file in ("modeling_sailvl.py", "tokenizer_config.json", "vocab.json", "merges.txt",
                 "generation_config.json", "preprocessor_config.json", "added_tokens.json"):
        assert (out / file).read_bytes() == (src / file).read_bytes(), file
    assert not list(tmp_path.glob(".*partial*"))


def test_export_without_reference_drops_remote_code_hooks(release, imported, tmp_path):
    out = tmp_path / "plain"
    assert cli.main(["export-hf", "--ckpt", str(imported("fp32")), "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert "auto_map" not in cfg and "auto_map" not in cfg["vision_config"]
    assert cfg["template"] == "univl-chat"  # kept from the imported config
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model-00001-of-00001.safetensors", "model.safetensors.index.json"]
