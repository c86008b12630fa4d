"""Per-position receptive-field tables: exact RFs through ops that move positions around.

The periodic form (:class:`~rfscope.core.rf.Axis` per input axis, one tensor dim per axis)
cannot describe a tensor whose positions were cut into windows and folded into the batch
dim, prefixed with a class token, rolled, gathered or flattened and then convolved.  Such
a tensor gets a :class:`Table`: for every element, per input axis, the interval of input
pixels it sees (a *box*).  A table is a union of :class:`Part` s (element ``e`` sees the
union of every part's box at ``e``), which keeps unions exact without per-element sets.

Index ops are not re-implemented: the op itself is run by PyTorch on the table's columns
(int64 tensors of the tensor's shape holding ``lo + BIG`` and ``hi + BIG`` per axis; ``0``
means *sees nothing*, so zero padding and zero-filled class tokens come out right).  Dims
along which a column does not change are stored with stride 0, so a table costs the
number of positions of the tensor, not its channels.  Mixing ops (attention, token MLPs,
convs over tokens, reductions) take the union of the boxes they read and check that it
is a box again, rasterising the boxes inside their bounding box; when it is not (a 1-D
conv across the rows of a flattened grid), the op is ``unknown``.  See docs/design.md,
"Token layouts".

>>> t = Table.grid((1, 2, 3), dims=(None, 0, 1), boxes=[[(0, 0), (1, 1)], [(0, 0), (1, 1), (2, 2)]])
>>> t.box((0, 1, 2))
((1, 1), (2, 2))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import torch

__all__ = ["Part", "Table", "TableError", "BIG", "MAX_PARTS", "MAX_VALUES", "RASTER_BUDGET"]

#: offset of the stored bounds: a stored ``0`` is an element that sees nothing
BIG = 1 << 40
#: more parts than this: the union is no longer tracked (``unknown``)
MAX_PARTS = 8
#: values one bound of one part may hold (stride-0 dims not counted): beyond, the op is ``unknown``
#: rather than a memory hog (SAM ViT-H's relative-position logits: 4096 x 64 x 64 per head)
MAX_VALUES = 1 << 25
#: cells rasterised at once when checking that a union of boxes is a box
RASTER_BUDGET = 1 << 22
#: cells rasterised in all for one op: beyond, the op is ``unknown`` (bounds the time and memory
#: of the check; see docs/design.md, "Per-position tables")
TOTAL_RASTER = 1 << 27
_INF = 1 << 50


class TableError(ValueError):
    """The op's result is not a union of boxes that rfscope can state exactly."""


def compress(t: torch.Tensor) -> torch.Tensor:
    """The same values, stored with stride 0 along every dim where they do not change."""
    if t.numel() <= 1:
        return t.expand(t.shape) if t.dim() else t
    for d in range(t.dim()):
        if t.shape[d] > 1 and t.stride(d) != 0:
            first = t.narrow(d, 0, 1)
            # cheap first: indices 0 and 1 differ in a corner of the other dims (a dim that varies)
            corner = t
            for o in range(t.dim()):
                if o != d:
                    corner = corner.narrow(o, 0, min(2, t.shape[o]))
            if not torch.equal(corner.narrow(d, 1, 1), corner.narrow(d, 0, 1)):
                continue
            if torch.equal(t, first.expand(t.shape)):
                t = first.expand(t.shape)
    return t


def _core(t: torch.Tensor) -> torch.Tensor:
    """``t`` with every stride-0 dim narrowed to size 1 (what the values really are)."""
    idx = tuple(slice(0, 1) if (t.stride(d) == 0 and t.shape[d] > 1) else slice(None) for d in range(t.dim()))
    return t[idx]


