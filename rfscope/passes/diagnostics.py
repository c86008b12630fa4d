"""Design warnings computed from an analysed graph (gridding, checkerboard).

Each check reads the exact per-axis RF that the analysis already computed and the
geometry of the layer that caused the problem, so a warning always names the layer
and carries the numbers that prove it (``evidence``):

* ``gridding``: a dilated conv (or dilated max-pool) whose output units see only a
  lattice of their bounding box (coverage < 1).  Rates sharing a factor (2,2,2)
  leave holes; hybrid rates (1,2,5) do not (Wang et al. 2018).  One warning per
  chain of holey dilated layers, at its deepest layer.
* ``checkerboard``: a transposed conv whose kernel is not divisible by its stride
  gives its output phases different numbers of taps (uneven overlap, the cause of
  checkerboard artifacts; Odena, Dumoulin, Olah 2016).  k=4/s=2 and
  resize-then-conv are even and not reported.

>>> import torch.nn as nn, rfscope
>>> net = nn.Sequential(*[nn.Conv2d(8, 8, 3, padding=2, dilation=2) for _ in range(3)])
>>> [w.id for w in rfscope.analyze(net, input_shape=(1, 8, 32, 32)).warnings]
['gridding']
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import networkx as nx
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from rfscope.core.result import RF, _num
from rfscope.core.rf import holes
from rfscope.core.state import TensorRF

if TYPE_CHECKING:
    from rfscope.report import Report

__all__ = ["DesignWarning", "diagnose", "transposed_taps"]

#: Holes listed in a warning's evidence per dimension (the count is always exact).
MAX_LISTED_HOLES = 256


@dataclass(frozen=True)
class DesignWarning:
    """One design finding: ``id`` (``"gridding"``, ``"checkerboard"``), the fx ``node``,
    its module path (``layer``), a one-line ``message`` and JSON-ready ``evidence``."""

    id: str
    node: str
    layer: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "node": self.node, "layer": self.layer, "message": self.message,
                "evidence": self.evidence}

    def __str__(self) -> str:
        return f"warning [{self.id}] {self.layer}: {self.message}"


def _tup(v: Any, n: int) -> tuple[int, ...] | None:
    if isinstance(v, int):
        return (v,) * n
    if isinstance(v, (tuple, list)) and all(isinstance(x, int) for x in v):
        t = tuple(v)
        return t * n if len(t) == 1 else t
    return None


_aten = torch.ops.aten
# Functional and ATen (torch.export / make_fx graphs) targets -> (kind, positions of stride, padding,
# dilation); the kernel comes from the weight (convs) or argument 1 (pools).
_FUNCS: dict[Any, tuple[str, int, int, int]] = {
    **{f: ("conv", 3, 4, 5) for f in (F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d,
                                      _aten.conv1d, _aten.conv2d, _aten.conv3d)},
    **{f: ("conv_transpose", 3, 4, 7) for f in (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
                                                torch.conv_transpose1d, torch.conv_transpose2d,
                                                torch.conv_transpose3d, _aten.conv_transpose1d,
                                                _aten.conv_transpose2d, _aten.conv_transpose3d)},
    **{f: ("convolution", 3, 4, 5) for f in (_aten.convolution, _aten._convolution)},
    **{f: ("pool", 2, 3, 4) for f in (F.max_pool1d, F.max_pool2d, F.max_pool3d, _aten.max_pool1d,
                                      _aten.max_pool2d, _aten.max_pool3d, _aten.max_pool2d_with_indices,
                                      _aten.max_pool3d_with_indices)},
}


def _arg(n: fx.Node, i: int, name: str, default: Any) -> Any:
    return n.args[i] if i < len(n.args) else n.kwargs.get(name, default)


def _geometry(n: fx.Node, gm: fx.GraphModule, modules: dict[str, nn.Module] | None = None) -> dict[str, Any] | None:
    """Kernel/stride/padding/dilation of a conv, transposed conv or dilated max-pool node."""
    if n.op == "call_module":
        m = modules.get(str(n.target)) if modules is not None else None
        if m is None:
            m = gm.get_submodule(str(n.target))
        if isinstance(m, nn.modules.conv._ConvNd):
            nd = len(m.kernel_size)
            pad = m.padding if isinstance(m.padding, tuple) else (0,) * nd
            return dict(kind="conv_transpose" if m.transposed else "conv", k=tuple(m.kernel_size),
                        s=tuple(m.stride), p=tuple(pad), d=tuple(m.dilation))
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
            nd = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}[type(m)]
            k, d = _tup(m.kernel_size, nd), _tup(m.dilation, nd)
            s = _tup(m.stride if m.stride is not None else m.kernel_size, nd)
            p = _tup(m.padding, nd)
            if k is None or d is None or s is None or p is None:
                return None
            return dict(kind="pool", k=k, s=s, p=p, d=d)
        return None
    if n.op != "call_function":
        return None
    if n.target is operator.getitem and n.args and isinstance(n.args[0], fx.Node):
        return _geometry(n.args[0], gm, modules)  # (values, indices) of a max-pool in ATen graphs
    target: Any = n.target
    spec = _FUNCS.get(target)
    if spec is None:
        spec = _FUNCS.get(getattr(target, "overloadpacket", None))
    if spec is None:
        return None
    kind, i_s, i_p, i_d = spec
    if kind == "pool":
        kernel = _arg(n, 1, "kernel_size", None)
        nd = len(kernel) if isinstance(kernel, (list, tuple)) else {F.max_pool1d: 1, F.max_pool2d: 2}.get(target, 3)
        k = _tup(kernel, nd)
        stride = _arg(n, i_s, "stride", None)
        s = _tup(stride, nd) if stride not in (None, [], ()) else k
    else:
        w = _arg(n, 1, "weight", None)
        val = w.meta.get("val") if isinstance(w, fx.Node) else None
        if val is None:
            return None
        nd = val.dim() - 2
        k = tuple(int(x) for x in val.shape[2:])
        s = _tup(_arg(n, i_s, "stride", 1), nd)
        if kind == "convolution":
            kind = "conv_transpose" if bool(_arg(n, 6, "transposed", False)) else "conv"
    p = _tup(_arg(n, i_p, "padding", 0), nd) or (0,) * nd
    d = _tup(_arg(n, i_d, "dilation", 1), nd)
    if k is None or s is None or d is None:
        return None
    return dict(kind=kind, k=k, s=s, p=p, d=d)


class _Geometries:
    """Each node's :func:`_geometry`, computed once and shared by the pre-scan and the checks.

    A lookup that raises is not remembered, so the check that needs it raises (and reports) too.
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules(remove_duplicate=False))
        self.nodes = {n.name: n for n in gm.graph.nodes}
        self.known: dict[str, dict[str, Any] | None] = {}

    def __call__(self, name: str) -> dict[str, Any] | None:
        if name not in self.known:
            n = self.nodes.get(name)
            self.known[name] = _geometry(n, self.gm, self.modules) if n is not None else None
        return self.known[name]


