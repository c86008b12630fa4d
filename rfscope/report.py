"""The analysis result: a networkx graph plus per-node and per-module receptive fields."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import networkx as nx
import torch.fx as fx

from .analysis import NodeRecord
from .result import RF
from .state import TensorRF

__all__ = ["Report", "UnknownNameError"]


class UnknownNameError(KeyError):
    """``report.rf(name)`` was given neither a module path nor a node name."""

    def __str__(self) -> str:
        return str(self.args[0])


def _fmt(x: Fraction | int | None, none: str = "-") -> str:
    """``3``, ``1/2``, or ``none`` for a missing value (the table's ``-``; diagrams use ``?``)."""
    if x is None:
        return none
    if isinstance(x, Fraction) and x.denominator != 1:
        return f"{x.numerator}/{x.denominator}"
    return str(int(x))


def _collapse(parts: list[str]) -> str:
    """``["all", "all"]`` -> ``"all"``, ``["-", "-"]`` -> ``"-"``, else ``"3x3"``."""
    if parts and all(p == parts[0] for p in parts) and parts[0] in ("all", "-"):
        return parts[0]
    return "x".join(parts)


def _fmt_dims(xs: Any, sep: str = "x", none: str = "-") -> str:
    return sep.join(_fmt(x, none) for x in xs)


@dataclass
class Report:
    """What :func:`rfscope.analyze` returns.

    ``graph`` is a :class:`networkx.DiGraph` with one node per fx node and the
    attributes ``op``, ``target``, ``module``, ``module_class``, ``shape``, ``rf``
    (an :class:`~rfscope.result.RF` or ``None``) and ``record``.
    """

    input_shape: tuple[int, ...]
    records: dict[str, NodeRecord]
    modules: dict[str, str]
    graph: nx.DiGraph
    gm: fx.GraphModule
    unsupported: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    trace_path: str = "symbolic_trace"
    extras: dict[str, Any] = field(default_factory=dict)
    #: design warnings (:class:`rfscope.diagnostics.DesignWarning`): gridding, checkerboard
    warnings: list[Any] = field(default_factory=list)

    # ------------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, ...]:
        """Spatial extent of the input."""
        return tuple(self.input_shape[2:])

    def node_name(self, name: str) -> str:
        """Resolve a module path (its call's output) or fx node name to an fx node name."""
        if name in self.modules:
            return self.modules[name]
        if name in self.records:
            return name
        if name in ("output", ""):
            return self.output_node
        close = [m for m in self.modules if m.endswith(name) or name in m][:5]
        hint = f"; did you mean {', '.join(close)}?" if close else "; `rfscope analyze` lists the layers"
        raise UnknownNameError(f"{name!r} is neither a module path nor a node of the traced graph{hint}")

    @property
    def output_node(self) -> str:
        out = [r for r in self.records.values() if r.op == "output"][0]
        return out.inputs[0] if out.inputs else out.name

    def rf(self, name: str = "output", local: bool = False) -> RF:
        """Receptive field of a module's output (by module path) or of an fx node.

        ``local=True`` gives, for a ``global`` RF, the RF through spatially local
        paths only (``None``-free: raises if there is none).
        """
        rec = self.records[self.node_name(name)]
        st = rec.state
        if not isinstance(st, TensorRF):
            raise ValueError(f"{name!r} is not a tensor that depends on the input")
        r = self.node_rf(rec)
        assert r is not None
        if local and r.status == "global":
            if r.local is None:
                raise ValueError(f"{name!r} is global and has no spatially local path")
            return r.local
        return r

    def node_rf(self, rec: NodeRecord) -> RF | None:
        attrs = self.graph.nodes.get(rec.name)
        if attrs is not None and attrs.get("record") is rec:
            return attrs.get("rf")  # computed once by build_graph from this very record
        return RF.from_state(rec.state, self.input_size) if isinstance(rec.state, TensorRF) else None

    # -- counts and init findings (rfscope.counting, rfscope.initcheck) --
    @property
    def summary(self) -> Any:
        """Whole-model :class:`rfscope.counting.Summary` (params, buffers, MACs)."""
        return self.extras["counting"].summary

    @property
    def separable_blocks(self) -> list[Any]:
        """Depthwise-separable blocks (:class:`rfscope.counting.SeparableBlock`)."""
        return list(self.extras["counting"].separable_blocks)

    def module_params(self, path: str) -> Any:
        """:class:`rfscope.counting.ParamCount` of the submodule at ``path`` (``""``: the model)."""
        return self.extras["counting"].module_params(path)

    @property
    def findings(self) -> list[Any] | None:
        """Init-check findings (``analyze(..., check_init=True)``), else ``None``."""
        return self.extras.get("findings")

    # ------------------------------------------------------------------
    def layers(self) -> list[NodeRecord]:
        """Nodes worth a table row: calls whose output is a tensor that depends on the input."""
        return [
            r for r in self.records.values()
            if r.op not in ("output", "get_attr") and isinstance(r.state, TensorRF)
        ]

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready report (see README, 'JSON output')."""
        rf_dicts: dict[int, Any] = {}  # equal states share one RF (build_graph): serialise each once

        def rf_dict(rec: NodeRecord) -> Any:
            rf = self.node_rf(rec)
            if rf is None:
                return None
            if id(rf) not in rf_dicts:
                rf_dicts[id(rf)] = rf.to_dict()
            return rf_dicts[id(rf)]

        nodes = []
        for r in self.records.values():
            if r.op == "output":
                continue
            d: dict[str, Any] = {
                "name": r.name,
                "op": r.op,
                "target": r.target,
                "module": r.module,
                "shape": list(r.shape) if r.shape is not None else None,
                "rf": rf_dict(r),
            }
            for k, v in self.extras.get("node_fields", {}).get(r.name, {}).items():
                d[k] = v
            nodes.append(d)
        modules = {}
        for m, nname in self.modules.items():
            modules[m] = {"node": nname, "rf": rf_dict(self.records[nname])}
            if "counting" in self.extras and "@" not in m:
                try:
                    modules[m]["counts"] = self.module_params(m).to_dict()
                except KeyError:  # a call key that is not a submodule path
                    pass
        out: dict[str, Any] = {
            "input_shape": list(self.input_shape),
            "trace": self.trace_path,
            "nodes": nodes,
            "modules": modules,
            "output": self.output_node,
            "unsupported": self.unsupported,
            "errors": self.errors,
            "warnings": [w.to_dict() for w in self.warnings],
        }
        for k, v in self.extras.get("top_level", {}).items():
            out[k] = v
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_dot(self, depth: int | None = None, rankdir: str = "TB") -> str:
        """Graphviz DOT source of the analysed graph (see :func:`rfscope.export.to_dot`)."""
        from .export import to_dot

        return to_dot(self, depth=depth, rankdir=rankdir)

    def render(self, path: Any, depth: int | None = None, rankdir: str = "TB") -> Any:
        """Write a diagram (``.svg``/``.png``/``.pdf`` via ``dot``, or ``.dot``/``.gv``); see
        :func:`rfscope.export.render`."""
        from .export import render

        return render(self, path, depth=depth, rankdir=rankdir)

    def table(self, nodes: list[str] | None = None) -> str:
        """A plain-text per-layer table."""
        from .counting import fmt_count

        rows = [("layer", "op", "output shape", "params", "MACs", "RF size", "stride", "padding", "status")]
        recs = self.layers() if nodes is None else [self.records[self.node_name(n)] for n in nodes]
        for r in recs:
            rf = self.node_rf(r)
            if rf is None:
                continue
            if rf.status == "unknown":
                size = stride = pad = "?"
            else:  # a global dim shows "all"; its stride/padding are those of the local path, if any
                size = _collapse(["all" if d.exact is None else str(d.size) for d in rf.dims])
                stride = _collapse([_fmt(x) for x in rf.stride])
                pad = _collapse([_fmt(x) for x in rf.padding])
            status: str = rf.status
            if rf.status == "global" and rf.local is not None:
                status = f"global (local {_fmt_dims(rf.local.size)})"
            if rf.status == "unknown" and rf.reason:
                status = f"unknown: {rf.reason}"
            rows.append(
                (r.label, r.target, "x".join(map(str, r.shape or ())),
                 "shared" if r.shared and not r.params else fmt_count(r.params),
                 fmt_count(r.macs), size, stride, pad, status)
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        lines = []
        for i, row in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
        if "counting" in self.extras:
            sm = self.summary
            lines.append("")
            lines.append(f"params {sm.params_total:,} (trainable {sm.params_trainable:,}, frozen "
                         f"{sm.params_frozen:,}), buffers {sm.buffers:,}, MACs {sm.macs:,}")
        if self.unsupported:
            lines.append("")
            lines.append("unsupported (reported as unknown): " + ", ".join(self.unsupported))
        for e in self.errors:
            lines.append(f"error: {e}")
        if self.warnings:
            lines.append("")
            lines.extend(str(w) for w in self.warnings)
        if self.trace_path != "symbolic_trace":  # a fallback tracer was used (rfscope.fallback)
            why = self.extras.get("top_level", {}).get("trace_fallback")
            lines.append(f"trace: {self.trace_path}" + (f" ({why})" if why else ""))
        return "\n".join(lines)


def build_graph(records: dict[str, NodeRecord], input_size: tuple[int, ...]) -> nx.DiGraph:
    g = nx.DiGraph()
    memo: dict[TensorRF, RF] = {}  # equal states give equal (immutable) RFs; most nodes share a few
    for r in records.values():
        rf = _rf_memo(memo, r.state, input_size) if isinstance(r.state, TensorRF) else None
        g.add_node(
            r.name, op=r.op, target=r.target, module=r.module, module_class=r.module_class,
            shape=r.shape, rf=rf, record=r,
        )
        for a in r.inputs:
            g.add_edge(a, r.name)
    return g


def _rf_memo(memo: dict[TensorRF, RF], st: TensorRF, input_size: tuple[int, ...]) -> RF:
    try:
        rf = memo.get(st)
    except TypeError:  # a plugin put something unhashable in the state
        return RF.from_state(st, input_size)
    if rf is None:
        rf = memo[st] = RF.from_state(st, input_size)
    return rf
