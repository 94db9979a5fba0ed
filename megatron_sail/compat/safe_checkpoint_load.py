"""Loading a checkpoint never runs code stored in it.

Megatron's ``torch_dist`` checkpoints hold three kinds of pickled data: the DCP metadata
``.metadata`` (torch's ``FileSystemReader.read_metadata`` reads it with plain ``pickle.load``),
``common.pt`` (``torch.load``) and non-tensor items inside the ``.distcp`` files (torch DCP's
``DefaultLoadPlanner.load_bytes`` reads them with ``torch.load(weights_only=False)``). A crafted
pickle whose ``__reduce__`` names ``os.system`` runs its command when any of them is read.

``install()`` closes all three in the calling process and, through the environment, in the
processes it starts:

- the ``pickle`` module torch's DCP file-system reader uses is replaced by one whose ``load``
  only finds the classes DCP metadata is made of (``_metadata_class``);
- ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` (torch's documented switch) makes every ``torch.load``
  a ``weights_only`` load, including DCP's ``load_bytes`` and Megatron's ``common.pt`` read;
  the few numpy classes a saved RNG state needs are added with ``add_safe_globals``.

``scan(ckpt_dir)`` then reads every pickled part of one checkpoint without constructing
anything it refuses, so that a bad checkpoint is named (file and class) before Megatron
or DCP touch it; the installed guards stay as the second line.

Written for torch 2.13 with megatron-core 0.16.1; ``check()`` and a DCP save/scan/load round
trip also pass on torch 2.12.1 (Python 3.12). Megatron-core 0.17-0.19 read checkpoints through the
same torch entry points (0.19 keeps its common state inside the ``.distcp`` files, read by the
same ``load_bytes``, and scanned here like any other non-tensor item). ``check()`` raises when a
touched internal changes shape.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import io
import os
import pickle
import zipfile
from pathlib import Path

import torch

METADATA_FILE = ".metadata"
COMMON_FILE = "common.pt"
_FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_NO = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"

# modules whose dataclasses and enums make up DCP metadata (and Megatron's additions to it)
_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.planner",
                "torch.distributed.checkpoint.filesystem")
_PLAIN = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
          ("torch", "Size"), ("torch.serialization", "_get_layout"),
          ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath")}  # StorageMeta.checkpoint_id


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file names a class no checkpoint holds; nothing of it was constructed."""

    def __init__(self, origin: str, cls: str):
        super().__init__(f"{origin}: refuses to load class '{cls}' (a checkpoint holds only "
                         f"tensors, plain values and checkpoint metadata; loading anything "
                         f"else could run code)")
        self.origin, self.cls = origin, cls


def _metadata_class(module: str, name: str):
    """The class (or dtype/layout constant) ``module.name`` if DCP metadata may hold it."""
    if (module, name) in _PLAIN:
        return getattr(importlib.import_module(module), name)
    if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype,
                                                                      torch.memory_format)):
        return getattr(torch, name)
    if module in _DCP_MODULES and "." not in name:
        obj = getattr(importlib.import_module(module), name, None)
        # plain records: dataclasses, named tuples and enums defined in torch DCP itself
        if isinstance(obj, type) and obj.__module__ in _DCP_MODULES and (
                hasattr(obj, "__dataclass_fields__") or issubclass(obj, (enum.Enum, tuple))):
            return obj
    return None


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, origin: str):
        super().__init__(file)
        self.origin = origin

    def find_class(self, module: str, name: str):
        obj = _metadata_class(module, name)
        if obj is None:
            raise UnsafeCheckpointError(self.origin, f"{module}.{name}")
        return obj


class _RestrictedPickle:
    """Stands in for the ``pickle`` module inside torch's DCP file-system reader: ``load``
    (the metadata read) is restricted, everything else (``dump`` for saving) is pickle's."""

    @staticmethod
    def load(file, **_kwargs):
        return _MetadataUnpickler(file, str(getattr(file, "name", METADATA_FILE))).load()

    def __getattr__(self, name):
        return getattr(pickle, name)


