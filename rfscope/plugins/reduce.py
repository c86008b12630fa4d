"""Reductions and softmax over dims: global along the spatial dims they touch."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from rfscope.core.context import OpContext
from rfscope.core.ops import elementwise, global_over, reduce_dims
from rfscope.core.positions import reduce_table_rule, softmax_rule
from rfscope.core.registry import Method, Registry
from rfscope.core.state import TensorRF


def _reduce_rf(ctx: OpContext) -> object:
    other = ctx.param("other", None)
    if isinstance(other, torch.Tensor):  # torch.max(a, b) / a.min(b): elementwise, not a reduction
        return elementwise(ctx, f"elementwise op {ctx.node.name}")
    st = ctx.first
    nd = len(st.dims)
    dim = ctx.param("dim", None)
    keep = bool(ctx.param("keepdim", False))
    dims = list(range(nd)) if dim is None else ([dim] if isinstance(dim, int) else list(dim))
    out = reduce_dims(st, dims, keep)
    if isinstance(ctx.out, (tuple, list)):  # max(dim) -> (values, indices)
        return tuple(out for _ in ctx.out)
    return out


def _softmax_rf(ctx: OpContext) -> TensorRF:
    st = ctx.first
    m: Any = ctx.module
    dim = m.dim if m is not None else ctx.param("dim")
    if dim is None:
        return global_over(st, range(len(st.dims)), keep_local=False)
    return global_over(st, [int(dim)], keep_local=True)


def register(reg: Registry) -> None:
    M = Method
    reg.add("reduce", (torch.mean, torch.sum, torch.amax, torch.amin, torch.max, torch.min, torch.std,
                       torch.var, torch.logsumexp, torch.norm, torch.prod,
                       M("mean"), M("sum"), M("amax"), M("amin"), M("max"), M("min"), M("std"),
                       M("var"), M("logsumexp"), M("norm"), M("prod")), rf=_reduce_rf, table=reduce_table_rule)
    reg.add("softmax", (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, M("softmax"),
                        M("log_softmax"), nn.Softmax, nn.LogSoftmax, nn.Softmin), rf=_softmax_rf, table=softmax_rule)