@dataclass(frozen=True, eq=False)
class Part:
    """One box per element: ``cols[2a]``/``cols[2a+1]`` are the encoded bounds along input axis ``a``."""

    cols: tuple[torch.Tensor, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.cols[0].shape)

    @property
    def n_axes(self) -> int:
        return len(self.cols) // 2

    def core(self) -> tuple[torch.Tensor, ...]:
        """The columns narrowed to size 1 along every dim where none of them varies."""
        shape = self.shape
        idx = tuple(slice(0, 1) if shape[d] > 1 and all(c.stride(d) == 0 for c in self.cols) else slice(None)
                    for d in range(len(shape)))
        return tuple(c[idx] for c in self.cols)

    def empty(self) -> torch.Tensor:
        """Elements that see nothing (on the core: broadcastable to :attr:`shape`)."""
        cols = self.core()
        e = cols[0] == 0
        for c in cols[1:]:
            e = e | (c == 0)
        return e

    def bounds(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Decoded ``(lo, hi)`` per axis on the core (broadcastable to :attr:`shape`); an empty
        element has ``lo = +inf``, ``hi = -inf``."""
        cols = self.core()
        e = cols[0] == 0
        for c in cols[1:]:
            e = e | (c == 0)
        out = []
        for a in range(self.n_axes):
            lo = torch.where(e, _INF, cols[2 * a] - BIG)
            hi = torch.where(e, -_INF, cols[2 * a + 1] - BIG)
            out.append((lo, hi))
        return out

    @staticmethod
    def encode(bounds: Sequence[tuple[torch.Tensor, torch.Tensor]], shape: Sequence[int] | None = None) -> Part:
        """The part whose element ``e`` sees ``[lo[e], hi[e]]`` per axis, broadcast to ``shape``."""
        if shape is None:
            shape = torch.broadcast_shapes(*(b.shape for pair in bounds for b in pair))
        shape = tuple(shape)
        core = torch.broadcast_shapes(*(b.shape for pair in bounds for b in pair))
        if math.prod(core) > MAX_VALUES:
            raise TableError(f"the per-position table would hold {math.prod(core):,} values per bound "
                             f"(more than {MAX_VALUES:,})")
        e = None
        for lo, hi in bounds:
            ea = lo > hi
            e = ea if e is None else e | ea
        cols: list[torch.Tensor] = []
        for lo, hi in bounds:
            assert e is not None
            # dims where the bounds have size 1 stay stride 0; no scan for constant dims here
            # (index ops, which may materialise, compress their results in _assemble)
            cols.append(torch.where(e, 0, lo + BIG).expand(shape))
            cols.append(torch.where(e, 0, hi + BIG).expand(shape))
        return Part(tuple(cols))

    def expand(self, shape: Sequence[int]) -> Part:
        return Part(tuple(c.expand(tuple(shape)) for c in self.cols))


@dataclass(frozen=True, eq=False)
class Table:
    """The exact receptive field of every element of one tensor (see module docstring)."""

    parts: tuple[Part, ...]
    shape: tuple[int, ...]
    n_axes: int
    #: what the spatially local paths alone see: ``None`` (every path is local: this table), a
    #: :class:`Table` (a global op such as attention over all tokens was met), or a string saying
    #: why it is not known (see :class:`rfscope.core.state.Global`)
    local: Any = None
    #: every element sees the whole input (set by :func:`rfscope.core.positions.from_table`)
    full: bool = False
    #: what was derived from this (immutable) table: coverage, reductions, the periodic form.
    #: Per table, so per analysis; ``replace`` starts a new one (see docs/design.md §2b, "Cost")
    memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    # -- building --------------------------------------------------------
    @staticmethod
    def whole(shape: Sequence[int], extent: Sequence[int], local: Any = None) -> Table:
        """Every element sees the whole input ``extent`` (one stride-0 part: reductions and unions of it cost
        nothing)."""
        shape = tuple(shape)
        cols: list[torch.Tensor] = []
        for n in extent:
            cols.append(torch.full((), BIG, dtype=torch.int64).expand(shape))
            cols.append(torch.full((), BIG + n - 1, dtype=torch.int64).expand(shape))
        return Table((Part(tuple(cols)),), shape, len(extent), local=local, full=True)

    @staticmethod
    def empty_like(shape: Sequence[int], n_axes: int) -> Table:
        z = torch.zeros((), dtype=torch.int64).expand(tuple(shape))
        t = Table((Part(tuple(z for _ in range(2 * n_axes))),), tuple(shape), n_axes)
        t.memo["void"] = True
        return t

    @staticmethod
    def grid(shape: Sequence[int], dims: Sequence[Any], boxes: Sequence[Sequence[tuple[int, int]]]) -> Table:
        """A table whose axis ``a`` varies along the tensor dim ``dims.index(a)`` only.

        ``boxes[a][i]`` is the ``(lo, hi)`` seen by index ``i`` of that dim (``lo > hi``: nothing).
        """
        shape = tuple(shape)
        n = len(boxes)
        bounds = []
        for a in range(n):
            d = list(dims).index(a)
            lo = torch.tensor([b[0] for b in boxes[a]], dtype=torch.int64)
            hi = torch.tensor([b[1] for b in boxes[a]], dtype=torch.int64)
            view = [1] * len(shape)
            view[d] = shape[d]
            bounds.append((lo.view(view).expand(shape), hi.view(view).expand(shape)))
        return Table((Part.encode(bounds, shape),), shape, n)

    # -- reading ---------------------------------------------------------
    def box(self, index: Sequence[int]) -> tuple[tuple[int, int], ...] | None:
        """``(lo, hi)`` per axis of the bounding box element ``index`` sees, ``None`` if it sees nothing."""
        los, his = [_INF] * self.n_axes, [-_INF] * self.n_axes
        for p in self.parts:
            if bool(_at(p.empty(), index)):
                continue
            for a, (lo, hi) in enumerate(p.bounds()):
                los[a] = min(los[a], int(_at(lo, index)))
                his[a] = max(his[a], int(_at(hi, index)))
        if los[0] == _INF:
            return None
        return tuple(zip(los, his, strict=True))

    def boxes(self, index: Sequence[int]) -> list[tuple[tuple[int, int], ...]]:
        """The boxes whose union element ``index`` sees (one per part that is not empty there)."""
        out = []
        for p in self.parts:
            if bool(_at(p.empty(), index)):
                continue
            out.append(tuple((int(_at(lo, index)), int(_at(hi, index))) for lo, hi in p.bounds()))
        return out

    def max_sizes(self) -> tuple[int, ...]:
        """Per axis, the largest bounding-box size over the elements (0 if none sees anything)."""
        memo = _root(self).memo  # the same values, broadcast or narrowed: the same sizes
        if "max_sizes" not in memo:
            memo["max_sizes"] = self._max_sizes()
        return memo["max_sizes"]  # type: ignore[no-any-return]

    def _max_sizes(self) -> tuple[int, ...]:
        sizes = []
        for a in range(self.n_axes):
            lo_all = hi_all = None
            for p in self.parts:
                lo, hi = p.bounds()[a]
                lo_all = lo if lo_all is None else torch.minimum(lo_all, lo)
                hi_all = hi if hi_all is None else torch.maximum(hi_all, hi)
            assert lo_all is not None and hi_all is not None
            s = (hi_all - lo_all + 1).clamp(min=0)
            sizes.append(int(_core(s).max()) if s.numel() else 0)
        return tuple(sizes)

    def covers(self, extent: Sequence[int]) -> bool:
        """Every element sees the whole input (one of its boxes is the whole input)."""
        if self.full:
            return True
        key, memo = ("covers", tuple(extent)), _root(self).memo
        if key not in memo:
            memo[key] = self._covers(extent)
        return bool(memo[key])

    def _covers(self, extent: Sequence[int]) -> bool:
        if not any(all(int(_at(lo, [0] * len(self.shape))) <= 0 and int(_at(hi, [0] * len(self.shape))) >= n - 1
                       for (lo, hi), n in zip(p.bounds(), extent, strict=False)) for p in self.parts):
            return False  # the first element does not: no need to look at the others
        full = None
        for p in self.parts:
            ok = ~p.empty()
            for (lo, hi), n in zip(p.bounds(), extent, strict=False):
                ok = ok & (lo <= 0) & (hi >= n - 1)
            full = ok if full is None else full | ok
        return bool(full is not None and bool(full.all()))

    def all_empty(self) -> bool:
        """No element sees anything."""
        memo = _root(self).memo
        if "void" not in memo:
            memo["void"] = all(bool(p.empty().all()) for p in self.parts)
        return bool(memo["void"])

    def expanded(self, shape: Sequence[int]) -> Table:
        """This table (without its local part) broadcast to ``shape``."""
        shape = tuple(shape)
        if shape == self.shape and self.local is None:
            return self
        out = Table(tuple(p.expand(shape) for p in self.parts), shape, self.n_axes, full=self.full)
        out.memo["root"] = _root(self)
        return out

    def nbytes(self) -> int:
        """Memory actually held, local part included (stride-0 dims cost nothing)."""
        own = sum(_core(c).numel() * 8 for p in self.parts for c in p.cols)
        return own + (self.local.nbytes() if isinstance(self.local, Table) else 0)

    # -- index ops -------------------------------------------------------
    def apply(self, fn: Callable[[torch.Tensor], Any]) -> Any:
        """Run an index op on every column; returns a Table, or a tuple of them for tuple outputs."""
        outs = [[fn(c) for c in p.cols] for p in self.parts]
        return _assemble(outs, self.n_axes)

    # -- mixing ----------------------------------------------------------
    def union(self, *others: Table, shape: Sequence[int] | None = None) -> Table:
        """Element-wise union with ``others``, broadcast to ``shape``."""
        if shape is None:
            shape = torch.broadcast_shapes(self.shape, *(o.shape for o in others))
        shape = tuple(shape)
        tabs = [t for t in (self, *others) if not _root(t).memo.get("void", False)]  # known to see nothing
        # cheap cases first: a table that sees everything absorbs the others; one table (met
        # again and again in a residual stream) is its own union
        full = next((t for t in tabs if t.full), None)
        if full is not None:
            return full.expanded(shape)
        if tabs and all(_root(t) is _root(tabs[0]) and t.shape == tabs[0].shape for t in tabs):
            return tabs[0].expanded(shape)  # the same table, broadcast alike (see _root)
        parts = [p.expand(shape) for t in (self, *others) for p in t.parts]
        return Table(_simplify(parts), shape, self.n_axes)

    def reduce(self, dims: Sequence[int], keepdim: bool = True) -> Table:
        """Each element of the result sees the union of what the reduced ``dims`` saw."""
        nd = len(self.shape)
        dims = sorted({d % nd for d in dims})
        key, memo = ("reduce", self.shape, tuple(dims), keepdim), _root(self).memo  # equal tables: see _root
        if key not in memo:
            memo[key] = self._reduce(dims, keepdim)
        return memo[key]  # type: ignore[no-any-return]

    def _reduce(self, dims: list[int], keepdim: bool) -> Table:
        if keepdim and not any(self.varies_along(d) for d in dims):
            # nothing varies along ``dims`` (channels of a token): the table, narrowed to size 1 there
            idx = tuple(slice(0, 1) if d in dims else slice(None) for d in range(len(self.shape)))
            shape = tuple(1 if d in dims else n for d, n in enumerate(self.shape))
            out = Table(tuple(Part(tuple(c[idx] for c in p.cols)) for p in self.parts), shape, self.n_axes,
                        full=self.full)
            out.memo["root"] = _root(self)
            return out
        try:  # the union distributes over parts: each part alone, when each stays a union of boxes
            parts = [q for p in self.parts for q in _reduce_part(p, dims, keepdim)]
        except TableError as alone:
            if len(self.parts) == 1:
                raise
            # parts that only make boxes together (one was merged into another where it could be)
            both = _stacked(_runs_once_all(self.parts, dims))
            if max(_core(c).numel() for c in both.cols) > 4 * RASTER_BUDGET:  # a cost bound: say why alone
                raise TableError(f"{alone} (the parts together are too large to check)") from None
            drop = [0] if keepdim else [0, *(d + 1 for d in dims)]
            try:
                parts = _reduce_part(both, [0, *(d + 1 for d in dims)], keepdim=False, squeeze=drop)
            except TableError as together:
                raise TableError(f"{alone} ({together})") from None
        shape = parts[0].shape
        return Table(_simplify(parts), shape, self.n_axes, full=self.full)

    def varies_along(self, d: int) -> bool:
        """Some part's bounds change along dim ``d`` (a dim of stride 0 everywhere does not)."""
        return self.shape[d] > 1 and any(c.stride(d) != 0 for p in self.parts for c in p.cols)

    def pick(self, dim: int, rows: Sequence[Sequence[int]]) -> Table:
        """Along ``dim`` (non-negative), output index ``o`` sees the union of what input indices
        ``rows[o]`` saw (each row non-empty).  Resizing, adaptive pooling and transposed convs, one
        axis at a time."""
        m = max(len(r) for r in rows)
        members = torch.tensor([[*r, *[r[0]] * (m - len(r))] for r in rows], dtype=torch.int64)
        n_out = len(rows)
        flat = members.flatten()
        t = self.apply(lambda c: c.index_select(dim, flat).unflatten(dim, (n_out, m)))
        return t.reduce([dim + 1], keepdim=True).apply(lambda c: c.squeeze(dim + 1))  # type: ignore[no-any-return]

    def prefix(self, dim: int) -> Table:
        """Index ``t`` along ``dim`` (non-negative) sees the union of what ``0..t`` saw (a causal
        recurrence); raises :class:`TableError` where that union is not a box.  Each step's box
        must join the box of the steps before it: contain it, lie in it, or extend it along one axis."""
        parts = []
        for p in self.parts:
            b = p.bounds()
            cum = [(lo.expand(p.shape).cummin(dim).values, hi.expand(p.shape).cummax(dim).values) for lo, hi in b]
            n = p.shape[dim]
            if n > 1:
                prev = [(lo.narrow(dim, 0, n - 1), hi.narrow(dim, 0, n - 1)) for lo, hi in cum]
                step = [(lo.expand(p.shape).narrow(dim, 1, n - 1), hi.expand(p.shape).narrow(dim, 1, n - 1))
                        for lo, hi in b]
                empty = torch.zeros((), dtype=torch.bool)
                for (pl, ph), (sl, sh) in zip(prev, step, strict=True):
                    empty = empty | (pl > ph) | (sl > sh)
                inside = torch.ones((), dtype=torch.bool)
                holds = torch.ones((), dtype=torch.bool)
                differ = torch.zeros((), dtype=torch.int64)
                touch = torch.ones((), dtype=torch.bool)
                for (pl, ph), (sl, sh) in zip(prev, step, strict=True):
                    inside = inside & (pl <= sl) & (sh <= ph)
                    holds = holds & (sl <= pl) & (ph <= sh)
                    same = (pl == sl) & (ph == sh)
                    differ = differ + (~same).long()
                    touch = touch & (same | ((sl <= ph + 1) & (pl <= sh + 1)))
                if not bool((empty | inside | holds | ((differ <= 1) & touch)).all()):
                    raise TableError("the steps up to t do not form one box (a recurrence across the rows of a "
                                     "flattened grid)")
            parts.append(Part.encode(cum, p.shape))
        return Table(_simplify(parts), self.shape, self.n_axes)

    def where_dim(self, dim: int, keep: torch.Tensor) -> Table:
        """The table where index ``i`` of ``dim`` has ``keep[i]``, and sees nothing elsewhere (a
        bidirectional RNN's forward features)."""
        view = [1] * len(self.shape)
        view[dim] = len(keep)
        k = keep.view(view)
        return self.apply(lambda c: torch.where(k, c, 0))  # type: ignore[no-any-return]

    def narrowed_where_constant(self, dims: Sequence[int]) -> Table:
        """Narrowed to size 1 along those of ``dims`` where nothing varies (batch, channels of a
        token): an op then reads one of them, not all; broadcast the result back."""
        free = [d for d in dims if self.shape[d] > 1 and not self.varies_along(d)]
        return self.reduce(free, keepdim=True) if free else self

    def sliding(self, n_dims: int, k: Sequence[int], s: Sequence[int], p: Sequence[int], d: Sequence[int],
                mix: Sequence[int] = (), mode: str = "constant") -> Table:
        """A conv or pool over the last ``n_dims`` dims (kernel, stride, padding, dilation per dim),
        whose output also mixes the dims ``mix`` (a conv's input channels; kept as size 1)."""
        nd = len(self.shape)

        def unf(c: torch.Tensor, lead: int) -> torch.Tensor:
            pad: list[int] = []
            for i in reversed(range(n_dims)):
                pad += [p[i], p[i]]
            if any(pad):
                if mode == "constant":
                    c = torch.nn.functional.pad(c, pad)
                else:
                    nlead = c.dim() - n_dims
                    shp = c.shape
                    c2 = c.reshape(-1, 1, *shp[nlead:])
                    c2 = torch.nn.functional.pad(c2.double(), pad, mode=mode).long()
                    c = c2.reshape(*shp[:nlead], *c2.shape[2:])
            for i in range(n_dims):
                dim = nd + lead - n_dims + i
                span = d[i] * (k[i] - 1) + 1
                c = c.unfold(dim, span, s[i])
                if d[i] > 1:
                    c = c[..., :: d[i]]
            return c

        def slide(part: Part, lead: int) -> list[Part]:
            cols = tuple(unf(c.contiguous() if mode != "constant" else c, lead) for c in part.cols)
            win = list(range(nd + lead, nd + lead + n_dims))
            first = list(range(lead))
            return _reduce_part(Part(cols), [*first, *(m + lead for m in mix), *win], keepdim=False,
                                squeeze=[*first, *win])

        try:  # each part alone (the union distributes), else all parts' boxes together
            out_parts = [q for part in self.parts for q in slide(part, 0)]
        except TableError:
            if len(self.parts) == 1:
                raise
            out_parts = slide(_stacked(self.parts), 1)
        shape = out_parts[0].shape
        return Table(_simplify(out_parts), shape, self.n_axes)


def _root(t: Table) -> Table:
    """The table ``t`` was narrowed or broadcast from along dims where nothing varies.  Such
    tables share their values: two of the same root and the same shape are equal (broadcasting
    aligns dims from the right, so the varying dims land in the same place)."""
    return t.memo.get("root", t)  # type: ignore[no-any-return]


def _stacked(parts: Sequence[Part]) -> Part:
    """The parts stacked along a new leading dim (stride 0 kept where none of them varies)."""
    shape = parts[0].shape
    var = [d for d in range(len(shape)) if shape[d] > 1 and any(c.stride(d) != 0 for p in parts for c in p.cols)]
    idx = tuple(slice(None) if d in var else slice(0, 1) for d in range(len(shape)))
    n = len(parts[0].cols)
    cols = tuple(torch.stack([p.cols[c][idx] for p in parts]).expand(len(parts), *shape) for c in range(n))
    return Part(cols)


def _at(t: torch.Tensor, index: Sequence[int]) -> torch.Tensor:
    """``t[index]`` for a core tensor (size-1 dims stand for every index)."""
    return t[tuple(int(i) if t.shape[d] > 1 else 0 for d, i in enumerate(index))]


def _assemble(outs: list[list[Any]], n_axes: int) -> Any:
    first = outs[0][0]
    if isinstance(first, (tuple, list)):
        return tuple(_assemble([[c[i] for c in cols] for cols in outs], n_axes) for i in range(len(first)))
    if not isinstance(first, torch.Tensor):
        raise TableError(f"the op returned {type(first).__name__}")
    parts = tuple(Part(tuple(compress(c.long() if c.dtype != torch.int64 else c) for c in cols)) for cols in outs)
    return Table(parts, tuple(first.shape), n_axes)


def _contains(a: list[tuple[torch.Tensor, torch.Tensor]], b: list[tuple[torch.Tensor, torch.Tensor]]
              ) -> torch.Tensor:
    ok = None
    for (la, ha), (lb, hb) in zip(a, b, strict=True):
        c = (la <= lb) & (hb <= ha)
        ok = c if ok is None else ok & c
    assert ok is not None
    return ok


def _merge_pair(a: Part, b: Part) -> tuple[Part, Part | None]:
    """``a ∪ b`` as one part wherever it is one box, and what is left of ``b`` elsewhere
    (``None`` when nothing is left); the two kept apart when merging would exceed :data:`MAX_VALUES`."""
    both = torch.broadcast_shapes(*(c.shape for c in a.core()), *(c.shape for c in b.core()))
    if math.prod(both) > MAX_VALUES:
        return a, b
    ba, bb = a.bounds(), b.bounds()
    ea, eb = a.empty(), b.empty()
    a_in_b = ea | _contains(bb, ba)
    b_in_a = eb | _contains(ba, bb)
    # boxes equal on all axes but one, overlapping or touching on that one
    diff = torch.zeros_like(ea, dtype=torch.int64)
    touch = torch.ones_like(ea)
    for (la, ha), (lb, hb) in zip(ba, bb, strict=True):
        same = (la == lb) & (ha == hb)
        diff = diff + (~same).long()
        touch = touch & (same | ((lb <= ha + 1) & (la <= hb + 1)))
    ok = a_in_b | b_in_a | ((diff <= 1) & touch)
    merged = [(torch.where(ok, torch.minimum(la, lb), la), torch.where(ok, torch.maximum(ha, hb), ha))
              for (la, ha), (lb, hb) in zip(ba, bb, strict=True)]
    if bool(ok.all()):
        return Part.encode(merged, a.shape), None
    rest = [(torch.where(ok, 1, lb), torch.where(ok, 0, hb)) for lb, hb in bb]
    return Part.encode(merged, a.shape), Part.encode(rest, a.shape)


def _varying(p: Part) -> frozenset[int]:
    return frozenset(d for d, n in enumerate(p.shape) if n > 1 and any(c.stride(d) != 0 for c in p.cols))


def _simplify(parts: Sequence[Part], nested: bool = True) -> tuple[Part, ...]:
    """Merge parts that are one box together.  With ``nested``, only parts whose varying dims
    nest are merged: the union of a query part (varying along queries) and a key part (along
    keys) stays two small parts instead of one of queries x keys."""
    out: list[Part] = []
    for p in parts:
        if _core_all_empty(p):
            continue
        rest: Part | None = p
        for i, q in enumerate(out):
            if rest is None or _core_all_empty(rest):
                break
            if nested:
                vq, vr = _varying(q), _varying(rest)
                if not (vq <= vr or vr <= vq):
                    continue
            out[i], rest = _merge_pair(q, rest)
        if rest is not None and not _core_all_empty(rest):
            out.append(rest)
    if not out:
        return (parts[0],) if parts else ()
    if len(out) > MAX_PARTS:
        if nested:
            return _simplify(out, nested=False)
        raise TableError(f"the positions an element sees form more than {MAX_PARTS} boxes")
    return tuple(out)


def _core_all_empty(p: Part) -> bool:
    return bool(p.empty().all())


def _runs_once_all(parts: Sequence[Part], dims: Sequence[int]) -> Sequence[Part]:
    """:func:`_runs_once` for parts about to be stacked: a slice is dropped where it equals the one
    before it in every part."""
    for d in dims:
        n = parts[0].shape[d]
        if n < 16 or all(c.stride(d) == 0 for p in parts for c in p.cols):
            continue
        others = tuple(o for o in range(len(parts[0].shape)) if o != d)
        step = torch.zeros(n - 1, dtype=torch.bool)
        for p in parts:
            for c in p.core():
                if c.shape[d] == n:
                    ne = c.narrow(d, 1, n - 1) != c.narrow(d, 0, n - 1)
                    step |= ne.any(dim=others) if others else ne
        keep = torch.cat([torch.zeros(1, dtype=torch.int64), step.nonzero().flatten() + 1])
        if 2 * len(keep) <= n:
            parts = [Part(tuple(c.index_select(d, keep) for c in p.cols)) for p in parts]
    return parts


def _runs_once(p: Part, dims: Sequence[int]) -> Part:
    """``p`` with each run of equal consecutive slices along a reduced dim kept once (a union does not
    see repeats): the channels of a space-to-depth concatenation (Swin's patch merging: four runs of C
    equal channels) reduce as four members, not 4C."""
    for d in dims:
        n = p.shape[d]
        if n < 16 or all(c.stride(d) == 0 for c in p.cols):
            continue
        core = p.core()
        step = torch.zeros(n - 1, dtype=torch.bool)
        others = tuple(o for o in range(len(p.shape)) if o != d)
        for c in core:
            ne = c.narrow(d, 1, n - 1) != c.narrow(d, 0, n - 1)
            step |= ne.any(dim=others) if others else ne
        keep = torch.cat([torch.zeros(1, dtype=torch.int64), step.nonzero().flatten() + 1])
        if 2 * len(keep) <= n:
            p = Part(tuple(c.index_select(d, keep) for c in p.cols))
    return p


def _reduce_part(p: Part, dims: Sequence[int], keepdim: bool, squeeze: Sequence[int] = ()) -> list[Part]:
    """Union of the boxes along ``dims`` of one part: one part when it is a box in every group,
    else up to ``2**n_axes`` parts (a union that wraps around, as a shifted window does)."""
    p = _runs_once(p, dims)
    bounds = p.bounds()
    var = [d for d in dims if p.cols[0].shape[d] > 1 and any(c.stride(d) != 0 for c in p.cols)]
    idx = tuple(slice(0, 1) if i in dims else slice(None) for i in range(len(p.shape)))
    drop = sorted(set(squeeze) if squeeze else set(dims), reverse=True) if not keepdim else []
    out_shape = [1 if i in dims else n for i, n in enumerate(p.shape)]
    for d in drop:
        del out_shape[d]

    def finish(boxes: list[tuple[torch.Tensor, torch.Tensor]]) -> Part:
        out = []
        for lo_r, hi_r in boxes:
            lo_r, hi_r = lo_r[idx], hi_r[idx]
            for d in drop:
                lo_r, hi_r = lo_r.squeeze(d), hi_r.squeeze(d)
            out.append((lo_r, hi_r))
        return Part.encode(out, out_shape)

    if not var:
        return [finish(bounds)]
    g = _Groups(bounds, var)
    if not _gapped(g) and _covered(g.m_lo, g.m_hi, [x.amin(1) for x in g.m_lo], [x.amax(1) for x in g.m_hi]):
        return [finish([(lo.amin(dim=var, keepdim=True), hi.amax(dim=var, keepdim=True)) for lo, hi in bounds])]
    return [finish([(g.back(lo), g.back(hi)) for lo, hi in box]) for box in _split(g)]


class _Groups:
    """The boxes of a reduction as ``(groups, members)`` matrices, and the way back to the
    kept-dims shape (groups along which nothing varies are computed once)."""

    def __init__(self, bounds: list[tuple[torch.Tensor, torch.Tensor]], var: Sequence[int]) -> None:
        nd = bounds[0][0].dim()
        keep = [d for d in range(nd) if d not in var]
        ref = torch.broadcast_shapes(*(b.shape for pair in bounds for b in pair))
        flat: list[int] = []
        self.idx = tuple(slice(None) for _ in range(nd))
        m = 1
        for d in var:
            m *= ref[d]
        perm = keep + list(var)
        self.m_lo = [lo.expand(ref)[self.idx].permute(perm).reshape(-1, m) for lo, _ in bounds]
        self.m_hi = [hi.expand(ref)[self.idx].permute(perm).reshape(-1, m) for _, hi in bounds]
        self.kept = [1 if d in flat else ref[d] for d in keep]
        self.shape = [1 if d in var else ref[d] for d in range(nd)]
        self.var = sorted(var)

    def back(self, x: torch.Tensor) -> torch.Tensor:
        """A ``(groups,)`` vector in the reduced (keepdim) shape."""
        y = x.reshape(self.kept)
        for d in self.var:
            y = y.unsqueeze(d)
        return y.expand(self.shape)


def _gapped(g: _Groups) -> bool:
    """Some group's boxes leave a gap along some axis (their projection is not one interval): the
    union cannot fill its bounding box, so no raster is needed to say so."""
    for lo, hi in zip(g.m_lo, g.m_hi, strict=True):
        order = lo.argsort(1)
        slo, shi = lo.gather(1, order), hi.gather(1, order)
        cm = shi.cummax(1).values
        if bool(((slo[:, 1:] > cm[:, :-1] + 1) & (slo[:, 1:] < _INF)).any()):
            return True
    return False


def _split(g: _Groups) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per group, the union as the product of each axis's union of intervals (at most two per
    axis), checked to cover every box of that product; raises :class:`TableError` otherwise."""
    n = len(g.m_lo)
    per_axis = []
    for a in range(n):
        lo, hi = g.m_lo[a], g.m_hi[a]
        order = lo.argsort(1)
        slo, shi = lo.gather(1, order), hi.gather(1, order)
        cm = shi.cummax(1).values
        gap = torch.zeros_like(slo, dtype=torch.bool)
        gap[:, 1:] = (slo[:, 1:] > cm[:, :-1] + 1) & (slo[:, 1:] < _INF)
        ngap = gap.sum(1)
        if bool((ngap > 1).any()):
            raise TableError("the positions mixed here form more than two runs along an axis")
        has = ngap == 1
        k = gap.to(torch.int64).argmax(1)
        end1 = torch.where(has, cm.gather(1, (k - 1).clamp(min=0)[:, None]).squeeze(1), cm[:, -1])
        start2 = torch.where(has, slo.gather(1, k[:, None]).squeeze(1), torch.full_like(k, _INF))
        end2 = torch.where(has, cm[:, -1], torch.full_like(k, -_INF))
        per_axis.append(((slo[:, 0], end1), (start2, end2)))
    out = []
    for choice in product((0, 1), repeat=n):
        box = [per_axis[a][c] for a, c in enumerate(choice)]
        nonempty = torch.ones_like(box[0][0], dtype=torch.bool)
        for lo, hi in box:
            nonempty = nonempty & (lo <= hi)
        if not bool(nonempty.any()):
            continue
        c_lo = [torch.maximum(g.m_lo[a], box[a][0][:, None]) for a in range(n)]
        c_hi = [torch.minimum(g.m_hi[a], box[a][1][:, None]) for a in range(n)]
        live = torch.ones_like(c_lo[0], dtype=torch.bool)
        for a in range(n):
            live = live & (c_lo[a] <= c_hi[a])
        c_lo = [torch.where(live, x, _INF) for x in c_lo]
        c_hi = [torch.where(live, x, -_INF) for x in c_hi]
        # the clipped members must reach the box's corners and fill it
        for a in range(n):
            ok = (c_lo[a].amin(1) == box[a][0]) & (c_hi[a].amax(1) == box[a][1])
            if not bool((ok | ~nonempty).all()):
                raise TableError("the positions mixed here do not form one box (e.g. a 1-D op across the rows "
                                 "of a flattened grid)")
        if not _covered(c_lo, c_hi, [b[0] for b in box], [b[1] for b in box], nonempty):
            raise TableError("the positions mixed here do not form one box (e.g. a 1-D op across the rows "
                             "of a flattened grid)")
        out.append([(torch.where(nonempty, b[0], 1), torch.where(nonempty, b[1], 0)) for b in box])
    return out


def _unique_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inverse, index of the first occurrence of each distinct row)."""
    uniq, inv = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((len(uniq),), len(rows), dtype=torch.int64)
    first.scatter_reduce_(0, inv, torch.arange(len(rows)), reduce="amin")
    return inv, first


