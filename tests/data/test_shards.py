import json
import multiprocessing
import os
import pickle
import tarfile

import pytest

from megatron_sail.data.records.record import parse_record
from megatron_sail.data.records.reading import FileMedia
from megatron_sail.data.records.shards import INDEX_FILE, ShardIndex, ShardReader, ShardSample, ShardWriter
from tests.data.media_fixtures import chat, image_bytes, video_bytes, write


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six records with 0, 1 or 2 images or a video, their media on disk."""
    root = tmp_path_factory.mktemp("corpus")
    write(root / "a.jpg", image_bytes(64, 48, seed=1))
    write(root / "b.png", image_bytes(30, 90, "PNG", seed=2))
    write(root / "clip.mp4", video_bytes(frames=3))
    objs = [
        {"id": "t", "conversations": chat("hello", "hi", system="s")},
        {"image": "a.jpg", "conversations": chat("what?", "a cat")},
        {"image": ["a.jpg", "b.png"], "conversations": chat("<image>\n<image>\ncompare", "same")},
        {"video": "clip.mp4", "conversations": chat("<video>\nwhat happens?", "rain"), "loss": "answer_only"},
        {"image": "b.png", "conversations": chat("<image> 中文", "<think>x</think>y")},
        {"conversations": chat("only text " * 50, "ok " * 40)},
    ]
    records = [parse_record(o, "src.jsonl", i + 1, base_dir=str(root)) for i, o in enumerate(objs)]
    return root, records


def samples(records):
    media = FileMedia()
    return [ShardSample(r, {ref: media.read(ref) for ref in r.media}, r.where,
                        image_sizes=[(1, 1)] * len(r.images), video_frames=4 if r.video else None,
                        length=100 + i, visual_tokens=256 * len(r.images))
            for i, r in enumerate(records)]


def test_round_trip_keeps_records_and_media_bytes(tmp_path, corpus):
    _, records = corpus
    out = tmp_path / "shards"
    with ShardWriter(str(out), shard_size=1 << 20, settings={"image_size": 448}) as writer:
        for s in samples(records):
            writer.add(s)
    reader = ShardReader(str(out))
    assert len(reader) == len(records)
    for i, original in enumerate(records):
        got = reader.read(i)
        assert got.record.turns == original.turns and got.record.loss == original.loss
        assert got.record.id == original.id and got.origin == f"src.jsonl:{i + 1}"
        assert [got.media.read(m) for m in got.record.media] == [open(p, "rb").read() for p in original.media]
        assert got.record.where.endswith(f"{i:09d}.json (from src.jsonl:{i + 1})")
    index = ShardIndex.load(str(out))
    assert index.length == [100 + i for i in range(6)] and index.video_frames[3] == 4
    assert index.image_sizes[2] == [[1, 1], [1, 1]] and index.settings == {"image_size": 448}
    assert sorted(os.listdir(tmp_path)) == ["shards"]  # the temporary directory was renamed


def write_shards(out, records) -> None:
    with ShardWriter(str(out)) as writer:
        for s in samples(records):
            writer.add(s)


def test_webdataset_naming_and_contiguous_samples(tmp_path, corpus):
    _, records = corpus
    out = tmp_path / "wds"
    write_shards(out, records)
    with tarfile.open(out / "shard-000000.tar") as tar:
        names = tar.getnames()
    # WebDataset groups consecutive members by the name up to the first dot.
    groups: dict[str, list[str]] = {}
    for name in names:
        key, suffix = name.split(".", 1)
        assert not groups or key in groups or key > max(groups)  # contiguous, in order
        groups.setdefault(key, []).append(suffix)
    assert list(groups) == [f"{i:09d}" for i in range(6)]
    assert groups["000000000"] == ["json"]
    assert groups["000000002"] == ["json", "img0.jpg", "img1.png"]
    assert groups["000000003"] == ["json", "mp4"]
    with tarfile.open(out / "shard-000000.tar") as tar:
        stored = json.loads(tar.extractfile("000000002.json").read())
    assert stored["image"] == ["000000002.img0.jpg", "000000002.img1.png"]
    assert stored["origin"] == "src.jsonl:3"


def test_shards_split_by_size_and_index_counts(tmp_path, corpus):
    _, records = corpus
    out = tmp_path / "small"
    with ShardWriter(str(out), shard_size=6000) as writer:
        for s in samples(records) * 3:
            writer.add(s)
    index = ShardIndex.load(str(out))
    assert len(index.shards) > 1 and len(index) == 18
    assert sum(s["num_samples"] for s in index.shards) == 18
    for shard in index.shards:
        path = out / shard["file"]
        assert path.stat().st_size == shard["bytes"]
        with tarfile.open(path) as tar:
            assert len({m.split(".")[0] for m in tar.getnames()}) == shard["num_samples"]
        # A shard only exceeds the limit when a single sample does.
        assert shard["bytes"] <= 6000 + 10240 or shard["num_samples"] == 1
    reader = ShardReader(str(out))
    assert reader.read(17).record.turns == records[5].turns and reader.read(9).record.video is not None


def test_writer_refuses_existing_output_and_discards_on_error(tmp_path, corpus):
    _, records = corpus
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        ShardWriter(str(tmp_path / "full"))
    with pytest.raises(RuntimeError):
        with ShardWriter(str(tmp_path / "broken")) as writer:
            writer.add(samples(records)[0])
            raise RuntimeError("interrupted")
    assert sorted(os.listdir(tmp_path)) == ["full"]
    (tmp_path / "empty").mkdir()
    with ShardWriter(str(tmp_path / "empty")) as writer:
        writer.add(samples(records)[0])
    assert len(ShardReader(str(tmp_path / "empty"))) == 1


def _read_turns(args):
    reader, index = args
    return reader.read(index).record.turns


def test_reader_survives_pickling_and_worker_processes(tmp_path, corpus):
    _, records = corpus
    out = tmp_path / "mp"
    write_shards(out, records)
    reader = ShardReader(str(out))
    reader.read(0)  # opens a descriptor before the fork
    clone = pickle.loads(pickle.dumps(reader))
    assert clone.read(4).record.turns == records[4].turns
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map(_read_turns, [(reader, i) for i in range(6)])
    assert got == [r.turns for r in records]


def test_reader_errors(tmp_path, corpus):
    with pytest.raises(ValueError, match="not a shard directory"):
        ShardReader(str(tmp_path))
    (tmp_path / INDEX_FILE).write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="format is 'other'"):
        ShardReader(str(tmp_path))
    _, records = corpus
    out = tmp_path / "cut"
    write_shards(out, records)
    reader = ShardReader(str(out))
    with pytest.raises(IndexError):
        reader.read(6)
    path = out / "shard-000000.tar"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="shard is truncated"):
        ShardReader(str(out)).read(5)
