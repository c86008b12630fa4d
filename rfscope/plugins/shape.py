"""Layout ops: view/reshape/flatten, permute/transpose, (un)squeeze, expand, indexing and
slicing, cat/stack, split/chunk.  They track which tensor dims are spatial, so that a
Linear or LayerNorm on the channel dim of a channels-last tensor stays pointwise."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn

from rfscope.core import rf
from rfscope.core.context import OpContext, Unsupported
from rfscope.core.ops import norm_dim
from rfscope.core.positions import index_rule
from rfscope.core.registry import Method, Plugin, Registry
from rfscope.core.state import CONST, DimTag, Global, Merged, TensorRF, map_axis, merge, unknown
from rfscope.core.traits import FLATTEN


def _parts(tag: DimTag, size: int) -> list[tuple[int | None, int]]:
    if isinstance(tag, Merged):
        return list(tag.parts)
    return [(tag, size)]


def reshape_tags(in_shape: Sequence[int], out_shape: Sequence[int], tags: Sequence[DimTag]) -> list[DimTag]:
    """Tags of a reshape's output dims, or raise Unsupported when a spatial dim is cut."""
    ins = [(t, s) for t, s in zip(tags, in_shape, strict=False) if s != 1]
    outs = [j for j, s in enumerate(out_shape) if s != 1]
    res: list[DimTag] = [None] * len(out_shape)
    i = 0
    k = 0
    while i < len(ins) or k < len(outs):
        if i >= len(ins) or k >= len(outs):
            raise Unsupported("reshape changes the number of elements")
        gi = [ins[i]]
        gj = [outs[k]]
        pi, pj = ins[i][1], out_shape[outs[k]]
        while pi != pj:
            if pi < pj:
                i += 1
                if i >= len(ins):
                    raise Unsupported("reshape changes the number of elements")
                gi.append(ins[i])
                pi *= ins[i][1]
            else:
                k += 1
                if k >= len(outs):
                    raise Unsupported("reshape changes the number of elements")
                gj.append(outs[k])
                pj *= out_shape[outs[k]]
        i += 1
        k += 1
        parts = [p for t, s in gi for p in _parts(t, s) if p[1] != 1]
        if all(t is None for t, _ in parts):
            continue
        if len(gj) == 1:
            res[gj[0]] = parts[0][0] if len(parts) == 1 else Merged(tuple(parts))
            continue
        # split: the output sizes must regroup the flattened parts exactly
        sizes = [out_shape[j] for j in gj]
        pos = 0
        for j, sz in zip(gj, sizes, strict=False):
            acc: list[tuple[int | None, int]] = []
            prod = 1
            while prod < sz and pos < len(parts):
                acc.append(parts[pos])
                prod *= parts[pos][1]
                pos += 1
            if prod != sz:
                raise Unsupported("reshape splits a spatial dimension (e.g. into windows or patches)")
            res[j] = acc[0][0] if len(acc) == 1 else Merged(tuple(acc))
    return res


def _reshape_rf(ctx: OpContext) -> TensorRF:
    st = ctx.first
    tags = reshape_tags(ctx.in_shape(0), ctx.out_shape, st.dims)
    for t in tags:
        if isinstance(t, Merged) and _axis_then_other(t):
            # (window row, row in window) merged back into one grid dim: index i of that dim is not
            # unit i of the axis, so a periodic RF would mislead; the per-position table says it exactly
            raise Unsupported("reshape merges a spatial dim with a finer non-spatial one")
    return st.with_dims(tags)


def _axis_then_other(t: Merged) -> bool:
    """A positional part followed (inner) by a non-positional part of size > 1."""
    seen = False
    for tag, size in t.parts:
        if tag is not None:
            seen = True
        elif seen and size > 1:
            return True
    return False


