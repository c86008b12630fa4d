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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import networkx as nx

from rfscope.core.geometry import Geometry, transposed_taps
from rfscope.core.result import RF, _num
from rfscope.core.rf import holes
from rfscope.core.state import TensorRF

if TYPE_CHECKING:
    from rfscope.passes.interpret import NodeRecord

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


def _geometry_of(records: dict[str, NodeRecord], rec: NodeRecord) -> Geometry | None:
    """The node's geometry; for the values of a multi-output pool (ATen ``max_pool2d_with_indices``
    followed by ``getitem``), the pool's."""
    if rec.geometry is not None:
        return rec.geometry
    if rec.target == "operator.getitem" and rec.inputs:
        src = records.get(rec.inputs[0])
        if src is not None and isinstance(src.state, tuple):
            return src.geometry
    return None


def _layers(records: dict[str, NodeRecord]) -> list[NodeRecord]:
    return [r for r in records.values() if r.op not in ("output", "get_attr") and isinstance(r.state, TensorRF)]


def _exact_rf(rec: NodeRecord) -> RF | None:
    """The node's exact RF, or for a ``global`` one its local RF (SE blocks before a dilated conv)."""
    rf = rec.rf
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


def _gridding(records: dict[str, NodeRecord], graph: nx.DiGraph, input_size: tuple[int, ...]) -> list[DesignWarning]:
    with_holes: set[str] = set()  # every node whose units miss pixels of their bounding box
    holey: dict[str, dict[str, Any]] = {}  # the dilated layers among them
    for rec in _layers(records):
        rf = _exact_rf(rec)
        if rf is None or not _has_holes(rf):
            continue
        with_holes.add(rec.name)
        g = _geometry_of(records, rec)
        if g is None or g.transposed or all(d == 1 for d in g.dilation):
            continue
        holey[rec.name] = dict(rec=rec, geom=g, rf=rf)
    out: list[DesignWarning] = []
    # a chain: dilated layers joined by paths along which the holes persist
    for rec in records.values():  # multi-output nodes (ATen max-pool with indices) pass holes on
        if isinstance(rec.state, tuple) and any(
            isinstance(st, TensorRF) and _has_holes(RF.from_state(st, input_size)) for st in rec.state
        ):
            with_holes.add(rec.name)
    # a real graph, not a view: networkx's traversals take len(G), which a subgraph view counts anew
    sub: nx.DiGraph = graph.subgraph(with_holes).copy()
    order = {c: i for i, c in enumerate(records)}  # graph order, built once (not per layer)
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
        rates = [list(holey[c]["geom"].dilation) for c in chain]
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


def _checkerboard(records: dict[str, NodeRecord]) -> list[DesignWarning]:
    out: list[DesignWarning] = []
    for rec in _layers(records):
        g = rec.geometry
        if g is None or not g.transposed:
            continue
        taps = g.taps()
        uneven = [i for i, t in enumerate(taps) if len(set(t)) > 1]
        if not uneven:
            continue
        rf = rec.rf
        sizes: Sequence[Any] = rf.sizes if rf is not None else ()
        i = uneven[0]
        msg = (f"uneven overlap (checkerboard artifacts): kernel {g.kernel[i]} is not divisible by stride "
               f"{g.stride[i]} (taps per output phase along dim {i}: {', '.join(map(str, taps[i]))}"
               + (f"; RF size per phase: {', '.join(map(str, sizes[i]))}" if sizes and sizes[i] else "") + ")"
               + f"; use a kernel divisible by the stride (e.g. k={2 * g.stride[i]}, s={g.stride[i]}) "
               "or resize-then-conv")
        out.append(DesignWarning(
            "checkerboard", rec.name, rec.label, msg,
            {"kernel": list(g.kernel), "stride": list(g.stride), "taps_per_phase": [list(t) for t in taps],
             "phase_sizes": [list(s) if s is not None else None for s in sizes]},
        ))
    return out


def diagnose(records: dict[str, NodeRecord], graph: nx.DiGraph,
             input_size: tuple[int, ...]) -> tuple[list[DesignWarning], list[str]]:
    """All design warnings for an analysed model, in graph order, and the checks that failed.

    A pure pass over the interpreter's records (their geometry and RF) and ``graph`` (the
    records as a networkx graph).  A check that raises costs its warnings, not the analysis:
    its failure is returned as a message.

    Parameters
    ----------
    records : dict of str to NodeRecord
        Every node's record, in graph order.
    graph : networkx.DiGraph
        The same nodes with their edges (:func:`rfscope.passes.interpret.build_graph`).
    input_size : tuple of int
        The input's spatial extent.

    Returns
    -------
    (warnings, errors) : tuple of list of DesignWarning and list of str

    Examples
    --------
    >>> import torch.nn as nn, rfscope
    >>> net = nn.Sequential(nn.Conv2d(1, 1, 3, dilation=2), nn.Conv2d(1, 1, 3, dilation=2))
    >>> [w.id for w in rfscope.analyze(net, input_shape=(1, 1, 32, 32)).warnings]
    ['gridding']
    """
    found: list[DesignWarning] = []
    errors: list[str] = []
    # Both checks are about dilated or transposed layers; without one there is nothing to say
    # (and checking every node's RF for holes would cost a tenth of an analysis).
    if not any(r.geometry is not None and (r.geometry.transposed or any(d != 1 for d in r.geometry.dilation))
               for r in records.values()):
        return found, errors
    checks: tuple[tuple[str, Callable[[], list[DesignWarning]]], ...] = (
        ("gridding", lambda: _gridding(records, graph, input_size)),
        ("checkerboard", lambda: _checkerboard(records)),
    )
    for name, check in checks:
        try:
            found += check()
        except Exception as e:  # noqa: BLE001 - a failing check must not cost the user the analysis
            errors.append(f"design check {name!r} failed: {type(e).__name__}: {e}")
    order = {name: i for i, name in enumerate(records)}
    return sorted(found, key=lambda w: order.get(w.node, 0)), errors
