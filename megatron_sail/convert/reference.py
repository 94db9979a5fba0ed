"""The Hugging Face-side reference for ``verify``: transformers' ``Aimv2VisionModel`` and
``Qwen3ForCausalLM`` / ``Qwen3MoeForCausalLM`` plus pixel shuffle (v2) and the ``mlp1``
adapter, loaded straight from the release layout in fp32.

Its name mapping is written here independently of the mapping tables (the release's fused
``qkv`` is three equal row blocks q, k, v; ``fc1``/``fc3``/``fc2`` are gate/up/down), so
``verify`` checks the tables instead of repeating them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator

import torch

from megatron_sail.convert import hf_config
from megatron_sail.convert.errors import ConversionError
from megatron_sail.convert.safetensors_io import SafetensorsDir


def _transformers():
    try:
        import transformers
        from transformers.initialization import no_init_weights
    except ImportError as exc:
        raise ConversionError(f"verify needs transformers >= 5 (pip install transformers): "
                              f"{exc}") from None
    return transformers, no_init_weights


def pixel_shuffle_v2(x: torch.Tensor) -> torch.Tensor:
    """InternVL's ``pixel_shuffle(x, 0.5)`` with ``ps_version='v2'``, as view/permute steps:
    [n, rows, cols, c] -> [n, rows/2 * cols/2, 4c]."""
    n, rows, cols, c = x.shape
    x = x.contiguous().view(n, rows, cols // 2, c * 2).permute(0, 2, 1, 3).contiguous()
    x = x.view(n, cols // 2, rows // 2, c * 4).permute(0, 2, 1, 3).contiguous()
    return x.reshape(n, -1, c * 4)


def _vision_tensors(w: SafetensorsDir, layers: int) -> Iterator[tuple[str, torch.Tensor]]:
    p = "vision_model."
    yield "embeddings.patch_embed.weight", w.read(p + "preprocessor.patchifier.proj.weight")
    yield "embeddings.patch_embed.bias", w.read(p + "preprocessor.patchifier.proj.bias")
    yield "embeddings.rms_norm.weight", w.read(p + "preprocessor.patchifier.norm.weight")
    yield "embeddings.position_embedding.weight", w.read(p + "preprocessor.pos_embed")[0]
    yield "rms_norm.weight", w.read(p + "trunk.post_trunk_norm.weight")
    for i in range(layers):
        src, dst = f"{p}trunk.blocks.{i}.", f"encoder.layers.{i}."
        q, k, v = w.read(src + "attn.qkv.weight").chunk(3, dim=0)
        yield from ((dst + "attention.q_proj.weight", q), (dst + "attention.k_proj.weight", k),
                    (dst + "attention.v_proj.weight", v))
        for ours, theirs in (("rms_norm1", "norm_1"), ("attention.out_proj", "attn.proj"),
                             ("rms_norm2", "norm_2"), ("ffn.gate_proj", "mlp.fc1"),
                             ("ffn.up_proj", "mlp.fc3"), ("ffn.down_proj", "mlp.fc2")):
            yield f"{dst}{ours}.weight", w.read(f"{src}{theirs}.weight")


_EXPERT = re.compile(r"model\.layers\.\d+\.mlp\.experts\.\d+\.(gate|up|down)_proj\.weight")


def _llm_tensors(w: SafetensorsDir, llm) -> Iterator[tuple[str, torch.Tensor]]:
    """``language_model.*`` without the prefix; a Qwen3-MoE checkpoint's per-expert tensors
    (the Hub layout) go into transformers' fused per-layer ``gate_up_proj`` ([gate; up] of
    each expert) and ``down_proj``."""
    lm = "language_model."
    for name in w.names:
        if name.startswith(lm) and not _EXPERT.fullmatch(name[len(lm):]):
            yield name[len(lm):], w.read(name)
    for i in range(llm.num_layers if llm.is_moe else 0):
        expert = f"{lm}model.layers.{i}.mlp.experts.{{}}.{{}}_proj.weight"
        experts = range(llm.num_experts)
        yield (f"model.layers.{i}.mlp.experts.gate_up_proj",
               torch.stack([torch.cat([w.read(expert.format(e, "gate")),
                                       w.read(expert.format(e, "up"))]) for e in experts]))
        yield (f"model.layers.{i}.mlp.experts.down_proj",
               torch.stack([w.read(expert.format(e, "down")) for e in experts]))


def _load(module: torch.nn.Module, tensors: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    """Copy tensors into the module one at a time (never a second copy of the model)."""
    params = dict(module.named_parameters())  # a tied lm_head appears once, as embed_tokens
    loaded, unexpected = set(), []
    with torch.no_grad():
        for name, tensor in tensors:
            if name in params and params[name].shape == tensor.shape:
                params[name].copy_(tensor)
                loaded.add(name)
            else:
                unexpected.append(name)
    missing = sorted(set(params) - loaded)
    if missing or unexpected:
        raise ConversionError(f"reference {what}: missing {missing}, unexpected {unexpected}")


class ReleaseReference:
    """Logits of a release-layout checkpoint, computed by transformers' models in fp32."""

    def __init__(self, directory: str | Path):
        transformers, no_init_weights = _transformers()
        directory = Path(directory)
        cfg = hf_config.read_json(directory / "config.json")
        weights = SafetensorsDir(directory)
        tied = "language_model.lm_head.weight" not in weights.tensors
        self.model = hf_config.release_model(cfg, has_lm_head=not tied)
        vit, llm = self.model.vision, self.model.llm
        vision_config = transformers.Aimv2VisionConfig(
            hidden_size=vit.hidden_size, intermediate_size=vit.ffn_hidden_size,
            num_hidden_layers=vit.num_layers, num_attention_heads=vit.num_attention_heads,
            num_channels=3, image_size=vit.image_size, patch_size=vit.patch_size,
            rms_norm_eps=vit.norm_eps, qkv_bias=False, mlp_bias=False, use_head=False,
            is_native=False)
        common = dict(
            vocab_size=llm.vocab_size, hidden_size=llm.hidden_size,
            intermediate_size=llm.ffn_hidden_size, num_hidden_layers=llm.num_layers,
            num_attention_heads=llm.num_attention_heads, num_key_value_heads=llm.num_query_groups,
            head_dim=llm.head_dim, hidden_act="silu",
            max_position_embeddings=llm.max_position_embeddings, rms_norm_eps=llm.norm_eps,
            tie_word_embeddings=tied,
            rope_parameters={"rope_type": "default", "rope_theta": llm.rope_theta},
            attention_bias=False, use_sliding_window=False, attention_dropout=0.0, use_cache=False)
        if llm.is_moe:
            llm_config = transformers.Qwen3MoeConfig(
                **common, num_experts=llm.num_experts, num_experts_per_tok=llm.moe_router_topk,
                moe_intermediate_size=llm.moe_ffn_hidden_size or llm.ffn_hidden_size,
                norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                output_router_logits=False)
        else:
            llm_config = transformers.Qwen3Config(**common)
        for c in (vision_config, llm_config):
            c._attn_implementation = "eager"
        merged = 4 * vit.hidden_size
        with no_init_weights():
            self.vision = transformers.Aimv2VisionModel(vision_config).float().eval()
            causal_lm = (transformers.Qwen3MoeForCausalLM if llm.is_moe
                         else transformers.Qwen3ForCausalLM)
            self.llm = causal_lm(llm_config).float().eval()
            self.mlp1 = torch.nn.Sequential(
                torch.nn.LayerNorm(merged, eps=self.model.adapter.norm_eps),
                torch.nn.Linear(merged, llm.hidden_size), torch.nn.GELU(),
                torch.nn.Linear(llm.hidden_size, llm.hidden_size)).float().eval()
        if tied:  # skipped with the weight initialisation above
            self.llm.tie_weights()
            if self.llm.lm_head.weight is not self.llm.model.embed_tokens.weight:
                raise ConversionError("reference: transformers did not tie lm_head to embed_tokens")
        _load(self.vision, _vision_tensors(weights, vit.num_layers), "vision model")
        mlp1 = ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias")
        _load(self.mlp1, ((k, weights.read("mlp1." + k)) for k in mlp1), "mlp1")
        _load(self.llm, _llm_tensors(weights, llm), "language model")
        weights.close()

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
               img_context_id: int) -> torch.Tensor:
        embeds = self.llm.get_input_embeddings()(input_ids).clone()
        if pixel_values is not None and pixel_values.numel():
            feats = self.vision(pixel_values=pixel_values.float()).last_hidden_state
            n, tokens, c = feats.shape
            rows = pixel_values.shape[2] // self.model.vision.patch_size
            visual = self.mlp1(pixel_shuffle_v2(feats.reshape(n, rows, tokens // rows, c)))
            mask = input_ids == img_context_id
            if int(mask.sum()) != visual.shape[0] * visual.shape[1]:
                raise ConversionError(f"{int(mask.sum())} <IMG_CONTEXT> tokens for "
                                      f"{visual.shape[0] * visual.shape[1]} visual tokens")
            embeds[mask] = visual.reshape(-1, visual.shape[-1])
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0).expand_as(input_ids)
        return self.llm(inputs_embeds=embeds, position_ids=positions).logits.float()
