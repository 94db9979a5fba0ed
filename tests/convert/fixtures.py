"""Tiny random checkpoints in the Hugging Face layouts the converter reads, made from
transformers' own models (their names and shapes are the ground truth) with weights far from
their defaults (norm weights around 1 +- 0.2, non-zero biases), and a vocabulary of 300
(padded to 384 by Megatron).

The release layout is derived from transformers' Aimv2VisionModel names by the renaming the
release's code implies (fused qkv = [q; k; v], fc1/fc3/fc2 = gate/up/down), written here
independently of the converter's tables, with the real release's config.json as template.
Qwen3-MoE weights carry the names transformers' own save_pretrained writes (per expert).
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tests.helpers import RELEASE_FIXTURE

# The real SAIL-VL2-2B release's config, index and tokenizer files, next to the repository.
RELEASE = Path(RELEASE_FIXTURE)

VOCAB = 300
IMAGE, PATCH = 112, 14
VIT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           image_size=IMAGE, patch_size=PATCH, rms_norm_eps=1e-5)
LLM = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
           num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
           max_position_embeddings=1024, rope_theta=1e6)


def randomize(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        noise = torch.randn(t.shape, generator=gen)
        if name.endswith("bias"):
            value = 0.1 * noise
        elif t.dim() == 1:
            value = 1.0 + 0.2 * noise
        elif any(k in name for k in ("embed_tokens", "lm_head", "position", "pos_embed")):
            value = noise
        else:
            value = noise / math.sqrt(math.prod(t.shape[1:]))
        out[name] = value.contiguous()
    return out


def aimv2_state(seed: int = 1) -> dict[str, torch.Tensor]:
    from transformers import Aimv2VisionConfig, Aimv2VisionModel

    cfg = Aimv2VisionConfig(**VIT, num_channels=3, qkv_bias=False, mlp_bias=False, use_head=False)
    return randomize(Aimv2VisionModel(cfg).state_dict(), seed)


def qwen3_state(seed: int = 2, tied: bool = False) -> dict[str, torch.Tensor]:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(**{k: v for k, v in LLM.items() if k != "rope_theta"},
                      rope_parameters={"rope_type": "default", "rope_theta": LLM["rope_theta"]},
                      tie_word_embeddings=tied)
    state = randomize(Qwen3ForCausalLM(cfg).state_dict(), seed)
    if tied:
        state.pop("lm_head.weight", None)
    return state


MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=48, norm_topk_prob=True,
           decoder_sparse_step=1, mlp_only_layers=[], router_aux_loss_coef=0.01)


def save_qwen3_moe(directory: Path, seed: int) -> dict[str, torch.Tensor]:
    """transformers' save_pretrained of a tiny Qwen3MoeForCausalLM, its weights then replaced
    by random ones under the names transformers wrote. (transformers 5 fuses the experts in
    memory, ``experts.gate_up_proj`` [E, 2F, H]; save_pretrained writes the Hub's per-expert
    ``experts.E.{gate,up,down}_proj.weight``, the layout the converter reads.)"""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    from transformers.utils import logging

    cfg = Qwen3MoeConfig(**{k: v for k, v in LLM.items() if k != "rope_theta"}, **MOE,
                         rope_parameters={"rope_type": "default", "rope_theta": LLM["rope_theta"]})
    logging.disable_progress_bar()  # its bar would land in the CLI's captured stderr
    try:
        Qwen3MoeForCausalLM(cfg).save_pretrained(directory)
    finally:
        logging.enable_progress_bar()
    file = directory / "model.safetensors"
    state = randomize(load_file(str(file)), seed)
    save_file(state, str(file), metadata={"format": "pt"})
    return state


def qwen3_moe_state(seed: int = 4) -> dict[str, torch.Tensor]:
    with tempfile.TemporaryDirectory() as tmp:
        return save_qwen3_moe(Path(tmp), seed)


def mlp1_state(seed: int = 3) -> dict[str, torch.Tensor]:
    merged, hidden = 4 * VIT["hidden_size"], LLM["hidden_size"]
    seq = torch.nn.Sequential(torch.nn.LayerNorm(merged), torch.nn.Linear(merged, hidden),
                              torch.nn.GELU(), torch.nn.Linear(hidden, hidden))
    return randomize(seq.state_dict(), seed)


def aimv2_to_release(vision: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    rename = {"embeddings.patch_embed.weight": "preprocessor.patchifier.proj.weight",
              "embeddings.patch_embed.bias": "preprocessor.patchifier.proj.bias",
              "embeddings.rms_norm.weight": "preprocessor.patchifier.norm.weight",
              "rms_norm.weight": "trunk.post_trunk_norm.weight"}
    block = {"rms_norm1": "norm_1", "rms_norm2": "norm_2", "attention.out_proj": "attn.proj",
             "ffn.gate_proj": "mlp.fc1", "ffn.up_proj": "mlp.fc3", "ffn.down_proj": "mlp.fc2"}
    for name, t in vision.items():
        if name in rename:
            out["vision_model." + rename[name]] = t
        elif name == "embeddings.position_embedding.weight":
            out["vision_model.preprocessor.pos_embed"] = t.unsqueeze(0)
        elif name.startswith("encoder.layers."):
            i, rest = name[len("encoder.layers."):].split(".", 1)
            rest = rest.rsplit(".", 1)[0]
            if rest in ("attention.q_proj", "attention.k_proj", "attention.v_proj"):
                if rest == "attention.q_proj":
                    qkv = [vision[f"encoder.layers.{i}.attention.{x}_proj.weight"] for x in "qkv"]
                    out[f"vision_model.trunk.blocks.{i}.attn.qkv.weight"] = torch.cat(qkv)
                continue
            out[f"vision_model.trunk.blocks.{i}.{block[rest]}.weight"] = t
        else:
            raise KeyError(name)
    return out


def release_config(vocab: int = VOCAB, moe: bool = False) -> dict:
    cfg = copy.deepcopy(json.loads((RELEASE / "config.json").read_text()))
    vc, lc = cfg["vision_config"], cfg["llm_config"]
    vc.update({k: v for k, v in VIT.items()})
    cfg["force_image_size"] = IMAGE
    lc.update({k: v for k, v in LLM.items() if k != "rope_theta"}, vocab_size=vocab)
    lc["rope_theta"] = int(LLM["rope_theta"])
    if moe:  # as SAIL-VL2-A3B: a Qwen3-MoE llm_config
        lc.update(MOE, model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"])
    return cfg


def save_sharded(directory: Path, tensors: dict[str, torch.Tensor], shards: int = 2) -> None:
    """safetensors' own writer, ``shards`` files + index (names split in sorted order)."""
    names = sorted(tensors)
    per = math.ceil(len(names) / shards)
    weight_map = {}
    for s in range(shards):
        part = names[s * per:(s + 1) * per]
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, str(directory / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def write_release(directory: Path, dtype: torch.dtype = torch.float32, lm_head: bool = True,
                  seed: int = 0, with_extras: bool = True,
                  moe: bool = False) -> dict[str, torch.Tensor]:
    """A tiny release-layout checkpoint; returns its tensors. ``lm_head=False`` drops the head
    (a tied LLM); the config keeps the release's ``tie_word_embeddings: true`` either way.
    ``moe`` gives it a Qwen3-MoE LLM (8 experts, top-2)."""
    directory.mkdir(parents=True, exist_ok=True)
    llm_state = qwen3_moe_state(seed + 2) if moe else qwen3_state(seed + 2)
    llm = {"language_model." + k: v for k, v in llm_state.items()}
    if not lm_head:
        llm.pop("language_model.lm_head.weight")
    tensors = {**aimv2_to_release(aimv2_state(seed + 1)),
               **{"mlp1." + k: v for k, v in mlp1_state(seed + 3).items()}, **llm}
    tensors = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
    save_sharded(directory, tensors)
    cfg = release_config(moe=moe)
    cfg["torch_dtype"] = cfg["llm_config"]["torch_dtype"] = str(dtype).replace("torch.", "")
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))
    if with_extras:  # what --reference copies
        for name in ("generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
                     "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json"):
            (directory / name).write_bytes((RELEASE / name).read_bytes())
        (directory / "modeling_sailvl.py").write_text("# stand-in for the release's remote code\n")
    return tensors


