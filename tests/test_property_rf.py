"""Property tests: rfscope's per-unit windows equal the gradient oracle's on random models.

Hypothesis draws stacks and branching graphs (residual adds, products, channel
concats) of Conv1d/2d/3d, pooling, padding, transposed convs, upsampling,
pixel (un)shuffle and slicing, with independent per-axis parameters.  The
generator tracks each axis's jump ``j`` itself (a product of strides, ``1/s``
for transposed convs and upsampling) and a generous bound ``R`` on how far a
unit's dependency cone reaches; the input is made ``> 2R`` wide so that central
units never touch padding or PyTorch's border clamping, and those units (a run
covering every phase) are compared pixel for pixel.  Plain stacks (zero padding,
no resampling) also probe the first unit's hi edge and the last units' lo edge
(docs/design.md §5).  Merges of branches with different jumps have no periodic
form: they come out as an exact per-position table, checked element by element
against the oracle (central units exactly and jointly, border units as a cover),
or ``unknown`` with a "misaligned" reason or a table's reason, never a number.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from oracle import Oracle

import rfscope

C = 2  # channels between ops
CAPS = {1: 3000, 2: 120, 3: 32}  # largest input extent per axis
MAX_NUMEL = 150_000  # largest intermediate tensor
LIN = {1: "linear", 2: "bilinear", 3: "trilinear"}
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
CONVT = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
FCONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
MAXP = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
AVGP = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
LPP = {1: nn.LPPool1d, 2: nn.LPPool2d, 3: nn.LPPool3d}
FMAXP = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
FAVGP = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
PADM = {
    "reflect": {1: nn.ReflectionPad1d, 2: nn.ReflectionPad2d, 3: nn.ReflectionPad3d},
    "replicate": {1: nn.ReplicationPad1d, 2: nn.ReplicationPad2d, 3: nn.ReplicationPad3d},
    "circular": {1: nn.CircularPad1d, 2: nn.CircularPad2d, 3: nn.CircularPad3d},
    "zero": {1: nn.ZeroPad1d, 2: nn.ZeroPad2d, 3: nn.ZeroPad3d},
}


# ----------------------------------------------------------------------------- ops
@dataclass
class Op:
    """One layer: per-axis parameters, jump/reach bookkeeping and a module builder."""

    kind: str
    p: dict[str, Any]
    subs: tuple[list[Op], list[Op]] = field(default_factory=lambda: ([], []))

    # jump (approximate for size-mode upsampling) and reach, per axis
    def approx_jump(self, j: Fraction, a: int) -> Fraction:
        k, p = self.kind, self.p
        if k in ("conv", "pool"):
            return j * p["s"][a]
        if k == "slice":
            return j * (p["step"] if p["axis"] == a else 1)
        if k == "convT":
            return j / p["s"][a]
        if k == "up":
            return j * p["ratio"][a]
        if k == "shuffle":
            return j / p["r"]
        if k == "unshuffle":
            return j * p["r"]
        if k == "branch":
            return approx_chain(self.subs[0], j, a)
        return j

    def reach(self, j: Fraction, a: int) -> Fraction:
        k, p = self.kind, self.p
        if k in ("conv", "pool"):
            ke = p["d"][a] * (p["k"][a] - 1) + 1
            return (2 * ke + p["s"][a]) * j  # extent plus both pads (each < ke) plus a stride
        if k == "pad":
            return (abs(p["pads"][a][0]) + abs(p["pads"][a][1]) + 1) * j
        if k == "slice":
            return (p["a"] + p["b"] + p["step"]) * j if p["axis"] == a else Fraction(0)
        if k == "convT":
            return (p["d"][a] * p["k"][a] + p["p"][a] + p["op"][a] + 2) * j
        if k == "up":
            return 6 * j
        if k in ("shuffle", "unshuffle"):
            return 2 * p["r"] * j
        if k == "branch":
            return max(chain_reach(self.subs[0], j, a), chain_reach(self.subs[1], j, a)) + 2 * j
        return Fraction(0)


def approx_chain(ops: list[Op], j: Fraction, a: int) -> Fraction:
    for op in ops:
        j = op.approx_jump(j, a)
    return j


def chain_reach(ops: list[Op], j: Fraction, a: int) -> Fraction:
    r = Fraction(0)
    for op in ops:
        r += op.reach(j, a)
        j = op.approx_jump(j, a)
    return r


@dataclass
class Built:
    """Outcome of building a chain on a concrete shape: exact jumps and allowed-unknown reasons."""

    jumps: list[Fraction]
    misaligned: bool = False
    maybe_irregular: bool = False  # size/non-integer upsampling may be non-periodic


class FConv(nn.Module):
    def __init__(self, n: int, p: dict[str, Any]) -> None:
        super().__init__()
        self.n, self.p = n, p
        self.weight = nn.Parameter(torch.randn(C, C // p["groups"], *p["k"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p
        return FCONV[self.n](x, self.weight, None, p["s"], p["pad"], p["d"], p["groups"])


class FPool(nn.Module):
    def __init__(self, n: int, p: dict[str, Any]) -> None:
        super().__init__()
        self.n, self.p = n, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p
        if p["type"] == "max":
            return FMAXP[self.n](x, p["k"], p["s"], p["pad"], p["d"], p["ceil"])
        return FAVGP[self.n](x, p["k"], p["s"], p["pad"], p["ceil"])


class FPad(nn.Module):
    def __init__(self, pads: list[int]) -> None:
        super().__init__()
        self.pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads)


class Slice(nn.Module):
    def __init__(self, n: int, axis: int, a: int, stop: int, step: int) -> None:
        super().__init__()
        self.idx = (slice(None), slice(None)) + tuple(
            slice(a, stop, step) if i == axis else slice(None) for i in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.idx]


class Crop(nn.Module):
    """Keep the first ``sizes`` positions per spatial axis (does not move the windows)."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.idx = (slice(None), slice(None)) + tuple(slice(0, s) for s in sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.idx]


