"""``torch.library`` plumbing shared by the public ops (namespace ``pgap``).

Every op is one custom op with the same Python body on CPU and CUDA (the body picks the backend
when it runs, so the choice is not baked into torch.compile graphs) and a fake implementation
for tracing. Plain eager calls skip the op's dispatch (see :func:`plain_eager_call`).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def define_op(name: str, impl: Callable, fake: Callable, mutates_args: Sequence[str] = ()):
    """Register ``pgap::<name>`` with ``impl`` as its CPU and CUDA kernel and ``fake`` for
    tracing (FakeTensorMode, torch.compile); the schema comes from ``impl``'s annotations."""
    op = torch.library.custom_op(f"pgap::{name}", mutates_args=tuple(mutates_args),
                                 device_types="cpu")(impl)
    op.register_kernel("cuda")(impl)
    op.register_fake(fake)
    return op


def plain_eager_call(tensors: Iterable[torch.Tensor]) -> bool:
    """True when calling an op's body directly is indistinguishable from calling the op.

    A registered op costs ~85 us of Python dispatch per call on CPU (measured), more than the
    kernels themselves for small tensors, so plain eager calls skip it. Anything that must see
    the op (torch.compile tracing, torch-function or dispatch modes such as FakeTensorMode,
    tensor subclasses) goes through ``torch.ops.pgap.<name>``. Callers that mutate tensors on
    this path bump their version counters themselves, as the op's ADInplaceOrView kernel does.
    """
    return plain_eager_context() and plain_tensors(tensors)


def plain_eager_context() -> bool:
    """No torch.compile tracing and no torch-function or dispatch mode is active (the part of
    :func:`plain_eager_call` that can change from call to call for the same tensors)."""
    if torch.compiler.is_compiling():
        return False
    return not (torch._C._is_torch_function_mode_enabled() or torch._C._len_torch_dispatch_stack() > 0)


def plain_tensors(tensors: Iterable[torch.Tensor]) -> bool:
    """Every tensor is a plain ``Tensor`` or ``Parameter`` (no subclass that must see the op)."""
    return all(type(t) in _PLAIN_TENSOR_TYPES for t in tensors)
