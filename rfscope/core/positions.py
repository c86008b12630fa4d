"""Switching a tensor between the periodic form and a per-position table, and the table rules.

A plugin's ``table`` rule (:attr:`rfscope.core.registry.Plugin.table`) runs when one of
its inputs is a table, or when its ``rf`` rule cannot state the result periodically (a
reshape that cuts a spatial dim into windows, a class token ``cat``).  The rules here are
the few kinds every op falls into:

- :func:`index_rule`: the op only moves values around (view, permute, roll, cat, gather,
  unfold...): PyTorch runs the op itself on the table's columns;
- :func:`elementwise_rule`: each output element reads the same element of every input;
- :func:`reduce_table_rule`, :func:`contract_rule`, :func:`matmul_rule`, :func:`sdpa_rule`:
  the output mixes the elements along some dims (the exact union);
- :func:`sliding_rule`: convs and pools over the last dims.

After each rule the result goes back to the periodic form when the table is periodic
again (:func:`from_table`).  See docs/design.md, "Token layouts".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.fx as fx

from rfscope.core.context import OpContext, Unsupported
from rfscope.core.rf import MAX_PERIOD, Axis, Window
from rfscope.core.state import CONST, Global, Merged, TensorRF
from rfscope.core.table import MAX_VALUES, Part, Table, TableError, _assemble, _runs_as_comb, compress

__all__ = [
    "to_table", "from_table", "index_rule", "elementwise_rule", "contract_rule",
    "matmul_rule", "sdpa_rule", "sdpa_like", "sliding_rule", "softmax_rule", "reduce_table_rule", "group_rule",
    "as_table", "table_rule", "self_rule",
]

# -- periodic -> table ----------------------------------------------------------
def _unit_index(tag: Any, axis: int, shape: Sequence[int], d: int) -> torch.Tensor | None:
    """Unit index along input ``axis`` of each index of tensor dim ``d`` (``None``: not on this dim)."""
    n = shape[d]
    ar = torch.arange(n, dtype=torch.int64)
    if tag == axis and isinstance(tag, int):
        return ar
    if isinstance(tag, Merged):
        after = 1
        for t, sz in reversed(tag.parts):
            if t == axis:
                return (ar // after) % sz
            after *= sz
    return None


#: at most this many boxes per element when periodic windows with irregular holes enter a table
MAX_HOLE_PARTS = 16


def _runs(w: Window) -> list[tuple[int, int]]:
    """The maximal runs ``(lo, hi)`` of pixels of a window (one for a window without holes)."""
    out: list[tuple[int, int]] = []
    for p in w.pixels():
        if out and out[-1][1] == p - 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


_Run = tuple[torch.Tensor, torch.Tensor, "tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None"]


def _axis_bounds(a: Axis, u: torch.Tensor) -> list[_Run]:
    """Unit ``u``'s window along one axis as ``(lo, hi, comb)`` pieces whose union it is: one piece
    (with the comb ``(origin, step, width)`` when its holes are regular: runs of one width at one
    step, as one dilated conv leaves), else one box per run index ``k`` (empty where a window has
    fewer runs: irregular holes, a wrapped shifted window)."""
    m, ph = torch.div(u, a.period, rounding_mode="floor"), u % a.period
    shift = m * a.step
    combs = []
    for w in a.windows:
        if w.empty or w.count == w.size:
            combs.append((0, 1, 1))
            continue
        bits = torch.tensor([(w.mask >> b) & 1 for b in range(w.size)], dtype=torch.bool)
        try:
            _lo, _hi, o, st_, wd = _runs_as_comb(bits)
        except TableError:
            break
        combs.append((o + w.lo, st_, wd))
    else:
        lo = torch.tensor([w.lo if not w.empty else 1 for w in a.windows], dtype=torch.int64)
        hi = torch.tensor([w.hi if not w.empty else 0 for w in a.windows], dtype=torch.int64)
        comb = None
        if any(c != (0, 1, 1) for c in combs):
            co, cs, cw = (torch.tensor([c[k] for c in combs], dtype=torch.int64) for k in range(3))
            comb = (co[ph] + shift, cs[ph], cw[ph])
        return [(lo[ph] + shift, hi[ph] + shift, comb)]
    runs = [_runs(w) for w in a.windows]
    out: list[_Run] = []
    for k in range(max(1, *(len(r) for r in runs))):
        lo = torch.tensor([r[k][0] if k < len(r) else 1 for r in runs], dtype=torch.int64)
        hi = torch.tensor([r[k][1] if k < len(r) else 0 for r in runs], dtype=torch.int64)
        out.append((lo[ph] + shift, hi[ph] + shift, None))
    return out


def to_table(st: TensorRF, shape: Sequence[int], input_size: Sequence[int]) -> Table:
    """The table of a tensor in periodic form (raises :class:`Unsupported` if it cannot say).

    A global axis sees the whole input; its local path (``Global.local``) becomes the table's
    ``local`` part.
    """
    if st.table is not None:
        return st.table  # type: ignore[no-any-return]
    if st.reason is not None:
        raise Unsupported(st.reason)
    if st.scrambled:
        raise Unsupported(st.why or "positions were shuffled")
    glob = [a for a in st.axes if isinstance(a, Global)]
    full = Table.whole(shape, input_size) if len(glob) == len(st.axes) == len(input_size) \
        else _boxes(st, tuple(shape), input_size, local=False)
    if not glob:
        return full
    why = next((a.local_why for a in glob if a.local_why), None)
    local: Any
    if why is not None:
        local = why
    elif any(a.local is None for a in glob):
        local = Table.empty_like(shape, len(st.axes))  # no local path at all
    else:
        local = _boxes(st, tuple(shape), input_size, local=True)
    return replace(full, local=local)


def _boxes(st: TensorRF, shape: tuple[int, ...], input_size: Sequence[int], local: bool) -> Table:
    tagged = [d for d, tag in enumerate(st.dims) if tag is not None]
    sets = [_axes_of_tag(st.dims[d]) for d in tagged]
    if len(tagged) > 1 and all(x == sets[0] for x in sets) and sets[0]:
        # every positional dim indexes the same axes (attention logits q @ k^T: a query dim and a
        # key dim): element (i, j) sees unit i's window and unit j's, one part each
        parts: list[Part] = []
        for d in tagged:
            only = tuple(tag if e == d else None for e, tag in enumerate(st.dims))
            parts.extend(_boxes(replace(st, dims=only), shape, input_size, local).parts)
        return Table(tuple(parts), shape, len(st.axes))
    nd = len(shape)
    bounds: list[list[_Run]] = []  # per axis, the pieces
    for a, ax in enumerate(st.axes):
        if isinstance(ax, Global) and not (local and ax.local is not None):
            z = torch.zeros((1,) * nd, dtype=torch.int64)
            bounds.append([(z, z + (input_size[a] - 1), None)])
            continue
        axis = ax.local if isinstance(ax, Global) else ax
        assert axis is not None
        u = None
        for d, tag in enumerate(st.dims):
            idx = _unit_index(tag, a, shape, d)
            if idx is None:
                continue
            if u is not None:
                raise Unsupported(f"two dims index input axis {a}")
            view = [1] * nd
            view[d] = shape[d]
            u = idx.view(view)
        if u is None:  # every element sees what one unit saw (after select)
            u = torch.zeros((1,) * nd, dtype=torch.int64)
        # pixels outside the input do not exist: a padding position of the periodic form (whose
        # window the RF convention extends past the border) sees only what is inside, or nothing
        bounds.append([(lo.clamp(min=0), hi.clamp(max=input_size[a] - 1), comb)  # encode broadcasts
                       for lo, hi, comb in _axis_bounds(axis, u)])
    if math.prod(len(b) for b in bounds) > MAX_HOLE_PARTS:
        raise Unsupported(f"windows with holes would make more than {MAX_HOLE_PARTS} boxes per element")
    # one part per choice of a piece along each axis: the element's window is their union
    one = torch.ones((1,) * nd, dtype=torch.int64)
    parts = []
    for pick in itertools.product(*bounds):
        holes = any(c is not None for _, _, c in pick)
        combs = [c if c is not None else (one * 0, one, one) for _, _, c in pick]
        parts.append(Part.encode([(lo, hi) for lo, hi, _ in pick], shape, combs if holes else None))
    return Table(tuple(parts), shape, len(st.axes))


def _axes_of_tag(tag: Any) -> frozenset[int]:
    if isinstance(tag, int):
        return frozenset((tag,))
    if isinstance(tag, Merged):
        return frozenset(t for t, _ in tag.parts if isinstance(t, int))
    return frozenset()


# -- table -> periodic ------------------------------------------------------------
def _period(tlo: torch.Tensor, thi: torch.Tensor) -> Axis | None:
    """The smallest periodic axis that reproduces the windows ``[tlo[i], thi[i]]`` (seen twice at least,
    period at most :data:`rfscope.core.rf.MAX_PERIOD`); ``lo > hi`` is an empty window."""
    n = len(tlo)
    if n == 1:
        a, b = int(tlo[0]), int(thi[0])
        return Axis(1, 0, (Window(a, (1 << (b - a + 1)) - 1) if b >= a else Window(0, 0),))
    empty = tlo > thi
    width = torch.where(empty, -1, thi - tlo)
    top = min(n // 2, MAX_PERIOD)
    cands = (width[1:top + 1] == width[0]).nonzero().flatten() + 1
    change = ((tlo[1:] != tlo[:-1]) | (thi[1:] != thi[:-1])).nonzero().flatten() + 1
    if len(change):  # a period d moves the first change c to c + d: another change
        later = change - change[0]
        mask = torch.zeros(top + 1, dtype=torch.bool)
        mask[later[later <= top]] = True
        cands = cands[mask[cands]]

    def shift(d: int, m: int) -> int | None:
        """The shift per period when the first ``m`` windows repeat ``d`` later, else ``None``."""
        if not bool((width[d:d + m] == width[:m]).all()):
            return None
        step = torch.where(empty[d:d + m], 0, tlo[d:d + m] - tlo[:m])
        live = ~empty[d:d + m]
        k = int(step[live][0]) if bool(live.any()) else 0
        return k if bool((step[live] == k).all()) else None

    for d in cands.tolist():
        k = shift(d, min(n - d, 2 * d + 16))  # a short prefix first: most candidates fail there
        if k is None or shift(d, n - d) != k:
            continue
        los, his = tlo[:d].tolist(), thi[:d].tolist()
        wins = tuple(Window(a, (1 << (b - a + 1)) - 1) if b >= a else Window(0, 0)
                     for a, b in zip(los, his, strict=True))
        return Axis(d, k, wins)
    return None


def from_table(t: Table, input_size: Sequence[int], ndim: int) -> TensorRF:
    """The compact form of a table: global where every element sees the whole input through a
    global op (with its local part periodic), periodic where the table is one window sequence per
    tensor dim, else the table itself."""
    none = (None,) * ndim
    full = t.covers(input_size)
    if full and not t.full:  # one stride-0 part from here on: what follows reads it for nothing
        t = Table.whole(t.shape, input_size, local=t.local)
    if full and t.local is not None:
        loc = t.local
        if isinstance(loc, str):
            return TensorRF(none, tuple(Global(None, loc) for _ in input_size))
        if loc.all_empty():
            return TensorRF(none, tuple(Global(None) for _ in input_size))
        c = _periodic(loc, ndim) if not loc.covers(input_size) else None
        if c is not None:
            return TensorRF(c.dims, tuple(Global(a) if isinstance(a, Axis) else a for a in c.axes))
        return TensorRF(none, (), table=t)
    if t.local is None:
        c = _periodic(t, ndim)
        if c is not None:
            return c
    return TensorRF(none, (), table=replace(t, full=full))


def _periodic(t: Table, ndim: int) -> TensorRF | None:
    """``t`` as a periodic state (one window sequence per tensor dim), or ``None``."""
    key = ("periodic", ndim)
    if key not in t.memo:
        t.memo[key] = _find_periodic(t, ndim)
    return t.memo[key]  # type: ignore[no-any-return]


def _find_periodic(t: Table, ndim: int) -> TensorRF | None:
    if len(t.parts) != 1 or t.parts[0].comb:
        return None  # (a comb: windows with holes, which the periodic form could hold, not converted yet)
    p = t.parts[0]
    bounds = p.bounds()
    tags: list[Any] = [None] * ndim
    axes: list[Any] = []
    for a, (lo, hi) in enumerate(bounds):
        lo, hi = compress(lo.expand(t.shape)), compress(hi.expand(t.shape))
        var = [d for d in range(ndim) if t.shape[d] > 1 and (lo.stride(d) != 0 or hi.stride(d) != 0)]
        if len(var) > 1 or (var and tags[var[0]] is not None):
            return None
        if var:
            d = var[0]
            idx = tuple(slice(None) if i == d else 0 for i in range(ndim))
            ax = _period(lo[idx].contiguous(), hi[idx].contiguous())
            if ax is None:
                return None
            tags[d] = a
        else:
            first = tuple(0 for _ in range(ndim))
            ax = _period(lo[first].reshape(1), hi[first].reshape(1))
        assert ax is not None
        axes.append(ax)
    if bool(p.empty().any()):
        return None
    return TensorRF(tuple(tags), tuple(axes))


# -- the rules ---------------------------------------------------------------------
def _tables(ctx: OpContext, states: Any, values: Any) -> Any:
    """``values`` with each tensor that depends on the input replaced by its table (its local
    part when the rule runs on local paths); constants are left as they are."""
    if isinstance(states, TensorRF):
        if not isinstance(values, torch.Tensor):
            raise Unsupported("an input without a known shape")
        t = to_table(states, values.shape, ctx.input_size)
        if ctx.memo.get(_VIEW) == "local":
            if isinstance(t.local, str):
                raise _LocalUnknown(t.local)
            if t.local is not None:
                return t.local
            return t
        ctx.memo.setdefault(_INPUTS, []).append(t)
        return t
    if isinstance(states, (list, tuple)) and isinstance(values, (list, tuple)):
        return type(values)(_tables(ctx, s, v) for s, v in zip(states, values, strict=False))
    if isinstance(states, dict) and isinstance(values, dict):
        return {k: _tables(ctx, states[k], v) for k, v in values.items()}
    return values


def _table_list(x: Any) -> list[Table]:
    if isinstance(x, Table):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _table_list(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _table_list(v)]
    return []


def _const_value(ctx: OpContext, node: Any, value: Any) -> Any:
    """The real value of a constant tensor argument (index tensors): only a module's buffer or
    parameter has one; a value computed in ``forward`` is known on ``meta`` by its shape only."""
    if not isinstance(value, torch.Tensor):
        return value
    if isinstance(node, fx.Node) and node.op == "get_attr":
        gm = node.graph.owning_module
        obj: Any = gm
        for part in str(node.target).split("."):
            obj = getattr(obj, part)
        if isinstance(obj, torch.Tensor) and obj.device.type != "meta":
            return obj.detach()
    raise Unsupported("an index tensor whose values are not known before running the model")


def _call(ctx: OpContext) -> Callable[..., Any]:
    n = ctx.node
    if n.op == "call_module":
        assert ctx.module is not None
        return ctx.module
    if n.op == "call_method":
        return getattr(torch.Tensor, str(n.target))
    return n.target  # type: ignore[return-value]


def _result(ctx: OpContext, out: Any) -> Any:
    if isinstance(out, Table):
        return from_table(out, ctx.input_size, len(out.shape))
    if isinstance(out, tuple):
        return tuple(_result(ctx, o) for o in out)
    return CONST


_VIEW, _INPUTS = "positions.view", "positions.inputs"


class _LocalUnknown(Exception):
    """An input's local part is not known: neither is the result's."""


def _guard(mixing: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a rule that returns tables: run it on the inputs' tables, and again on their local
    parts when some input has one; a ``mixing`` rule whose result comes to cover the whole input
    from local inputs that did not is a global op (no local path survives it)."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def rule(ctx: OpContext, *args: Any) -> Any:
            try:
                ctx.memo[_VIEW] = "full"
                ctx.memo[_INPUTS] = []
                out = fn(ctx, *args)
                ins = list(ctx.memo[_INPUTS])
                if any(t.local is not None for t in ins):
                    ctx.memo[_VIEW] = "local"
                    try:
                        loc = fn(ctx, *args)
                    except _LocalUnknown as e:
                        loc = str(e)
                    except (TableError, Unsupported) as e:
                        loc = f"local paths: {e}"
                    loc_ins = [t.local if t.local is not None else t for t in ins]
                else:
                    loc, loc_ins = out, ins
                out = _with_local(ctx, out, loc, loc_ins, mixing)
                return _result(ctx, out)
            except TableError as e:
                raise Unsupported(str(e)) from None
            finally:
                ctx.memo.pop(_VIEW, None)
                ctx.memo.pop(_INPUTS, None)

        rule.__name__ = fn.__name__
        rule.__doc__ = fn.__doc__
        return rule

    return wrap


def _with_local(ctx: OpContext, out: Any, loc: Any, loc_ins: list[Any], mixing: bool) -> Any:
    if isinstance(out, tuple):
        locs = loc if isinstance(loc, tuple) else tuple(loc for _ in out)
        return tuple(_with_local(ctx, o, lo, loc_ins, mixing) for o, lo in zip(out, locs, strict=False))
    if not isinstance(out, Table):
        return out
    size = ctx.input_size
    if isinstance(loc, Table) and mixing and loc.covers(size) \
            and not any(isinstance(t, Table) and t.covers(size) for t in loc_ins):
        loc = Table.empty_like(out.shape, out.n_axes)  # a global op: no local path through it
    if loc is out:
        return out
    return replace(out, local=loc)


_PAD_VALUE = {torch.nn.functional.pad, torch.constant_pad_nd}  # calls whose fill value is an argument


@_guard(mixing=False)
def index_rule(ctx: OpContext) -> Any:
    """The op moves values around only: run it on every column of the input tables."""
    fn = _call(ctx)
    n = ctx.node
    states = (ctx.args, ctx.kwargs)
    values = (ctx.arg_values, ctx.kwarg_values)
    # constants: float ones (class tokens, zero fills) become empty tables; integer ones are indices
    nodes = (n.args, n.kwargs)

    def sub(s: Any, v: Any, nd: Any) -> Any:
        if isinstance(s, TensorRF):
            return _tables(ctx, s, v)
        if isinstance(v, torch.Tensor):
            if v.is_floating_point() or v.is_complex():
                return Table.empty_like(v.shape, len(ctx.input_size))
            return _const_value(ctx, nd, v)
        if isinstance(v, (list, tuple)) and isinstance(s, (list, tuple)):
            nds = list(nd) if isinstance(nd, (list, tuple)) else []
            nds += [None] * (len(v) - len(nds))  # a translated call (ATen) has no fx arguments
            return type(v)(sub(a, b, c) for a, b, c in zip(s, v, nds, strict=False))
        if isinstance(v, dict) and isinstance(s, dict):
            return {k: sub(s.get(k, CONST), x, nd.get(k) if isinstance(nd, dict) else None) for k, x in v.items()}
        if isinstance(v, slice):
            return v
        return v

    args = sub(states[0], values[0], nodes[0])
    kwargs = sub(states[1], values[1], nodes[1])
    if fn in _PAD_VALUE:
        kwargs = dict(kwargs)
        if len(args) > 3:
            args = tuple(args[:3])
        kwargs["value"] = 0.0  # padding sees nothing, whatever value it holds
    elif n.op == "call_module" and getattr(ctx.module, "value", 0) != 0:
        pads: Any = getattr(ctx.module, "padding", ())
        fn = lambda x: torch.nn.functional.pad(x, pads)  # noqa: E731 - padding sees nothing
    tables = _table_list((args, kwargs))
    if not tables:
        raise Unsupported("no input table")
    grow = None
    if fn in _CAT:
        args, kwargs, grow = _cat_narrowed(args, kwargs, ctx.out_shape)
    n_parts = max(len(t.parts) for t in _table_list((args, kwargs)))
    n_axes = len(ctx.input_size)
    combed = [any(bool(x.parts[p].comb) for x in _table_list((args, kwargs)) if p < len(x.parts))
              for p in range(n_parts)]

    def column(x: Any, p: int, c: int, dtype: torch.dtype, dense: bool = False) -> Any:
        if isinstance(x, Table):
            part = x.parts[p] if p < len(x.parts) else None
            if part is None:
                col = torch.zeros((), dtype=torch.int64).expand(x.shape)
            elif c < 2 * n_axes:
                col = part.cols[c]
            elif part.comb:
                col = part.comb[c - 2 * n_axes]
            else:  # a box: origin 0, step 1, width 1
                col = torch.full((), 0 if (c - 2 * n_axes) % 3 == 0 else 1, dtype=torch.int64).expand(x.shape)
            col = col.to(dtype) if dtype != torch.int64 else col
            return col.contiguous() if dense else col
        if isinstance(x, (list, tuple)):
            return type(x)(column(v, p, c, dtype, dense) for v in x)
        if isinstance(x, dict):
            return {k: column(v, p, c, dtype, dense) for k, v in x.items()}
        return x

    def meta(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
        if isinstance(x, (list, tuple)):
            return type(x)(meta(v) for v in x)
        if isinstance(x, dict):
            return {k: meta(v) for k, v in x.items()}
        return x

    outs = []
    big = _numel(ctx.out) > MAX_VALUES  # only then can a column of the result exceed the bound
    for p in range(n_parts):
        held = _values_held(fn, meta(column(args, p, 0, torch.int64)), meta(column(kwargs, p, 0, torch.int64))) \
            if big else 0
        if held > MAX_VALUES:  # found on meta tensors first: the op would copy that many values per column
            raise TableError(f"the per-position table would hold {held:,} values per bound "
                             f"(more than {MAX_VALUES:,})")
        cols = []
        for c in range((5 if combed[p] else 2) * n_axes):
            try:
                r = fn(*column(args, p, c, torch.int64), **column(kwargs, p, c, torch.int64))
            except (RuntimeError, NotImplementedError, TypeError):
                # a view of a stride-0 column (contiguous first), or an op defined on floats only
                # (F.unfold, interpolate; exact below 2**53)
                try:
                    r = fn(*column(args, p, c, torch.int64, True), **column(kwargs, p, c, torch.int64, True))
                except (RuntimeError, NotImplementedError, TypeError):
                    r = fn(*column(args, p, c, torch.float64, True), **column(kwargs, p, c, torch.float64, True))
            cols.append(r)
        outs.append(cols)
    res = _assemble(outs, n_axes)
    return res.expanded(grow) if grow is not None else res


def _values_held(fn: Callable[..., Any], args: Any, kwargs: Any) -> int:
    """How many values the op's result holds (dims of stride 0 are free), run on meta tensors with
    the columns' shapes and strides; 0 when it cannot be told that way (an index tensor on the CPU)."""
    try:
        r = fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - only an estimate; the real run reports its own errors
        return 0
    outs = [r] if isinstance(r, torch.Tensor) else [x for x in r if isinstance(x, torch.Tensor)] \
        if isinstance(r, (tuple, list)) else []
    return max((math.prod(n for n, st in zip(t.shape, t.stride(), strict=True) if st != 0) for t in outs),
               default=0)


