"""The multimodal loader over a real JSONL dataset with planted bad samples: every bad sample
is skipped and reported once by file, no good sample is lost, a resumed loader replays the
uninterrupted stream exactly (with or without worker processes), and the global batch does
not depend on the data-parallel size."""

from __future__ import annotations

import hashlib

import pytest

from megatron_sail.config import load_config
from megatron_sail.data.loader.build import build_batches
from megatron_sail.data.loader.multimodal import DataStateError
from tests.data.dataset_fixtures import make_dataset
from tests.helpers import TINY

SEQ = 256


def stream_digest(batches: list) -> str:
    """A short hash of micro-batch contents."""
    h = hashlib.sha256()
    for b in batches:
        for t in (b.tokens, b.labels, b.loss_mask, b.cu_seqlens, b.pixel_values, b.image_grids):
            if t is not None:
                h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("planted"))


def _cfg(*extra):
    return load_config(TINY, ["data.dataset=blend", "data.packing=true", f"data.seq_length={SEQ}",
                              "data.max_tiles=4", "data.num_frames=4", "train.micro_batch_size=1",
                              "train.global_batch_size=4", *extra])


def _loader(tokenizer, path, *extra, dp_rank=0, dp_size=1, state=None, workers=0):
    return build_batches(_cfg(f"data.blend={path}", *extra), tokenizer, "train", dp_rank,
                         dp_size, state=state, num_workers=workers)


def test_bad_samples_are_skipped_once_and_good_ones_all_kept(tokenizer, dataset):
    loader = _loader(tokenizer, dataset.jsonl)
    size = len(loader.samples.sources[0])
    seen, skips = [], []
    def pending(state):  # first-epoch samples not yet read, or read but still carried
        return state["next_position"] < size or any(p < size for p in state["carry"])

    while pending(loader.state_dict()["packing"]):
        batch = loader.next_global_batch()
        seen += batch.positions
        skips += batch.skips
        for mb in batch.microbatches:
            assert mb.tokens.shape == (1, SEQ) and int(mb.cu_seqlens[-1]) == SEQ
    first_epoch = [p for p in seen if p < size]
    assert len(first_epoch) == len(set(first_epoch))
    reported = {s.kind: s.where for s in skips if s.position < size}
    assert set(reported) == set(dataset.bad)
    for kind, where in dataset.bad.items():
        assert where in reported[kind], (kind, reported[kind])
    # planning-time skips never enter a batch; decode-time ones keep a padded place
    never_batched = {s.position for s in skips if s.kind in
                     ("malformed_record", "media_missing", "too_long")}
    assert not never_batched & set(seen)
    assert set(first_epoch) | {p for p in never_batched if p < size} == set(range(size))
    counts = loader.state_dict()["skipped"]
    assert sum(counts.values()) >= len(dataset.bad)
    loader.close()


@pytest.mark.parametrize("packing", [True, False])
def test_resume_replays_the_same_stream(tokenizer, dataset, packing):
    extra = [f"data.packing={packing}"] + ([] if packing else ["train.micro_batch_size=2"])
    straight = _loader(tokenizer, dataset.jsonl, *extra, workers=2)
    expected = [stream_digest(straight.next_global_batch().microbatches) for _ in range(6)]
    straight.close()

    first = _loader(tokenizer, dataset.jsonl, *extra)
    got = [stream_digest(first.next_global_batch().microbatches) for _ in range(3)]
    state = first.state_dict()
    first.close()
    resumed = _loader(tokenizer, dataset.jsonl, *extra, state=state)
    got += [stream_digest(resumed.next_global_batch().microbatches) for _ in range(3)]
    assert got == expected


def test_global_batch_does_not_depend_on_dp_size(tokenizer, dataset):
    one = _loader(tokenizer, dataset.jsonl)
    ranks = [_loader(tokenizer, dataset.jsonl, dp_rank=r, dp_size=2) for r in range(2)]
    for _ in range(4):
        whole = one.next_global_batch()
        parts = [r.next_global_batch() for r in ranks]
        assert parts[0].positions == parts[1].positions == whole.positions
        rows = sorted(stream_digest([mb]) for p in parts for mb in p.microbatches)
        assert rows == sorted(stream_digest([mb]) for mb in whole.microbatches)
    # the stream state (not the decode-skip counters, gathered over the DP group in training)
    # is the same: a DP=2 checkpoint resumes at DP=1 and vice versa
    assert ranks[0].state_dict()["packing"] == one.state_dict()["packing"]


def test_resume_over_a_different_dataset_is_refused(tokenizer, dataset, tmp_path):
    loader = _loader(tokenizer, dataset.jsonl)
    loader.next_global_batch()
    state = loader.state_dict()
    other = make_dataset(tmp_path, good=10, bad=False)
    with pytest.raises(DataStateError, match="changed since the checkpoint"):
        _loader(tokenizer, other.jsonl, state=state)


