"""The analysis result: a networkx graph plus per-node and per-module receptive fields."""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import networkx as nx
import torch.fx as fx

from rfscope.core.errors import RfscopeError
from rfscope.core.result import RF, _collapse, _fmt, _fmt_dims
from rfscope.core.state import TensorRF
from rfscope.passes.counts import Counts, ParamCount, SeparableBlock, Summary
from rfscope.passes.diagnostics import DesignWarning
from rfscope.passes.interpret import NodeRecord, has_rf, record_fields

if TYPE_CHECKING:
    from rfscope.passes.initcheck import Finding

__all__ = ["Report", "UnknownNameError", "OutputLeaf", "TableRow", "COLUMNS", "DEFAULT_COLUMNS", "FORMATS",
           "parse_columns", "SCHEMA_VERSION", "versions"]

#: ``schema_version`` of :meth:`Report.to_dict` (``docs/report.schema.json``): bumped when a field
#: changes meaning or is removed, not when one is added.
SCHEMA_VERSION = "1"


def versions() -> dict[str, str]:
    """The ``versions`` field of the JSON files: ``rfscope``, ``torch`` and ``python``."""
    import platform

    import torch

    from rfscope._version import __version__

    return {"rfscope": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def _rf_text(rf: RF) -> str:
    """``427x427``, ``global``, ``global (local 427x427)`` or ``unknown``: an RF in a few characters."""
    if rf.status == "unknown":
        return "unknown"
    if rf.status == "global":
        if rf.local is None:
            return "global"
        local = "unknown" if rf.local.status == "unknown" else _fmt_dims(rf.local.size)
        return f"global (local {local})"
    if rf.table is not None:  # windows differ by position (token layouts): the largest one
        return f"<={_fmt_dims(rf.size)} per position"
    return _fmt_dims(rf.size)


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


#: the table's columns: name -> header (``--columns`` takes the names, or the headers)
COLUMNS: dict[str, str] = {
    "layer": "layer", "op": "op", "shape": "output shape", "params": "params", "macs": "MACs",
    "rf": "RF size", "stride": "stride", "padding": "padding", "status": "status", "node": "node",
}
#: the columns :meth:`Report.table` shows by default
DEFAULT_COLUMNS: tuple[str, ...] = ("layer", "op", "shape", "params", "macs", "rf", "stride", "padding", "status")
#: :meth:`Report.table`'s formats
FORMATS: tuple[str, ...] = ("table", "csv", "markdown", "html")
_RIGHT = frozenset({"shape", "params", "macs", "rf", "stride", "padding"})
_ALIASES = {"output shape": "shape", "rf size": "rf", "size": "rf", "label": "layer", "name": "layer"}


def parse_columns(columns: Sequence[str] | str | None) -> tuple[str, ...]:
    """Column names (or headers, any case; a comma-separated string too) as :data:`COLUMNS` names.

    >>> parse_columns("layer, params,MACs,RF size")
    ('layer', 'params', 'macs', 'rf')
    """
    if columns is None:
        return DEFAULT_COLUMNS
    if isinstance(columns, str):
        columns = columns.split(",")
    out: list[str] = []
    for c in columns:
        key = " ".join(c.strip().lower().split())
        key = _ALIASES.get(key, key)
        if key not in COLUMNS:
            raise ValueError(f"unknown column {c.strip()!r}; the columns are {', '.join(COLUMNS)}")
        out.append(key)
    if not out:
        raise ValueError(f"no columns given; the columns are {', '.join(COLUMNS)}")
    return tuple(out)


@dataclass(frozen=True)
class TableRow:
    """One row of :meth:`Report.table`: a node, or a module call (``--depth``, ``--node PATH``).

    ``label`` is the module call or ``module/node``; ``node`` the fx node of its output;
    ``params`` the parameters counted there (a module call: its module's, subtree included);
    ``shared`` that it uses parameters counted at an earlier row; ``macs`` ``None`` when none
    are known; ``rf`` ``None`` when no RF applies (``tensor``: it is still a tensor: ``n/a``).
    """

    label: str
    node: str
    op: str
    shape: tuple[int, ...] | None
    params: int | None
    shared: bool
    macs: int | None
    rf: RF | None
    tensor: bool = True


def _first_leaf(st: Any) -> TensorRF | None:
    """The first tensor state in a tuple/list/dict state that depends on the input, if any."""
    if isinstance(st, TensorRF):
        return st
    if isinstance(st, (tuple, list)):
        for x in st:
            got = _first_leaf(x)
            if got is not None:
                return got
    if isinstance(st, dict):
        return _first_leaf(tuple(st.values()))
    return None


def _leaf_path(st: Any) -> list[int] | None:
    """Indices to :func:`_first_leaf` (``[]``: ``st`` itself)."""
    if isinstance(st, TensorRF):
        return []
    items = list(st.values()) if isinstance(st, dict) else list(st) if isinstance(st, (tuple, list)) else []
    for i, x in enumerate(items):
        sub = _leaf_path(x)
        if sub is not None:
            return [i, *sub]
    return None


def _cell(row: TableRow, col: str) -> str:
    """A table cell: a global RF shows its local RF, marked (``7x7 (local)``); unknown is ``?``."""
    from rfscope.passes.counts import fmt_count

    rf = row.rf
    if col == "layer":
        return row.label
    if col == "node":
        return row.node
    if col == "op":
        return row.op
    if col == "shape":
        return "x".join(map(str, row.shape)) if row.shape is not None else "-"
    if col == "params":
        return "shared" if row.shared and not row.params else fmt_count(row.params)
    if col == "macs":
        return fmt_count(row.macs)
    if rf is None:
        return "n/a" if row.tensor else "-"
    if col == "status":
        if rf.status == "global" and rf.local is not None and rf.local.status == "unknown":
            return "global (local unknown)"
        if rf.status == "unknown" and rf.reason:
            return f"unknown: {rf.reason}"
        if rf.table is not None and rf.status == "exact":
            return "exact (per position)"
        return rf.status
    if rf.status == "unknown":
        return "?"
    if col == "rf":
        if rf.status == "global" and rf.local is not None and rf.local.status != "unknown":
            return f"{_fmt_dims(rf.local.size)} (local)"
        if rf.table is not None and rf.status == "exact":  # token layouts: the largest window
            return "<=" + "x".join(str(d.size) for d in rf.dims)
        return _collapse(["all" if d.exact is None else str(d.size) for d in rf.dims])
    # a global dim's stride/padding are those of the local path, if any
    return _collapse([_fmt(x) for x in (rf.stride if col == "stride" else rf.padding)])


def _csv_cell(row: TableRow, col: str) -> str:
    """A CSV cell: :func:`_cell`, but params and MACs exact (empty when none)."""
    if col == "params" and not (row.shared and not row.params):
        return "" if row.params is None else str(row.params)
    if col == "macs":
        return "" if row.macs is None else str(row.macs)
    return _cell(row, col)


#: the narrowest a shortened text column gets
_MIN_WIDTH = {"status": 8, "op": 10, "layer": 16, "node": 12}  # status: "unknown…" stays readable


def _fit(widths: list[int], cols: Sequence[str], width: int) -> list[int]:
    """Column widths that fit ``width`` (two spaces between columns): status shrinks first, then op,
    then node, then layer; numbers never."""
    widths = list(widths)
    for name in ("status", "op", "node", "layer"):
        over = sum(widths) + 2 * (len(widths) - 1) - width
        if over <= 0:
            break
        for i, c in enumerate(cols):
            if c == name:
                low = min(widths[i], max(_MIN_WIDTH[name], len(COLUMNS[name])))
                cut = min(over, widths[i] - low)
                widths[i] -= cut
                over -= cut
    return widths


def _shorten(text: str, w: int, col: str) -> str:
    """``text`` in ``w`` characters: a label abbreviates its outer modules (``e.l.encoder_layer_0.mlp.0``),
    then keeps its end (``…layer_0.mlp.0``); other text keeps its start (``unknow…``)."""
    if len(text) <= w or col in _RIGHT:
        return text
    if col == "layer":  # outer module names first shrink to their initials: e.l.encoder_layer_0.mlp.0
        parts = text.split(".")
        for i in range(len(parts) - 1):
            if len(".".join(parts)) <= w:
                break
            if not any(ch.isdigit() for ch in parts[i]):  # an index says which block: kept
                parts[i] = parts[i][:1]
        text = ".".join(parts)
        if len(text) <= w:
            return text
    if col in ("layer", "node"):
        return "…" + text[len(text) - w + 1:]
    return text[:w - 1] + "…"


def _pad(text: str, w: int, right: bool) -> str:
    return text.rjust(w) if right else text.ljust(w)


#: a table cell that is a number (``12.3K``, ``3x3``, ``1/2``, ``851 (local)``) or stands for none
_NUMERIC = re.compile(r"^(?:[\d.,/x]+[KMGT]?(?: \([a-z ]+\))?|[-?]|all|shared|n/a)$")


def _html_table(text: str) -> str:
    """:meth:`Report.table`'s text as HTML: its header and rows as a ``<table>`` (columns where
    every cell is a number right-aligned), the notes after the first blank line as ``<pre>``.

    Columns are read from the dashed rule under the header, so the HTML is the text table's.
    """
    lines = text.split("\n")
    if len(lines) < 2 or not set(lines[1]) <= {"-", " "}:
        return f"<pre>{html.escape(text)}</pre>"
    starts = [m.start() for m in re.finditer(r"-+", lines[1])]

    def cells(line: str) -> list[str]:
        return [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=False)]

    body: list[list[str]] = []
    rest = 2
    for rest in range(2, len(lines) + 1):
        if rest == len(lines) or not lines[rest].strip():
            break
        body.append(cells(lines[rest]))
    right = [bool(body) and all(_NUMERIC.match(row[i]) for row in body) and any(any(ch.isdigit() for ch in row[i])
                                                                               for row in body)
             for i in range(len(starts))]

    def td(tag: str, cell: str, i: int) -> str:
        style = ' style="text-align: right"' if right[i] else ' style="text-align: left"'
        return f"<{tag}{style}>{html.escape(cell)}</{tag}>"

    out = ['<table class="rfscope-table">', "<thead><tr>"
           + "".join(td("th", c, i) for i, c in enumerate(cells(lines[0]))) + "</tr></thead>", "<tbody>"]
    out += ["<tr>" + "".join(td("td", c, i) for i, c in enumerate(row)) + "</tr>" for row in body]
    out.append("</tbody></table>")
    notes = "\n".join(lines[rest:]).strip("\n")
    if notes:
        out.append(f"<pre>{html.escape(notes)}</pre>")
    return "\n".join(out)


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
    #: why the symbolic tracer was not used, and/or why shapes were propagated on real tensors (a
    #: data-dependent op: ``rfscope.trace.datadep``); ``None`` when neither
    trace_fallback: str | None = None
    warnings: list[DesignWarning] = field(default_factory=list)
    findings: list[Finding] | None = None
    #: the analysed model's class name (``repr`` shows it; ``None``: the graph module's)
    model_class: str | None = None
    #: the layout of the input ``input_shape`` describes (``"NCHW"``, ``"NT"``, ``"ND"``; ``None``: not known)
    layout: str | None = None
    #: the dims of ``input_shape`` that are the input axes of every RF, in order (``None``: ``input_shape[2:]``)
    input_axes: tuple[int, ...] | None = None

    # ------------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, ...]:
        """Extents of the input's positional axes, in its layout's order (``()``: none, layout ``ND``)."""
        if self.input_axes is None:
            return tuple(self.input_shape[2:])
        return tuple(self.input_shape[d] for d in self.input_axes)

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
            r = self.call_rf(rec)  # a tuple or dict (attention, RNNs): its first tensor's RF
        if r is None:
            st = leaf.state if leaf is not None else self.records[self.node_name(name)].state
            if isinstance(st, TensorRF) or (leaf is None and _first_leaf(st) is not None):
                why = (f"the input has no positional axis (layout {self.layout})" if not self.input_size
                       else "it does not depend on the position along any input axis")
                raise ValueError(f"{name!r} has no receptive field (n/a): {why}")
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
        if not isinstance(leaf.state, TensorRF) or not has_rf(leaf.state, self.input_size):
            return None
        return RF.from_state(leaf.state, self.input_size)

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
            rec = self.records[nname]
            if isinstance(rec.state, TensorRF):
                modules[m] = {"node": nname, "rf": rf_dict(rec)}
            else:  # a call returning a tuple or dict: its first tensor's RF
                call_rf = self.call_rf(rec)
                modules[m] = {"node": nname, "rf": None if call_rf is None else call_rf.to_dict()}
            if "@" not in m:
                try:
                    modules[m]["counts"] = self.module_params(m).to_dict()
                except KeyError:  # a call key that is not a submodule path
                    pass
        out: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "versions": versions(),
            "input_shape": list(self.input_shape),
            "layout": self.layout,
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

    # -- notebooks and data frames ------------------------------------
    def __repr__(self) -> str:
        """One line: model class, input shape, nodes, parameters, MACs and the output's RF.

        >>> import torch.nn as nn, rfscope
        >>> rfscope.analyze(nn.Conv2d(3, 8, 3, stride=2), input_shape=(1, 3, 32, 32))
        <rfscope.Report Conv2d input=1x3x32x32 nodes=1 params=224 MACs=48.6K output: 3x3>
        """
        try:
            return self._describe()
        except Exception as e:  # a repr never raises (a notebook would show a traceback instead)
            return f"<rfscope.Report ({type(e).__name__} while describing it)>"

    def _describe(self) -> str:
        from rfscope.passes.counts import fmt_count

        name = self.model_class or type(self.gm).__name__
        nodes = sum(1 for r in self.records.values() if r.op not in ("placeholder", "get_attr", "output"))
        sm = self.summary
        macs = fmt_count(sm.macs) + ("+" if sm.macs_unknown else "")  # a lower bound
        try:
            out = _rf_text(self.rf("output"))
        except (ValueError, KeyError, IndexError):  # no RF applies, or nothing depends on the input
            out = "n/a"
        return (f"<rfscope.Report {name} input={'x'.join(map(str, self.input_shape))} nodes={nodes} "
                f"params={fmt_count(sm.params_total)} MACs={macs} output: {out}>")

    def _repr_html_(self) -> str:
        """The table (:meth:`table`) as an HTML table, numbers right-aligned, and its notes below."""
        try:
            return _html_table(self.table())
        except Exception:  # never raise in a notebook's display
            return f"<pre>{html.escape(repr(self))}</pre>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str] | None:
        """The diagram (SVG, collapsed to :meth:`_notebook_depth`) above the table, for notebooks.

        ``image/svg+xml`` is the diagram alone, ``text/html`` the diagram and the table.  ``None``
        (the notebook then shows :meth:`_repr_html_`, the table) when no renderer is found
        (:func:`rfscope.export.find_renderer`) or it fails.
        """
        try:
            svg = self._diagram_svg()
            if svg is None:
                return None
            return {"image/svg+xml": svg,
                    "text/html": f'<div class="rfscope-report"><div>{svg}</div>{self._repr_html_()}</div>'}
        except Exception:  # never raise in a notebook's display
            return None

    def _diagram_svg(self, timeout: float = 30.0) -> str | None:
        """The diagram as SVG text (``<svg ...>...</svg>``), or ``None`` without a working renderer."""
        import subprocess

        from rfscope.export.dot import find_renderer

        try:
            renderer = find_renderer()
        except Exception:  # RFSCOPE_DOT names nothing runnable
            return None
        if renderer is None:
            return None
        src = self.to_dot(depth=self._notebook_depth())
        try:
            proc = subprocess.run([renderer.path, "-Tsvg"], input=src.encode("utf-8"), capture_output=True,
                                  timeout=timeout)
        except (OSError, subprocess.SubprocessError):
            return None
        text = proc.stdout.decode("utf-8", "replace")
        start, end = text.find("<svg"), text.rfind("</svg>")
        if proc.returncode != 0 or start < 0 or end < 0:
            return None
        return text[start:end + len("</svg>")]

    def _notebook_depth(self, max_boxes: int = 40) -> int | None:
        """The deepest module depth whose diagram has at most ``max_boxes`` boxes (``None``: all nodes)."""
        stacks = {n.name: list((n.meta.get("nn_module_stack") or {}).keys()) for n in self.gm.graph.nodes}
        drawn = self.layers()
        if len(drawn) <= max_boxes:
            return None
        deepest = max((len(s) for s in stacks.values()), default=0)
        best = 1
        for depth in range(1, deepest + 1):
            boxes = set()
            for r in drawn:
                stack = stacks.get(r.name, [])
                own = stack[:-1] if r.op == "call_module" and stack else stack
                boxes.add("mod:" + stack[depth - 1] if len(own) >= depth else r.name)
            if len(boxes) > max_boxes:
                break
            best = depth
        return best

    def to_dataframe(self) -> Any:
        """The table's rows as a :class:`pandas.DataFrame` (needs pandas), one row per :meth:`table` row.

        Columns: ``layer`` (the table's label), ``node``, ``module`` (``None`` for a function),
        ``op``, ``shape`` (a tuple), ``params`` (counted at the first node that uses each tensor, so
        the column sums to ``summary.params_total - summary.params_unused``), ``params_shared``
        (the node uses parameters counted elsewhere), ``macs`` (``<NA>`` when unknown),
        ``rf_status`` (``n/a`` where no RF applies), then per input axis (named by the layout's
        letters, lower case: ``h``, ``w`` for NCHW, ``t`` for NCT; without a layout ``h``, ``w`` in
        2-D, ``d``, ``h``, ``w`` in 3-D, ``w`` in 1-D): ``rf_size_*`` (``<NA>`` on a global or
        unknown axis), ``rf_stride_*``, ``rf_padding_*`` (floats: strides can be fractional),
        ``rf_local_size_*`` (a global RF's spatially local part, else ``<NA>``), and ``rf_reason``
        (why an RF is unknown).

        Raises
        ------
        ImportError
            pandas is not installed (``pip install pandas``).
        """
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("report.to_dataframe() needs pandas: pip install pandas") from None
        n = len(self.input_size)
        lay = getattr(self, "layout", None) or ""
        letters = tuple(c.lower() for c in lay if c not in "NC" and not (c == "D" and "C" not in lay))
        if len(letters) == n:
            axes = letters
        else:
            axes = ("d", "h", "w")[-n:] if 1 <= n <= 3 else tuple(str(i) for i in range(n))
        rows: list[dict[str, Any]] = []
        for tr in self.rows():
            r = self.records[tr.node]
            rf = tr.rf  # None: no positional axis, no RF applies (the table's n/a)
            row: dict[str, Any] = {
                "layer": tr.label, "node": r.name, "module": r.module, "op": str(r.target),
                "shape": tuple(tr.shape) if tr.shape is not None else None,
                "params": tr.params or 0, "params_shared": tr.shared, "macs": tr.macs,
                "rf_status": rf.status if rf is not None else "n/a",
            }
            known = rf is not None and rf.status != "unknown"
            local = rf.local if rf is not None and rf.status == "global" and rf.local is not None \
                and rf.local.status != "unknown" else None
            dims = [rf.dims[i] if rf is not None and known and i < len(rf.dims) else None for i in range(n)]
            for a, d in zip(axes, dims, strict=True):
                row[f"rf_size_{a}"] = d.size if d is not None and d.exact is not None else None
            for a, d in zip(axes, dims, strict=True):
                row[f"rf_stride_{a}"] = _float(d.stride) if d is not None else None
            for a, d in zip(axes, dims, strict=True):
                row[f"rf_padding_{a}"] = _float(d.padding) if d is not None else None
            for i, a in enumerate(axes):
                row[f"rf_local_size_{a}"] = local.dims[i].size if local is not None and i < len(local.dims) else None
            row["rf_reason"] = rf.reason if rf is not None else None
            rows.append(row)
        df = pd.DataFrame(rows, columns=list(rows[0]) if rows else ["layer"])
        ints = ["params", "macs"] + [f"rf_{k}_{a}" for k in ("size", "local_size") for a in axes]
        floats = [f"rf_{k}_{a}" for k in ("stride", "padding") for a in axes]
        return df.astype({**{k: "Int64" for k in ints if k in df}, **{k: "float64" for k in floats if k in df},
                          **{k: "bool" for k in ("params_shared",) if k in df},
                          **{k: "string" for k in ("layer", "node", "module", "op", "rf_status", "rf_reason")
                             if k in df}})

    def to_dot(self, depth: int | None = None, rankdir: str = "TB") -> str:
        """Graphviz DOT source of the analysed graph (see :func:`rfscope.export.to_dot`)."""
        from rfscope.export import to_dot

        return to_dot(self, depth=depth, rankdir=rankdir)

    def render(self, path: Any, depth: int | None = None, rankdir: str = "TB") -> Any:
        """Write a diagram (``.svg``/``.png``/``.pdf`` via ``dot``, or ``.dot``/``.gv``); see
        :func:`rfscope.export.render`."""
        from rfscope.export import render

        return render(self, path, depth=depth, rankdir=rankdir)

    def rows(self, nodes: list[str] | None = None, depth: int | None = None) -> list[TableRow]:
        """The table's rows (:meth:`table`), in graph order.

        Without ``nodes``: one row per node that computes a tensor from the input, and one per
        module call that returns a tuple or a dict (attention, RNNs), so that the rows' parameters
        add up to ``summary.params_total - summary.params_unused``.  ``depth``: a module call
        nested at depth ``depth`` (1: the model's children) is one row for all its nodes, with
        its module's parameters, the MACs of the nodes inside the call and its output's RF, as
        the diagram's boxes (:meth:`to_dot`).  ``nodes``: those rows only, a module path giving
        its call's row (a container's parameters are its subtree's), a node name the node's.

        >>> import torch.nn as nn, rfscope
        >>> net = nn.Sequential(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), nn.Conv2d(8, 4, 1))
        >>> r = rfscope.analyze(net, input_shape=(1, 3, 16, 16))
        >>> [(row.label, row.params) for row in r.rows(depth=1)]
        [('input_1', None), ('0', 224), ('1', 36)]
        """
        if depth is not None and depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        stacks = {n.name: list((n.meta.get("nn_module_stack") or {}).items()) for n in self.gm.graph.nodes}
        if nodes is not None:
            out: list[TableRow] = []
            for name in nodes:
                if name in self.modules:
                    out.append(self._call_row(name, stacks))
                else:
                    out.append(self._node_row(self.records[self.node_name(name)]))
            return out
        out = []
        seen: set[str] = set()
        for r in self.records.values():
            if not self._is_row(r):
                continue
            stack = [k for k, _ in stacks.get(r.name, [])]
            own = stack[:-1] if r.op == "call_module" and stack else stack
            if depth is not None and len(own) >= depth:
                key = stack[depth - 1]
                if key not in seen:
                    seen.add(key)
                    out.append(self._call_row(key, stacks))
                continue
            out.append(self._node_row(r))
        return out

    def _is_row(self, r: NodeRecord) -> bool:
        if r.op in ("output", "get_attr"):
            return False
        if isinstance(r.state, TensorRF):
            return True
        if _first_leaf(r.state) is None:  # no tensor from the input in it
            return False
        c = self.counts.node(r.name)
        return r.op == "call_module" or bool(c.params) or bool(r.macs)

    def _leaf_shape(self, r: NodeRecord) -> tuple[int, ...] | None:
        """The shape of a record's output, or of the first tensor that depends on the input in it."""
        if r.shape is not None or isinstance(r.state, TensorRF):
            return r.shape
        node = next((n for n in self.gm.graph.nodes if n.name == r.name), None)
        val: Any = node.meta.get("val") if node is not None else None
        path = _leaf_path(r.state)
        for i in path or ():
            try:
                val = val[i] if not isinstance(val, dict) else list(val.values())[i]
            except (IndexError, KeyError, TypeError):
                return None
        return tuple(int(d) for d in val.shape) if hasattr(val, "shape") else None

    def call_rf(self, rec: NodeRecord) -> RF | None:
        """The RF of a record's output, or, for a tuple or dict (attention, an RNN), of its first
        tensor that depends on the input (``None``: no RF applies)."""
        if isinstance(rec.state, TensorRF):
            return self.node_rf(rec)
        leaf = _first_leaf(rec.state)
        if leaf is None or not has_rf(leaf, self.input_size):
            return None
        return RF.from_state(leaf, self.input_size)

    def _node_row(self, r: NodeRecord) -> TableRow:
        c = self.counts.node(r.name)
        tensor = isinstance(r.state, TensorRF) or _first_leaf(r.state) is not None
        return TableRow(r.label, r.name, str(r.target), self._leaf_shape(r), c.params, bool(c.shared), r.macs,
                        self.call_rf(r), tensor)

    def _call_row(self, key: str, stacks: dict[str, list[tuple[str, Any]]]) -> TableRow:
        """One module call's row: its module's parameters, the MACs of its nodes, its output's RF."""
        members = [self.records[n] for n, st in stacks.items() if n in self.records and any(k == key for k, _ in st)]
        info = next((v for st in stacks.values() for k, v in st if k == key), None)
        path = info[0] if isinstance(info, tuple) and info else key.split("@", 1)[0]
        cls = info[1] if isinstance(info, tuple) and len(info) > 1 else None
        op = cls.__name__ if isinstance(cls, type) else (str(cls).rsplit(".", 1)[-1] if cls else "module")
        out_name = self.modules.get(key)
        out = self.records[out_name] if out_name is not None else (members[-1] if members else None)
        node_params = sum(self.counts.node(m.name).params or 0 for m in members)
        params: int | None = node_params
        if "@" not in key:  # the first call: the module's own parameters (those it never uses too)
            try:
                params = self.module_params(str(path)).total
            except KeyError:
                pass
        shared = not node_params and any(self.counts.node(m.name).shared for m in members)
        macs_known = [m.macs for m in members if m.macs is not None]
        macs = sum(macs_known) if macs_known else None
        if out is None:
            return TableRow(key, "", op, None, params or None, shared, macs, None, False)
        tensor = isinstance(out.state, TensorRF) or _first_leaf(out.state) is not None
        return TableRow(key, out.name, op, self._leaf_shape(out), params or None, shared, macs, self.call_rf(out),
                        tensor)

    def table(self, nodes: list[str] | None = None, *, depth: int | None = None,
              columns: Sequence[str] | None = None, width: int | None = None, format: str = "table") -> str:
        """The per-layer table (rows: :meth:`rows`), then the totals and notes.

        ``columns``: which columns, in order, by name (:data:`COLUMNS`; default
        :data:`DEFAULT_COLUMNS`).  ``format``: ``"table"`` (plain text: a header, a dashed rule,
        numbers right-aligned), ``"csv"`` (the rows, params and MACs exact), ``"markdown"`` or
        ``"html"``.  ``width``: the text table's width at most, shortening the status column, then
        op and layer (``…``), never the numbers; the notes are wrapped to it.

        Raises
        ------
        ValueError
            An unknown column name or format, or ``depth < 1``.
        """
        cols = parse_columns(columns)
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
        if format == "html":
            return _html_table(self.table(nodes, depth=depth, columns=cols))
        rows = self.rows(nodes, depth)
        if format == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(COLUMNS[c] for c in cols)
            for row in rows:
                w.writerow(_csv_cell(row, c) for c in cols)
            return buf.getvalue()
        cells = [[COLUMNS[c] for c in cols]] + [[_cell(row, c) for c in cols] for row in rows]
        notes = self._notes()
        if format == "markdown":
            def md(cs: list[str]) -> str:
                return "| " + " | ".join(x.replace("|", "\\|") for x in cs) + " |"
            lines = [md(cells[0]), "|" + "|".join("---:" if c in _RIGHT else ":---" for c in cols) + "|"]
            lines += [md(cs) for cs in cells[1:]]
            return "\n".join(lines + ([""] + [f"{n}  " for n in notes if n] if notes else []))
        widths = [max(len(cs[i]) for cs in cells) for i in range(len(cols))]
        if width is not None:
            widths = _fit(widths, cols, width)
        lines = []
        for i, cs in enumerate(cells):
            parts = [_pad(_shorten(x, w, cols[j]), w, cols[j] in _RIGHT) for j, (x, w)
                     in enumerate(zip(cs, widths, strict=True))]
            lines.append("  ".join(parts).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        for n in notes:
            if not n:
                lines.append("")
            elif width is not None and len(n) > width:
                lines.extend(textwrap.wrap(n, width, subsequent_indent="  ", break_on_hyphens=False))
            else:
                lines.append(n)
        return "\n".join(lines)

    def _notes(self) -> list[str]:
        """The lines under the table: totals, unsupported ops, errors, warnings, the trace path
        (``""``: a blank line)."""
        sm = self.summary
        lines = ["", f"params {sm.params_total:,} (trainable {sm.params_trainable:,}, frozen "
                     f"{sm.params_frozen:,}), buffers {sm.buffers:,}, MACs {sm.macs:,}"]
        if self.unsupported:
            lines.append("")
            lines.append("unsupported (reported as unknown): " + ", ".join(self.unsupported))
        for e in self.errors:
            lines.append(f"error: {e}")
        if self.warnings:
            lines.append("")
            lines.extend(str(w) for w in self.warnings)
        if self.trace_path != "symbolic_trace" or self.trace_fallback:  # a fallback tracer or real-tensor shapes
            why = self.trace_fallback
            lines.append(f"trace: {self.trace_path}" + (f" ({why})" if why else ""))
        return lines