def _numel(out: Any) -> int:
    """The largest number of elements of the op's tensor outputs."""
    if isinstance(out, torch.Tensor):
        return out.numel()
    if isinstance(out, (tuple, list)):
        return max((_numel(o) for o in out), default=0)
    return 0


_CAT = {torch.cat, torch.concat, torch.concatenate}


def _cat_narrowed(args: Any, kwargs: Any, out_shape: Any) -> tuple[Any, Any, Any]:
    """``cat`` of tables that do not vary along some other dim (a token's features): the same cat
    on the tables narrowed to size 1 there, and the shape to broadcast the result back to (a
    cat then reads ``tokens x 1`` values, not ``tokens x channels``)."""
    seq = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not isinstance(seq, (list, tuple)) or not seq or not all(isinstance(t, Table) for t in seq) \
            or not isinstance(dim, int) or not isinstance(out_shape, (tuple, list, torch.Size)):
        return args, kwargs, None
    nd = len(seq[0].shape)
    dim %= nd
    free = [d for d in range(nd) if d != dim and not any(t.varies_along(d) for t in seq)]
    if not free:
        return args, kwargs, None
    narrowed = [t.reduce(free, keepdim=True) for t in seq]  # nothing varies there: a narrowing
    if args:
        return (type(seq)(narrowed), *args[1:]), kwargs, tuple(out_shape)
    return args, {**kwargs, "tensors": type(seq)(narrowed)}, tuple(out_shape)


