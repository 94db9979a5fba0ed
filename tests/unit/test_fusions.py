"""The speed levers (performance.*): each fused kernel gives the unfused path's numbers, the
config maps onto Megatron's settings, and combinations that cannot run are config errors."""

from __future__ import annotations

import types

import pytest
import torch

from tests.helpers import fp32_tolerance

BF16_EPS = 2.0 ** -8  # unit roundoff of bfloat16


def _norm_pair(dtype, hidden):
    from megatron_sail.models.norms import RMSNorm

    config = types.SimpleNamespace(params_dtype=dtype, sequence_parallel=True)
    fused, plain = RMSNorm(config, hidden, 1e-6, fused=True), RMSNorm(config, hidden, 1e-6)
    with torch.no_grad():
        w = torch.randn(hidden, generator=torch.Generator().manual_seed(3)).to(dtype)
        fused.weight.copy_(w)
        plain.weight.copy_(w)
    return fused, plain


def _run(norm, x, grad):
    x = x.detach().clone().requires_grad_()
    out = norm(x)
    out.backward(grad)
    return out, x.grad, norm.weight.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rmsnorm_matches_the_fp32_formula(dtype):
    hidden = 96
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(4, 5, hidden, generator=g)).to(dtype)
    grad = torch.randn(4, 5, hidden, generator=g).to(dtype)
    fused, plain = _norm_pair(dtype, hidden)
    assert getattr(fused.weight, "sequence_parallel") is True  # SP contract kept
    for a, b in zip(_run(fused, x, grad), _run(plain, x, grad)):
        scale = b.abs().max().item()
        if dtype == torch.float32:  # sums over the hidden size (weight grad: over 20 tokens)
            tol = fp32_tolerance(scale, hidden, 2)
        else:  # both round the same fp32 value to bf16 once; they may differ by one ulp
            tol = 2 * BF16_EPS * scale
        assert (a.float() - b.float()).abs().max().item() <= tol


def test_megatron_swiglu_kernel_matches_silu_times_linear():
    from megatron.core.fusions.fused_bias_swiglu import bias_swiglu_impl

    g = torch.Generator().manual_seed(1)
    y = torch.randn(6, 2, 64, generator=g, requires_grad=True)
    grad = torch.randn(6, 2, 32, generator=g)
    fused = bias_swiglu_impl(y, None)
    fused.backward(grad)
    y2 = y.detach().clone().requires_grad_()
    gate, up = y2.chunk(2, -1)
    ref = torch.nn.functional.silu(gate) * up
    ref.backward(grad)
    tol = fp32_tolerance(ref.abs().max().item(), 1, 2)
    assert (fused - ref).abs().max().item() <= tol
    assert (y.grad - y2.grad).abs().max().item() <= fp32_tolerance(y2.grad.abs().max().item(), 1, 3)


def test_native_fused_cross_entropy_matches_megatrons_plain_one(megatron_single_rank):
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.fusions.fused_cross_entropy import fused_vocab_parallel_cross_entropy

    g = torch.Generator().manual_seed(2)
    vocab = 512
    logits = (4 * torch.randn(7, 2, vocab, generator=g)).to(torch.bfloat16)
    target = torch.randint(0, vocab, (7, 2), generator=g)
    grad = torch.rand(7, 2, generator=g)
    a = logits.clone().requires_grad_()
    fused = fused_vocab_parallel_cross_entropy(a, target,
                                               parallel_state.get_tensor_model_parallel_group())
    fused.backward(grad)
    b = logits.clone().requires_grad_()
    plain = tensor_parallel.vocab_parallel_cross_entropy(b, target)
    plain.backward(grad)
    # the same fp32 arithmetic on the same bf16 logits; sums over the vocabulary
    assert (fused - plain).abs().max().item() <= fp32_tolerance(plain.abs().max().item(), vocab, 1)
    # both gradients are fp32 values rounded to the bf16 logits' dtype
    assert a.grad.dtype == b.grad.dtype == torch.bfloat16
    diff = (a.grad.float() - b.grad.float()).abs().max().item()
    assert diff <= 2 * BF16_EPS * b.grad.float().abs().max().item()


def _loss_and_grads(model, cfg, seed=4):
    from tests.unit.test_packed_attention import _sample

    g = torch.Generator().manual_seed(seed)
    tokens, pixels = _sample(g, cfg.data.seq_length, cfg, True)
    labels = torch.roll(tokens, -1)[None]
    model.zero_grad()
    loss = model(tokens[None], torch.arange(tokens.numel())[None], labels=labels,
                 pixel_values=pixels).sum()
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()
                           if p.grad is not None}