def transposed_taps(k: int, s: int, p: int = 0, d: int = 1) -> tuple[int, ...]:
    """Number of kernel taps that reach each output phase of a 1-D transposed conv.

    Output ``o`` receives tap ``t`` from input ``(o + p - t*d) / s`` when that is an integer.

    >>> transposed_taps(3, 2), transposed_taps(4, 2), transposed_taps(2, 2)
    ((2, 1), (2, 2), (1, 1))
    """
    return tuple(sum(1 for t in range(k) if (o + p - t * d) % s == 0) for o in range(s))


def _exact_rf(report: Report, rec: Any) -> RF | None:
    """The node's exact RF, or for a ``global`` one its local RF (SE blocks before a dilated conv)."""
    rf = report.node_rf(rec)
    if rf is None or rf.status == "unknown":
        return None
    if rf.status == "global":
        return rf.local if rf.local is not None and rf.local.status == "exact" else None
    return rf


def _has_holes(rf: RF) -> bool:
    if rf.status == "global":
        if rf.local is None:
            return False
        rf = rf.local
    return rf.status == "exact" and any(c is not None and c < 1 for c in rf.coverage)


def _gridding(report: Report, geometry: _Geometries) -> list[DesignWarning]:
    with_holes: set[str] = set()  # every node whose units miss pixels of their bounding box
    holey: dict[str, dict[str, Any]] = {}  # the dilated layers among them
    for rec in report.layers():
        rf = _exact_rf(report, rec)
        if rf is None or not _has_holes(rf):
            continue
        with_holes.add(rec.name)
        g = geometry(rec.name)
        if g is None or g["kind"] == "conv_transpose" or all(d == 1 for d in g["d"]):
            continue
        holey[rec.name] = dict(rec=rec, geom=g, rf=rf)
    out: list[DesignWarning] = []
    # a chain: dilated layers joined by paths along which the holes persist
    for rec in report.records.values():  # multi-output nodes (ATen max-pool with indices) pass holes on
        if isinstance(rec.state, tuple) and any(
            isinstance(st, TensorRF) and _has_holes(RF.from_state(st, report.input_size)) for st in rec.state
        ):
            with_holes.add(rec.name)
    # a real graph, not a view: networkx's traversals take len(G), which a subgraph view counts anew
    sub: nx.DiGraph = report.graph.subgraph(with_holes).copy()
    order = {c: i for i, c in enumerate(report.records)}  # graph order, built once (not per layer)
    for name, info in holey.items():
        if nx.descendants(sub, name) & holey.keys():
            continue  # reported with the deepest layer of its chain
        before = nx.ancestors(sub, name) & holey.keys()
        chain = sorted(before, key=order.__getitem__) + [name]
        rec, rf = info["rec"], info["rf"]
        dims_holes: list[list[int]] = []
        n_holes: list[int] = []
        seen: list[tuple[int, int]] = []  # (pixels seen, bounding box) of the worst phase, per dim
        for ax in rf.dims:
            a = ax.exact
            if a is None:
                dims_holes.append([])
                n_holes.append(0)
                seen.append((0, 0))
                continue
            phases = [i for i in range(a.period) if not a.windows[i].empty]
            ph = min(phases, key=lambda i: a.windows[i].count / a.windows[i].size)
            h = holes(a, ph)
            n_holes.append(len(h))
            dims_holes.append(h[:MAX_LISTED_HOLES])
            seen.append((a.windows[ph].count, a.windows[ph].size))
        rates = [list(holey[c]["geom"]["d"]) for c in chain]
        layers = [holey[c]["rec"].label for c in chain]
        cov_json = [_num(c) for c in rf.coverage]
        i0 = next((i for i, c in enumerate(n_holes) if c), 0)
        first = dims_holes[i0][:8]
        more = "..." if n_holes[i0] > len(first) else ""
        msg = (f"dilated convs leave holes (gridding): units see {seen[i0][0]} of the {seen[i0][1]} pixels of "
               f"their RF along spatial dim {i0} (holes at offsets {', '.join(map(str, first))}{more}); "
               f"dilation rates {','.join(str(r[i0]) for r in rates)} skip pixels no earlier layer fills: use "
               "rates without a common factor such as 1,2,5 (rfscope.design.dilation_schedule)")
        out.append(DesignWarning(
            "gridding", name, rec.label, msg,
            {"rf_size": list(rf.size), "coverage": cov_json, "holes": dims_holes, "n_holes": n_holes,
             "chain": layers, "dilations": rates},
        ))
    return out


