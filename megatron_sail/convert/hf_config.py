"""``config.json`` of the SAIL-VL2 release, transformers' AIMv2 vision model and Qwen3 /
Qwen3-MoE <-> our model architecture. Everything unsupported is reported at once, by name."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

from megatron_sail.config.presets import PRESETS, AdapterArch, LLMArch, VisionArch
from megatron_sail.config.schema import ModelConfig
from megatron_sail.convert.errors import ConversionError, raise_if

RELEASE_IMG_CONTEXT_ID = 151671  # hard-coded by the release's generate()


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"{path}: not found")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path}: unreadable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object")
    return data


def _get(cfg: dict, key: str, where: str, problems: list[str], default: Any = ...) -> Any:
    if key in cfg and cfg[key] is not None:
        return cfg[key]
    if default is ...:
        problems.append(f"{where}{key} is missing")
        return 0
    return default


def _expect(cfg: dict, key: str, allowed: tuple, where: str, problems: list[str], why: str) -> None:
    value = cfg.get(key)
    if value not in allowed:
        problems.append(f"{where}{key}={value!r} is not supported ({why})")


def _rope_theta(cfg: dict, where: str, problems: list[str]) -> float:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        problems.append(f"{where}rope scaling {kind!r} is not supported (plain RoPE only)")
    theta = cfg.get("rope_theta", params.get("rope_theta"))
    if theta is None:
        problems.append(f"{where}rope_theta is missing")
        return 0.0
    return float(theta)


def _qwen3_moe(cfg: dict, where: str, problems: list[str]) -> dict:
    """Qwen3-MoE's routed experts; every layer sparse, top-k probabilities renormalised (what
    Megatron's top-k softmax computes), no shared expert."""
    if cfg.get("norm_topk_prob") is not True:
        problems.append(f"{where}norm_topk_prob={cfg.get('norm_topk_prob')!r} is not supported "
                        f"(Megatron renormalises the top-k routing probabilities)")
    if cfg.get("decoder_sparse_step", 1) != 1 or cfg.get("mlp_only_layers"):
        problems.append(f"{where}decoder_sparse_step/mlp_only_layers: dense layers between MoE "
                        f"layers are not supported")
    if cfg.get("shared_expert_intermediate_size"):
        problems.append(f"{where}shared experts are not supported")
    # The release (transformers 4) writes num_experts; transformers 5 writes
    # num_local_experts and leaves num_experts null.
    experts = "num_experts" if cfg.get("num_experts") is not None else "num_local_experts"
    return dict(num_experts=_get(cfg, experts, where, problems),
                moe_router_topk=_get(cfg, "num_experts_per_tok", where, problems),
                moe_ffn_hidden_size=_get(cfg, "moe_intermediate_size", where, problems))


def moe_settings(model: ModelConfig, cfg: dict) -> ModelConfig:
    """Training settings a Qwen3-MoE ``config.json`` carries besides the architecture."""
    if model.llm.is_moe and cfg.get("router_aux_loss_coef") is not None:
        model.moe.aux_loss_coeff = float(cfg["router_aux_loss_coef"])
    return model