def test_anyres_batches_run_through_the_model(tokenizer, dataset, build_tiny):
    """AnyRes: every image at its own patch grid; the packed row's <IMG_CONTEXT> count equals
    the ViT patches / 4, and the model consumes the micro-batch (packed text and images)."""
    import torch

    from megatron_sail.data.packing.microbatch import normalize_pixels
    from megatron_sail.training.step import packed_seq_params

    _, _, model = build_tiny(img_context_id=tokenizer.img_context_id)
    loader = _loader(tokenizer, dataset.jsonl, "data.anyres=true", "data.anyres_max_tokens=64")
    grids_seen = set()
    for _ in range(3):
        for mb in loader.next_global_batch().microbatches:
            if mb.pixel_values is None:
                continue
            grids = mb.image_grids
            assert mb.pixel_values.shape == (int((grids[:, 0] * grids[:, 1]).sum()), 3 * 14 * 14)
            context = int((mb.tokens == tokenizer.img_context_id).sum())
            assert context == int((grids[:, 0] * grids[:, 1]).sum()) // 4
            grids_seen |= {tuple(g) for g in grids.tolist()}
            with torch.no_grad():
                logits = model(mb.tokens, mb.position_ids, pixel_values=normalize_pixels(
                    mb.pixel_values), packed_seq_params=packed_seq_params(mb),
                    image_grids=grids)
            assert logits.shape[:2] == (1, SEQ) and torch.isfinite(logits).all()
    assert len(grids_seen) > 2  # images keep their own aspect ratios
    loader.close()


def test_prepared_shards_and_blends(tokenizer, dataset, tmp_path):
    """`sail data prepare` output trains the same way (lengths from the index, bad samples
    already dropped), and a blend mixes a shard directory with a JSONL file by weight."""
    from megatron_sail.data.check import Settings, prepare

    settings = Settings(image_size=112, max_tiles=4, num_frames=4,
                        tokenizer=tokenizer.model_path, seq_length=SEQ)
    report, index = prepare([str(dataset.jsonl)], str(tmp_path / "shards"), settings,
                            shard_size=20_000)
    assert len(index) == dataset.good and len(index.shards) > 1
    shards = _loader(tokenizer, tmp_path / "shards")
    assert shards.samples.sources[0]._stored_plan_usable(shards.samples.encoder)
    for _ in range(3):
        batch = shards.next_global_batch()
        assert not batch.skips and batch.metrics["packing_efficiency"] > 0.5

    blend = tmp_path / "blend.yaml"
    blend.write_text(f"datasets:\n  - path: shards\n    weight: 3\n"
                     f"  - path: {dataset.jsonl}\n    weight: 1\n")
    mixed = _loader(tokenizer, blend)
    positions = [p for _ in range(4) for p in mixed.next_global_batch().positions]
    sources = [mixed.samples.schedule.source_of(p)[0] for p in positions]
    assert 0.6 < sources.count(0) / len(sources) < 0.9  # weight 3:1, skips aside


def test_shard_members_that_are_links_are_skipped_and_named(tokenizer, dataset, tmp_path):
    """A tar member that is a symbolic link (or any other non-file) is never followed: its
    sample is skipped as ``unsafe_member``, named by shard and member, and training goes on."""
    import tarfile

    from megatron_sail.data.check import Settings, prepare
    from megatron_sail.data.records.shards import ShardReader
    from tests.data.dataset_fixtures import replace_member

    settings = Settings(image_size=112, max_tiles=4, num_frames=4,
                        tokenizer=tokenizer.model_path, seq_length=SEQ)
    prepare([str(dataset.jsonl)], str(tmp_path / "shards"), settings)
    reader = ShardReader(str(tmp_path / "shards"))
    key = next(i for i in range(len(reader)) if reader.index.image_sizes[i])
    member = next(name for name in reader.members(key) if ".img0." in name)
    tar_path = replace_member(tmp_path / "shards", member, tarfile.SYMTYPE, "../../etc/passwd")
    loader = _loader(tokenizer, tmp_path / "shards")
    size = len(loader.samples.sources[0])
    skips = []
    while loader.state_dict()["packing"]["next_position"] < size:
        skips += loader.next_global_batch().skips
    (skip,) = [s for s in skips if s.position < size]
    assert skip.kind == "unsafe_member"
    assert skip.where.startswith(f"{tar_path}:{member}: unsafe_member: symbolic link")
    assert loader.state_dict()["skipped"] == {"unsafe_member": 1}
    loader.close()


def test_dali_cpu_image_decoding_gives_the_same_batches(tokenizer, dataset):
    """DALI's CPU decoder (libjpeg-turbo) feeds the same tiles as Pillow."""
    pillow = _loader(tokenizer, dataset.jsonl, "data.image_decoder=pillow")
    dali = _loader(tokenizer, dataset.jsonl, "data.image_decoder=dali-cpu")
    assert dali.samples.encoder.image_decoder == "dali-cpu"
    for _ in range(3):
        a, b = pillow.next_global_batch(), dali.next_global_batch()
        assert a.positions == b.positions
        assert stream_digest(a.microbatches) == stream_digest(b.microbatches)


def test_workers_can_be_spawned(tokenizer, dataset):
    """Spawned workers (used when a decoder may run CUDA) give the forked workers' batches."""
    import dataclasses

    forked = _loader(tokenizer, dataset.jsonl, workers=1)
    spawned = _loader(tokenizer, dataset.jsonl, workers=1)
    spawned.settings = dataclasses.replace(spawned.settings, spawn_workers=True)
    for _ in range(2):
        assert stream_digest(forked.next_global_batch().microbatches) == \
            stream_digest(spawned.next_global_batch().microbatches)
    forked.close()
    spawned.close()
