"""torch's dispatch-mode base class and pytree flattening, for the live-tensor memory counter
(``scaling.live_memory``).

``torch.utils._python_dispatch.TorchDispatchMode`` and ``torch.utils._pytree.tree_leaves``
live in private modules (no public aliases in torch 2.13); the same in torch 2.9-2.14.
"""

from __future__ import annotations

import inspect

from torch.utils import _python_dispatch, _pytree

TorchDispatchMode = _python_dispatch.TorchDispatchMode
tree_leaves = _pytree.tree_leaves


def check() -> None:
    if not hasattr(TorchDispatchMode, "__torch_dispatch__"):
        raise RuntimeError("torch.utils._python_dispatch.TorchDispatchMode lacks __torch_dispatch__")
    params = list(inspect.signature(tree_leaves).parameters)
    if params[:1] != ["tree"]:
        raise RuntimeError(f"torch.utils._pytree.tree_leaves{params}: expected 'tree' first")
