"""GPU self-check of a user's node: do the paths that cannot run on CPU agree with the ones
that are tested there?

    python tools/gpu_selfcheck.py [--json]        # one GPU; exit status 1 if a check fails

1. Transformer Engine layer specs vs the local specs: same weights, same batch, logits in fp32
   (tight) and bf16 (flash attention; loose).
2. FP8 (TE, hybrid, delayed scaling) vs BF16: the loss curve of a few training steps.
3. Grouped-GEMM experts vs sequential experts (TE, tiny-moe): the same losses over a few steps.
4. DALI's GPU ("mixed") decoders vs the CPU paths: VP9 and H.264 frames against DALI CPU /
   PyAV, JPEG against Pillow (NVDEC / nvJPEG may round colour conversion differently: the
   check allows a mean difference of 1.5 levels and reports the maximum).
5. The local spec's attention on CUDA (no Transformer Engine needed): torch SDPA vs Megatron's
   unfused math, and a packed row (THD, cu_seqlens) vs its samples run one by one.
6. Weight initialisation drawn on the GPU vs on the CPU (the same values to the last bit of
   fp32's log/cos).

Models are the tiny presets (dimensions are multiples of 16, as FP8 needs) on a one-rank
world. Weights come from the layout-independent initialiser, keyed by checkpoint names, so
the two sides of every comparison start identical when their checkpoint keys agree (checked).

UNVERIFIED: written without a GPU; the first run on a GPU node is its own test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "examples" / "tiny" / "pretrain.yaml")
IMG_CONTEXT = 5  # any id outside the random text range below


@dataclass
class Check:
    name: str
    status: str  # PASS | FAIL | SKIP
    detail: str


def _world() -> None:
    """One-rank NCCL world with TP = PP = EP = 1 (shared by every model built here)."""
    import torch

    from megatron_sail.config import load_config
    from megatron_sail.config.validation import resolve_layout
    from megatron_sail.distributed.runtime import (
        detect_env, init_model_parallel, init_process_group,
    )

    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_ID"):
        os.environ.pop(key, None)
    if not torch.distributed.is_initialized():
        init_process_group(detect_env())
        init_model_parallel(resolve_layout(load_config(TINY, []), 1, True, False), seed=1234)
    # Plain fp32 GEMMs on both sides of the fp32 comparison.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _config(*overrides: str):
    from megatron_sail.config import load_config

    # constant learning rate: a few steps, no warm-up
    return load_config(TINY, ["run.tensorboard=false", "optimizer.lr_warmup_iters=0",
                              "optimizer.lr_decay_style=constant", *overrides])


def _batches(cfg, count: int, seed: int = 0):
    """``count`` micro-batches of random text around one tile of random pixels each."""
    import torch

    from megatron_sail.config.presets import tokens_per_tile
    from megatron_sail.data.packing.microbatch import MicroBatch

    g = torch.Generator().manual_seed(seed)
    b, s = cfg.train.micro_batch_size, cfg.data.seq_length
    vit = cfg.model.vision
    size = cfg.data.image_size or vit.image_size
    n_img = tokens_per_tile(size, vit.patch_size)
    out = []
    for _ in range(count):
        tokens = torch.randint(10, cfg.model.llm.vocab_size, (b, s), generator=g)
        tokens[:, 1:1 + n_img] = IMG_CONTEXT
        mask = torch.ones(b, s)
        mask[:, :1 + n_img] = 0
        out.append(MicroBatch(tokens, torch.arange(s).expand(b, s).contiguous(),
                              torch.roll(tokens, -1, dims=1), mask,
                              torch.randn(b, 3, size, size, generator=g)))
    return out


def _build(cfg):
    from megatron_sail.config.validation import resolve_layout
    from megatron_sail.models.builder import build_model
    from megatron_sail.training.trainer import transformer_engine_available

    layout = resolve_layout(cfg, 1, True, transformer_engine_available())
    return build_model(cfg, layout, IMG_CONTEXT)


def _weights(chunk) -> dict:
    """Full tensors by checkpoint key (one rank holds everything)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    out = {}
    for key, item in chunk.sharded_state_dict().items():
        if isinstance(item, ShardedTensorFactory):
            built = item.build()
            items = built.values() if isinstance(built, dict) else built
        else:
            items = [item]
        for sh in items:
            if isinstance(sh, ShardedTensor) and sh.data is not None:
                out[f"{sh.key}@{tuple(sh.global_offset)}"] = sh.data.detach().float().cpu()
    return out