def _union_all(ctx: OpContext) -> Table:
    tabs = _table_list(_tables(ctx, (ctx.args, ctx.kwargs), (ctx.arg_values, ctx.kwarg_values)))
    if not tabs:
        raise Unsupported("no input table")
    return tabs[0].union(*tabs[1:], shape=ctx.out_shape)


@_guard(mixing=False)
def _elementwise(ctx: OpContext) -> Any:
    return _union_all(ctx)


def elementwise_rule(ctx: OpContext) -> Any:
    """Each output element reads the same element of every input: the union, broadcast."""
    st = _only_table_state(ctx)
    if st is not None:  # one input (a residual stream's activations, dropout): its table, broadcast
        out = _broadcast_state(st, ctx.out_shape)
        if out is not None:
            return out
    return _elementwise(ctx)


@_guard(mixing=False)
def _self(ctx: OpContext) -> Any:
    return _tables(ctx, ctx.args[0], ctx.arg_values[0]).union(shape=ctx.out_shape)


def self_rule(ctx: OpContext) -> Any:
    """The output is its first input's values (``x.to(...)``, ``x.type_as(other)``, ``clone``): its
    table; the other arguments give a dtype or a device, not values (a constant ``x`` stays one)."""
    st = ctx.args[0] if ctx.args else None
    if not isinstance(st, TensorRF):
        return CONST
    if st.table is not None:
        out = _broadcast_state(st, ctx.out_shape)
        if out is not None:
            return out
    return _self(ctx)