def _permute_rf(ctx: OpContext) -> TensorRF:
    st = ctx.first
    nd = len(st.dims)
    if ctx.node.op == "call_method":
        rest = list(ctx.arg_values[1:]) or [ctx.kwarg_values.get("dims")]
        order = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
    else:
        order = ctx.param("dims")
    order = [norm_dim(int(d), nd) for d in order]
    return st.with_dims([st.dims[d] for d in order])


def _transpose_rf(ctx: OpContext) -> TensorRF:
    st = ctx.first
    nd = len(st.dims)
    a, b = norm_dim(int(ctx.param("dim0")), nd), norm_dim(int(ctx.param("dim1")), nd)
    dims = list(st.dims)
    dims[a], dims[b] = dims[b], dims[a]
    return st.with_dims(dims)


def _movedim_rf(ctx: OpContext) -> TensorRF:
    st = ctx.first
    nd = len(st.dims)
    src, dst = ctx.param("source"), ctx.param("destination")
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    perm = list(range(nd))
    src = [norm_dim(s, nd) for s in src]
    dst = [norm_dim(d, nd) for d in dst]
    rest = [d for d in perm if d not in src]
    order: list[int | None] = [None] * nd
    for s, d in zip(src, dst, strict=False):
        order[d] = s
    it = iter(rest)
    full = [o if o is not None else next(it) for o in order]
    return st.with_dims([st.dims[d] for d in full])


def _t_rf(ctx: OpContext) -> TensorRF:
    st = ctx.first
    return st.with_dims(list(reversed(st.dims))) if len(st.dims) <= 2 else _transpose_rf(ctx)


def _unsqueeze_rf(ctx: OpContext) -> TensorRF:
    st = ctx.first
    d = norm_dim(int(ctx.param("dim")), len(st.dims) + 1)
    dims = list(st.dims)
    dims.insert(d, None)
    return st.with_dims(dims)


def _squeeze_rf(ctx: OpContext) -> TensorRF:
    st = ctx.first
    shp = ctx.in_shape(0)
    dim = ctx.param("dim", None)
    if dim is None:
        drop = {i for i, s in enumerate(shp) if s == 1}
    else:
        dl = [dim] if isinstance(dim, int) else list(dim)
        drop = {norm_dim(int(d), len(shp)) for d in dl if shp[norm_dim(int(d), len(shp))] == 1}
    return st.with_dims([t for i, t in enumerate(st.dims) if i not in drop])


def _expand_rf(ctx: OpContext) -> TensorRF:
    st = ctx.first
    shp, out = ctx.in_shape(0), ctx.out_shape
    off = len(out) - len(shp)
    axes = list(st.axes)
    for i, (t, s) in enumerate(zip(st.dims, shp, strict=False)):
        if isinstance(t, int) and s == 1 and out[off + i] != 1:
            axes[t] = map_axis(axes[t], lambda a: rf.select(a, 0))
    return TensorRF(tuple([None] * off + list(st.dims)), tuple(axes), st.reason, st.scrambled)


def _select_rf(ctx: OpContext) -> TensorRF:
    """``x.select(dim, i)``: every unit now sees what unit ``i`` saw along that axis."""
    st = ctx.first
    shp = ctx.in_shape(0)
    d = norm_dim(int(ctx.param("dim")), len(shp))
    i = int(ctx.param("index")) % shp[d]
    tag = st.dims[d]
    axes = list(st.axes)
    if isinstance(tag, Merged) and not _all_global(st, tag):
        raise Unsupported("selecting from a flattened spatial dim")
    if isinstance(tag, int):
        axes[tag] = map_axis(axes[tag], lambda a: rf.select(a, i))
    dims = [t for k, t in enumerate(st.dims) if k != d]
    return TensorRF(tuple(dims), tuple(axes), st.reason, st.scrambled)