def _same_weights(a, b) -> str | None:
    """None when both chunks hold identical tensors under identical checkpoint keys."""
    import torch

    wa, wb = _weights(a), _weights(b)
    if set(wa) != set(wb):
        only_a, only_b = sorted(set(wa) - set(wb))[:4], sorted(set(wb) - set(wa))[:4]
        return f"checkpoint keys differ: only first {only_a}, only second {only_b}"
    for key in wa:
        if wa[key].shape != wb[key].shape:
            return f"{key}: shapes {tuple(wa[key].shape)} vs {tuple(wb[key].shape)}"
        if not torch.equal(wa[key], wb[key]):
            return f"{key}: initial values differ"
    return None


def check_te_vs_local() -> list[Check]:
    import torch

    checks = []
    for precision, tol in (("fp32", 1e-3), ("bf16", 5e-2)):
        cfg_local = _config(f"train.precision={precision}")
        cfg_te = _config(f"train.precision={precision}",
                         "model.transformer_impl=transformer_engine")
        local, te = _build(cfg_local).chunks[0], _build(cfg_te).chunks[0]
        problem = _same_weights(local, te)
        name = f"TE spec vs local spec logits ({precision})"
        if problem:
            checks.append(Check(name, "FAIL", problem))
            continue
        (batch,) = _batches(cfg_local, 1)
        batch = batch.to(torch.device("cuda"))
        logits = []
        with torch.no_grad():
            for model in (local, te):
                model.eval()
                logits.append(model(batch.tokens, batch.position_ids,
                                    pixel_values=batch.pixel_values).float())
        scale = logits[0].abs().max().item()
        diff = (logits[0] - logits[1]).abs().max().item()
        status = "PASS" if diff <= tol * scale else "FAIL"
        checks.append(Check(name, status, f"max |logit difference| {diff:.3g} vs max |logit| "
                                          f"{scale:.3g} (tolerance {tol:g} relative)"))
    return checks


