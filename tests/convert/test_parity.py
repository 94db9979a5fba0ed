"""Logits parity with the transformers-based reference (fp32, within the rounding bound of
``tests.helpers.fp32_tolerance``): ``verify`` at PP=2 with
tied embeddings, ``sail forward`` loading imports at another TP than they were written with,
and checkpoints made by ``init-from`` (Qwen3, and Qwen3-MoE against Qwen3MoeForCausalLM),
trained two steps (MoE at EP=2), exported and verified at TP=1."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from megatron_sail.convert import cli, forward_cli
from megatron_sail.convert.forward import write_inputs
from megatron_sail.convert.reference import ReleaseReference
from megatron_sail.convert.verify import make_inputs
from tests.convert.fixtures import LLM, VIT, edit_common, write_base_models
from tests.convert.test_roundtrip import load_dir
from tests.helpers import fp32_tolerance

# The fixture models' longest sum (hidden, FFN, sequence of up to 40 tokens) and the layers
# on the path: ViT, the adapter's two linears, LLM.
REDUCTION = max(VIT["hidden_size"], VIT["intermediate_size"], LLM["hidden_size"],
                LLM["intermediate_size"], 40)
DEPTH = VIT["num_hidden_layers"] + 2 + LLM["num_hidden_layers"]


def limit(max_abs_logit: float) -> float:
    return fp32_tolerance(max_abs_logit, REDUCTION, DEPTH)


def run_verify(capsys, hf, ckpt, *extra) -> tuple[float, float]:
    """(max abs diff, its fp32 bound) of ``sail convert verify``."""
    code = cli.main(["verify", "--hf", str(hf), "--ckpt", str(ckpt), *extra])
    captured = capsys.readouterr()
    out = captured.out
    print(out, captured.err[-3000:])
    assert code == 0 and "verify: OK" in out
    diff = float(re.search(r"max abs diff (\S+)", out).group(1))
    return diff, limit(float(re.search(r"max \|logit\| (\S+)\)", out).group(1)))


def test_verify_pp2_tied_embeddings(capsys, release, imported):
    diff, allowed = run_verify(capsys, release("tied"), imported("tied"), "--pp", "2")
    assert diff <= allowed


@pytest.mark.parametrize("name, tp", [("fp32", 2), ("bf16", 1)])
def test_sail_forward_on_another_layout_matches_reference(name, tp, release, imported, tmp_path):
    """Imports written at TP=1 (fp32) and TP=2 (bf16), each run at the other TP."""
    hf = release(name)
    reference = ReleaseReference(hf)
    img = 7
    ids, pixels = make_inputs(reference.model, img, seed=3, tiles=2, text=9)  # odd length: SP pads
    inputs, out = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    write_inputs(inputs, ids, pixels)
    code = forward_cli.main(["--ckpt", str(imported(name)), "--inputs", str(inputs), "--out",
                             str(out), "--tp", str(tp), "--img-context-token-id", str(img)])
    assert code == 0
    logits = load_file(str(out))["logits"]
    expected = reference.logits(ids, pixels, img)
    assert logits.dtype == torch.float32 and logits.shape == expected.shape == (2, 25, 300)
    diff = float((logits - expected).abs().max())
    allowed = limit(float(expected.abs().max()))
    print(f"sail forward --tp {tp} on the {name} import vs reference: max abs diff {diff:.3e} "
          f"(allowed {allowed:.3e})")
    assert diff <= allowed


@pytest.mark.parametrize("llm", ["dense", "moe"])
def test_init_from_train_export_verify(llm, capsys, sail, tmp_path):
    """init-from (tied Qwen3, or Qwen3-MoE), two training steps (the MoE one at EP=2, so its
    checkpoint and optimizer state are saved expert-parallel), export, verify at TP=1."""
    from megatron_sail.models.init import initial_value
    from tests.convert.fixtures import aimv2_to_release

    moe = llm == "moe"
    vision_dir, llm_dir = write_base_models(tmp_path, tied=not moe, moe=moe)
    ckpt = tmp_path / "init"
    assert cli.main(["init-from", "--vision", str(vision_dir), "--llm", str(llm_dir), "--out",
                     str(ckpt), "--seed", "7"]) == 0
    overrides = capsys.readouterr().out.split("checkpoint.load=")[1].split()[1:]
    if moe:  # the Qwen3-MoE config's routing settings travel with the architecture
        assert overrides[0] == "model.preset=tiny-moe"
        assert "model.moe.aux_loss_coeff=0.01" in overrides

    # the new checkpoint holds the base models' weights and a fresh adapter
    exported = tmp_path / "init_hf"
    assert cli.main(["export-hf", "--ckpt", str(ckpt), "--out", str(exported)]) == 0
    got = load_dir(exported)
    vision = aimv2_to_release(load_file(str(vision_dir / "model.safetensors")))
    base_llm = load_file(str(llm_dir / "model.safetensors"))
    assert all(torch.equal(got[k], v) for k, v in vision.items())
    assert all(torch.equal(got["language_model." + k], v) for k, v in base_llm.items())
    assert len(got) == len(vision) + len(base_llm) + 6 + (0 if moe else 1)  # mlp1, tied lm_head
    fresh = initial_value("adapter.mlp.linear_fc1.weight", (64, 256), 7, (), 0.02,
                          {"llm": 4, "vision": 2})
    assert torch.equal(got["mlp1.1.weight"], fresh)
    assert not got["mlp1.1.bias"].any() and torch.equal(got["mlp1.0.weight"], torch.ones(256))

    run = tmp_path / "run"
    layout = ["parallel.expert_model_parallel_size=2"] if moe else []
    sail.train(run, f"checkpoint.load={ckpt}", "train.train_iters=2",
               "checkpoint.save_interval=null", "train.eval_interval=null",
               "run.tensorboard=false", *overrides, *layout, nproc=2 if moe else 1)
    marker = json.loads((run / "checkpoints" / "iter_0000002" / "sail_checkpoint.json").read_text())
    assert marker["layout"]["ep"] == (2 if moe else 1)
    trained = tmp_path / "trained_hf"
    assert cli.main(["export-hf", "--ckpt", str(run / "checkpoints"), "--out", str(trained)]) == 0
    after = load_dir(trained)
    assert not torch.equal(after["mlp1.1.weight"], got["mlp1.1.weight"])  # it did train
    if moe:
        expert = "language_model.model.layers.0.mlp.experts.7.up_proj.weight"  # on EP rank 1
        assert not torch.equal(after[expert], got[expert])
        # As if trained on GPUs with TE and grouped-GEMM experts (which share the sequential
        # experts' checkpoint format): verify still runs it on CPU with local layers.
        def as_on_gpus(common):
            model = common["sail"]["config"]["model"]
            model["transformer_impl"], model["moe"]["grouped_gemm"] = "transformer_engine", True

        edit_common(run / "checkpoints" / "iter_0000002", as_on_gpus)
    diff, allowed = run_verify(capsys, trained, run / "checkpoints")
    assert diff <= allowed