def qwen3_llm(cfg: dict, tied: bool, where: str = "") -> tuple[LLMArch, list[str]]:
    """Qwen3ForCausalLM or Qwen3MoeForCausalLM."""
    problems: list[str] = []
    kind = cfg.get("model_type")
    moe = _qwen3_moe(cfg, where, problems) if kind == "qwen3_moe" else {}
    if kind not in ("qwen3", "qwen3_moe"):
        problems.append(f"{where}model_type={kind!r}: expected 'qwen3' or 'qwen3_moe'")
    _expect(cfg, "hidden_act", ("silu",), where, problems, "Qwen3 uses SwiGLU")
    _expect(cfg, "attention_bias", (False, None), where, problems, "no attention biases")
    if cfg.get("use_sliding_window"):
        problems.append(f"{where}use_sliding_window=true is not supported")
    hidden = _get(cfg, "hidden_size", where, problems)
    heads = _get(cfg, "num_attention_heads", where, problems)
    arch = LLMArch(
        num_layers=_get(cfg, "num_hidden_layers", where, problems),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_query_groups=_get(cfg, "num_key_value_heads", where, problems, heads),
        head_dim=_get(cfg, "head_dim", where, problems, hidden // heads if heads else 0),
        ffn_hidden_size=_get(cfg, "intermediate_size", where, problems),
        vocab_size=_get(cfg, "vocab_size", where, problems),
        rope_theta=_rope_theta(cfg, where, problems),
        norm_eps=float(_get(cfg, "rms_norm_eps", where, problems)),
        tie_word_embeddings=tied,
        max_position_embeddings=_get(cfg, "max_position_embeddings", where, problems),
        **moe,
    )
    return arch, problems


def _vision_common(cfg: dict, where: str, problems: list[str]) -> dict:
    if cfg.get("num_channels", 3) != 3:
        problems.append(f"{where}num_channels={cfg.get('num_channels')} is not supported "
                        f"(RGB only)")
    hidden = _get(cfg, "hidden_size", where, problems)
    heads = _get(cfg, "num_attention_heads", where, problems)
    if heads and hidden % heads:
        problems.append(f"{where}hidden_size={hidden} is not divisible by "
                        f"num_attention_heads={heads}")
    return dict(
        num_layers=_get(cfg, "num_hidden_layers", where, problems), hidden_size=hidden,
        num_attention_heads=heads, ffn_hidden_size=_get(cfg, "intermediate_size", where, problems),
        patch_size=_get(cfg, "patch_size", where, problems),
        image_size=_get(cfg, "image_size", where, problems),
        norm_eps=float(_get(cfg, "rms_norm_eps", where, problems)),
    )


def aimv2_vision(cfg: dict, where: str = "") -> tuple[VisionArch, list[str]]:
    """transformers' Aimv2VisionConfig (``aimv2_vision_model``)."""
    problems: list[str] = []
    _expect(cfg, "model_type", ("aimv2_vision_model",), where, problems,
            "expected transformers' Aimv2VisionModel layout")
    for key in ("qkv_bias", "mlp_bias"):
        _expect(cfg, key, (False, None), where, problems, "SAIL-ViT has no biases in its blocks")
    _expect(cfg, "hidden_act", ("silu", None), where, problems, "SAIL-ViT uses SwiGLU")
    if cfg.get("is_native"):
        problems.append(f"{where}is_native=true (native-resolution AIMv2) is not supported")
    return VisionArch(**_vision_common(cfg, where, problems), select_layer=-1), problems


def release_model(cfg: dict, has_lm_head: bool) -> ModelConfig:
    """The model of a SAIL-VL2 release. A stored ``lm_head`` is used untied whatever
    ``tie_word_embeddings`` says, as the release code does; without one the LLM is tied."""
    problems: list[str] = []
    _expect(cfg, "model_type", ("sailvl",), "", problems, "expected a SAIL-VL2 release")
    _expect(cfg, "ps_version", ("v2",), "", problems, "only pixel shuffle v2 is implemented")
    _expect(cfg, "downsample_ratio", (0.5,), "", problems,
            "only the 2x2 token merge is implemented")
    _expect(cfg, "select_layer", (-1, None), "", problems,
            "other feature layers drop ViT blocks, so they cannot round-trip")
    for key in ("use_backbone_lora", "use_llm_lora"):
        if cfg.get(key):
            problems.append(f"{key}={cfg[key]}: merge LoRA weights before converting")
    vc = cfg.get("vision_config")
    lc = cfg.get("llm_config")
    if not isinstance(vc, dict) or not isinstance(lc, dict):
        raise_if(problems + ["vision_config and llm_config must both be present"], "config.json")
    for key in ("qkv_bias", "use_bias"):
        _expect(vc, key, (False, None), "vision_config.", problems, "SAIL-ViT has no block biases")
    if vc.get("image_size") is None and cfg.get("force_image_size") is not None:
        vc = dict(vc, image_size=cfg["force_image_size"])
    vision = VisionArch(**_vision_common(vc, "vision_config.", problems), select_layer=-1)
    forced = cfg.get("force_image_size")
    if forced is not None and forced != vision.image_size:
        problems.append(f"force_image_size={forced} differs from vision_config.image_size="
                        f"{vision.image_size} (the learned position table is for the latter)")
    llm, llm_problems = qwen3_llm(lc, tied=not has_lm_head, where="llm_config.")
    raise_if(problems + llm_problems, "config.json: unsupported or inconsistent model")
    model = ModelConfig(preset=matching_preset(vision, AdapterArch(), llm), vision=vision,
                        adapter=AdapterArch(), llm=llm)
    return moe_settings(model, lc)


def matching_preset(vision: VisionArch, adapter: AdapterArch, llm: LLMArch) -> str:
    for name, preset in PRESETS.items():
        if (preset.vision, preset.adapter, preset.llm) == (vision, adapter, llm):
            return name
    return "custom"


def img_context_id(directory: Path, vocab_size: int) -> Optional[int]:
    """``<IMG_CONTEXT>`` from the tokenizer's added tokens, else the release's fixed id."""
    added = directory / "added_tokens.json"
    if added.is_file():
        token = read_json(added).get("<IMG_CONTEXT>")
        if isinstance(token, int) and token < vocab_size:
            return token
    return RELEASE_IMG_CONTEXT_ID if vocab_size > RELEASE_IMG_CONTEXT_ID else None


# ------------------------------------------------------------------------------ export

_DEFAULT_RELEASE = {
    "architectures": ["SAILVLModel"], "model_type": "sailvl", "dynamic_image_size": True,
    "max_dynamic_patch": 12, "min_dynamic_patch": 1, "use_thumbnail": True, "pad2square": False,
    "template": "univl-chat", "use_backbone_lora": 0, "use_llm_lora": 0,
    "vision_config": {"architectures": ["SAILViTModel"], "model_type": "sailvit",
                      "attention_dropout": 0.0, "projection_dropout": 0.0},
    "llm_config": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                   "attention_dropout": 0.0, "rope_scaling": None, "sliding_window": None,
                   "use_cache": True, "initializer_range": 0.02},
}


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def architecture_fields(model: ModelConfig, dtype: str) -> dict:
    """The fields export regenerates from the model config (everything else is kept)."""
    v, llm = model.vision, model.llm
    return {
        "top": {"architectures": ["SAILVLModel"], "model_type": "sailvl",
                "downsample_ratio": model.adapter.downsample_ratio, "ps_version": "v2",
                "select_layer": v.select_layer, "force_image_size": v.image_size,
                "torch_dtype": dtype},
        "vision_config": {
            "hidden_size": v.hidden_size, "intermediate_size": v.ffn_hidden_size,
            "num_hidden_layers": v.num_layers, "num_attention_heads": v.num_attention_heads,
            "num_channels": 3, "image_size": v.image_size, "patch_size": v.patch_size,
            "rms_norm_eps": v.norm_eps, "qkv_bias": False, "use_bias": False, "torch_dtype": dtype,
        },
        "llm_config": {
            "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
            "hidden_size": llm.hidden_size, "intermediate_size": llm.ffn_hidden_size,
            "num_hidden_layers": llm.num_layers, "num_attention_heads": llm.num_attention_heads,
            "num_key_value_heads": llm.num_query_groups, "head_dim": llm.head_dim,
            "vocab_size": llm.vocab_size, "rope_theta": _number(llm.rope_theta),
            "rms_norm_eps": llm.norm_eps, "max_position_embeddings": llm.max_position_embeddings,
            "tie_word_embeddings": llm.tie_word_embeddings, "hidden_act": "silu",
            "attention_bias": False, "use_sliding_window": False, "torch_dtype": dtype,
            **_moe_fields(model),
        },
    }