def _train_losses(cfg, steps: int) -> list[float]:
    from megatron.core.distributed import finalize_model_grads

    from megatron_sail.training.optimizer import build_optimizer, build_scheduler, wrap_ddp
    from megatron_sail.training.step import run_step

    build = _build(cfg)
    model = wrap_ddp(cfg, build.chunks, build.llm_config)
    optimizer = build_optimizer(cfg, model)
    build.llm_config.finalize_model_grads_func = finalize_model_grads
    build.llm_config.grad_scale_func = optimizer.scale_loss
    build.llm_config.no_sync_func = model[0].no_sync
    scheduler = build_scheduler(cfg, optimizer, steps)
    batches = _batches(cfg, cfg.train.global_batch_size // cfg.train.micro_batch_size)
    losses = []
    for _ in range(steps):  # the same global batch each step: a curve that must go down
        for chunk in model:
            chunk.train()
        losses.append(run_step(model, optimizer, scheduler, batches, cfg.data.seq_length,
                               cfg.train.micro_batch_size).loss)
    return losses


def _compare_curves(name: str, reference: list[float], other: list[float], rel: float) -> Check:
    worst = max(abs(a - b) / abs(a) for a, b in zip(reference, other))
    learned = other[-1] < other[0] and reference[-1] < reference[0]
    status = "PASS" if worst <= rel and learned else "FAIL"
    return Check(name, status, f"largest relative loss difference {worst:.3g} (tolerance "
                               f"{rel:g}); losses {['%.4f' % x for x in reference]} vs "
                               f"{['%.4f' % x for x in other]}")


def check_fp8_vs_bf16(steps: int = 8) -> list[Check]:
    common = ["model.transformer_impl=transformer_engine", "train.precision=bf16",
              f"train.train_iters={steps}"]
    bf16 = _train_losses(_config(*common), steps)
    fp8 = _train_losses(_config(*common, "model.fp8=hybrid", "model.fp8_recipe=delayed"), steps)
    return [_compare_curves("FP8 (hybrid, delayed) vs BF16 loss curve", bf16, fp8, 0.05)]


def check_grouped_gemm(steps: int = 4) -> list[Check]:
    from megatron_sail.config.presets import PRESETS

    name = "grouped-GEMM vs sequential experts"
    if "tiny-moe" not in PRESETS:
        return [Check(name, "SKIP", "no tiny-moe preset in this tree")]
    common = ["model.preset=tiny-moe", "model.transformer_impl=transformer_engine",
              "train.precision=bf16", f"train.train_iters={steps}"]
    seq_cfg = _config(*common, "model.moe.grouped_gemm=false")
    grp_cfg = _config(*common, "model.moe.grouped_gemm=true")
    problem = _same_weights(_build(seq_cfg).chunks[0], _build(grp_cfg).chunks[0])
    if problem:
        return [Check(name, "FAIL", problem)]
    return [_compare_curves(name, _train_losses(seq_cfg, steps), _train_losses(grp_cfg, steps),
                            0.02)]


def _forward(model, tokens, pixels, packed=None):
    import torch

    positions = torch.arange(tokens.shape[-1], device=tokens.device)[None]
    with torch.no_grad():
        return model(tokens[None], positions, pixel_values=pixels, packed_seq_params=packed)[0]


def check_local_attention() -> list[Check]:
    """SDPA vs unfused logits, and packed rows vs samples alone, on the GPU."""
    import torch

    from megatron_sail.data.packing.microbatch import MicroBatch
    from megatron_sail.training.step import packed_seq_params

    checks = []
    for precision, tol in (("fp32", 1e-4), ("bf16", 5e-2)):
        cfg_u = _config(f"train.precision={precision}", "model.attention=unfused")
        cfg_s = _config(f"train.precision={precision}", "model.attention=sdpa")
        unfused, sdpa = _build(cfg_u).chunks[0], _build(cfg_s).chunks[0]
        (batch,) = _batches(cfg_u, 1)
        batch = batch.to(torch.device("cuda"))
        logits = []
        for model in (unfused, sdpa):
            model.eval()
            logits.append(_forward(model, batch.tokens[0], batch.pixel_values[:1]).float())
        scale = logits[0].abs().max().item()
        diff = (logits[0] - logits[1]).abs().max().item()
        checks.append(Check(f"local attention: SDPA vs unfused logits ({precision})",
                            "PASS" if diff <= tol * scale else "FAIL",
                            f"max |difference| {diff:.3g} vs max |logit| {scale:.3g}"))

        # Three samples (image, text, image) and a padding segment in one packed row.
        lengths = [batch.tokens.shape[1], 23, batch.tokens.shape[1] - 5]
        g = torch.Generator().manual_seed(7)
        samples = [batch.tokens[0, :lengths[0]],
                   torch.randint(10, cfg_s.model.llm.vocab_size, (lengths[1],), generator=g).cuda(),
                   batch.tokens[0, :lengths[2]]]
        pixels = [batch.pixel_values[:1], None, batch.pixel_values[:1]]
        pad = 9
        row = torch.cat([*samples, torch.zeros(pad, dtype=torch.long, device="cuda")])
        bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist(), row.numel()],
                              dtype=torch.int32)
        mb = MicroBatch(row[None], row[None], row[None], torch.ones(1, row.numel()), None,
                        cu_seqlens=bounds.cuda(), max_seqlen=max(lengths))
        packed = _forward(sdpa, row, torch.cat([p for p in pixels if p is not None]),
                          packed_seq_params(mb)).float()
        worst = 0.0
        for tokens, pix, start in zip(samples, pixels, bounds.tolist()):
            alone = _forward(sdpa, tokens, pix).float()
            worst = max(worst, (packed[start:start + tokens.numel()] - alone).abs().max().item())
        checks.append(Check(f"local attention: packed row vs samples alone ({precision})",
                            "PASS" if worst <= tol * scale else "FAIL",
                            f"max |difference| {worst:.3g} vs max |logit| {scale:.3g}"))
    return checks


def _clip(codec: str, frames: int = 24, size: int = 96) -> bytes:
    """A small moving-gradient clip encoded with PyAV."""
    import io

    import av
    import numpy as np

    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4" if codec == "libx264" else "webm") as container:
        stream = container.add_stream(codec, rate=24)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        y, x = np.mgrid[0:size, 0:size]
        for t in range(frames):
            rgb = np.stack([(x * 2 + t * 5) % 256, (y * 2) % 256, (x + y + t * 9) % 256], -1)
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def _compare(name: str, a, b, mean_tol: float = 1.5) -> Check:
    import numpy as np

    a, b = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
    if a.shape != b.shape:
        return Check(name, "FAIL", f"shapes {a.shape} vs {b.shape}")
    diff = np.abs(a - b)
    return Check(name, "PASS" if diff.mean() <= mean_tol else "FAIL",
                 f"mean |difference| {diff.mean():.3f}, max {diff.max()} (0-255 levels)")


