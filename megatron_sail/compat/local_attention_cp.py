"""Megatron-Core's ``DotProductAttention`` under context parallelism.

``DotProductAttention.__init__`` (0.16.1-0.19.x) asserts ``config.context_parallel_size == 1``
("only supported by TEDotProductAttention"). ``LocalCoreAttention`` subclasses it for its
head bookkeeping and softmax scale, and brings its own context-parallel attention (keys and
values all-gathered over the CP group). ``init_without_cp_assert`` runs that ``__init__`` with
a shallow copy of the config whose ``context_parallel_size`` is 1 and then restores the real
config, which is sound only while the constructor reads ``context_parallel_size`` nowhere but
in that assertion - what ``check()`` verifies on the installed release.
"""

from __future__ import annotations

import copy
import inspect
import re

_FIELD = "context_parallel_size"


def check() -> None:
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    source = inspect.getsource(DotProductAttention.__init__)
    uses = source.count(_FIELD)
    asserted = re.search(r"assert\s*\(?\s*self\.config\.context_parallel_size == 1", source)
    if uses != 1 or asserted is None:
        raise RuntimeError(f"DotProductAttention.__init__ now reads {_FIELD} {uses} time(s) "
                           f"beyond one assertion; LocalCoreAttention's context parallelism "
                           f"must be re-checked against it")


def init_without_cp_assert(module, init, config, *args, **kwargs) -> None:
    """Call ``init(module, config_with_cp_1, *args, **kwargs)``, then give ``module`` the real
    ``config`` back."""
    if getattr(config, _FIELD, 1) == 1:
        init(module, config, *args, **kwargs)
        return
    single = copy.copy(config)
    setattr(single, _FIELD, 1)
    init(module, single, *args, **kwargs)
    module.config = config