def _only_table_state(ctx: OpContext) -> TensorRF | None:
    """The input state, when exactly one (possibly repeated) input depends on the model input and
    it is a table; ``None`` otherwise."""
    found: TensorRF | None = None
    stack: list[Any] = [ctx.args, ctx.kwargs]
    while stack:
        x = stack.pop()
        if isinstance(x, TensorRF):
            if x.table is None or (found is not None and x is not found):
                return None
            found = x
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
    return found


def _broadcast_state(st: TensorRF, shape: Any, narrow: Sequence[int] = ()) -> TensorRF | None:
    """``st``'s table (and local part) narrowed to size 1 along ``narrow`` (dims along which
    nothing varies) and broadcast to ``shape``; ``None`` when that is not possible."""
    if not isinstance(shape, (tuple, list, torch.Size)):
        return None
    t: Table = st.table
    shape = tuple(shape)
    if t.shape == shape:  # narrowed along dims where nothing varies and broadcast back: the same
        return st
    try:
        full = t.reduce(narrow, keepdim=True).expanded(shape) if narrow else t.expanded(shape)
        loc = t.local
        if isinstance(loc, Table):
            loc = loc.reduce(narrow, keepdim=True).expanded(shape) if narrow else loc.expanded(shape)
    except RuntimeError:  # not broadcastable: the general rule says why
        return None
    return TensorRF((None,) * len(shape), (), table=replace(full, local=loc) if loc is not None else full)