def _checkerboard(report: Report, geometry: _Geometries) -> list[DesignWarning]:
    out: list[DesignWarning] = []
    for rec in report.layers():
        g = geometry(rec.name)
        if g is None or g["kind"] != "conv_transpose":
            continue
        taps = [transposed_taps(k, s, p, d) for k, s, p, d in zip(g["k"], g["s"], g["p"], g["d"], strict=False)]
        uneven = [i for i, t in enumerate(taps) if len(set(t)) > 1]
        if not uneven:
            continue
        rf = report.node_rf(rec)
        sizes: Sequence[Any] = rf.sizes if rf is not None else ()
        i = uneven[0]
        msg = (f"uneven overlap (checkerboard artifacts): kernel {g['k'][i]} is not divisible by stride "
               f"{g['s'][i]} (taps per output phase along dim {i}: {', '.join(map(str, taps[i]))}"
               + (f"; RF size per phase: {', '.join(map(str, sizes[i]))}" if sizes and sizes[i] else "") + ")"
               + f"; use a kernel divisible by the stride (e.g. k={2 * g['s'][i]}, s={g['s'][i]}) "
               "or resize-then-conv")
        out.append(DesignWarning(
            "checkerboard", rec.name, rec.label, msg,
            {"kernel": list(g["k"]), "stride": list(g["s"]), "taps_per_phase": [list(t) for t in taps],
             "phase_sizes": [list(s) if s is not None else None for s in sizes]},
        ))
    return out


def _relevant(n: fx.Node, geometry: _Geometries) -> bool:
    if n.op not in ("call_module", "call_function"):
        return False
    try:
        g = geometry(n.name)
    except Exception:  # noqa: BLE001 - let the checks themselves report failures
        return True
    return g is not None and (g["kind"] == "conv_transpose" or any(d != 1 for d in g["d"]))


def diagnose(report: Report) -> list[DesignWarning]:
    """All design warnings for an analysed model, in graph order."""
    geometry = _Geometries(report.gm)
    found: list[DesignWarning] = []
    # Both checks are about dilated or transposed layers; without one there is nothing to say
    # (and checking every node's RF for holes would cost a tenth of an analysis).
    if not any(_relevant(n, geometry) for n in geometry.nodes.values()):
        return found
    for name, check in (("gridding", _gridding), ("checkerboard", _checkerboard)):
        try:
            found += check(report, geometry)
        except Exception as e:  # noqa: BLE001 - a failing check must not cost the user the analysis
            report.errors.append(f"design check {name!r} failed: {type(e).__name__}: {e}")
    order = {name: i for i, name in enumerate(report.records)}
    return sorted(found, key=lambda w: order.get(w.node, 0))
