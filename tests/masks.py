"""Shared helpers: what an element sees, as a 2-D pixel mask, by the gradient oracle and by rfscope.

``seen`` asks the oracle (``tests/oracle.py``: the non-zero support of d element / d input on an
all-ones input, in a float64 copy with positive constant weights); ``claimed`` draws rfscope's
answer (the union of a table's boxes, or the product set of a periodic RF's pixels per axis);
``agree`` and ``check_node`` compare the two.  Used by test_token_layouts, test_table_property and
test_timm_oracle.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from oracle import Oracle

import rfscope
from rfscope.core.result import RF

Index = Sequence[int]
Box = tuple[tuple[int, int], ...]


def seen(o: Oracle, y: torch.Tensor, index: Index, chan: int | Sequence[int] | None = None) -> torch.Tensor:
    """Oracle: the joint (H, W) mask of input pixels element ``index`` of ``y`` depends on.

    ``chan``: the channel dim(s), summed over (the periodic form's unit is every channel at a
    position, like the oracle's ``support``); ``None``: that one element (a table element)."""
    sl: list[Any] = [int(i) for i in index]
    for d in (chan,) if isinstance(chan, int) else chan or ():
        sl[d] = slice(None)
    unit = y[tuple(sl)].sum()
    b = int(index[0]) if y.shape[0] == o.x.shape[0] else 0
    if not unit.requires_grad:
        return torch.zeros(o.x.shape[2:], dtype=torch.bool)
    (g,) = torch.autograd.grad(unit, o.x, retain_graph=True, allow_unused=True)
    if g is None:
        return torch.zeros(o.x.shape[2:], dtype=torch.bool)
    return g[b].ne(0).any(0)


def claimed(r: RF, index: Index, size: Sequence[int], unit: Index | None = None) -> torch.Tensor:
    """rfscope: the (H, W) mask of what element ``index`` sees (the union of a table's boxes,
    clipped to the image); for a periodic RF, the product set of the pixels of unit ``unit``
    (its spatial index), clipped to the image."""
    m = torch.zeros(tuple(size), dtype=torch.bool)
    if r.table is not None:
        for box in r.table.boxes(tuple(index)):
            m[tuple(slice(max(lo, 0), max(hi + 1, 0)) for lo, hi in box)] = True
        return m
    assert r.status == "exact", r
    assert unit is not None
    px = r.pixels(tuple(unit))
    rows = torch.zeros(size[0], dtype=torch.bool)
    cols = torch.zeros(size[1], dtype=torch.bool)
    rows[[p for p in px[0] if 0 <= p < size[0]]] = True
    cols[[p for p in px[1] if 0 <= p < size[1]]] = True
    return rows[:, None] & cols[None, :]


def global_mask(r: RF, unit: Index, size: Sequence[int]) -> torch.Tensor:
    """rfscope: the (H, W) mask of a ``global`` periodic RF's unit: every pixel along a global axis,
    the unit's window along an exact one."""
    axes = []
    for a, d in enumerate(r.dims):
        v = torch.ones(size[a], dtype=torch.bool)
        if d.exact is not None:
            v[:] = False
            v[[p for p in d.exact.window(int(unit[a])).pixels() if 0 <= p < size[a]]] = True
        axes.append(v)
    return axes[0][:, None] & axes[1][None, :]


def bbox(mask: torch.Tensor) -> Box | None:
    """Inclusive (lo, hi) per dim of the mask's non-zero part; ``None`` when it is empty."""
    if not bool(mask.any()):
        return None
    out = []
    for d in range(mask.dim()):
        nz = mask.any(dim=tuple(a for a in range(mask.dim()) if a != d)).nonzero().flatten()
        out.append((int(nz[0]), int(nz[-1])))
    return tuple(out)


def box_of(lo: Sequence[int], hi: Sequence[int]) -> Box:
    return tuple(zip(lo, hi, strict=True))


def nchw(index: Index) -> Index:
    return tuple(index[2:])


def nhwc(index: Index) -> Index:
    return tuple(index[1:3])


def agree(r: RF, o: Oracle, y: torch.Tensor, indices: Sequence[Index], clip_free: bool = True,
          unit: Callable[[Index], Index] = nchw, chan: int | Sequence[int] = 1) -> None:
    """rfscope's boxes (their union) are exactly the oracle's support for every element in ``indices``
    (a table: that element; a periodic RF: unit ``unit(index)``, against the oracle's sum over dim(s)
    ``chan``); ``clip_free``: nothing reaches outside the image, so ``window`` is the support's bounding box."""
    size = tuple(o.x.shape[2:])
    for idx in indices:
        table = r.table is not None
        want = seen(o, y, idx, None if table else chan)
        got = claimed(r, idx, size, None if table else unit(idx))
        assert torch.equal(got, want), (idx, bbox(got), bbox(want), r.table.boxes(tuple(idx)) if table else r)
        if clip_free:
            w = r.window(tuple(idx)) if table else r.window(tuple(unit(idx)))
            assert w == bbox(want), idx


def periodic_unit(dims: Sequence[Any], r: RF, index: Index) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The unit (per input axis) of element ``index`` of a periodic result whose tensor dims carry
    the tags ``dims`` (``rep.records[node].state.dims``), and the dims the unit spans (its channels).

    A tag says which input axis a tensor dim indexes (a flattened token dim is ``Merged``: row-major
    over its parts); an axis no dim indexes has stride 0 (every unit sees the same along it); every
    untagged dim but the batch dim is the unit's channels."""
    unit: list[int | None] = [None] * len(r.dims)
    chans: list[int] = []
    for d, tag in enumerate(dims):
        if tag is None:
            if d:
                chans.append(d)
        elif isinstance(tag, int):
            unit[tag] = int(index[d])
        else:  # Merged
            rest = int(index[d])
            for t, n in reversed(tag.parts):
                rest, i = divmod(rest, n)
                if t is not None:  # an untagged part: every unit sees the same along it
                    unit[t] = i
    for a, u in enumerate(unit):
        if u is None:
            assert r.stride[a] == 0 or r.dims[a].exact is None, (dims, r)
    return tuple(u or 0 for u in unit), tuple(chans)


def unit_chans(dims: Sequence[Any]) -> tuple[int, ...]:
    """The dims of a periodic result that are a unit's channels: untagged, not the batch dim."""
    return tuple(d for d, tag in enumerate(dims) if d and tag is None)


def node_dims(rep: rfscope.Report, name: str) -> Sequence[Any]:
    """The dim tags of the tensor a module (or node) ``name`` returns (its first tensor for a tuple)."""
    st: Any = rep.records[rep.node_name(name)].state
    while isinstance(st, (tuple, list)):
        st = st[0]
    if isinstance(st, dict):
        st = next(iter(st.values()))
    return st.dims  # type: ignore[no-any-return]


def elements(y: torch.Tensor, n: int = 6, seed: int = 0) -> list[tuple[int, ...]]:
    """``n`` elements of ``y``: the first, the last, and random ones in between (batch 0 unless the
    batch dim holds windows)."""
    rng = random.Random(seed)
    shape = tuple(y.shape)
    out = [tuple(0 for _ in shape), tuple(s - 1 for s in shape)]
    while len(out) < n:
        out.append(tuple(rng.randrange(s) for s in shape))
    return out


def check_node(rep: rfscope.Report, o: Oracle, name: str, indices: Sequence[Index] | None = None,
               n: int = 6, seed: int = 0, y: torch.Tensor | None = None, local: bool = False) -> str:
    """rfscope's RF of ``name`` against the oracle's captured output ``o.outs[name]``, element by element.

    ``exact`` with a table: each element's union of boxes equals its oracle mask; ``exact`` periodic:
    the unit's product set equals the oracle's mask summed over the unit's channels; ``global``: the
    oracle sees every pixel.  ``unknown`` fails (a gap).  ``local``: rfscope's local RF (``rep.rf(name,
    local=True)``), against an oracle built with ``local=True`` (global reductions detached).
    Returns the status."""
    r = rep.rf(name, local=local)
    y = o.outs[name] if y is None else y
    idx = list(indices) if indices is not None else elements(y, n, seed)
    size = tuple(o.x.shape[2:])
    assert r.status != "unknown", (name, r.reason)
    for i in idx:
        if r.status == "global" and (r.table is not None or all(d.exact is None for d in r.dims)):
            want = seen(o, y, i, None)  # every element sees the whole input
            assert bool(want.all()), (name, i, "global, but the oracle sees only", bbox(want), int(want.sum()))
            continue
        if r.status == "global":  # per unit (every channel at a position); an axis may be exact (an RNN over rows)
            unit, chan = periodic_unit(node_dims(rep, name), r, i)
            want, got = seen(o, y, i, chan), global_mask(r, unit, size)
            assert torch.equal(got, want), (name, i, "global", r, "rfscope", bbox(got), int(got.sum()), "oracle",
                                            bbox(want), int(want.sum()))
            continue
        assert r.status == "exact", (name, r)
        if r.table is not None:
            want, got = seen(o, y, i, None), claimed(r, i, size)
            detail: Any = r.table.boxes(tuple(i))
        else:
            unit, chan = periodic_unit(node_dims(rep, name), r, i)
            want, got = seen(o, y, i, chan), claimed(r, i, size, unit)
            detail = r.pixels(unit)
        assert torch.equal(got, want), (name, i, "rfscope", bbox(got), detail, "oracle", bbox(want),
                                        int(got.sum()), int(want.sum()))
    return r.status


def cached_on_one_thread(make: Callable[[str], Any]) -> Iterator[Callable[[str], Any]]:
    """For a module-scoped fixture: ``make(key)`` once per key, on one intra-op thread (the tensors
    are tiny, and on a loaded 2-core machine idle worker threads spinning cost more CPU than they save)."""
    cache: dict[str, Any] = {}

    def get(key: str) -> Any:
        if key not in cache:
            cache[key] = make(key)
        return cache[key]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield get
    finally:
        torch.set_num_threads(threads)