class Interp(nn.Module):
    def __init__(self, kw: dict[str, Any]) -> None:
        super().__init__()
        self.kw = kw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, **self.kw)


class Branch(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module, crop_a: nn.Module, crop_b: nn.Module, merge: str,
                 n: int) -> None:
        super().__init__()
        self.n = n
        self.a, self.b, self.crop_a, self.crop_b, self.merge = a, b, crop_a, crop_b, merge
        self.fuse = nn.Conv1d(2 * C, C, 1) if merge == "cat" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ya, yb = self.crop_a(self.a(x)), self.crop_b(self.b(x))
        if self.merge == "add":
            return ya + yb
        if self.merge == "mul":
            return ya * yb
        y = torch.cat([ya, yb], dim=1)
        assert self.fuse is not None
        w = self.fuse.weight.view(C, 2 * C, *([1] * self.n))
        return FCONV[self.n](y, w)


def build_chain(ops: list[Op], n: int, x: torch.Tensor, jumps: list[Fraction]) -> tuple[nn.Module, torch.Tensor, Built]:
    """Build ``ops`` as an nn.Sequential on the concrete tensor ``x``; track exact jumps."""
    mods: list[nn.Module] = []
    b = Built(list(jumps))
    for op in ops:
        m, x, b2 = build_op(op, n, x, b.jumps)
        b = Built(b2.jumps, b.misaligned or b2.misaligned, b.maybe_irregular or b2.maybe_irregular)
        assume(x.numel() <= MAX_NUMEL and min(x.shape[2:]) >= 1)
        mods.append(m)
    for i, op in enumerate(ops):
        # padding read by anything but a conv or pool (the next op, a merge, the output): its padded
        # positions see nothing, which the per-position form states (docs/design.md §2b, "Borders")
        if op.kind == "pad" and any(v > 0 for pr in op.p["pads"] for v in pr) \
                and (i + 1 == len(ops) or ops[i + 1].kind not in ("conv", "pool")):
            b = Built(b.jumps, b.misaligned, True)
    return nn.Sequential(*mods), x, b