def _moe_fields(model: ModelConfig) -> dict:
    """Qwen3-MoE's ``llm_config`` fields, named as the release's transformers 4 code reads them
    (transformers 5 reads ``num_experts`` too)."""
    llm = model.llm
    if not llm.is_moe:
        return {}
    return {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
            "num_experts": llm.num_experts, "num_experts_per_tok": llm.moe_router_topk,
            "moe_intermediate_size": llm.moe_ffn_hidden_size or llm.ffn_hidden_size,
            "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
            "router_aux_loss_coef": model.moe.aux_loss_coeff}


def release_config(model: ModelConfig, dtype: str, base: Optional[dict],
                   keep_auto_map: bool) -> dict:
    """``config.json`` for an export: ``base`` (a reference release's or the imported one's
    config) with every architecture field regenerated; ``auto_map`` only next to the code."""
    out = copy.deepcopy(base) if base else copy.deepcopy(_DEFAULT_RELEASE)
    fields = architecture_fields(model, dtype)
    out.update(fields["top"])
    for part in ("vision_config", "llm_config"):
        if not isinstance(out.get(part), dict):
            out[part] = copy.deepcopy(_DEFAULT_RELEASE[part])
        out[part].update(fields[part])
        if part == "llm_config" and model.llm.is_moe:
            out[part].pop("num_local_experts", None)  # transformers 5's alias of num_experts
        if not keep_auto_map:
            out[part].pop("auto_map", None)
    if not keep_auto_map:
        out.pop("auto_map", None)
    return out


def architecture_differences(model: ModelConfig, other: ModelConfig,
                             ignore: tuple[str, ...] = ()) -> list[str]:
    """``model.<part>.<field>: a vs b`` for every architecture field that differs."""
    out = []
    for part in ("vision", "adapter", "llm"):
        a, b = dataclasses.asdict(getattr(model, part)), dataclasses.asdict(getattr(other, part))
        out += [f"model.{part}.{k}: {a[k]!r} vs {b.get(k)!r}" for k in a
                if a[k] != b.get(k) and f"{part}.{k}" not in ignore]
    return out
