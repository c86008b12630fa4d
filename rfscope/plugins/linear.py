"""Dense maps: Linear/F.linear and matmul/bmm/einsum-free products (``nn.Bilinear`` has no plugin: unknown),
and embedding lookups (``nn.Embedding``: each position sees its own token).

A Linear acts on the last dim: pointwise when that dim is channels (channels-last
tensors, transformers' feature dim), global when it holds spatial positions
(flatten -> Linear)."""

from __future__ import annotations

import math
import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from rfscope.core.context import OpContext, Unsupported
from rfscope.core.initview import InitContext, WeightView, module_view
from rfscope.core.ops import axes_of
from rfscope.core.positions import contract_rule, matmul_rule
from rfscope.core.registry import Method, Registry
from rfscope.core.state import DimTag, TensorRF, make_global, merge


def _linear_rf(ctx: OpContext) -> TensorRF:
    st = ctx.first
    last = st.dims[-1]
    out = st.with_dims(list(st.dims[:-1]) + [None])
    if last is None:
        return out
    return make_global(out, axes_of([last]), keep_local=False)


def _linear_macs(ctx: OpContext) -> int:
    x = ctx.in_shape(0)
    return math.prod(ctx.out_shape) * x[-1]


def _matmul_rf(ctx: OpContext) -> TensorRF:
    a, b = ctx.state(0, "input"), ctx.state(1, "other")
    sa, sb = ctx.in_shape(0), ctx.in_shape(1)
    if len(sa) < 2 or len(sb) < 2:
        raise Unsupported("matmul with 1-d operands")
    out_shape = ctx.out_shape
    nd = len(out_shape)
    states = [s for s in (a, b) if isinstance(s, TensorRF)]
    contracted: list[DimTag] = []
    dims: list[DimTag] = [None] * nd
    if isinstance(a, TensorRF):
        contracted.append(a.dims[-1])
        dims[-2] = a.dims[-2]
        for i, t in enumerate(a.dims[:-2]):
            dims[nd - 2 - (len(sa) - 2) + i] = t
    if isinstance(b, TensorRF):
        contracted.append(b.dims[-2])
        dims[-1] = b.dims[-1]
        for i, t in enumerate(b.dims[:-2]):
            j = nd - 2 - (len(sb) - 2) + i
            if dims[j] is None:
                dims[j] = t
    m = merge(states, dims, f"matmul {ctx.node.name}")
    if m.reason is not None:
        return m
    return make_global(m, axes_of(contracted), keep_local=False)


def _matmul_macs(ctx: OpContext) -> int:
    return math.prod(ctx.out_shape) * ctx.in_shape(0)[-1]


def _linear_view(ctx: InitContext) -> WeightView | None:
    """The init check's view of a Linear: the module's weight, or ``F.linear``'s ``get_attr`` weight."""
    if ctx.module is not None:
        return module_view(ctx)
    w = ctx.tensor(ctx.param("weight"))
    if w is None:
        return None  # a computed weight: not an init
    b = ctx.tensor(ctx.param("bias"))
    return WeightView(w, b, ctx.name(w) or "weight", ctx.name(b))


def _embedding_rf(ctx: OpContext) -> TensorRF:
    """``weight[input]``: each index picks one row, so every output position sees its own index
    only; the embedding dim is a feature dim."""
    aten = ctx.node.target is torch.ops.aten.embedding.default  # (weight, indices, ...)
    st = ctx.state(1, "indices") if aten else ctx.state(0, "input")
    if not isinstance(st, TensorRF):
        raise Unsupported("the indices do not depend on the input (an input-dependent table is not supported)")
    if isinstance(ctx.state(0, "weight") if aten else ctx.state(1, "weight"), TensorRF):
        raise Unsupported("the embedding table depends on the input")
    if len(ctx.out_shape) != len(st.dims) + 1:
        raise Unsupported("output rank is not the indices' rank + 1")
    return st.with_dims([*st.dims, None])


def register(reg: Registry) -> None:
    reg.add("embedding", (nn.Embedding, F.embedding, torch.ops.aten.embedding.default), rf=_embedding_rf)
    reg.add("linear", (nn.Linear, F.linear, nn.LazyLinear), rf=_linear_rf, macs=_linear_macs,
            init_view=_linear_view, table=contract_rule(1))
    reg.add("matmul", (torch.matmul, torch.bmm, torch.mm, operator.matmul, Method("matmul"), Method("bmm")),
            rf=_matmul_rf, macs=_matmul_macs, table=matmul_rule)