def _constant_along(t: Table, dims: Sequence[int]) -> bool:
    """No part of ``t`` (nor of its local part) varies along ``dims``."""
    return not any(tab.varies_along(d) for tab in (t, t.local) if isinstance(tab, Table) for d in dims)


def as_table(ctx: OpContext, st: TensorRF, value: Any) -> Table:
    """The table of one input inside a :func:`table_rule` (its local part when the rule runs on
    local paths)."""
    return _tables(ctx, st, value)  # type: ignore[no-any-return]


#: for plugin authors: ``@table_rule(mixing=...)`` turns a function returning a :class:`Table`
#: (built from :func:`as_table` of its inputs) into a plugin's ``table`` rule
table_rule = _guard


def _mixed(ctx: OpContext, t: Table, dims: Sequence[int]) -> Table:
    """``t`` reduced over ``dims``; when that is the whole input, the one-part table saying so (a
    union with it costs nothing)."""
    r = t.reduce(dims, keepdim=True)
    if not r.covers(ctx.input_size):
        return r
    key = ("whole", tuple(ctx.input_size))
    if key not in r.memo:
        r.memo[key] = Table.whole(r.shape, ctx.input_size)
    return r.memo[key]  # type: ignore[no-any-return]


def _attend(ctx: OpContext, ins: Sequence[tuple[Any, Any, Sequence[int]]], shape: Sequence[int]) -> Table:
    """The union of each ``(state, value, dims)`` input's table reduced over ``dims``; the whole input
    at once when one input already sees it."""
    tabs = [(_tables(ctx, s, v), dims) for s, v, dims in ins if isinstance(s, TensorRF)]
    if not tabs:
        raise Unsupported("no input table")
    if any(t.full for t, _ in tabs):
        return Table.whole(shape, ctx.input_size)
    parts = [_mixed(ctx, t, dims) for t, dims in tabs]
    return parts[0].union(*parts[1:], shape=shape)