def _covered(m_lo: list[torch.Tensor], m_hi: list[torch.Tensor], b_lo: list[torch.Tensor],
             b_hi: list[torch.Tensor], where: torch.Tensor | None = None) -> bool:
    """Whether, in every group (row), the members' boxes fill the box ``[b_lo, b_hi]``."""
    G, M = m_lo[0].shape
    valid = m_lo[0] <= m_hi[0]
    for a in range(1, len(m_lo)):
        valid = valid & (m_lo[a] <= m_hi[a])
    # cheap: a member equal to the box covers it
    eq = valid.clone()
    for a in range(len(m_lo)):
        eq = eq & (m_lo[a] == b_lo[a][:, None]) & (m_hi[a] == b_hi[a][:, None])
    todo = ~eq.any(1) & valid.any(1)
    if where is not None:
        todo = todo & where
    if not bool(todo.any()):
        return True
    gi = torch.nonzero(todo).flatten()
    if M <= 256 and len(gi) * M * M <= RASTER_BUDGET:
        # disjoint boxes (patches, window tokens) fill the box iff their areas add up to it
        lo_g = [x[gi] for x in m_lo]
        hi_g = [x[gi] for x in m_hi]
        v = valid[gi]
        meet = v[:, :, None] & v[:, None, :] & ~torch.eye(M, dtype=torch.bool)[None]
        area = v.to(torch.int64)
        for lo, hi in zip(lo_g, hi_g, strict=True):
            meet = meet & (lo[:, :, None] <= hi[:, None, :]) & (lo[:, None, :] <= hi[:, :, None])
            area = area * torch.where(v, hi - lo + 1, 0)
        box = torch.ones(len(gi), dtype=torch.int64)
        for a in range(len(m_lo)):
            box = box * (b_hi[a][gi] - b_lo[a][gi] + 1)
        fine = ~meet.flatten(1).any(1) & (area.sum(1) == box)
        disjoint_short = ~meet.flatten(1).any(1) & (area.sum(1) < box)
        if bool(disjoint_short.any()):
            return False  # disjoint boxes whose areas fall short of the box: a hole
        todo = todo.clone()
        todo[gi[fine]] = False
        if not bool(todo.any()):
            return True
    gi = torch.nonzero(todo).flatten()
    if len(gi) > 1:  # equal groups (the same boxes relative to their corner) are checked once
        rows = torch.cat([torch.where(valid[gi], x[gi] - b_lo[a][gi][:, None], 0)
                          for a, x in enumerate(m_lo)] + [torch.where(valid[gi], x[gi] - b_lo[a][gi][:, None], -1)
                                                          for a, x in enumerate(m_hi)], 1)
        _, first = _unique_rows(rows)
        gi = gi[first]
    ext = [(b_hi[a][gi] - b_lo[a][gi] + 1) for a in range(len(m_lo))]
    emax = [int(e.max()) for e in ext]
    cells = 1
    for e in emax:
        cells *= e + 1
    if cells > RASTER_BUDGET or cells * len(gi) > TOTAL_RASTER:
        raise TableError("the union of the mixed positions is too large to check exactly "
                         f"(more than {TOTAL_RASTER:,} pixels to rasterise)")
    chunk = max(1, RASTER_BUDGET // cells)
    n = len(m_lo)
    for start in range(0, len(gi), chunk):
        sel = gi[start:start + chunk]
        g = len(sel)
        canvas = torch.zeros((g, *[e + 1 for e in emax]), dtype=torch.int32)
        v = valid[sel]
        rel_lo = [(m_lo[a][sel] - b_lo[a][sel][:, None]) for a in range(n)]
        rel_hi = [(m_hi[a][sel] - b_lo[a][sel][:, None] + 1) for a in range(n)]
        gidx = torch.arange(g)[:, None].expand(g, M)[v]
        for corner in product((0, 1), repeat=n):
            sign = -1 if sum(corner) % 2 else 1
            idx = [gidx] + [(rel_hi[a] if c else rel_lo[a])[v] for a, c in enumerate(corner)]
            canvas.index_put_(tuple(idx), torch.full((len(gidx),), sign, dtype=torch.int32), accumulate=True)
        for a in range(n):
            canvas = canvas.cumsum(a + 1, dtype=torch.int32)
        e_sel = [e[start:start + chunk] for e in ext]
        inside = torch.ones(canvas.shape, dtype=torch.bool)
        for a in range(n):
            ar = torch.arange(emax[a] + 1).view(*([1] * (a + 1)), -1, *([1] * (n - a - 1)))
            inside = inside & (ar < e_sel[a].view(-1, *([1] * n)))
        if bool(((canvas <= 0) & inside).any()):
            return False
    return True