def build_op(op: Op, n: int, x: torch.Tensor, j: list[Fraction]) -> tuple[nn.Module, torch.Tensor, Built]:
    p = op.p
    shp = list(x.shape[2:])
    jn = list(j)
    irregular = False
    m: nn.Module
    if op.kind == "conv":
        pad = p["pad"]
        if p["functional"]:
            m = FConv(n, p)
        else:
            m = CONV[n](C, C, p["k"], p["s"], pad, p["d"], p["groups"], padding_mode=p["mode"])
        jn = [j[a] * p["s"][a] for a in range(n)]
    elif op.kind == "pool":
        t = p["type"]
        if p["functional"] and t != "lp":
            m = FPool(n, p)
        elif t == "max":
            m = MAXP[n](p["k"], p["s"], p["pad"], p["d"], ceil_mode=p["ceil"])
        elif t == "avg":
            m = AVGP[n](p["k"], p["s"], p["pad"], ceil_mode=p["ceil"], count_include_pad=p["cip"])
        else:
            k1: Any = p["k"][0] if n == 1 else p["k"]  # lp_pool1d wants ints
            m = LPP[n](2, k1, p["s"][0] if n == 1 else p["s"], ceil_mode=p["ceil"])
        jn = [j[a] * p["s"][a] for a in range(n)]
    elif op.kind == "pad":
        pads = [v for a in reversed(range(n)) for v in p["pads"][a]]
        m = FPad(pads) if p["mode"] == "F.pad" else PADM[p["mode"]][n](tuple(pads))
    elif op.kind == "slice":
        ax = p["axis"]
        m = Slice(n, ax, p["a"], shp[ax] - p["b"], p["step"])
        jn[ax] = j[ax] * p["step"]
    elif op.kind == "convT":
        m = CONVT[n](C, C, p["k"], p["s"], p["p"], p["op"], p["groups"], dilation=p["d"])
        jn = [j[a] / p["s"][a] for a in range(n)]
    elif op.kind == "up":
        kw: dict[str, Any] = {"mode": p["mode"]}
        if p["mode"] not in ("nearest", "nearest-exact"):
            kw["align_corners"] = p["ac"]
        if p["size"]:
            size = [max(1, shp[a] * p["num"][a] // p["den"][a]) for a in range(n)]
            kw["size"] = size
            for a in range(n):
                if p["ac"] and size[a] > 1:
                    jn[a] = j[a] * Fraction(shp[a] - 1, size[a] - 1)
                else:
                    jn[a] = j[a] * Fraction(shp[a], size[a])
            irregular = True
        else:
            kw["scale_factor"] = tuple(float(s) for s in p["scale"])
            out = [math.floor(shp[a] * p["scale"][a]) for a in range(n)]
            for a in range(n):
                if p["ac"]:
                    jn[a] = j[a] * Fraction(shp[a] - 1, max(out[a] - 1, 1))
                else:
                    jn[a] = j[a] / Fraction(p["scale"][a]).limit_denominator(10)
            irregular = any(Fraction(s).denominator != 1 for s in p["scale"]) or p["ac"]
        m = nn.Upsample(**kw) if p.get("module") else Interp(kw)
    elif op.kind == "shuffle":
        r = p["r"]
        m = nn.Sequential(nn.Conv2d(C, C * r * r, 1), nn.PixelShuffle(r))
        jn = [ja / r for ja in j]
    elif op.kind == "unshuffle":
        r = p["r"]
        m = nn.Sequential(Crop([s - s % r for s in shp]), nn.PixelUnshuffle(r), nn.Conv2d(C * r * r, C, 1))
        jn = [ja * r for ja in j]
    elif op.kind == "branch":
        ma, ya, ba = build_chain(op.subs[0], n, x, j)
        mb, yb, bb = build_chain(op.subs[1], n, x, j)
        common = [min(sa, sb) for sa, sb in zip(ya.shape[2:], yb.shape[2:], strict=True)]
        m = Branch(ma, mb, Crop(common), Crop(common), p["merge"], n)
        with torch.no_grad():
            y = m(x)
        return m, y, Built(ba.jumps, ba.misaligned or bb.misaligned or ba.jumps != bb.jumps,
                           ba.maybe_irregular or bb.maybe_irregular)
    else:  # pragma: no cover
        raise AssertionError(op.kind)
    try:
        with torch.no_grad():
            y = m(x)
    except RuntimeError:  # e.g. a kernel larger than the (shrunken) input: not a model
        assume(False)
        raise
    return m, y, Built(jn, False, irregular)


# ----------------------------------------------------------------------------- strategies
def per_axis(n: int, s: st.SearchStrategy[int]) -> st.SearchStrategy[tuple[int, ...]]:
    return st.tuples(*([s] * n))


@st.composite
def conv_op(draw: Any, n: int, plain: bool) -> Op:
    kmax, smax, dmax = {1: (7, 3, 3), 2: (5, 2, 2), 3: (3, 2, 2)}[n]
    k = draw(per_axis(n, st.integers(1, kmax)))
    d = draw(per_axis(n, st.integers(1, dmax)))
    pad_kind = draw(st.sampled_from(["int", "int", "same", "valid"]))
    s = draw(per_axis(n, st.integers(1, smax))) if pad_kind != "same" else (1,) * n
    if pad_kind == "int":
        pad: Any = tuple(draw(st.integers(0, d[a] * (k[a] - 1) // (2 if plain else 1))) for a in range(n))
    else:
        pad = pad_kind
    functional = draw(st.booleans())
    mode = "zeros" if plain or functional else draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    groups = draw(st.sampled_from([1, 2]))
    left = tuple(d[a] * (k[a] - 1) // 2 for a in range(n)) if pad == "same" else (
        (0,) * n if pad == "valid" else pad)
    return Op("conv", dict(k=k, s=s, pad=pad, d=d, groups=groups, mode=mode, functional=functional, left=left))


@st.composite
def pool_op(draw: Any, n: int, plain: bool) -> Op:
    kmax, smax = {1: (5, 3), 2: (4, 2), 3: (3, 2)}[n]
    t = draw(st.sampled_from(["max", "avg", "lp"]))
    k = draw(per_axis(n, st.integers(1, kmax)))
    s = draw(per_axis(n, st.integers(1, smax)))
    d = draw(per_axis(n, st.integers(1, 2))) if t == "max" else (1,) * n
    pad = tuple(draw(st.integers(0, k[a] // 2)) for a in range(n)) if t != "lp" else (0,) * n
    return Op("pool", dict(type=t, k=k, s=s, d=d, pad=pad, left=pad, ceil=draw(st.booleans()),
                           cip=draw(st.booleans()), functional=draw(st.booleans())))


@st.composite
def pad_op(draw: Any, n: int) -> Op:
    mode = draw(st.sampled_from(["F.pad", "F.pad", "reflect", "replicate", "circular", "zero"]))
    lo = -3 if mode == "F.pad" else 0
    pads = tuple((draw(st.integers(lo, 4)), draw(st.integers(lo, 4))) for _ in range(n))
    return Op("pad", dict(mode=mode, pads=pads))


@st.composite
def slice_op(draw: Any, n: int) -> Op:
    return Op("slice", dict(axis=draw(st.integers(0, n - 1)), a=draw(st.integers(0, 4)),
                            b=draw(st.integers(0, 3)), step=draw(st.sampled_from([1, 1, 2, 3]))))


@st.composite
def convt_op(draw: Any, n: int) -> Op:
    k = draw(per_axis(n, st.integers(1, 5 if n < 3 else 3)))
    s = draw(per_axis(n, st.integers(1, 3 if n < 3 else 2)))
    d = draw(per_axis(n, st.integers(1, 2)))
    p = tuple(draw(st.integers(0, d[a] * (k[a] - 1))) for a in range(n))
    op = tuple(draw(st.integers(0, max(s[a], d[a]) - 1)) for a in range(n))
    return Op("convT", dict(k=k, s=s, d=d, p=p, op=op, groups=draw(st.sampled_from([1, 2]))))


@st.composite
def up_op(draw: Any, n: int) -> Op:
    modes = ["nearest", "nearest-exact", LIN[n]] + (["bicubic"] if n == 2 else [])
    mode = draw(st.sampled_from(modes))
    ac = mode not in ("nearest", "nearest-exact") and draw(st.booleans())
    size = draw(st.booleans())
    module = draw(st.booleans())  # nn.Upsample or F.interpolate
    if size:
        fr = [draw(st.sampled_from([(2, 1), (3, 1), (3, 2), (5, 2), (4, 3), (1, 2)])) for _ in range(n)]
        return Op("up", dict(mode=mode, ac=ac, size=True, module=module, num=[f[0] for f in fr], den=[f[1] for f in fr],
                             ratio=[Fraction(f[1], f[0]) for f in fr]))
    scale = [draw(st.sampled_from([2, 2, 3, 1.5, 2.5])) for _ in range(n)]
    return Op("up", dict(mode=mode, ac=ac, size=False, module=module, scale=scale,
                         ratio=[1 / Fraction(sc).limit_denominator(10) for sc in scale]))


def leaf_ops(n: int, plain: bool) -> st.SearchStrategy[Op]:
    base: list[st.SearchStrategy[Op]] = [conv_op(n, plain), conv_op(n, plain), pool_op(n, plain)]
    if not plain:
        base += [pad_op(n), slice_op(n), convt_op(n), up_op(n)]
        if n == 2:
            r = st.sampled_from([2, 3])
            base += [r.map(lambda v: Op("shuffle", {"r": v})), r.map(lambda v: Op("unshuffle", {"r": v}))]
    return st.one_of(*base)


@st.composite
def branch_op(draw: Any, n: int, plain: bool) -> Op:
    leaf = leaf_ops(n, plain)
    a = draw(st.lists(leaf, min_size=1, max_size=2))
    b = draw(st.lists(leaf, min_size=0, max_size=2))
    return Op("branch", {"merge": draw(st.sampled_from(["add", "add", "mul", "cat"]))}, (a, b))


MAXDEPTH = {1: 6, 2: 4, 3: 3}


@st.composite
def model_spec(draw: Any, n: int, plain: bool, branches: bool) -> list[Op]:
    leaf = leaf_ops(n, plain)
    ops = st.one_of(leaf, branch_op(n, plain)) if branches else leaf
    return draw(st.lists(ops, min_size=1, max_size=MAXDEPTH[n]))


# ----------------------------------------------------------------------------- the check
def _contains(ops: list[Op], kinds: set[str]) -> bool:
    return any(o.kind in kinds or _contains(o.subs[0] + o.subs[1], kinds) for o in ops)


#: why a misaligned (or irregular) graph may stay unknown once it met the per-position tables:
#: a union that is not a few boxes, or an op that tables do not support yet ("... in a token layout")
TABLE_REASONS = ("do not form one box", "more than", "too large to check", "token layout",
                 "channels that carry positions")


def _table_reason(why: str) -> bool:
    return any(t in why for t in TABLE_REASONS)


def _border_safe(ops: list[Op]) -> bool:
    """Only zero padding and no interpolation: a border unit sees no pixel outside its clipped boxes."""
    for o in ops:
        if o.kind == "up" or (o.kind == "conv" and o.p["mode"] != "zeros"):
            return False
        if o.kind == "pad" and o.p["mode"] not in ("F.pad", "zero"):
            return False
        if not _border_safe(o.subs[0] + o.subs[1]):
            return False
    return True


def _check_table(r: Any, ops: list[Op], model: nn.Module, shape: tuple[int, ...], out: tuple[int, ...],
                 n: int, plain: bool) -> None:
    """A per-position table, element by element against the oracle.

    The pixels a unit sees are the union over channels (the oracle sums over them) of
    ``r.table.boxes((0, c, *index))`` clipped to the input.  Central units (the middle half of
    the output, whose boxes stay inside the input) must match exactly, jointly over the axes and
    so per axis.  Boxes are unclipped, like the periodic windows: a border unit may read padding
    whose coordinates lie inside the input (pixels a floor-mode layer dropped), so border units
    only have to cover the oracle (when zero padding alone reaches them), and in plain stacks
    also match on the inner edge (the first unit's hi, the last units' lo), as the periodic check.
    """
    size = shape[2:]
    assert r.table is not None
    lo = [o // 4 if o >= 8 else o // 2 for o in out]
    hi = [(3 * o) // 4 if o >= 8 else o // 2 for o in out]
    start = [max(a, o // 2 - 3) for a, o in zip(lo, out, strict=True)]
    central = [[s0 + t for s0 in start] for t in range(6)
               if all(s0 + t <= h for s0, h in zip(start, hi, strict=True))]  # every phase of a stride <= 6
    border: list[list[int]] = []
    if _border_safe(ops):
        border = [[0] * n, [o - 1 for o in out], [o - 2 for o in out]]
        if n > 1:
            border += [[0] + [o - 1 for o in out[1:]], [out[0] - 1] + [0] * (n - 1)]
        event("table: border units checked")
    probes = central + border
    dtype = torch.float32 if _contains(ops, {"up"}) else torch.float64
    oracle = Oracle(model, shape, batch=max(len(probes), 2), dtype=dtype)
    assert tuple(oracle.out_size) == out
    go = torch.zeros(oracle.out.shape, dtype=oracle.out.dtype)
    for b, idx in enumerate(probes):
        go[(b, slice(None), *idx)] = 1.0
    (g,) = torch.autograd.grad(oracle.out, oracle.x, go)
    for b, idx in enumerate(probes):
        got = oracle._axes(g[b])
        seen = (g[b] != 0).any(dim=0)  # the joint support over the input's spatial axes
        want = torch.zeros(tuple(size), dtype=torch.bool)
        boxes = [bx for c in range(C) for bx in r.table.boxes((0, c, *idx))]
        for bx in boxes:
            assert len(bx) == n, bx
            sl = tuple(slice(max(lo, 0), min(hi, sz - 1) + 1) for (lo, hi), sz in zip(bx, size, strict=True))
            if all(s.start < s.stop for s in sl):
                want[sl] = True
        for c in range(C):  # the window is the bounding box of the element's boxes (None: sees nothing)
            bc = r.table.boxes((0, c, *idx))
            w = r.window((0, c, *idx))
            if not bc:
                assert w is None, (idx, c, w)
            else:
                bb = tuple((min(bx[a][0] for bx in bc), max(bx[a][1] for bx in bc)) for a in range(n))
                assert tuple(tuple(v) for v in w) == bb, (idx, c, w, bb)
        proj = []
        for a in range(n):
            other = [d for d in range(n) if d != a]
            v = want.any(dim=other) if other else want
            proj.append([int(i) for i in torch.nonzero(v).flatten()])
        inside = all(0 <= lo_ and hi_ < sz for bx in boxes for (lo_, hi_), sz in zip(bx, size, strict=True))
        if b < len(central) and inside:
            for a in range(n):
                assert got[a] == proj[a], f"axis {a} unit {idx}: oracle {got[a]} table {proj[a]} (boxes {boxes})"
            assert torch.equal(seen, want), f"unit {idx}: joint support differs from the union of {boxes}"
            event("table: central unit compared exactly")
            continue
        if not border:  # interpolation or reflect/replicate/circular padding: no border claim
            continue
        assert not bool((seen & ~want).any()), f"border unit {idx} sees pixels outside its boxes {boxes}: {got}"
        if plain and any(got):
            for a in range(n):
                if all(v == 0 for v in idx):
                    assert got[a][-1] == proj[a][-1], (a, idx, got[a], boxes)
                elif all(v >= o - 2 for v, o in zip(idx, out, strict=True)):
                    assert got[a][0] == proj[a][0], (a, idx, got[a], boxes)


def check(ops: list[Op], n: int, plain: bool, global_first: bool = False) -> None:
    """Compare rfscope with the oracle on the random graph ``ops``.

    ``global_first``: a GroupNorm over all positions runs first, so every unit is ``global``
    and what is compared is the *local* RF (the oracle treats the norm as the identity, so its
    support is exactly the local RF).  A misaligned merge must then make the local RF unknown,
    never the RF of one branch.
    """
    one = Fraction(1)
    reach = [chain_reach(ops, one, a) for a in range(n)]
    size = [int(2 * r) + 12 for r in reach]
    assume(all(s <= CAPS[n] for s in size))
    x = torch.zeros((1, C, *size))
    model, y, built = build_chain(ops, n, x, [one] * n)
    if global_first:
        model = nn.Sequential(nn.GroupNorm(1, C), model)
    out = tuple(int(v) for v in y.shape[2:])
    assume(min(out) >= 3)
    shape = (1, C, *size)
    rep = rfscope.analyze(model, input_shape=shape)
    r = rep.rf("output")
    if global_first and r.status == "exact" and r.table is not None and built.maybe_irregular:
        # padded positions read by something other than a conv or pool see nothing: not every
        # element sees the whole input, and some element sees none of it
        t = r.table
        assert any(t.box(tuple(i)) is None for i in torch.cartesian_prod(*[torch.arange(k) for k in t.shape])
                   .reshape(-1, len(t.shape)).tolist()), "padding read as it is, but every element sees pixels"
        event("global op, then padding read as it is -> exact per-position table")
        return
    if global_first and r.status != "unknown":
        assert r.status == "global", r.status
        assert r.local is not None, "a local path exists, but the report says there is none"
        if built.misaligned and r.local.table is None:
            # the periodic local path: "misaligned", or a table's reason (a local table is checked below)
            assert r.local.status == "unknown", (r.local.status, r.local.stride)
            why = r.local.reason or ""
            assert "misaligned" in why or "not tracked" in why or _table_reason(why) or built.maybe_irregular, why
            event("global op, then a misaligned merge -> local RF unknown")
            return
        if r.local.status == "unknown" and (built.maybe_irregular or _contains(ops, {"convT"})):
            event("global op, then irregular resampling -> local RF unknown")
            return
        r = r.local
    if r.table is not None:
        # the periodic algebra cannot state it (a misaligned merge): an exact per-position table
        assert built.misaligned or built.maybe_irregular, "a table for an aligned graph"
        assert r.status == "exact" and all(v is None for v in r.stride), (r.status, r.stride)
        _check_table(r, ops, model, shape, out, n, plain)
        event("misaligned merge -> exact per-position table")
        return
    if built.misaligned:
        assert r.status == "unknown", (r.status, r.stride)
        why = r.reason or ""
        empty_ok = n > 1 and "see no pixel" in why and _contains(ops, {"convT"})
        assert "misaligned" in why or _table_reason(why) or built.maybe_irregular or empty_ok, why
        event("misaligned merge -> unknown")
        return
    if r.status == "unknown" and n > 1 and "see no pixel" in (r.reason or "") and _contains(ops, {"convT"}):
        event("merge of a branch with empty units (2-D/3-D) -> unknown")
        return
    if r.status == "unknown" and built.maybe_irregular:
        # not periodic; once it became a per-position table, the table's reasons too
        assert "period" in (r.reason or "") or _table_reason(r.reason or ""), r.reason
        event("irregular resampling -> unknown")
        return
    assert r.status == "exact", r.reason
    if built.maybe_irregular and list(r.stride) != built.jumps:
        # the generator's jump is an estimate here; a per-position table found periodic again states
        # the exact one (the pixels below are what is checked)
        event("irregular resampling -> periodic again through a table")
    else:
        assert list(r.stride) == built.jumps, (r.stride, built.jumps)
    event("checked against the oracle")
    if any(ax.exact is not None and ax.exact.period > 1 for ax in r.dims):
        event("checked, several phases")
    periods = [ax.exact.period for ax in r.dims if ax.exact is not None]
    t_run = min(max(periods + [f.denominator for f in built.jumps]), 12)
    # PyTorch interpolates float32 tensors with float32 index arithmetic, which rfscope reproduces;
    # float64 rounds differently (a tap of weight ~1e-7 comes or goes), so match the dtype there.
    dtype = torch.float32 if _contains(ops, {"up"}) else torch.float64
    oracle = Oracle(model, shape, batch=max(t_run, 3 if plain else 1), dtype=dtype)
    assert tuple(oracle.out_size) == out
    # a run of consecutive central units (every phase when the period allows), kept in the middle
    # half of the output so that no unit's cone reaches a border
    lo = [o // 4 if o >= 8 else o // 2 for o in out]
    hi = [(3 * o) // 4 if o >= 8 else o // 2 for o in out]
    start = [max(a, o // 2 - t_run // 2) for a, o in zip(lo, out, strict=True)]
    probes = [[s0 + t for s0 in start] for t in range(t_run)
              if all(s0 + t <= h for s0, h in zip(start, hi, strict=True))]
    for idx, got in zip(probes, oracle.supports(probes), strict=True):
        want = r.pixels(idx)
        if any(not w for w in want):  # a unit that sees nothing (e.g. transposed conv k < s)
            assert all(not g for g in got), (idx, got, want)
            continue
        for a in range(n):
            assert all(0 <= v < size[a] for v in want[a]), f"unit {idx} window leaves the input: {want[a]}"
            assert got[a] == want[a], f"axis {a} unit {idx}: oracle {got[a]} rfscope {want[a]}"
    if plain:
        edges = [[0] * n, [o - 1 for o in out], [o - 2 for o in out]]
        first, *lasts = oracle.supports(edges)
        w0 = r.window([0] * n)
        for a in range(n):
            assert first[a] and first[a][-1] == w0[a][1], (a, first[a], w0[a])
        for idx, last in zip(edges[1:], lasts, strict=True):
            wl = r.window(idx)
            for a in range(n):
                assert last[a] and last[a][0] == wl[a][0], (a, last[a], wl[a])


#: ``RFSCOPE_PROPERTY_SCALE=10`` runs ten times as many random (not derandomized) examples: a bug hunt.
SCALE = int(os.environ.get("RFSCOPE_PROPERTY_SCALE", "0") or 0)
SETTINGS = dict(deadline=None, derandomize=not SCALE, database=None,
                suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def _property(n: int, examples: int, plain: bool, global_first: bool = False) -> Any:
    @settings(max_examples=examples * max(SCALE, 1), **SETTINGS)  # type: ignore[arg-type]
    @given(model_spec(n, plain=plain, branches=True))
    def run(ops: list[Op]) -> None:
        check(ops, n, plain=plain, global_first=global_first)

    return run


# plain: zero padding, no resampling, so the border units are probed too
test_plain_stacks_1d = _property(1, 150, plain=True)
test_plain_stacks_2d = _property(2, 80, plain=True)
test_plain_stacks_3d = _property(3, 40, plain=True)
test_random_graphs_1d = _property(1, 250, plain=False)
test_random_graphs_2d = _property(2, 120, plain=False)
test_random_graphs_3d = _property(3, 40, plain=False)
# a global op (GroupNorm over all positions) first: the local RF must match, or be unknown when misaligned
test_global_then_random_graphs_1d = _property(1, 120, plain=False, global_first=True)
test_global_then_random_graphs_2d = _property(2, 60, plain=False, global_first=True)


def test_misaligned_merge_is_exact_per_position() -> None:
    # conv_stride2(x) + x[..., :16]: no periodic form, but every element sees the union of two boxes
    ops = [Op("branch", {"merge": "add"}, ([Op("conv", dict(k=(3,), s=(2,), pad=(1,), d=(1,), groups=1,
                                                       mode="zeros", functional=False, left=(1,)))], []))]
    model, y, built = build_chain(ops, 1, torch.zeros(1, C, 32), [Fraction(1)])
    assert built.misaligned
    r = rfscope.analyze(model, input_shape=(1, C, 32)).rf("output")
    assert r.status == "exact" and r.table is not None and r.stride == (None,), (r.status, r.stride, r.reason)
    out = y.shape[2]
    sups = Oracle(model, (1, C, 32), batch=out).supports([(i,) for i in range(out)])
    for i, (got,) in enumerate(sups):
        for c in range(C):
            seen = {p for (lo, hi), in r.table.boxes((0, c, i)) for p in range(lo, hi + 1)}
            # windows are clipped to the input inside a table: unit 0's stride-2 window starts at 0
            assert seen == {*range(max(2 * i - 1, 0), 2 * i + 2), i}, (i, c, r.table.boxes((0, c, i)))
        want = sorted({p for (lo, hi), in r.table.boxes((0, 0, i)) for p in range(max(lo, 0), min(hi, 31) + 1)})
        assert got == want, (i, got, want)
        assert r.window((0, 0, i)) == ((max(min(2 * i - 1, i), 0), 2 * i + 1),)


class _SE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Conv2d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        return y * torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))


def test_oracle_itself_on_hand_derived_cases() -> None:
    # conv k3 d2: unit u sees {u, u+2, u+4}; max-pool k2 s2 d2: unit i reads conv units 2i, 2i+2.
    m = nn.Sequential(nn.Conv1d(1, 1, 3, dilation=2), nn.ReLU(), nn.MaxPool1d(2, 2, dilation=2))
    assert Oracle(m, (1, 1, 32)).support((5,)) == ([10, 12, 14, 16],)
    # functional max-pool with ceil_mode and padding: same index map, same output size
    class P(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.max_pool1d(F.gelu(x), 3, 2, 1, ceil_mode=True)

    o = Oracle(P(), (1, 1, 8))
    assert o.out_size == (5,) and o.support((0,)) == ([0, 1],) and o.support((4,)) == ([7],)
    # SE gating: global through the gate, 3x3 once the gate is detached (local=True)
    assert Oracle(_SE(), (1, 1, 9, 9)).support((4, 4)) == (list(range(9)),) * 2
    assert Oracle(_SE(), (1, 1, 9, 9), local=True).support((4, 4)) == ([3, 4, 5],) * 2