def _first_table(ctx: OpContext) -> Table:
    for s, v in zip(ctx.args, ctx.arg_values, strict=False):
        if isinstance(s, TensorRF):
            return _tables(ctx, s, v)  # type: ignore[no-any-return]
    raise Unsupported("no input depends on the model input")


@_guard(mixing=True)
def softmax_rule(ctx: OpContext) -> Any:
    """Softmax-like ops (and ``F.normalize``): every element mixes its whole ``dim``."""
    t = _first_table(ctx)
    m: Any = ctx.module
    d = m.dim if m is not None else ctx.param("dim", 1 if ctx.node.target is torch.nn.functional.normalize else None)
    if d is None:
        raise Unsupported("softmax without dim")
    if ctx.memo.get(_VIEW) == "local":  # each element's own position stays a local path
        return t.union(shape=ctx.out_shape)
    dims = [int(d)] if isinstance(d, int) else [int(x) for x in d]
    return t.reduce(dims, keepdim=True).union(shape=ctx.out_shape)  # the element is one of its row's


@_guard(mixing=True)
def reduce_table_rule(ctx: OpContext) -> Any:
    """``mean``/``sum``/``amax``... over ``dim`` (all dims when not given)."""
    other = ctx.param("other", None)
    if isinstance(other, torch.Tensor):  # torch.max(a, b): elementwise
        return _union_all(ctx)
    t = _first_table(ctx)
    nd = len(t.shape)
    dim = ctx.param("dim", None)
    dims = list(range(nd)) if dim is None or dim == [] or dim == () else (
        [int(dim)] if isinstance(dim, int) else [int(x) for x in dim])
    r = t.reduce(dims, keepdim=True)
    keep = bool(ctx.param("keepdim", False))
    if not keep:
        r = r.apply(lambda c: c.squeeze(tuple(d % nd for d in dims)) if c.dim() else c)
    if isinstance(ctx.out, (tuple, list)):  # max(dim) -> (values, indices)
        return tuple(r for _ in ctx.out)
    return r