def _narrow_rf(ctx: OpContext) -> TensorRF:
    """``x.narrow(dim, start, length)``: a crop."""
    st = ctx.first
    shp = ctx.in_shape(0)
    d = norm_dim(int(ctx.param("dim")), len(shp))
    start = int(ctx.param("start")) % shp[d] if shp[d] else 0
    tag = st.dims[d]
    axes = list(st.axes)
    if isinstance(tag, Merged) and not _all_global(st, tag) and start != 0:
        raise Unsupported("narrowing a flattened spatial dim")
    if isinstance(tag, int):
        axes[tag] = map_axis(axes[tag], lambda a: _crop(a, start, 1))
    return st.with_axes(axes)


def _crop(a: rf.Axis, start: int, step: int) -> rf.Axis:
    return rf.resample(a, lambda i: [start + i * step], 1, step)


def _all_global(st: TensorRF, tag: Merged) -> bool:
    return all(isinstance(st.axes[a], Global) for a in tag.axes)


def _unknown_like(v: Any, reason: str) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_unknown_like(x, reason) for x in v)
    return unknown([None] * v.dim(), reason) if isinstance(v, torch.Tensor) else CONST


def _getitem_rf(ctx: OpContext) -> Any:
    src = ctx.args[0]
    idx = ctx.arg_values[1]
    if isinstance(src, (tuple, list)):
        return src[idx]  # one output of a multi-output op keeps its own state, known or not
    if not isinstance(src, TensorRF):
        return CONST
    if src.reason is not None:  # this plugin handles unknown inputs (for the tuple case above)
        return _unknown_like(ctx.out, src.reason)
    shp = ctx.in_shape(0)
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if any(isinstance(x, torch.Tensor) or isinstance(x, list) for x in items):
        raise Unsupported("advanced (tensor) indexing")
    n_real = sum(1 for x in items if x is not None and x is not Ellipsis)
    if Ellipsis in items:
        e = items.index(Ellipsis)
        items = items[:e] + [slice(None)] * (len(shp) - n_real) + items[e + 1:]
    axes = list(src.axes)
    dims: list[DimTag] = []
    d = 0
    for it in items:
        if it is None:
            dims.append(None)
            continue
        tag = src.dims[d]
        size = shp[d]
        if isinstance(it, int):
            i = it % size
            if isinstance(tag, int):
                axes[tag] = map_axis(axes[tag], partial(rf.select, i=i))
            elif isinstance(tag, Merged) and not _all_global(src, tag):
                raise Unsupported("indexing a flattened spatial dim")
        elif isinstance(it, slice):
            start, _stop, step = it.indices(size)
            if step <= 0:
                raise Unsupported("negative slice step")
            if isinstance(tag, Merged) and (start, step) != (0, 1) and not _all_global(src, tag):
                raise Unsupported("slicing a flattened spatial dim")
            if isinstance(tag, int) and (start, step) != (0, 1):
                axes[tag] = map_axis(axes[tag], partial(_crop, start=start, step=step))
            dims.append(tag)
        else:
            raise Unsupported(f"index {it!r}")
        d += 1
    dims.extend(src.dims[d:])
    return TensorRF(tuple(dims), tuple(axes), src.reason, src.scrambled)


def _cat_rf(ctx: OpContext) -> TensorRF:
    tensors = ctx.args[0]
    dim = int(ctx.param("dim", 0))
    is_stack = ctx.node.target in (torch.stack,)
    sts = [s for s in tensors if isinstance(s, TensorRF)]
    nd = len(ctx.out_shape)
    d = norm_dim(dim, nd)
    ref = sts[0]
    if is_stack:
        dims = list(ref.dims)
        dims.insert(d, None)
        return merge(sts, dims, f"stack {ctx.node.name}")
    dims = list(ref.dims)
    tag = None
    for s in tensors:
        if isinstance(s, TensorRF) and s.dims[d] is not None:
            tag = s.dims[d]
    if tag is None:
        vals = ctx.arg_values[0] if ctx.arg_values else ()
        if any(not isinstance(s, TensorRF) for s in tensors) and isinstance(vals, (list, tuple)) \
                and any(isinstance(a, Global) for s in sts for a in s.axes) and not is_stack:
            # a constant (a class token) joins a global tensor along a dim that may carry positions:
            # its elements see nothing, which only the per-position form can say
            raise Unsupported("a constant concatenated to a global tensor")
        return merge(sts, [next((s.dims[i] for s in sts if s.dims[i] is not None), None) for i in range(nd)],
                     f"cat {ctx.node.name}")
    # Concatenating along a spatial dim: positions no longer map to one lattice.
    ax = {tag} if isinstance(tag, int) else set(tag.axes)
    m = merge(sts, [tag if i == d else dims[i] for i in range(nd)], f"cat {ctx.node.name}")
    if m.reason is not None:
        return m
    return TensorRF(m.dims, m.axes, None, m.scrambled | frozenset(ax))