def test_fused_model_matches_unfused_model(build_tiny):
    """The tiny SAIL-VL (ViT, adapter, LLM) with fused RMSNorm and SwiGLU against all levers
    off: the same loss and the same gradient for every parameter, to fp32 rounding."""
    from tests.unit.test_packed_attention import _copy_weights

    off = ["performance.rmsnorm=unfused", "performance.swiglu_fusion=false"]
    cfg, _, ref = build_tiny(*off)
    _, _, fused = build_tiny()
    assert fused.language_model.config.bias_activation_fusion
    assert fused.vision.blocks.config.bias_activation_fusion
    assert fused.language_model.decoder.final_layernorm.fused
    assert not ref.language_model.decoder.final_layernorm.fused
    _copy_weights(ref, fused)
    loss_ref, grads_ref = _loss_and_grads(ref, cfg)
    loss, grads = _loss_and_grads(fused, cfg)
    llm, vit = cfg.model.llm, cfg.model.vision
    depth = llm.num_layers + vit.num_layers
    widest = max(llm.ffn_hidden_size, vit.ffn_hidden_size, cfg.data.seq_length)
    assert abs(loss - loss_ref).item() <= fp32_tolerance(loss_ref.abs().item(), widest, depth)
    assert grads.keys() == grads_ref.keys()
    for name, g_ref in grads_ref.items():
        # a gradient sums over every token of the sequence as well
        tol = fp32_tolerance(g_ref.abs().max().item(), widest * cfg.data.seq_length, depth)
        assert (grads[name] - g_ref).abs().max().item() <= tol, name


def _errors(*overrides, cuda=False):
    from megatron_sail.config import load_config
    from megatron_sail.config.performance import performance_errors
    from tests.helpers import TINY

    return performance_errors(load_config(TINY, list(overrides)), cuda)


def test_levers_that_cannot_run_are_config_errors():
    assert _errors() == []  # the defaults run on CPU
    assert _errors("train.precision=bf16", "performance.grad_reduce_dtype=bf16",
                   "performance.cross_entropy_fusion=true") == []
    (rope,) = _errors("performance.rope_fusion=true")
    assert "Transformer Engine" in rope
    (ce,) = _errors("performance.cross_entropy_fusion=true")  # tiny trains in fp32
    assert "train.precision=bf16" in ce
    (grads,) = _errors("performance.grad_reduce_dtype=bf16")
    assert "train.precision=bf16" in grads
    assert len(_errors("performance.overlap_param_gather=true",
                       "parallel.use_distributed_optimizer=false",
                       "performance.overlap_grad_reduce=false")) == 2
    (graphs,) = _errors("performance.cuda_graphs=true")
    assert "CUDA GPU" in graphs
    packed = _errors("performance.cuda_graphs=true", "data.dataset=blend", "data.packing=true",
                     "model.llm_recompute=full", cuda=True)
    assert any("data.packing=false" in e for e in packed)
    assert any("llm_recompute" in e for e in packed)


def test_resolve_layout_reports_them_with_the_others():
    from megatron_sail.config import ConfigError, load_config
    from megatron_sail.config.validation import resolve_layout
    from tests.helpers import TINY

    cfg = load_config(TINY, ["performance.cuda_graphs=true", "parallel.tensor_model_parallel_size=3"])
    with pytest.raises(ConfigError) as err:
        resolve_layout(cfg, 3)
    assert "performance.cuda_graphs" in str(err.value) and "tensor_model_parallel_size" in str(err.value)


def test_config_maps_onto_megatron_settings():
    from megatron_sail.config import load_config
    from megatron_sail.config.validation import resolve_layout
    from megatron_sail.models.builder import adapter_config, llm_config, vision_config
    from megatron_sail.training.optimizer import ddp_config_of
    from tests.helpers import TINY

    cfg = load_config(TINY, ["train.precision=bf16", "performance.grad_reduce_dtype=bf16"])
    layout = resolve_layout(cfg, 1)
    llm = llm_config(cfg, layout)
    assert llm.bias_activation_fusion and vision_config(cfg, layout).bias_activation_fusion
    assert not adapter_config(cfg, layout).bias_activation_fusion  # exact GELU kept
    assert llm.cross_entropy_loss_fusion and llm.cross_entropy_fusion_impl == "native"
    assert not llm.apply_rope_fusion and llm.cuda_graph_impl == "none"
    ddp = ddp_config_of(cfg, dp=1, cuda_available=False)
    assert not ddp.grad_reduce_in_fp32 and not ddp.overlap_grad_reduce
    assert ddp_config_of(cfg, dp=2, cuda_available=True).overlap_grad_reduce  # auto: GPU, DP > 1
    assert not ddp_config_of(cfg, dp=2, cuda_available=False).overlap_grad_reduce
    fp32 = load_config(TINY, [])
    assert not llm_config(fp32, resolve_layout(fp32, 1)).cross_entropy_loss_fusion  # auto: bf16 only
    assert ddp_config_of(fp32, 1, False).grad_reduce_in_fp32