def check_initialisation() -> list[Check]:
    """Weights drawn on the GPU equal those drawn on the CPU (the generator is counter-based:
    integer steps are exact anywhere; the fp32 log/cos may differ in the last bit)."""
    import torch

    from megatron_sail.models.init import initial_block

    key = "language_model.decoder.layers.mlp.linear_fc1.weight"
    shape, offsets, block = (4096, 2048), (1024, 512), (2048, 1024)  # a TP shard of both axes
    cpu = initial_block(key, shape, offsets, block, 1234, (3,), 0.02, {"llm": 28})
    gpu = initial_block(key, shape, offsets, block, 1234, (3,), 0.02, {"llm": 28},
                        device=torch.device("cuda")).cpu()
    diff = (cpu - gpu).abs().max().item()
    bound = 4 * torch.finfo(torch.float32).eps * cpu.abs().max().item()
    return [Check("initial weights: GPU draw vs CPU draw", "PASS" if diff <= bound else "FAIL",
                  f"max |difference| {diff:.3g} (bound {bound:.3g}), "
                  f"{int((cpu != gpu).sum())} of {cpu.numel()} elements not bit-equal")]


def check_dali() -> list[Check]:
    from megatron_sail.data.media.backends import dali_available

    if not dali_available():
        return [Check("DALI GPU vs CPU frames", "SKIP", "nvidia.dali is not installed")]
    import io

    import numpy as np
    from PIL import Image

    from megatron_sail.data.media.images import decode_image, decode_images_dali
    from megatron_sail.data.media.video import decode_video

    checks = []
    for codec, cpu_backend in (("libvpx-vp9", "dali-cpu"), ("libx264", "pyav")):
        clip = _clip(codec)
        gpu = decode_video(clip, codec, num_frames=8, backend="dali-gpu")
        cpu = decode_video(clip, codec, num_frames=8, backend=cpu_backend)
        checks.append(_compare(f"DALI GPU vs {cpu_backend} frames ({codec})", gpu, cpu))
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(buf, "JPEG")
    (gpu_image,) = decode_images_dali([buf.getvalue()], ["jpeg"], device="mixed")
    checks.append(_compare("DALI GPU (nvJPEG) vs Pillow JPEG decode", gpu_image,
                           np.asarray(decode_image(buf.getvalue(), "jpeg")), mean_tol=2.0))
    return checks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true")
    ns = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_selfcheck: no CUDA GPU on this machine", file=sys.stderr)
        return 2
    from megatron_sail.training.trainer import transformer_engine_available

    _world()
    results: list[Check] = []
    if transformer_engine_available():
        for check in (check_te_vs_local, check_fp8_vs_bf16, check_grouped_gemm):
            try:
                results += check()
            except Exception as exc:  # a crash is a failed check, reported with the others
                results.append(Check(check.__name__, "FAIL", f"{type(exc).__name__}: {exc}"))
    else:
        for name in ("TE spec vs local spec logits", "FP8 vs BF16 loss curve",
                     "grouped-GEMM vs sequential experts"):
            results.append(Check(name, "SKIP", "Transformer Engine is not importable"))
    try:
        results += check_local_attention()
    except Exception as exc:
        results.append(Check("local attention", "FAIL", f"{type(exc).__name__}: {exc}"))
    try:
        results += check_initialisation()
    except Exception as exc:
        results.append(Check("initial weights on the GPU", "FAIL", f"{type(exc).__name__}: {exc}"))
    try:
        results += check_dali()
    except Exception as exc:
        results.append(Check("DALI GPU vs CPU frames", "FAIL", f"{type(exc).__name__}: {exc}"))
    if ns.json:
        print(json.dumps({"gpu": torch.cuda.get_device_name(0),
                          "checks": [asdict(c) for c in results]}, indent=1))
    else:
        print(f"GPU: {torch.cuda.get_device_name(0)}")
        for c in results:
            print(f"[{c.status}] {c.name}: {c.detail}")
    return 1 if any(c.status == "FAIL" for c in results) else 0


if __name__ == "__main__":
    sys.exit(main())
