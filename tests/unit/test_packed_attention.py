"""The local core attention: the fused (SDPA) path equals Megatron's unfused math, and a
packed row gives every sample exactly the logits it gets alone (no attention or rotary
position leaks across a sample boundary)."""

from __future__ import annotations

import pytest
import torch

from megatron_sail.data.packing.microbatch import MicroBatch
from megatron_sail.training.step import packed_seq_params

IMG = 5


def _copy_weights(src, dst):
    dst.load_state_dict(src.state_dict(), strict=False)
    for (name, a), (_, b) in zip(src.named_parameters(), dst.named_parameters()):
        assert torch.equal(a, b), name


def _sample(g, length, cfg, with_image):
    vit = cfg.model.vision
    n_img = (vit.image_size // vit.patch_size // 2) ** 2 if with_image else 0
    tokens = torch.randint(10, cfg.model.llm.vocab_size, (length,), generator=g)
    if with_image:
        tokens[1:1 + n_img] = IMG
    pixels = torch.randn(1, 3, vit.image_size, vit.image_size, generator=g) if with_image else None
    return tokens, pixels


@pytest.mark.parametrize("impl", ["sdpa", "unfused"])
def test_sdpa_matches_unfused(build_tiny, impl):
    torch.manual_seed(0)
    cfg, _, ref = build_tiny("model.attention=unfused")
    _, _, model = build_tiny(f"model.attention={impl}")
    _copy_weights(ref, model)
    g = torch.Generator().manual_seed(1)
    tokens, pixels = _sample(g, cfg.data.seq_length, cfg, True)
    pos = torch.arange(tokens.numel())[None]
    with torch.no_grad():
        a = ref(tokens[None], pos, pixel_values=pixels)
        b = model(tokens[None], pos, pixel_values=pixels)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()


def test_packed_row_equals_samples_alone(build_tiny):
    cfg, _, model = build_tiny()
    model.eval()
    g = torch.Generator().manual_seed(2)
    vit = cfg.model.vision
    n_img = (vit.image_size // vit.patch_size // 2) ** 2
    lengths = [n_img + 7, 11, n_img + 3]
    samples = [_sample(g, n, cfg, n > n_img) for n in lengths]
    seq = sum(lengths) + 5  # trailing padding segment
    tokens = torch.zeros(seq, dtype=torch.long)
    positions = torch.zeros(seq, dtype=torch.long)
    bounds = [0]
    for t, _ in samples:
        start = bounds[-1]
        tokens[start:start + t.numel()] = t
        positions[start:start + t.numel()] = torch.arange(t.numel())
        bounds.append(start + t.numel())
    positions[bounds[-1]:] = torch.arange(seq - bounds[-1])
    bounds.append(seq)
    pixels = torch.cat([p for _, p in samples if p is not None])
    batch = MicroBatch(tokens[None], positions[None], tokens[None], torch.ones(1, seq), pixels,
                       cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
                       max_seqlen=max(b - a for a, b in zip(bounds[:-1], bounds[1:])))
    with torch.no_grad():
        packed = model(batch.tokens, batch.position_ids, pixel_values=batch.pixel_values,
                       packed_seq_params=packed_seq_params(batch))[0]
        for (t, p), start in zip(samples, bounds):
            alone = model(t[None], torch.arange(t.numel())[None], pixel_values=p)[0]
            got = packed[start:start + t.numel()]
            assert torch.allclose(got, alone, atol=2e-5, rtol=1e-4), (got - alone).abs().max()


def test_packed_row_must_be_one_row():
    cu = torch.tensor([0, 2, 4], dtype=torch.int32)
    batch = MicroBatch(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long),
                       torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4), None,
                       cu_seqlens=cu, max_seqlen=2)
    with pytest.raises(ValueError, match="one row"):
        packed_seq_params(batch)


def test_anyres_images_packed_in_the_vit_equal_each_alone(build_tiny):
    """Variable-resolution images in one packed ViT sequence (AnyRes) give each image the
    features it gets alone; the patch layout matches the conv patchify."""
    from megatron_sail.data.media.anyres import patchify

    cfg, _, model = build_tiny()
    model.eval()
    patch = cfg.model.vision.patch_size
    g = torch.Generator().manual_seed(3)
    images = [torch.randn(3, 4 * patch, 6 * patch, generator=g),
              torch.randn(3, 2 * patch, 2 * patch, generator=g),
              torch.randn(3, 8 * patch, 4 * patch, generator=g)]
    pieces = [patchify(img, patch) for img in images]
    patches = torch.cat([p for p, _ in pieces])
    grids = torch.tensor([grid for _, grid in pieces])
    with torch.no_grad():
        packed = model.vision.forward_packed(patches, grids)
        for img, feats in zip(images, packed):
            alone = model.vision(img[None])[0]
            assert feats.shape == alone.shape
            assert torch.allclose(feats, alone, atol=1e-5, rtol=1e-4), (feats - alone).abs().max()
        # and through the adapter into visual tokens, 1/4 of the patches each
        tokens = model._visual(patches, grids)
    assert tokens.shape[0] == sum(p.shape[0] for p, _ in pieces) // 4