def _split_rf(ctx: OpContext) -> Any:
    st = ctx.first
    shp = ctx.in_shape(0)
    outs = ctx.out
    t = ctx.node.target
    name = t if isinstance(t, str) else getattr(t, "__name__", "")
    unbind = name == "unbind"
    dim = ctx.param("dim", 0)
    d = norm_dim(int(dim), len(shp))
    tag = st.dims[d]
    res = []
    off = 0
    for o in outs:
        n = 1 if unbind else int(o.shape[d])
        if tag is None:
            s = st
        elif isinstance(tag, int):
            axes = list(st.axes)
            axes[tag] = map_axis(axes[tag], partial(rf.select, i=off) if unbind else partial(_crop, start=off, step=1))
            s = st.with_axes(axes)
        else:
            raise Unsupported("splitting a flattened spatial dim")
        if unbind:
            s = s.with_dims([t for i, t in enumerate(st.dims) if i != d])
        res.append(s)
        off += n
    return tuple(res)


def register(reg: Registry) -> None:
    M = Method
    reg.add("reshape", (M("view"), M("reshape"), M("unflatten"), M("view_as"),
                        M("reshape_as"), torch.reshape, torch.unflatten, nn.Unflatten), rf=_reshape_rf,
            table=index_rule)
    reg.add("flatten", (M("flatten"), torch.flatten, nn.Flatten), rf=_reshape_rf, traits={FLATTEN}, table=index_rule)
    reg.add("permute", (M("permute"), torch.permute), rf=_permute_rf, table=index_rule)
    reg.add("transpose", (M("transpose"), torch.transpose, M("swapaxes"), torch.swapaxes), rf=_transpose_rf,
            table=index_rule)
    reg.add("movedim", (M("movedim"), torch.movedim), rf=_movedim_rf, table=index_rule)
    reg.add("unsqueeze", (M("unsqueeze"), torch.unsqueeze), rf=_unsqueeze_rf, table=index_rule)
    reg.add("squeeze", (M("squeeze"), torch.squeeze), rf=_squeeze_rf, table=index_rule)
    reg.add("expand", (M("expand"), M("expand_as")), rf=_expand_rf, table=index_rule)
    # called with unknown inputs too: picking a known output of a tuple whose other outputs are
    # unknown (a unidirectional RNN's global h_n) must not inherit their reason
    reg.register(Plugin("getitem", (operator.getitem,), _getitem_rf, extra={"handles_unknown": True},
                        table=index_rule))
    reg.add("select", (M("select"), torch.select), rf=_select_rf, table=index_rule)
    reg.add("narrow", (M("narrow"), torch.narrow), rf=_narrow_rf, table=index_rule)
    reg.add("t", (M("t"), torch.t), rf=_t_rf, table=index_rule)
    reg.add("cat", (torch.cat, torch.concat, torch.concatenate, torch.stack), rf=_cat_rf, table=index_rule)
    reg.add("split", (M("split"), M("chunk"), M("unbind"), M("tensor_split"), torch.split, torch.chunk, torch.unbind,
                      torch.tensor_split), rf=_split_rf,
            table=index_rule)
