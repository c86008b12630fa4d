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


def owned(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of its values (:func:`_core`, broadcast back) when ``t`` is a view that keeps a
    much larger storage alive: a column compressed after an op materialised it, or a slice of an
    input's column.  A table outlives the op that built it (the report reads it), so it must hold
    only its own values (docs/design.md §2b, "Cost")."""
    if t.device.type == "meta" or t.numel() == 0:
        return t
    core = _core(t)
    need = core.numel() * t.element_size()
    held = t.untyped_storage().nbytes()
    if held > 2 * need + _SLACK:
        return core.clone().expand(t.shape)
    return t


#: a view may keep this many bytes of a larger storage before :func:`owned` copies its values out
_SLACK = 1 << 16


def _core(t: torch.Tensor) -> torch.Tensor:
    """``t`` with every stride-0 dim narrowed to size 1 (what the values really are)."""
    idx = tuple(slice(0, 1) if (t.stride(d) == 0 and t.shape[d] > 1) else slice(None) for d in range(t.dim()))
    return t[idx]


@dataclass(frozen=True, eq=False)
class Part:
    """One box per element: ``cols[2a]``/``cols[2a+1]`` are the encoded bounds along input axis ``a``.

    With ``comb`` (``3 * n_axes`` columns, ``(origin, step, width)`` per axis) the element sees
    only the pixels ``x`` of its box with ``(x - origin) mod step < width``: runs of ``width``
    pixels every ``step`` (keys pooled with a stride wider than their window, grid attention over
    tokens whose windows do not touch).  A box is ``step = width = 1``; see docs/design.md §2b,
    "Holes"."""

    cols: tuple[torch.Tensor, ...]
    comb: tuple[torch.Tensor, ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.cols[0].shape)

    @property
    def n_axes(self) -> int:
        return len(self.cols) // 2

    @property
    def all_cols(self) -> tuple[torch.Tensor, ...]:
        """Bounds, then the comb columns (what an index op moves)."""
        return self.cols + self.comb

    def core(self) -> tuple[torch.Tensor, ...]:
        """The columns narrowed to size 1 along every dim where none of them varies."""
        return self._narrow(self.cols)

    def _narrow(self, cols: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        shape = self.shape
        idx = tuple(slice(0, 1) if shape[d] > 1 and all(c.stride(d) == 0 for c in cols) else slice(None)
                    for d in range(len(shape)))
        return tuple(c[idx] for c in cols)

    def empty(self) -> torch.Tensor:
        """Elements that see nothing (on the core: broadcastable to :attr:`shape`)."""
        cols = self.core()
        e = cols[0] == 0
        for c in cols[1:]:
            e = e | (c == 0)
        return e

    def bounds(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Decoded ``(lo, hi)`` per axis on the core (broadcastable to :attr:`shape`); an empty
        element has ``lo = +inf``, ``hi = -inf``.  With a comb, the first and last pixel seen."""
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

    def combs(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
        """``(origin, step, width)`` per axis (broadcastable to :attr:`shape`), ``None`` for boxes."""
        if not self.comb:
            return None
        c = self._narrow(self.comb)
        return [(c[3 * a], c[3 * a + 1].clamp(min=1), c[3 * a + 2]) for a in range(self.n_axes)]

    def holes(self) -> torch.Tensor:
        """Elements whose pixels do not fill their bounding box (broadcastable to :attr:`shape`)."""
        cb = self.combs()
        if cb is None:
            return torch.zeros((), dtype=torch.bool)
        h = torch.zeros((), dtype=torch.bool)
        for (_o, s, w), (lo, hi) in zip(cb, self.bounds(), strict=True):
            h = h | ((w < s) & (hi - lo + 1 > w))
        return h & ~self.empty()

    @staticmethod
    def encode(bounds: Sequence[tuple[torch.Tensor, torch.Tensor]], shape: Sequence[int] | None = None,
               comb: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None) -> Part:
        """The part whose element ``e`` sees ``[lo[e], hi[e]]`` per axis (clipped to the comb
        ``(origin, step, width)`` when given), broadcast to ``shape``."""
        if comb is not None:
            bounds, comb = _canonical(bounds, comb)
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
        ccols: tuple[torch.Tensor, ...] = ()
        if comb is not None:
            ccols = tuple(compress(x.expand(shape)) for trio in comb for x in trio)
        return Part(tuple(cols), ccols)

    def expand(self, shape: Sequence[int]) -> Part:
        return Part(tuple(c.expand(tuple(shape)) for c in self.cols),
                    tuple(c.expand(tuple(shape)) for c in self.comb))


def _canonical(bounds: Sequence[tuple[torch.Tensor, torch.Tensor]],
               comb: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
               ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                          list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None]:
    """Bounds moved onto the first and last pixel of the comb, origins taken modulo the step, and
    ``(0, 1, 1)`` where the element has no hole; ``None`` when no element has one."""
    out_b, out_c = [], []
    any_hole = False
    for (lo, hi), (o, s, w) in zip(bounds, comb, strict=True):
        s = s.clamp(min=1)
        w = torch.minimum(w.clamp(min=1), s)
        o = torch.remainder(o, s)
        r = torch.remainder(lo - o, s)
        lo2 = torch.where(r < w, lo, lo + (s - r))
        r = torch.remainder(hi - o, s)
        hi2 = torch.where(r < w, hi, hi - (r - w + 1))
        live = (lo <= hi) & (lo2 <= hi2)
        lo2 = torch.where(live, lo2, 1)
        hi2 = torch.where(live, hi2, 0)
        # no hole: a full comb, or a box inside one run
        flat = (w >= s) | (hi2 - lo2 + 1 <= w - torch.remainder(lo2 - o, s)) | ~live
        any_hole = any_hole or bool((~flat).any())
        out_b.append((lo2, hi2))
        out_c.append((torch.where(flat, 0, o), torch.where(flat, 1, s), torch.where(flat, 1, w)))
    if not any_hole:
        return out_b, None
    # an element empty along one axis is empty along all
    e = None
    for lo, hi in out_b:
        e = lo > hi if e is None else e | (lo > hi)
    assert e is not None
    return [(torch.where(e, 1, lo), torch.where(e, 0, hi)) for lo, hi in out_b], out_c


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
        out: list[tuple[tuple[int, int], ...]] = []
        for p in self.parts:
            if bool(_at(p.empty(), index)):
                continue
            box = [(int(_at(lo, index)), int(_at(hi, index))) for lo, hi in p.bounds()]
            cb = p.combs()
            if cb is None:
                out.append(tuple(box))
                continue
            runs: list[list[tuple[int, int]]] = []  # per axis, the runs of the comb inside the box
            for (lo, hi), (ot, stt, wt) in zip(box, cb, strict=True):
                o, st, w = int(_at(ot, index)), int(_at(stt, index)), int(_at(wt, index))
                start = lo - (lo - o) % st
                runs.append([(max(x, lo), min(x + w - 1, hi)) for x in range(start, hi + 1, st)
                             if max(x, lo) <= min(x + w - 1, hi)])
            out.extend(product(*runs))
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
            ok = ~p.empty() & ~p.holes()
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
        """Memory this table keeps alive, local part included: the storage under each column, counted
        once (stride-0 dims cost nothing; a view counts the whole storage it keeps, which
        :func:`owned` bounds by twice the values it shows)."""
        seen: dict[int, int] = {}
        t: Any = self
        while isinstance(t, Table):
            for p in t.parts:
                for c in p.all_cols:
                    st = c.untyped_storage()
                    seen[st.data_ptr()] = st.nbytes()
            t = t.local
        return sum(seen.values())

    # -- index ops -------------------------------------------------------
    def apply(self, fn: Callable[[torch.Tensor], Any]) -> Any:
        """Run an index op on every column; returns a Table, or a tuple of them for tuple outputs."""
        outs = [[fn(c) for c in p.all_cols] for p in self.parts]
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
            out = Table(tuple(Part(tuple(c[idx] for c in p.cols), tuple(c[idx] for c in p.comb))
                              for p in self.parts), shape, self.n_axes,
                        full=self.full)
            out.memo["root"] = _root(self)
            return out
        try:  # the union distributes over parts: each part alone, when each stays a union of boxes
            parts = [q for p in self.parts for q in _reduce_part(p, dims, keepdim)]
        except TableError as alone:
            if len(self.parts) == 1:
                try:  # each member a part of its own (an L-shaped union)
                    parts = _reduce_part(self.parts[0], dims, keepdim, members=True)
                except TableError:
                    raise alone from None
                return Table(_simplify(parts), parts[0].shape, self.n_axes, full=self.full)
            # parts that only make boxes together (one was merged into another where it could be)
            both = _stacked(_runs_once_all(self.parts, dims))
            if max(_core(c).numel() for c in both.cols) > 4 * RASTER_BUDGET:  # a cost bound: say why alone
                raise TableError(f"{alone} (the parts together are too large to check)") from None
            drop = [0] if keepdim else [0, *(d + 1 for d in dims)]
            try:
                parts = _reduce_part(both, [0, *(d + 1 for d in dims)], keepdim=False, squeeze=drop)
            except TableError as together:
                try:  # last: each member a part of its own (an L-shaped union)
                    parts = [q for p in self.parts for q in _reduce_part(p, dims, keepdim, members=True)]
                except TableError:
                    raise TableError(f"{alone} ({together})") from None
        shape = parts[0].shape
        return Table(_simplify(parts), shape, self.n_axes, full=self.full)

    def varies_along(self, d: int) -> bool:
        """Some part's bounds change along dim ``d`` (a dim of stride 0 everywhere does not)."""
        return self.shape[d] > 1 and any(c.stride(d) != 0 for p in self.parts for c in p.all_cols)

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
            if p.comb:
                raise TableError("a recurrence over positions seen with holes")
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
            cols = tuple(unf(c.contiguous() if mode != "constant" else c, lead) for c in part.all_cols)
            win = list(range(nd + lead, nd + lead + n_dims))
            first = list(range(lead))
            return _reduce_part(_split_cols(cols, self.n_axes), [*first, *(m + lead for m in mix), *win],
                                keepdim=False, squeeze=[*first, *win], members=members)

        members = False
        try:  # each part alone (the union distributes), else all parts' boxes together
            out_parts = [q for part in self.parts for q in slide(part, 0)]
        except TableError as alone:
            try:
                if len(self.parts) == 1:
                    raise
                out_parts = slide(_stacked(self.parts), 1)
            except TableError:
                # last: each member of the window a part of its own (an L-shaped union)
                members = True
                try:
                    out_parts = [q for part in self.parts for q in slide(part, 0)]
                except TableError:
                    raise alone from None
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
    n_axes = parts[0].n_axes
    full = [_with_comb(p) for p in parts] if any(p.comb for p in parts) else [p.all_cols for p in parts]
    var = [d for d in range(len(shape)) if shape[d] > 1 and any(c.stride(d) != 0 for p in full for c in p)]
    idx = tuple(slice(None) if d in var else slice(0, 1) for d in range(len(shape)))
    n = len(full[0])
    cols = tuple(torch.stack([p[c][idx] for p in full]).expand(len(parts), *shape) for c in range(n))
    return _split_cols(cols, n_axes)


def _with_comb(p: Part) -> tuple[torch.Tensor, ...]:
    """All columns of ``p``, with the comb of a box (``0, 1, 1`` per axis) where it has none."""
    if p.comb:
        return p.all_cols
    one = torch.ones((), dtype=torch.int64).expand(p.shape)
    zero = torch.zeros((), dtype=torch.int64).expand(p.shape)
    return p.cols + (zero, one, one) * p.n_axes


def _split_cols(cols: Sequence[torch.Tensor], n_axes: int) -> Part:
    """The part of ``2 * n_axes`` bound columns followed (or not) by ``3 * n_axes`` comb columns;
    a comb of boxes only is dropped."""
    b, c = tuple(cols[:2 * n_axes]), tuple(cols[2 * n_axes:])
    if c and all(bool(((_core(c[3 * a + 1]) <= 1) | (_core(c[3 * a + 2]) >= _core(c[3 * a + 1]))).all())
                 for a in range(n_axes)):
        c = ()
    return Part(b, c)


def _at(t: torch.Tensor, index: Sequence[int]) -> torch.Tensor:
    """``t[index]`` for a core tensor (size-1 dims stand for every index)."""
    return t[tuple(int(i) if t.shape[d] > 1 else 0 for d, i in enumerate(index))]


def _assemble(outs: list[list[Any]], n_axes: int) -> Any:
    first = outs[0][0]
    if isinstance(first, (tuple, list)):
        return tuple(_assemble([[c[i] for c in cols] for cols in outs], n_axes) for i in range(len(first)))
    if not isinstance(first, torch.Tensor):
        raise TableError(f"the op returned {type(first).__name__}")
    parts = tuple(_split_cols([owned(compress(c.long() if c.dtype != torch.int64 else c)) for c in cols], n_axes)
                  for cols in outs)
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
    """``a ∪ b`` as one part wherever it is one box (or one comb clipped to one box), and what is
    left of ``b`` elsewhere (``None`` when nothing is left); the two kept apart when merging would
    exceed :data:`MAX_VALUES`."""
    both = torch.broadcast_shapes(*(c.shape for c in a.core()), *(c.shape for c in b.core()))
    if math.prod(both) > MAX_VALUES:
        return a, b
    ba, bb = a.bounds(), b.bounds()
    ea, eb = a.empty(), b.empty()
    ca, cb = a.combs(), b.combs()
    if ca is None and cb is None:
        a_in_b = ea | _contains(bb, ba)
        b_in_a = eb | _contains(ba, bb)
        same = torch.ones((), dtype=torch.bool)
    else:
        # a box holds the other's bounding box; or the same comb on both (then the union of the
        # boxes clipped to it)
        ha, hb = a.holes(), b.holes()
        a_in_b = ea | (~hb & _contains(bb, ba))
        b_in_a = eb | (~ha & _contains(ba, bb))
        same = torch.ones((), dtype=torch.bool)
        for (oa, sa, wa), (ob, sb, wb) in zip(ca or _box_comb(a), cb or _box_comb(b), strict=True):
            same = same & (sa == sb) & (wa == wb) & (torch.remainder(oa - ob, sa) == 0)
    # boxes equal on all axes but one, overlapping or touching on that one
    diff = torch.zeros_like(ea, dtype=torch.int64)
    touch = torch.ones_like(ea)
    for (la, ha_), (lb, hb_) in zip(ba, bb, strict=True):
        eq = (la == lb) & (ha_ == hb_)
        diff = diff + (~eq).long()
        touch = touch & (eq | ((lb <= ha_ + 1) & (la <= hb_ + 1)))
    joint = same & (_contains(bb, ba) | _contains(ba, bb) | ((diff <= 1) & touch))
    ok = a_in_b | b_in_a | joint
    if ca is None and cb is None:
        merged = [(torch.where(ok, torch.minimum(la, lb), la), torch.where(ok, torch.maximum(ha_, hb_), ha_))
                  for (la, ha_), (lb, hb_) in zip(ba, bb, strict=True)]
        comb = None
    else:
        take_b = a_in_b & ~b_in_a  # b holds a: b's box (and comb) there
        merged = [(torch.where(take_b, lb, torch.where(ok & ~b_in_a, torch.minimum(la, lb), la)),
                   torch.where(take_b, hb_, torch.where(ok & ~b_in_a, torch.maximum(ha_, hb_), ha_)))
                  for (la, ha_), (lb, hb_) in zip(ba, bb, strict=True)]
        comb = [tuple(torch.where(take_b, y, x) for x, y in zip(tx, ty, strict=True))
                for tx, ty in zip(ca or _box_comb(a), cb or _box_comb(b), strict=True)]
    if bool(ok.all()):
        return Part.encode(merged, a.shape, comb), None  # type: ignore[arg-type]
    rest = [(torch.where(ok, 1, lb), torch.where(ok, 0, hb_)) for lb, hb_ in bb]
    return Part.encode(merged, a.shape, comb), Part.encode(rest, a.shape, cb)  # type: ignore[arg-type]


def _box_comb(p: Part) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    zero, one = torch.zeros((), dtype=torch.int64), torch.ones((), dtype=torch.int64)
    return [(zero, one, one) for _ in range(p.n_axes)]


def _varying(p: Part) -> frozenset[int]:
    return frozenset(d for d, n in enumerate(p.shape) if n > 1 and any(c.stride(d) != 0 for c in p.all_cols))


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


def _pick_rows(c: torch.Tensor, d: int, keep: torch.Tensor) -> torch.Tensor:
    """``c.index_select(d, keep)`` keeping stride 0 along the other dims where ``c`` has it (the
    select runs on the values that differ, then broadcasts back)."""
    core = _core(c)
    shape = list(c.shape)
    shape[d] = len(keep)
    if core.shape[d] == 1:
        return core.expand(shape)
    return core.index_select(d, keep).expand(shape)


def _runs_once_all(parts: Sequence[Part], dims: Sequence[int]) -> Sequence[Part]:
    """:func:`_runs_once` for parts about to be stacked: a slice is dropped where it equals the one
    before it in every part."""
    for d in dims:
        n = parts[0].shape[d]
        if n < 16 or all(c.stride(d) == 0 for p in parts for c in p.all_cols):
            continue
        others = tuple(o for o in range(len(parts[0].shape)) if o != d)
        step = torch.zeros(n - 1, dtype=torch.bool)
        for p in parts:
            for c in p._narrow(p.all_cols):
                if c.shape[d] == n:
                    ne = c.narrow(d, 1, n - 1) != c.narrow(d, 0, n - 1)
                    step |= ne.any(dim=others) if others else ne
        keep = torch.cat([torch.zeros(1, dtype=torch.int64), step.nonzero().flatten() + 1])
        if 2 * len(keep) <= n:
            parts = [Part(tuple(_pick_rows(c, d, keep) for c in p.cols),
                          tuple(_pick_rows(c, d, keep) for c in p.comb)) for p in parts]
    return parts


def _runs_once(p: Part, dims: Sequence[int]) -> Part:
    """``p`` with each run of equal consecutive slices along a reduced dim kept once (a union does not
    see repeats): the channels of a space-to-depth concatenation (Swin's patch merging: four runs of C
    equal channels) reduce as four members, not 4C."""
    return _runs_once_all([p], dims)[0]


#: a window of more members than this is not split into one part per member (see ``_reduce_part``)
MAX_MEMBERS = 256
#: distinct member patterns rasterised one by one when a union has holes
MAX_PATTERNS = 4096


def _reduce_part(p: Part, dims: Sequence[int], keepdim: bool, squeeze: Sequence[int] = (),
                 members: bool = False) -> list[Part]:
    """Union of the boxes along ``dims`` of one part: one part when it is a box (or a comb) in
    every group, else up to ``2**n_axes`` parts (a union that wraps around, as a shifted window
    does); with ``members``, when neither, one part per member (an L-shaped union, at most
    :data:`MAX_MEMBERS` members)."""
    p = _runs_once(p, dims)
    bounds = p.bounds()
    comb = p.combs()
    var = [d for d in dims if p.shape[d] > 1 and any(c.stride(d) != 0 for c in p.all_cols)]
    idx = tuple(slice(0, 1) if i in dims else slice(None) for i in range(len(p.shape)))
    drop = sorted(set(squeeze) if squeeze else set(dims), reverse=True) if not keepdim else []
    out_shape = [1 if i in dims else n for i, n in enumerate(p.shape)]
    for d in drop:
        del out_shape[d]

    def cut(x: torch.Tensor, at: tuple[Any, ...] = idx) -> torch.Tensor:
        x = x[at]
        for d in drop:
            x = x.squeeze(d)
        return x

    def finish(boxes: list[tuple[torch.Tensor, torch.Tensor]],
               combs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
               at: tuple[Any, ...] = idx) -> Part:
        out = [(cut(lo, at), cut(hi, at)) for lo, hi in boxes]
        oc = [tuple(cut(x, at) for x in trio) for trio in combs] if combs is not None else None
        return Part.encode(out, out_shape, oc)  # type: ignore[arg-type]

    if not var:
        return [finish(bounds, comb)]
    g = _Groups(bounds, var, comb)
    first: TableError | None = None
    if comb is None:
        if not _gapped(g) and _covered(g.m_lo, g.m_hi, [x.amin(1) for x in g.m_lo], [x.amax(1) for x in g.m_hi]):
            return [finish([(lo.amin(dim=var, keepdim=True), hi.amax(dim=var, keepdim=True))
                            for lo, hi in bounds])]
        try:  # two runs per axis (a shifted window that wrapped): up to 2**n_axes boxes
            return [finish([(g.back(lo), g.back(hi)) for lo, hi in box]) for box in _split(g)]
        except TableError as e:
            first = e
    try:  # runs of one width at one step per axis, their product filled by the members: one part
        per_axis = _comb_union(g)
        return [finish([(g.back(lo), g.back(hi)) for lo, hi, _o, _s, _w in per_axis],
                       [(g.back(o), g.back(s), g.back(w)) for _lo, _hi, o, s, w in per_axis])]
    except TableError as e:
        first = first or e
    if comb is not None:
        boxes = _explode(p)
        if boxes is not None:  # the runs as boxes, each reduced alone (the union distributes)
            try:
                return [q for b in boxes for q in _reduce_part(b, dims, keepdim, squeeze, members)]
            except TableError:
                pass
    assert first is not None
    if not members or g.n_members > MAX_MEMBERS or g.n_members * len(g.m_lo[0]) > RASTER_BUDGET:
        raise first
    # one part per member: the union is theirs (simplified by the caller)
    out = []
    for k in product(*(range(p.shape[d]) for d in var)):
        at = list(idx)
        for d, i in zip(var, k, strict=True):
            at[d] = slice(i, i + 1)
        out.append(finish(bounds, comb, tuple(at)))
    return out


def _explode(p: Part) -> list[Part] | None:
    """A part with holes as box parts, one per run index along each axis (run ``k`` of every
    element in one part); ``None`` when that would be more than :data:`MAX_PARTS` parts."""
    cb = p.combs()
    assert cb is not None
    per_axis = []
    for (lo, hi), (o, st, w) in zip(p.bounds(), cb, strict=True):
        live = lo <= hi
        first = torch.where(live, lo - torch.remainder(lo - o, st), 0)
        n_runs = torch.where(live, (hi - first) // st + 1, 0)
        per_axis.append((lo, hi, first, st, w, int(n_runs.max()) if n_runs.numel() else 0))
    if math.prod(max(1, a[-1]) for a in per_axis) > MAX_PARTS:
        return None
    out = []
    for ks in product(*(range(max(1, a[-1])) for a in per_axis)):
        bounds = []
        for (lo, hi, first, st, w, _n), k in zip(per_axis, ks, strict=True):
            start = first + k * st
            bounds.append((torch.maximum(lo, start), torch.minimum(hi, start + w - 1)))
        out.append(Part.encode(bounds, p.shape))
    return out


def _comb_union(g: _Groups) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per axis ``(lo, hi, origin, step, width)`` of each group's union (``(groups,)`` vectors)
    when that union is, on every axis, runs of one width at one step (the first and last may be
    cut), and is the product of those runs; :class:`TableError` otherwise.  Each distinct
    pattern of members (relative to its group's corner) is rasterised once."""
    n = len(g.m_lo)
    G, M = g.m_lo[0].shape
    valid = g.m_lo[0] <= g.m_hi[0]
    for a in range(1, n):
        valid = valid & (g.m_lo[a] <= g.m_hi[a])
    live = valid.any(1)
    b_lo = [torch.where(valid, x, _INF).amin(1) for x in g.m_lo]
    b_hi = [torch.where(valid, x, -_INF).amax(1) for x in g.m_hi]
    rel: list[torch.Tensor] = []
    for a in range(n):
        if g.m_comb is not None:
            o, s, w = g.m_comb[a]
        else:
            o, s, w = (torch.zeros_like(g.m_lo[a]), torch.ones_like(g.m_lo[a]), torch.ones_like(g.m_lo[a]))
        base = torch.where(live, b_lo[a], 0)[:, None]
        s = torch.where(valid, s, 1)
        rel += [torch.where(valid, g.m_lo[a] - base, 0), torch.where(valid, g.m_hi[a] - base, -1),
                torch.where(valid, torch.remainder(o - base, s), 0), s, torch.where(valid, w, 1)]
    sep = _separable_union(g, rel, valid, live, b_lo)
    if sep is not None:
        return sep
    rows = torch.stack(rel, 2).flatten(1)
    rows = torch.cat([rows, live[:, None].long()], 1)
    inv, first = _unique_rows(rows)
    if len(first) > MAX_PATTERNS:
        raise TableError(f"the positions mixed here form more than {MAX_PATTERNS} patterns with holes")
    ext = [torch.where(live, b_hi[a] - b_lo[a] + 1, 0)[first] for a in range(n)]
    cells = [math.prod(int(e[u]) for e in ext) for u in range(len(first))]
    if max(cells) > RASTER_BUDGET or sum(cells) * M > TOTAL_RASTER:
        raise TableError("the union of the mixed positions is too large to check exactly "
                         f"(more than {TOTAL_RASTER:,} pixels to rasterise)")
    outs = torch.zeros((len(first), n, 5), dtype=torch.int64)
    for u, gi in enumerate(first.tolist()):
        if not bool(live[gi]):
            outs[u, :, 0], outs[u, :, 1] = 1, 0  # sees nothing
            continue
        e = [int(x[u]) for x in ext]
        r = rows[gi, :-1].view(M, n, 5)
        keep = valid[gi]
        r = r[keep]
        canvas = torch.zeros(e, dtype=torch.bool)
        step = max(1, RASTER_BUDGET // max(1, math.prod(e)))
        for c0 in range(0, len(r), step):
            rc = r[c0:c0 + step]
            ind = None
            for a in range(n):
                x = torch.arange(e[a])[None, :]
                lo, hi, o, s, w = (rc[:, a, k][:, None] for k in range(5))
                ia = _in_runs(x, lo, hi, o, s, w)
                ia = ia.view(len(rc), *([1] * a), e[a], *([1] * (n - a - 1)))
                ind = ia if ind is None else ind & ia
            assert ind is not None
            canvas |= ind.any(0)
        proj = [canvas.any(dim=[d for d in range(n) if d != a]) if n > 1 else canvas for a in range(n)]
        prod_ = None
        for a in range(n):
            pa = proj[a].view(*([1] * a), e[a], *([1] * (n - a - 1)))
            prod_ = pa if prod_ is None else prod_ & pa
        if not torch.equal(canvas, prod_.expand(e)):  # type: ignore[union-attr]
            raise TableError("the positions mixed here are not a union of boxes rfscope can state (an L-shaped "
                             "or irregular union)")
        for a in range(n):
            outs[u, a] = torch.tensor(_runs_as_comb(proj[a]))
    res = []
    for a in range(n):
        v = outs[inv, a]  # (G, 5), relative to the group's corner
        base = torch.where(live, b_lo[a], 0)
        res.append((v[:, 0] + base, v[:, 1] + base, v[:, 2] + base, v[:, 3], v[:, 4]))
    return res


def _distinct(ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per row, the number of distinct ids among the valid entries."""
    x = torch.where(valid, ids, -1).sort(1).values
    new = torch.ones_like(x, dtype=torch.bool)
    new[:, 1:] = x[:, 1:] != x[:, :-1]
    return (new & (x >= 0)).sum(1)


def _separable_union(g: _Groups, rel: list[torch.Tensor], valid: torch.Tensor, live: torch.Tensor,
                     b_lo: list[torch.Tensor]
                     ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] | None:
    """:func:`_comb_union` when, in every group, the members' per-axis sets pair up in every way
    (a window or grid of members over a product layout): the union is then the product of each
    axis's union, found in 1-D; ``None`` when some group is not such a product."""
    n = len(g.m_lo)
    G, M = g.m_lo[0].shape
    ids = []
    for a in range(n):
        five = torch.stack(rel[5 * a:5 * a + 5], 2).reshape(G * M, 5)
        ids.append(torch.unique(five, dim=0, return_inverse=True)[1].view(G, M))
    pair = torch.unique(torch.stack(ids, 2).reshape(G * M, n), dim=0, return_inverse=True)[1].view(G, M)
    want = torch.ones(G, dtype=torch.int64)
    for a in range(n):
        want = want * _distinct(ids[a], valid)
    if not bool(((_distinct(pair, valid) == want) | ~live).all()):
        return None
    res = []
    for a in range(n):
        rows = torch.cat([torch.stack(rel[5 * a:5 * a + 5], 2).flatten(1), live[:, None].long()], 1)
        inv, first = _unique_rows(rows)
        if len(first) > MAX_PATTERNS:
            raise TableError(f"the positions mixed here form more than {MAX_PATTERNS} patterns with holes")
        outs = torch.zeros((len(first), 5), dtype=torch.int64)
        for u, gi in enumerate(first.tolist()):
            if not bool(live[gi]):
                outs[u, 0], outs[u, 1] = 1, 0
                continue
            r = rows[gi, :-1].view(M, 5)[valid[gi]]
            e = int(r[:, 1].max()) + 1
            x = torch.arange(e)[None, :]
            lo, hi, o, s, w = (r[:, k][:, None] for k in range(5))
            mask = _in_runs(x, lo, hi, o, s, w).any(0)
            outs[u] = torch.tensor(_runs_as_comb(mask))
        v = outs[inv]
        base = torch.where(live, b_lo[a], 0)
        res.append((v[:, 0] + base, v[:, 1] + base, v[:, 2] + base, v[:, 3], v[:, 4]))
    return res


def _in_runs(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, o: torch.Tensor, s: torch.Tensor,
             w: torch.Tensor) -> torch.Tensor:
    """Whether pixel ``x`` is in the box ``[lo, hi]`` clipped to the comb ``(o, s, w)`` (broadcast)."""
    return (x >= lo) & (x <= hi) & (torch.remainder(x - o, s) < w)


def _runs_as_comb(v: torch.Tensor) -> tuple[int, int, int, int, int]:
    """``(lo, hi, origin, step, width)`` of a 1-D mask that is runs of one width at one step (the
    first and last runs may be shorter); :class:`TableError` otherwise."""
    d = torch.diff(v.to(torch.int8), prepend=torch.zeros(1, dtype=torch.int8), append=torch.zeros(1, dtype=torch.int8))
    starts = torch.nonzero(d == 1).flatten().tolist()
    ends = [x - 1 for x in torch.nonzero(d == -1).flatten().tolist()]
    k = len(starts)
    if k == 1:
        return starts[0], ends[0], 0, 1, 1
    widths = [b - a + 1 for a, b in zip(starts, ends, strict=True)]
    if k == 2:
        if widths[0] >= widths[1]:
            w, s, o = widths[0], starts[1] - starts[0], starts[0]
        else:
            w = widths[1]
            s, o = starts[1] - (ends[0] - w + 1), starts[1]
        return starts[0], ends[-1], o, s, w
    w, s = widths[1], starts[2] - starts[1]
    ok = all(widths[i] == w for i in range(1, k - 1)) and widths[0] <= w and widths[-1] <= w \
        and all(starts[i + 1] - starts[i] == s for i in range(1, k - 1)) and ends[0] == starts[1] - s + w - 1
    if not ok:
        raise TableError("the positions mixed here form runs of different widths or steps along an axis")
    return starts[0], ends[-1], starts[1], s, w


class _Groups:
    """The boxes of a reduction as ``(groups, members)`` matrices, and the way back to the
    kept-dims shape (groups along which nothing varies are computed once)."""

    def __init__(self, bounds: list[tuple[torch.Tensor, torch.Tensor]], var: Sequence[int],
                 comb: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None) -> None:
        nd = bounds[0][0].dim()
        keep = [d for d in range(nd) if d not in var]
        every = [b for pair in bounds for b in pair] + ([x for trio in comb for x in trio] if comb else [])
        ref = torch.broadcast_shapes(*(b.shape for b in every))
        m = 1
        for d in var:
            m *= ref[d]
        perm = keep + list(var)
        self.n_members = m

        def mat(x: torch.Tensor) -> torch.Tensor:
            return x.expand(ref).permute(perm).reshape(-1, m)

        self.m_lo = [mat(lo) for lo, _ in bounds]
        self.m_hi = [mat(hi) for _, hi in bounds]
        self.m_comb = [(mat(o), mat(s), mat(w)) for o, s, w in comb] if comb else None
        self.kept = [ref[d] for d in keep]
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
