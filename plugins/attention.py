"""Attention over positions: every output position sees every key/value position."""

from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F

from rfscope.context import OpContext, Unsupported
from rfscope.ops import axes_of
from rfscope.registry import Registry
from rfscope.state import TensorRF, make_global, merge


def _sdpa_rf(ctx: OpContext) -> TensorRF:
    q, k, v = ctx.state(0, "query"), ctx.state(1, "key"), ctx.state(2, "value")
    sts = [s for s in (q, k, v) if isinstance(s, TensorRF)]
    if not sts:
        raise Unsupported("no input tensor")
    ref = q if isinstance(q, TensorRF) else sts[0]
    m = merge(sts, ref.dims, f"attention {ctx.node.name}")
    if m.reason is not None:
        return m
    seq = [s.dims[-2] for s in sts]
    return make_global(m.with_dims(list(ref.dims[:-1]) + [None]), axes_of(seq), keep_local=False)


def _sdpa_macs(ctx: OpContext) -> int:
    q, k = ctx.in_shape(0), ctx.in_shape(1)
    ev = ctx.out_shape[-1]
    return math.prod(q[:-1]) * k[-2] * (q[-1] + ev)


def _mha_rf(ctx: OpContext) -> tuple[TensorRF, object]:
    m = ctx.module
    assert isinstance(m, nn.MultiheadAttention)
    sts = [s for s in ctx.args[:3] if isinstance(s, TensorRF)]
    if not sts:
        raise Unsupported("no input tensor")
    seq_dim = 1 if m.batch_first else 0
    q = sts[0]
    merged = merge(sts, q.dims, f"attention {ctx.node.name}")
    if merged.reason is not None:
        return merged, merged
    out = make_global(merged.with_dims(list(q.dims[:-1]) + [None]), axes_of([s.dims[seq_dim] for s in sts]),
                      keep_local=False)
    weights_val = ctx.out[1] if isinstance(ctx.out, (tuple, list)) else None
    if weights_val is None:
        from rfscope.state import CONST

        return out, CONST
    return out, out.with_dims([None] * weights_val.dim())


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
    reg.add("sdpa", (F.scaled_dot_product_attention,), rf=_sdpa_rf, macs=_sdpa_macs)
    reg.add("multihead_attention", (nn.MultiheadAttention,), rf=_mha_rf, macs=_mha_macs)