@_guard(mixing=True)
def group_rule(ctx: OpContext) -> Any:
    """GroupNorm / InstanceNorm: each sample's element mixes every position of its group's channels;
    exact here when the table does not change along the channels (then groups do not matter)."""
    t = _first_table(ctx)
    nd = len(t.shape)
    if nd > 1 and t.varies_along(1):
        raise Unsupported("group norm over channels that carry positions")
    return t.reduce(list(range(1, nd)), keepdim=True).union(shape=ctx.out_shape)  # the element is one of them


def contract_rule(n_last: int | Callable[[OpContext], int]) -> Callable[[OpContext], Any]:
    """The output's last dims mix the input's last ``n_last`` dims (Linear, LayerNorm, ...)."""

    @_guard(mixing=True)
    def general(ctx: OpContext) -> Any:
        t = _first_table(ctx)
        k = n_last(ctx) if callable(n_last) else n_last
        nd = len(t.shape)
        r = t.reduce(list(range(nd - k, nd)), keepdim=True)
        return r.union(shape=ctx.out_shape)

    def rule(ctx: OpContext) -> Any:
        st = _only_table_state(ctx)
        if st is not None:  # the features of a token (stride 0 in its table): nothing is mixed
            k = n_last(ctx) if callable(n_last) else n_last
            nd = len(st.table.shape)
            dims = list(range(nd - k, nd))
            if _constant_along(st.table, dims):
                out = _broadcast_state(st, ctx.out_shape, dims)
                if out is not None:
                    return out
        return general(ctx)

    rule.__doc__ = general.__doc__
    return rule


@_guard(mixing=True)
def matmul_rule(ctx: OpContext) -> Any:
    """``a @ b``: ``out[..., i, j]`` sees row ``i`` of ``a`` and column ``j`` of ``b``."""
    sa, sb = ctx.args[0], ctx.args[1]
    va, vb = ctx.arg_values[0], ctx.arg_values[1]
    if not (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)) or va.dim() < 2 or vb.dim() < 2:
        raise Unsupported("matmul of a vector")
    parts = []
    if isinstance(sa, TensorRF):
        parts.append(_mixed(ctx, _tables(ctx, sa, va), [-1]))
    if isinstance(sb, TensorRF):
        parts.append(_mixed(ctx, _tables(ctx, sb, vb), [-2]))
    if not parts:
        raise Unsupported("no input table")
    return parts[0].union(*parts[1:], shape=ctx.out_shape)