def _torch_load_globals() -> list:
    """What a saved RNG state needs beyond torch's own weights_only allowlist: numpy's
    ``get_state()`` holds a uint32 array."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def install() -> None:
    """Restricts every checkpoint read in this process and the processes it starts
    (idempotent, cheap: call it where a checkpoint is about to be read)."""
    from torch.distributed.checkpoint import filesystem

    os.environ.pop(_FORCE_NO, None)  # with both set, torch.load refuses everything
    os.environ[_FORCE] = "1"
    if not isinstance(filesystem.pickle, _RestrictedPickle):
        torch.serialization.add_safe_globals(_torch_load_globals())
        filesystem.pickle = _RestrictedPickle()


def read_metadata(path: Path):
    """The DCP metadata in ``path``, read with the restricted unpickler."""
    with open(path, "rb") as f:
        return _MetadataUnpickler(f, str(path)).load()


def _scan_torch_save(data, origin: str) -> None:
    """Refuses a ``torch.save`` blob (path or bytes) naming a class ``weights_only`` would
    not load; the pickle is disassembled, never run."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(data)
    except (ValueError, RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError):
        return  # not a torch.save archive: the weights_only load reports it as unreadable
    if unsafe:
        raise UnsafeCheckpointError(origin, sorted(unsafe)[0])


def scan(ckpt_dir: Path) -> None:
    """Reads every pickled part of the checkpoint in ``ckpt_dir`` - ``.metadata``,
    ``common.pt`` and the non-tensor items of the ``.distcp`` files - and raises
    ``UnsafeCheckpointError`` naming the file and the first class it refuses. Unreadable
    or missing parts are left for the real load to report."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    install()
    ckpt_dir = Path(ckpt_dir)
    try:
        metadata = read_metadata(ckpt_dir / METADATA_FILE)
    except UnsafeCheckpointError:
        raise
    except Exception:  # missing or corrupt: Megatron's load names it
        metadata = None
    if (ckpt_dir / COMMON_FILE).is_file():
        _scan_torch_save(str(ckpt_dir / COMMON_FILE), str(ckpt_dir / COMMON_FILE))
    storage = getattr(metadata, "storage_data", None)
    if not isinstance(storage, dict):
        return
    for index, info in storage.items():
        kind = metadata.state_dict_metadata.get(getattr(index, "fqn", None))
        if not isinstance(kind, BytesStorageMetadata) or getattr(info, "transform_descriptors",
                                                                   None):
            continue  # tensors are raw bytes; transformed items are left to weights_only
        path = ckpt_dir / str(info.relative_path)
        try:
            with open(path, "rb") as f:
                f.seek(int(info.offset))
                blob = f.read(int(info.length))
        except (OSError, ValueError, TypeError):
            continue
        _scan_torch_save(io.BytesIO(blob), f"{path} (item '{index.fqn}')")


def check() -> None:
    """Raises RuntimeError when a torch internal this module relies on changed shape."""
    from torch.distributed.checkpoint import filesystem
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    problems = []
    if not (filesystem.pickle is pickle or isinstance(filesystem.pickle, _RestrictedPickle)):
        problems.append("torch.distributed.checkpoint.filesystem no longer imports pickle")
    try:
        if "pickle.load(" not in inspect.getsource(filesystem.FileSystemReader.read_metadata):
            problems.append("FileSystemReader.read_metadata no longer reads with pickle.load")
        if _FORCE not in inspect.getsource(torch.serialization.load):
            problems.append(f"torch.load no longer honours {_FORCE}")
        if "torch.load(" not in inspect.getsource(DefaultLoadPlanner.load_bytes):
            problems.append("DefaultLoadPlanner.load_bytes no longer uses torch.load")
    except (OSError, TypeError) as exc:
        problems.append(f"cannot read torch's source to check it: {exc}")
    for name in ("add_safe_globals", "get_unsafe_globals_in_checkpoint"):
        if not hasattr(torch.serialization, name):
            problems.append(f"torch.serialization.{name} is gone")
    for module, name in (("torch.distributed.checkpoint.metadata", "Metadata"),
                         ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata"),
                         ("torch.distributed.checkpoint.filesystem", "_StorageInfo")):
        if _metadata_class(module, name) is None:
            problems.append(f"{module}.{name} is no longer a plain record class")
    if problems:
        raise RuntimeError("megatron_sail.compat.safe_checkpoint_load: the torch internals it "
                           "guards changed shape: " + "; ".join(problems))
