"""The streaming writer and the positioned reader against the safetensors library."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_sail.convert.errors import ConversionError
from megatron_sail.convert.safetensors_io import (
    PlannedTensor, SafetensorsDir, ShardedWriter, parse_size,
)


def tensors():
    gen = torch.Generator().manual_seed(0)
    return {"a": torch.randn(10, 3, generator=gen), "b": torch.randn(7, generator=gen).bfloat16(),
            "c": torch.arange(12, dtype=torch.int64).reshape(3, 4), "d": torch.zeros(0, 2)}


def test_writer_shards_in_plan_order_and_safetensors_reads_it(tmp_path):
    ts = tensors()
    plan = [PlannedTensor(k, v.dtype, tuple(v.shape)) for k, v in ts.items()]
    writer = ShardedWriter(tmp_path, plan, max_shard_bytes=120)  # [a], [b, c, d]
    for name, t in ts.items():
        writer.write(name, t)
    writer.finish()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 120 + 14 + 96
    assert sorted(set(index["weight_map"].values())) == writer.files and len(writer.files) == 2
    loaded = {}
    for f in writer.files:
        loaded.update(load_file(str(tmp_path / f)))
    assert loaded.keys() == ts.keys()
    assert all(torch.equal(loaded[k], ts[k]) and loaded[k].dtype == ts[k].dtype for k in ts)

    reader = SafetensorsDir(tmp_path)
    assert all(torch.equal(reader.read(k), ts[k]) for k in ts)
    rows = torch.empty(2, 3)
    reader.read_into("a", 4 * 3 * 4, rows)  # rows 4..5
    assert torch.equal(rows, ts["a"][4:6])


def test_writer_refuses_out_of_plan_writes(tmp_path):
    writer = ShardedWriter(tmp_path, [PlannedTensor("a", torch.float32, (2,))], 10**9)
    with pytest.raises(RuntimeError, match="expected a"):
        writer.write("b", torch.zeros(2))
    with pytest.raises(RuntimeError, match="planned"):
        writer.write("a", torch.zeros(3))
    with pytest.raises(RuntimeError, match="after 0 of 1"):
        writer.finish()


def test_reader_single_file_and_errors(tmp_path):
    ts = tensors()
    save_file(ts, str(tmp_path / "model.safetensors"))
    assert sorted(SafetensorsDir(tmp_path).names) == sorted(ts)

    raw = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(raw[:-8])  # truncated data
    with pytest.raises(ConversionError, match="truncated"):
        SafetensorsDir(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(ConversionError, match="not a safetensors file"):
        SafetensorsDir(tmp_path)
    with pytest.raises(ConversionError, match="no model.safetensors"):
        SafetensorsDir(tmp_path / "..")


def test_index_must_agree_with_its_files(tmp_path):
    save_file({"a": torch.zeros(2), "extra": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
    index = {"weight_map": {"a": "x.safetensors", "b": "x.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError) as err:
        SafetensorsDir(tmp_path)
    assert "b (index says x.safetensors)" in str(err.value)
    assert "extra (in x.safetensors)" in str(err.value)
    index["weight_map"]["b"] = "missing.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="missing.safetensors"):
        SafetensorsDir(tmp_path)


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("1024") == 1024 and parse_size("1.5MB") == 1_500_000
    with pytest.raises(ConversionError):
        parse_size("lots")