@_guard(mixing=True)
def sdpa_like(ctx: OpContext, seq: int) -> Any:
    """Attention with the sequence along dim ``seq`` of (query, key, value) and features last
    (``nn.MultiheadAttention``): the first output, as :func:`sdpa_rule`."""
    out = ctx.out[0] if isinstance(ctx.out, (tuple, list)) else ctx.out
    ins = [(s, v, [-1] if i == 0 else [-1, seq])
           for i, (s, v) in enumerate(zip(ctx.args[:3], ctx.arg_values[:3], strict=False))]
    return _attend(ctx, ins, tuple(out.shape))


@_guard(mixing=True)
def sdpa_rule(ctx: OpContext) -> Any:
    """Attention: every query sees itself and every key and value it attends to."""
    if ctx.param("is_causal", False):
        raise Unsupported("causal attention in a token layout")
    q, k, v = (ctx.state(i, n) for i, n in enumerate(("query", "key", "value")))
    vals = [ctx.arg(i, n) for i, n in enumerate(("query", "key", "value"))]
    return _attend(ctx, list(zip((q, k, v), vals, ([-1], [-1, -2], [-1, -2]), strict=True)), ctx.out_shape)


def _transposed(ctx: OpContext, t: Table, g: Any, mixes_channels: bool) -> Table:
    """A transposed conv: output ``o`` of an axis reads input ``i`` through tap ``k`` when
    ``o = i * stride - padding + k * dilation`` (PyTorch's definition); an output no input reaches
    (kernel < stride) sees nothing.  Axes are independent; a conv mixes its input channels."""
    n = len(g.kernel)
    nd = len(t.shape)
    t = t.narrowed_where_constant(range(nd - n))
    if mixes_channels:
        c = nd - n - 1
        if int(getattr(g, "groups", 1) or 1) > 1 and t.shape[c] > 1:
            raise Unsupported("a grouped transposed conv over channels that carry positions")
        t = t.reduce([c], keepdim=True)
    for a in range(n):
        d = nd - n + a
        n_in, n_out = t.shape[d], ctx.out_shape[d]
        s, p, k, dil = g.stride[a], g.padding[a], g.kernel[a], g.dilation[a]
        rows = []
        for o in range(n_out):
            r = [(o + p - j * dil) // s for j in range(k) if (o + p - j * dil) % s == 0
                 and 0 <= (o + p - j * dil) // s < n_in]
            rows.append(r or [n_in])  # n_in: an empty slot appended below

        def with_empty(c: torch.Tensor, d: int = d) -> torch.Tensor:
            return torch.cat([c, torch.zeros_like(c.narrow(d, 0, 1))], d)

        t = t.apply(with_empty).pick(d, rows)
    return t.union(shape=ctx.out_shape)


def sliding_rule(geometry: Callable[[OpContext], Any], mixes_channels: bool) -> Callable[[OpContext], Any]:
    """A conv or pool over the last dims, from the call's geometry (kernel, stride, padding,
    dilation); a conv also mixes its input channels (dim 1)."""

    @_guard(mixing=True)
    def rule(ctx: OpContext) -> Any:
        g = geometry(ctx)
        if g is None:
            raise Unsupported("no geometry for this call")
        t = _first_table(ctx)
        n = len(g.kernel)
        if getattr(g, "transposed", False):
            return _transposed(ctx, t, g, mixes_channels)
        pads = list(g.padding)
        if any(isinstance(x, str) for x in pads):
            raise Unsupported("string padding in a token layout")
        if t.full and all(p < d * (k - 1) + 1 for p, k, d in zip(pads, g.kernel, g.dilation, strict=True)):
            return Table.whole(ctx.out_shape, ctx.input_size)  # every window reads an element that sees it all
        # batch and channels along which nothing varies: slide one of them (padding would copy them all)
        t = t.narrowed_where_constant(range(len(t.shape) - n))
        groups = int(getattr(g, "groups", 1) or 1)
        mix = [len(t.shape) - n - 1] if mixes_channels else []
        if mixes_channels and groups > 1:
            ch = t.reduce(mix, keepdim=True)
            if any(p.cols[0].stride(mix[0]) != 0 for p in t.parts) and tuple(ch.shape) != tuple(t.shape):
                raise Unsupported("a grouped conv over channels that carry positions")
        pm = getattr(ctx.module, "padding_mode", "zeros")
        mode = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}[pm]
        if all(k == 1 for k in g.kernel) and not any(pads):  # a 1x1 conv: no window, a subsample at most
            r = t.reduce(mix, keepdim=True) if mix else t
            if any(s != 1 for s in g.stride):
                sl = (slice(None),) * (len(t.shape) - n) + tuple(slice(None, None, s) for s in g.stride)
                r = r.apply(lambda c: c[sl])
        else:
            r = t.sliding(n, g.kernel, g.stride, pads, g.dilation, mix=mix, mode=mode)
        if tuple(r.shape[-n:]) != tuple(ctx.out_shape[-n:]):
            raise Unsupported("ceil_mode pooling in a token layout")
        if tuple(r.shape) != tuple(ctx.out_shape):
            r = r.union(shape=ctx.out_shape)
        return r

    return rule
