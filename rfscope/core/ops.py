"""Building blocks for plugins: elementwise merges, local ops, reductions.

Plugin authors combine these; each returns a :class:`~rfscope.core.state.TensorRF`.

>>> from rfscope.core.ops import local
>>> from rfscope.core import rf
>>> # a plugin for a 5-tap 1-D filter along the last dim would do:
>>> # return local(ctx, {-1: lambda a: rf.conv(a, k=5, p=2)})
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from rfscope.core.context import OpContext, Unsupported
from rfscope.core.rf import Axis, MisalignedError, select
from rfscope.core.state import CONST, DimTag, Global, Merged, TensorRF, make_global, map_axis, merge, unknown

__all__ = [
    "as_tuple",
    "elementwise",
    "self_state",
    "local",
    "reduce_dims",
    "global_over",
    "axes_of",
    "norm_dim",
    "same_state",
]


def as_tuple(v: Any, n: int) -> tuple[int, ...]:
    """An ``int`` or a sequence of ints as an ``n``-tuple, the way PyTorch layers read
    ``kernel_size=3`` or ``stride=(2,)``; ``None`` or ``[]`` (no value given: ATen's default
    stride of a pool) is ``()``.

    >>> as_tuple(3, 2), as_tuple((2,), 3), as_tuple([1, 2], 2), as_tuple(None, 2), as_tuple([], 2)
    ((3, 3), (2, 2, 2), (1, 2), (), ())

    Raises
    ------
    Unsupported
        A sequence of another length than 1 or ``n``.
    """
    if v is None:
        return ()
    if isinstance(v, int):
        return (v,) * n
    t = tuple(int(x) for x in v)
    if len(t) == 1:
        return t * n
    if len(t) not in (0, n):
        raise Unsupported(f"expected {n} values, got {v!r}")
    return t


def norm_dim(d: int, ndim: int) -> int:
    if not -ndim <= d < max(ndim, 1):
        raise Unsupported(f"dim {d} out of range for a {ndim}-d tensor")
    return d % ndim if ndim else 0


def axes_of(tags: Iterable[DimTag]) -> list[int]:
    """Input axes indexed by these tensor dims (merged dims contribute all their axes)."""
    out: list[int] = []
    for t in tags:
        if isinstance(t, int):
            out.append(t)
        elif isinstance(t, Merged):
            out.extend(t.axes)
    return out


def same_state(ctx: OpContext) -> TensorRF:
    """Output has the first input's RF and layout (shape-preserving unary op)."""
    st = ctx.first
    if len(st.dims) != len(ctx.out_shape):
        raise Unsupported("output rank differs from input rank")
    return st


def self_state(ctx: OpContext) -> Any:
    """Output holds its first argument's values (``x.to(...)``, ``x.type_as(other)``, ``clone``):
    that argument's state; the others give a dtype or a device (``const.type_as(x)`` is a constant)."""
    st = ctx.args[0] if ctx.args else None
    if not isinstance(st, TensorRF):
        return CONST
    if len(st.dims) != len(ctx.out_shape):
        raise Unsupported("output rank differs from input rank")
    return st


def elementwise(ctx: OpContext, what: str = "merge") -> TensorRF:
    """Broadcasting elementwise op over all tensor arguments (``+``, ``*``, activations ...)."""
    out_shape = ctx.out_shape
    nd = len(out_shape)
    operands: list[tuple[TensorRF, tuple[int, ...]]] = []

    def collect(states: object, values: object) -> None:
        if isinstance(states, TensorRF) and isinstance(values, torch.Tensor):
            operands.append((states, tuple(int(s) for s in values.shape)))
        elif isinstance(states, (list, tuple)) and isinstance(values, (list, tuple)):
            for s, v in zip(states, values, strict=False):
                collect(s, v)

    collect(ctx.args, ctx.arg_values)
    collect(list(ctx.kwargs.values()), list(ctx.kwarg_values.values()))
    if not operands:
        raise Unsupported("no input tensor")
    if len(operands) == 1 and operands[0][1] == tuple(out_shape):
        return operands[0][0]  # unary, shape-preserving (activations, eval BatchNorm): state unchanged
    dims: list[DimTag] = [None] * nd
    for st, shp in operands:
        off = nd - len(shp)
        if off < 0:
            raise Unsupported("operand has more dims than the output")
        for i, tag in enumerate(st.dims):
            if tag is None or shp[i] != out_shape[off + i]:
                continue
            cur = dims[off + i]
            if cur is None:
                dims[off + i] = tag
            elif cur != tag:
                return unknown(dims, f"{what}: operands disagree on which dim is spatial")
    states: list[TensorRF] = []
    for st, shp in operands:
        if st.reason is not None:
            return unknown(dims, st.reason)
        off = nd - len(shp)
        axes = list(st.axes)
        for od, tag in enumerate(dims):
            if not isinstance(tag, int):
                continue
            i = od - off
            broadcast = i < 0 or shp[i] == 1 and out_shape[od] != 1
            if broadcast and tag < len(axes):
                axes[tag] = map_axis(axes[tag], lambda a: select(a, 0))
        states.append(st.with_axes(axes))
    return merge(states, dims, what)  # merge turns misaligned operands into unknown itself


def local(ctx: OpContext, per_dim: Mapping[int, Callable[[Axis], Axis]], state: TensorRF | None = None) -> TensorRF:
    """Apply a spatially local op: ``per_dim`` maps tensor dims to axis transforms.

    The output keeps the input's layout (same rank).
    """
    st = state if state is not None else ctx.first
    nd = len(st.dims)
    axes = list(st.axes)
    for d, fn in per_dim.items():
        dd = norm_dim(d, nd)
        tag = st.dims[dd]
        if tag is None:
            continue  # a "spatial" op over a channel-like dim leaves the RF alone
        if isinstance(tag, Merged):
            raise Unsupported("local op over a flattened spatial dim")
        if tag in st.scrambled:
            raise Unsupported("local op over positions that were concatenated or shuffled")
        cur = axes[tag]
        if isinstance(cur, Global):
            axes[tag] = map_axis(cur, fn)
        else:
            try:
                axes[tag] = fn(cur)
            except MisalignedError as e:
                raise Unsupported(str(e)) from e
    out_dims = st.dims
    out = ctx.out
    if isinstance(out, (tuple, list)):  # (values, indices) of max pooling
        out = next((o for o in out if isinstance(o, torch.Tensor)), None)
    if not isinstance(out, torch.Tensor) or len(out_dims) != out.dim():
        raise Unsupported("output rank differs from input rank")
    return TensorRF(out_dims, tuple(axes), None, st.scrambled)


def global_over(state: TensorRF, tensor_dims: Sequence[int], keep_local: bool) -> TensorRF:
    """Units see the whole input along the axes indexed by ``tensor_dims``; layout unchanged."""
    nd = len(state.dims)
    tags = [state.dims[norm_dim(d, nd)] for d in tensor_dims]
    return make_global(state, axes_of(tags), keep_local)


def reduce_dims(state: TensorRF, tensor_dims: Sequence[int], keepdim: bool) -> TensorRF:
    """A reduction (mean, max, sum ...) over ``tensor_dims``."""
    nd = len(state.dims)
    red = sorted({norm_dim(d, nd) for d in tensor_dims})
    g = make_global(state, axes_of(state.dims[d] for d in red), keep_local=False)
    if keepdim:
        return g
    return g.with_dims([t for i, t in enumerate(state.dims) if i not in red])
