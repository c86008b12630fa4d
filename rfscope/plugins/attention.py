"""Attention over positions: every output position sees every key/value position."""

from __future__ import annotations

import math
from typing import Any

import torch.nn as nn
import torch.nn.functional as F

from rfscope.core.context import OpContext, Unsupported
from rfscope.core.ops import axes_of
from rfscope.core.positions import sdpa_like, sdpa_rule
from rfscope.core.registry import Registry
from rfscope.core.state import CONST, DimTag, TensorRF, make_global, merge


def _attend(q: TensorRF | None, kv: list[TensorRF], seq_dim: int, dims: list[DimTag], what: str) -> TensorRF:
    """Output positions follow the query; each sees every key/value position.

    Keys and values are made global along their positions *before* the union, so a
    cross-attention whose keys come from a map with another stride is exactly global
    rather than a misaligned merge.
    """
    kv_g = [make_global(s, axes_of([s.dims[seq_dim]]), keep_local=False) for s in kv]
    parts = ([q] if q is not None else []) + kv_g
    m = merge(parts, dims, what)
    if m.reason is not None:
        return m
    seq = ([q.dims[seq_dim]] if q is not None else []) + [s.dims[seq_dim] for s in kv]
    return make_global(m, axes_of(seq), keep_local=False)


def _sdpa_rf(ctx: OpContext) -> TensorRF:
    q, k, v = ctx.state(0, "query"), ctx.state(1, "key"), ctx.state(2, "value")
    qs = q if isinstance(q, TensorRF) else None
    kv = [s for s in (k, v) if isinstance(s, TensorRF)]
    if qs is None and not kv:
        raise Unsupported("no input tensor")
    ref = qs if qs is not None else kv[0]
    return _attend(qs, kv, -2, list(ref.dims[:-1]) + [None], f"attention {ctx.node.name}")


def _sdpa_macs(ctx: OpContext) -> int:
    q, k = ctx.in_shape(0), ctx.in_shape(1)
    ev = ctx.out_shape[-1]
    return math.prod(q[:-1]) * k[-2] * (q[-1] + ev)


def _mha_rf(ctx: OpContext) -> tuple[TensorRF, object]:
    m = ctx.module
    assert isinstance(m, nn.MultiheadAttention)
    args = list(ctx.args[:3]) + [ctx.kwargs.get(n) for n in ("query", "key", "value")[len(ctx.args):]]
    qs = args[0] if isinstance(args[0], TensorRF) else None
    kv = [s for s in args[1:3] if isinstance(s, TensorRF)]
    if qs is None and not kv:
        raise Unsupported("no input tensor")
    ref = qs if qs is not None else kv[0]
    seq_dim = 1 if m.batch_first and len(ref.dims) == 3 else 0
    out = _attend(qs, kv, seq_dim, list(ref.dims[:-1]) + [None], f"attention {ctx.node.name}")
    if out.reason is not None:
        return out, out
    weights_val = ctx.out[1] if isinstance(ctx.out, (tuple, list)) else None
    if weights_val is None:
        from rfscope.core.state import CONST

        return out, CONST
    return out, out.with_dims([None] * weights_val.dim())


def _mha_table(ctx: OpContext) -> Any:
    """``nn.MultiheadAttention`` on per-position inputs: each query sees itself and every key and
    value along the sequence dim (masks only re-weight); the weights the same."""
    m = ctx.module
    assert isinstance(m, nn.MultiheadAttention)
    q = ctx.arg_values[0]
    seq = 1 if (m.batch_first and q.dim() == 3) else 0
    out = sdpa_like(ctx, seq)
    weights = ctx.out[1] if isinstance(ctx.out, (tuple, list)) else None
    # the weights read the same queries and keys (a per-position table of another shape: not stated)
    return out, CONST if weights is None else _unknown_weights(weights)


def _unknown_weights(weights: Any) -> TensorRF:
    from rfscope.core.state import unknown

    return unknown([None] * weights.dim(), "attention weights of per-position inputs are not tracked")


def _mha_macs(ctx: OpContext) -> int:
    m = ctx.module
    assert isinstance(m, nn.MultiheadAttention)
    q = ctx.in_shape(0)
    k = ctx.in_shape(1)
    e = m.embed_dim
    if len(q) == 2:  # unbatched (L, E)
        n, L, S = 1, q[0], k[0]
    else:
        L = q[1] if m.batch_first else q[0]
        S = k[1] if m.batch_first else k[0]
        n = q[0] if m.batch_first else q[1]
    # q/k/v projections (k and v may have kdim/vdim features), QK^T and AV, output projection
    return n * (L * e * e + S * m.kdim * e + S * m.vdim * e + 2 * L * S * e + L * e * e)


def register(reg: Registry) -> None:
    reg.add("sdpa", (F.scaled_dot_product_attention,), rf=_sdpa_rf, macs=_sdpa_macs, table=sdpa_rule)
    reg.add("multihead_attention", (nn.MultiheadAttention,), rf=_mha_rf, macs=_mha_macs, table=_mha_table)
