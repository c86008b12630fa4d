"""Pooling: max / average / LP pooling (1-3 d, ceil_mode), adaptive pooling."""

from __future__ import annotations

import math
from functools import partial
from math import gcd
from typing import Any, Literal

import torch.nn as nn
import torch.nn.functional as F

from rfscope.core import rf
from rfscope.core.context import OpContext, Unsupported
from rfscope.core.geometry import Geometry
from rfscope.core.ops import as_tuple, local, reduce_dims
from rfscope.core.positions import as_table, sliding_rule, table_rule
from rfscope.core.registry import Registry
from rfscope.core.traits import CHANNELWISE

_MAX: dict[Any, int] = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}
_AVG: dict[Any, int] = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}
_LP: dict[Any, int] = {nn.LPPool1d: 1, nn.LPPool2d: 2}
_ADA: dict[Any, int] = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
        nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3}

_F_MAX: dict[Any, int] = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3,
          F.max_pool1d_with_indices: 1, F.max_pool2d_with_indices: 2, F.max_pool3d_with_indices: 3}
_F_AVG: dict[Any, int] = {F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3}
_F_LP: dict[Any, int] = {F.lp_pool1d: 1, F.lp_pool2d: 2}
_F_ADA: dict[Any, int] = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
          F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3}
try:  # present in recent torch
    _F_LP[F.lp_pool3d] = 3
    _LP[nn.LPPool3d] = 3
except AttributeError:  # pragma: no cover
    pass


def _kind(m: Any, t: Any) -> Literal["max", "avg", "lp"]:
    if isinstance(m, tuple(_MAX)) or t in _F_MAX:
        return "max"
    if isinstance(m, tuple(_AVG)) or t in _F_AVG:
        return "avg"
    return "lp"


def pool_geometry(ctx: OpContext) -> Geometry:
    """Kernel, stride, left padding and dilation of a max/avg/LP pooling call."""
    return ctx.once("geometry", _pool_geometry)  # type: ignore[no-any-return]  # RF, MACs and record ask for it


def _pool_geometry(ctx: OpContext) -> Geometry:
    m: Any = ctx.module
    t: Any = ctx.node.target
    if m is not None:
        n = next(v for c, v in {**_MAX, **_AVG, **_LP}.items() if isinstance(m, c))
        k = as_tuple(m.kernel_size, n)
        s = as_tuple(m.stride if m.stride is not None else m.kernel_size, n) or k
        p = as_tuple(getattr(m, "padding", 0), n)
        d = as_tuple(getattr(m, "dilation", 1), n)
    else:
        n = {**_F_MAX, **_F_AVG, **_F_LP}[t]
        k = as_tuple(ctx.param("kernel_size"), n)
        s = as_tuple(ctx.param("stride"), n) or k
        p = as_tuple(ctx.param("padding", 0), n)
        d = as_tuple(ctx.param("dilation", 1), n)
    return Geometry("pool", k, s, p, d, pool=_kind(m, t))


def _pool_rf(ctx: OpContext) -> Any:
    g = pool_geometry(ctx)
    fns = {-g.n + i: partial(_conv_axis, k, s, p, d)
           for i, (k, s, p, d) in enumerate(zip(g.kernel, g.stride, g.padding, g.dilation, strict=True))}
    if isinstance(ctx.out, (tuple, list)):  # (values, indices)
        st = local(ctx, fns)
        return (st, st)
    return local(ctx, fns)


def _conv_axis(k: int, s: int, p: int, d: int, a: rf.Axis) -> rf.Axis:
    return rf.conv(a, k, s, p, d)


def _pool_macs(ctx: OpContext) -> int:
    g = pool_geometry(ctx)
    out = ctx.out[0] if isinstance(ctx.out, (tuple, list)) else ctx.out
    return math.prod(out.shape) * math.prod(g.kernel)


def adaptive(a: rf.Axis, n_in: int, n_out: int) -> rf.Axis:
    """Adaptive pooling from ``n_in`` to ``n_out`` units (PyTorch's start/end index rule)."""
    g = gcd(n_in, n_out)

    def deps(i: int) -> range:
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        return range(start, end)

    return rf.resample(a, deps, n_out // g, n_in // g)


def _adaptive_rf(ctx: OpContext) -> Any:
    x = ctx.in_shape(0)
    out = ctx.out[0] if isinstance(ctx.out, (tuple, list)) else ctx.out
    n = _pooled_dims(ctx)
    st = ctx.first
    out_shape = tuple(out.shape)
    fns = {}
    reduce_all = []
    for i in range(n):
        d = len(x) - n + i
        if out_shape[d] == 1:
            reduce_all.append(d)
        else:
            fns[d] = (lambda a, ni=x[d], no=out_shape[d]: adaptive(a, ni, no))
    res = local(ctx, fns, st)
    if reduce_all:
        res = reduce_dims(res, reduce_all, keepdim=True)
    if isinstance(ctx.out, (tuple, list)):
        return (res, res)
    return res


def _adaptive_macs(ctx: OpContext) -> int:
    x = ctx.in_shape(0)
    out = ctx.out[0] if isinstance(ctx.out, (tuple, list)) else ctx.out
    n = out.dim() - 2 if out.dim() > 2 else 1
    # output i reads inputs [floor(i*in/out), ceil((i+1)*in/out)) along each pooled dim (PyTorch's rule);
    # windows are separable, so the total is the product over dims of the summed window lengths
    total = math.prod(out.shape[:-n])
    for i in range(1, n + 1):
        ni, no = x[-i], int(out.shape[-i])
        total *= sum(-((-(j + 1) * ni) // no) - (j * ni) // no for j in range(no))
    return total


@table_rule(mixing=True)
def _adaptive_table(ctx: OpContext) -> Any:
    """Adaptive pooling of a table: output ``i`` of ``o`` along an input dim of ``n`` pools indices
    ``floor(i n / o)`` to ``ceil((i + 1) n / o) - 1`` (PyTorch's windows), overlapping or not."""
    ins = ctx.in_shape(0)
    outs = tuple((ctx.out[0] if isinstance(ctx.out, (tuple, list)) else ctx.out).shape)
    t = as_table(ctx, ctx.state(0, "input"), ctx.arg(0, "input"))
    k = _pooled_dims(ctx)
    t = t.narrowed_where_constant(range(len(ins) - k))
    for d in range(len(ins) - k, len(ins)):
        n, o = ins[d], outs[d]
        if o == 0:
            raise Unsupported("adaptive pooling to size 0")
        t = t.pick(d, [range((i * n) // o, -((-(i + 1) * n) // o)) for i in range(o)])
    t = t.union(shape=outs)
    return (t, t) if isinstance(ctx.out, (tuple, list)) else t


def _pooled_dims(ctx: OpContext) -> int:
    m = ctx.module  # a subclass that keeps forward gets this plugin too: match through the MRO
    return next(v for c, v in _ADA.items() if isinstance(m, c)) if m is not None else _F_ADA[ctx.node.target]


def register(reg: Registry) -> None:
    # pooling acts on each channel alone, the same way for every channel
    reg.add("pool", (*_MAX, *_AVG, *_LP, *_F_MAX, *_F_AVG, *_F_LP), rf=_pool_rf, macs=_pool_macs,
            geometry=pool_geometry, traits={CHANNELWISE}, table=sliding_rule(pool_geometry, False))
    reg.add("adaptive_pool", (*_ADA, *_F_ADA), rf=_adaptive_rf, macs=_adaptive_macs, traits={CHANNELWISE},
            table=_adaptive_table)
