"""The analysis result: a networkx graph plus per-node and per-module receptive fields."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import networkx as nx
import torch.fx as fx

from rfscope.core.errors import RfscopeError
from rfscope.core.result import RF, _collapse, _fmt, _fmt_dims
from rfscope.core.state import TensorRF
from rfscope.passes.counts import Counts, ParamCount, SeparableBlock, Summary
from rfscope.passes.diagnostics import DesignWarning
from rfscope.passes.interpret import NodeRecord, record_fields

if TYPE_CHECKING:
    from rfscope.passes.initcheck import Finding

__all__ = ["Report", "UnknownNameError", "OutputLeaf"]


class UnknownNameError(RfscopeError, KeyError):
    """``report.rf(name)`` was given neither a module path nor a node name."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class OutputLeaf:
    """One leaf of what the model returns.

    ``path`` indexes the return value like Python would: ``""`` (a bare tensor), ``"[0]"``,
    ``"['logits']"``, ``".logits"`` (namedtuple or dataclass field), nested as ``"[1]['z'][0]"``.
    ``node`` is the fx node that computed it (``None`` for a constant); ``state`` its state.
    """

    path: str
    node: str | None
    state: Any
    shape: tuple[int, ...] | None


@dataclass
class Report:
    """What :func:`rfscope.analyze` returns: the records of every node and what the passes found.

    ``graph`` is a :class:`networkx.DiGraph` with one node per fx node and the
    attributes ``op``, ``target``, ``module``, ``module_class``, ``shape``, ``rf``
    (an :class:`~rfscope.core.result.RF` or ``None``) and ``record``.  ``counts`` are the
    parameter and MAC counts, ``warnings`` the design warnings (gridding, checkerboard),
    ``findings`` the initialisation check's findings (``None`` unless it ran).
    """

    input_shape: tuple[int, ...]
    records: dict[str, NodeRecord]
    modules: dict[str, str]
    graph: nx.DiGraph
    gm: fx.GraphModule
    counts: Counts
    unsupported: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    trace_path: str = "symbolic_trace"
    #: why the symbolic tracer was not used (``None`` when it was)
    trace_fallback: str | None = None
    warnings: list[DesignWarning] = field(default_factory=list)
    findings: list[Finding] | None = None

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
        """The node of the first output leaf that is a tensor (see :meth:`output_leaves`)."""
        for leaf in self.output_leaves():
            if leaf.node is not None and self.records[leaf.node].state is leaf.state \
                    and isinstance(leaf.state, TensorRF):
                return leaf.node
        out = [r for r in self.records.values() if r.op == "output"][0]
        return out.inputs[0] if out.inputs else out.name

    def output_leaves(self) -> list[OutputLeaf]:
        """Every leaf of the model's return value (lists, tuples, dicts, namedtuples, dataclasses)."""
        out_node = next((n for n in self.gm.graph.nodes if n.op == "output"), None)
        if out_node is None or not out_node.args:
            return []
        value = out_node.args[0]
        spec = getattr(self.gm, "_out_spec", None)  # torch.export flattens the return value
        if spec is not None:
            from torch.utils import _pytree

            flat = list(value) if isinstance(value, (tuple, list)) else [value]
            if getattr(spec, "num_leaves", None) == len(flat):
                value = _pytree.tree_unflatten(flat, spec)
        leaves: list[OutputLeaf] = []
        self._walk_output(value, "", leaves)
        return leaves

    def _walk_output(self, x: Any, path: str, leaves: list[OutputLeaf]) -> None:
        if isinstance(x, fx.Node):
            fields = record_fields(x.target, x.args, dict(x.kwargs)) if x.op == "call_function" else None
            if fields is not None:  # a namedtuple/dataclass the graph builds: its fields are the leaves
                for k, v in fields:
                    self._walk_output(v, f"{path}.{k}", leaves)
                return
            rec = self.records.get(x.name)
            if rec is None:
                leaves.append(OutputLeaf(path, x.name, None, None))
                return
            self._node_leaves(x.name, rec.state, x.meta.get("val"), path, leaves)
        elif isinstance(x, tuple) and hasattr(x, "_fields"):
            for k, v in zip(x._fields, x, strict=False):
                self._walk_output(v, f"{path}.{k}", leaves)
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            for f in dataclasses.fields(x):
                self._walk_output(getattr(x, f.name), f"{path}.{f.name}", leaves)
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                self._walk_output(v, f"{path}[{i}]", leaves)
        elif isinstance(x, dict):
            for k, v in x.items():
                self._walk_output(v, f"{path}[{k!r}]", leaves)
        else:
            leaves.append(OutputLeaf(path, None, None, None))

    def _node_leaves(self, name: str, st: Any, val: Any, path: str, leaves: list[OutputLeaf]) -> None:
        """Leaves of a node whose value is a tuple (a module returning several tensors)."""
        if isinstance(st, tuple) and isinstance(val, (list, tuple)) and len(st) == len(val):
            names = getattr(val, "_fields", None)
            for i, (s, v) in enumerate(zip(st, val, strict=False)):
                self._node_leaves(name, s, v, f"{path}.{names[i]}" if names else f"{path}[{i}]", leaves)
            return
        shape = tuple(int(d) for d in val.shape) if hasattr(val, "shape") else None
        leaves.append(OutputLeaf(path, name, st, shape))

    def rf(self, name: str = "output", local: bool = False) -> RF:
        """Receptive field of a module's output (by module path) or of an fx node.

        ``"output"`` is the model's return value, or its first tensor leaf when it returns
        several; ``"output"`` plus a leaf's path (``"output[1]"``, ``"output['logits']"``,
        ``"output.feat"``; see :meth:`output_leaves`) names one leaf.
        ``local=True`` gives, for a ``global`` RF, the RF through spatially local
        paths only (``None``-free: raises if there is none).

        Raises
        ------
        UnknownNameError
            ``name`` is neither a module path nor a node (the message lists close matches).
        ValueError
            The node is not a tensor that depends on the input, or ``local=True`` and no
            spatially local path exists.
        """
        leaf = self._output_leaf(name)
        if leaf is not None:
            r = self._leaf_rf(leaf)
        else:
            rec = self.records[self.node_name(name)]
            r = self.node_rf(rec) if isinstance(rec.state, TensorRF) else None
        if r is None:
            raise ValueError(f"{name!r} is not a tensor that depends on the input")
        if local and r.status == "global":
            if r.local is None:
                raise ValueError(f"{name!r} is global and has no spatially local path")
            return r.local
        return r

    def _output_leaf(self, name: str) -> OutputLeaf | None:
        """The output leaf ``name`` means (``"output"``, ``"output[0]"`` ...), if any."""
        if name in self.modules or not (name == "output" or name.startswith(("output[", "output."))):
            return None
        leaves = self.output_leaves()
        if name == "output":
            return next((lf for lf in leaves if isinstance(lf.state, TensorRF)), None)
        leaf = next((lf for lf in leaves if "output" + lf.path == name), None)
        if leaf is None:
            paths = ", ".join("output" + lf.path for lf in leaves)
            raise UnknownNameError(f"{name!r} is not an output of the model; its outputs are {paths}")
        return leaf

    def _leaf_rf(self, leaf: OutputLeaf) -> RF | None:
        if leaf.node is not None and leaf.state is self.records[leaf.node].state:
            return self.node_rf(self.records[leaf.node])
        return RF.from_state(leaf.state, self.input_size) if isinstance(leaf.state, TensorRF) else None

    def node_rf(self, rec: NodeRecord) -> RF | None:
        """The RF of a record's output (written once by the interpreter pass)."""
        return rec.rf

    # -- counts (rfscope.passes.counts) --
    @property
    def summary(self) -> Summary:
        """Whole-model totals (params, buffers, MACs)."""
        return self.counts.summary

    @property
    def separable_blocks(self) -> list[SeparableBlock]:
        """Depthwise-separable blocks."""
        return list(self.counts.separable_blocks)

    def module_params(self, path: str) -> ParamCount:
        """Counts of the submodule at ``path`` (``""``: the model).

        Raises
        ------
        KeyError
            ``path`` is not a submodule path of the model.
        """
        return self.counts.module_params(path)

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

        def leaf_rf(lf: OutputLeaf) -> Any:
            if lf.node is not None and lf.state is self.records[lf.node].state:
                return rf_dict(self.records[lf.node])
            rf = self._leaf_rf(lf)
            return None if rf is None else rf.to_dict()

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
            d.update(self.counts.node(r.name).to_dict())
            d["macs"] = r.macs
            d["conv_kind"] = r.conv_kind
            nodes.append(d)
        modules = {}
        for m, nname in self.modules.items():
            modules[m] = {"node": nname, "rf": rf_dict(self.records[nname])}
            if "@" not in m:
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
            "outputs": [
                {"path": lf.path, "node": lf.node, "shape": list(lf.shape) if lf.shape is not None else None,
                 "rf": leaf_rf(lf)}
                for lf in self.output_leaves()
            ],
            "unsupported": self.unsupported,
            "errors": self.errors,
            "warnings": [w.to_dict() for w in self.warnings],
            "summary": self.counts.summary.to_dict(),
            "separable_blocks": [b.to_dict() for b in self.counts.separable_blocks],
        }
        if self.trace_fallback is not None:
            out["trace_fallback"] = self.trace_fallback
        if self.findings is not None:
            out["findings"] = [f.to_dict() for f in self.findings]
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_dot(self, depth: int | None = None, rankdir: str = "TB") -> str:
        """Graphviz DOT source of the analysed graph (see :func:`rfscope.export.to_dot`)."""
        from rfscope.export import to_dot

        return to_dot(self, depth=depth, rankdir=rankdir)

    def render(self, path: Any, depth: int | None = None, rankdir: str = "TB") -> Any:
        """Write a diagram (``.svg``/``.png``/``.pdf`` via ``dot``, or ``.dot``/``.gv``); see
        :func:`rfscope.export.render`."""
        from rfscope.export import render

        return render(self, path, depth=depth, rankdir=rankdir)

    def table(self, nodes: list[str] | None = None) -> str:
        """A plain-text per-layer table."""
        from rfscope.passes.counts import fmt_count

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
                status = ("global (local unknown)" if rf.local.status == "unknown"
                          else f"global (local {_fmt_dims(rf.local.size)})")
            if rf.status == "unknown" and rf.reason:
                status = f"unknown: {rf.reason}"
            rows.append(
                (r.label, r.target, "x".join(map(str, r.shape or ())),
                 "shared" if self.counts.node(r.name).shared and not self.counts.node(r.name).params
                 else fmt_count(self.counts.node(r.name).params),
                 fmt_count(r.macs), size, stride, pad, status)
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        lines = []
        for i, row in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
        sm = self.summary
        if True:  # always: every analysis is counted
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
        if self.trace_path != "symbolic_trace":  # a fallback tracer was used (rfscope.trace.strategy)
            why = self.trace_fallback
            lines.append(f"trace: {self.trace_path}" + (f" ({why})" if why else ""))
        return "\n".join(lines)