def write_base_models(root: Path, tied: bool = True, moe: bool = False) -> tuple[Path, Path]:
    """transformers' own save_pretrained of a tiny Aimv2VisionModel and a Qwen3ForCausalLM
    (``moe``: an untied Qwen3MoeForCausalLM)."""
    from transformers import Aimv2VisionConfig, Aimv2VisionModel, Qwen3Config, Qwen3ForCausalLM

    vision = Aimv2VisionModel(Aimv2VisionConfig(**VIT, num_channels=3, qkv_bias=False,
                                                mlp_bias=False, use_head=False))
    vision.load_state_dict(aimv2_state(11))
    vision.save_pretrained(root / "aimv2")
    if moe:
        save_qwen3_moe(root / "qwen3_moe", 12)
        return root / "aimv2", root / "qwen3_moe"
    llm_cfg = Qwen3Config(**{k: v for k, v in LLM.items() if k != "rope_theta"},
                          rope_parameters={"rope_type": "default", "rope_theta": LLM["rope_theta"]},
                          tie_word_embeddings=tied)
    llm = Qwen3ForCausalLM(llm_cfg)
    llm.load_state_dict(qwen3_state(12, tied), strict=not tied)
    llm.save_pretrained(root / "qwen3")
    return root / "aimv2", root / "qwen3"


def edit_common(iter_dir: Path, edit) -> None:
    """Apply ``edit(common)`` to a checkpoint's common (non-tensor) state. megatron-core
    >= 0.19 keeps it inside the .distcp files; there it is written back in the older layout
    (common.pt, named in metadata.json), which every supported release reads first."""
    from megatron_sail.convert.dcp_reader import DistCheckpointReader

    path = iter_dir / "common.pt"
    if path.exists():
        common = torch.load(path, weights_only=True)
    else:
        common = torch.load(DistCheckpointReader(iter_dir)._embedded_common_bytes(),
                            weights_only=True)[0]
        meta = iter_dir / "metadata.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "common_backend": "torch"}))
    edit(common)
    torch.save(common, path)
