"""DALI pipelines that survive a ``fork`` (DataLoader workers, ``multiprocessing`` pools).

A DALI pipeline owns native worker threads, and its native handle (``Pipeline._pipe``, private)
shuts them down when the Python object is destroyed (``Pipeline.__del__`` -> ``_shutdown``).
A forked child inherits the parent's pipeline objects but none of their threads; if one of
them is destroyed there - dropped from a cache, or collected by the cyclic GC as part of an
exception's traceback cycle that happened to be collected after the fork - the shutdown joins
threads that do not exist in the child and the child dies with a segmentation fault (or hangs).
So after a fork every pipeline adopted here is disarmed in the child: its native handle is
taken out of the Python object (whose destruction then does nothing) and deliberately kept
alive for the child's lifetime. The parent's pipelines are unaffected.

In the owning process, :func:`shut_down` stops a pipeline's threads at once instead of
whenever the garbage collector gets to it. Written for DALI 2.4 (``_pipe`` set in
``Pipeline.__init__``, released by ``_shutdown``).
"""

from __future__ import annotations

import ctypes
import os
import sys
import weakref

_adopted: weakref.WeakSet = weakref.WeakSet()
_checked = False


def check() -> None:
    """DALI is optional and imported lazily (importing it costs ~1 s), so the touch point is
    checked when it is loaded: at startup if something imported it already, and before the
    first pipeline is built (:func:`adopt`)."""
    if "nvidia.dali.pipeline" not in sys.modules:
        return
    from nvidia.dali.pipeline import Pipeline

    probe = Pipeline(batch_size=1, num_threads=1, device_id=None)  # no native handle until build
    if not hasattr(probe, "_pipe") or not callable(getattr(Pipeline, "_shutdown", None)):
        raise RuntimeError("nvidia.dali.pipeline.Pipeline no longer keeps its native handle in "
                           "_pipe / releases it in _shutdown")


def adopt(pipeline) -> None:
    """Make ``pipeline`` (built in this process) safe to drop in forked children."""
    global _checked
    if not _checked:
        check()
        _checked = True
    _adopted.add(pipeline)


def shut_down(pipeline) -> None:
    """Stop ``pipeline``'s threads now (it cannot run again)."""
    pipeline._shutdown()


def _disarm_inherited() -> None:
    for pipeline in list(_adopted):
        native, pipeline._pipe = pipeline._pipe, None
        if native is not None:
            # Never released in this process: its destructor would join the parent's threads.
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(native))
    _adopted.clear()


os.register_at_fork(after_in_child=_disarm_inherited)
