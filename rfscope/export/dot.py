"""Graphviz diagrams of an analysed model: :func:`to_dot` (pure) and :func:`render`.

One box per fx node (or, with ``depth``, per module call below that depth),
labelled with its op, module path, output shape, RF size and stride per
dimension and parameters; filled by RF size relative to the input on a
sequential colour map.  ``global`` nodes have a double border, ``unknown`` ones
are grey and dashed (the reason in the tooltip); the node where an unknown RF
*arises* (not the ones that inherit it) has a red border, and a misaligned
merge is labelled so and its incoming edges are red.  Module calls are nested
clusters, from ``nn_module_stack`` (a call that is a single op is drawn as that box).

Rendering (:func:`find_renderer`) uses Graphviz's ``dot`` when it is on ``PATH``, else the
``graphviz-pure`` program that rfscope depends on (a dot-compatible renderer shipped as a wheel,
found in this Python environment even when its scripts directory is not on ``PATH``; it writes
SVG and PNG, not PDF); ``dot=`` / ``--dot`` or the ``RFSCOPE_DOT`` environment variable name
another.  The ``.dot`` source is always written, so a diagram can be rendered elsewhere.
"""

from __future__ import annotations

import errno
import html
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import torch.fx as fx

from rfscope.core.errors import RfscopeError
from rfscope.core.result import RF, _fmt, _fmt_dims
from rfscope.core.state import TensorRF
from rfscope.export.files import DiskFullError, check_output_file, staged, write_file
from rfscope.passes.counts import Counts, ParamCount, fmt_count
from rfscope.passes.interpret import NodeRecord, _flat_states


class Report(Protocol):
    """What a diagram needs of an analysis (:class:`rfscope.Report` has it); the export layer
    sits below the report, so it names the attributes instead of importing the class."""

    records: dict[str, NodeRecord]
    modules: dict[str, str]
    gm: fx.GraphModule
    counts: Counts

    @property
    def input_size(self) -> tuple[int, ...]: ...

    def node_rf(self, rec: NodeRecord) -> RF | None: ...

    def module_params(self, path: str) -> ParamCount: ...

__all__ = [
    "to_dot",
    "render",
    "check_path",
    "find_dot",
    "find_bundled",
    "find_renderer",
    "Renderer",
    "Rendered",
    "RendererNotFoundError",
    "IMAGE_FORMATS",
    "SOURCE_SUFFIXES",
    "RF_BINS",
]

#: Suffixes rendered through ``dot -T<suffix>``.
IMAGE_FORMATS = ("svg", "png", "pdf")
#: Suffixes that are written as DOT source only.
SOURCE_SUFFIXES = ("dot", "gv")
#: The pip-installed renderer's program (a dependency of rfscope) and the formats it writes.
BUNDLED = "graphviz-pure"
BUNDLED_FORMATS = ("svg", "png")
#: Environment variable naming the renderer (a path, or a program on ``PATH``); ``--dot`` wins over it.
ENV_VAR = "RFSCOPE_DOT"

INSTALL_HINT = "pip install graphviz-pure (SVG, PNG), or apt-get install graphviz (every format)"
PDF_HINT = "PDF needs Graphviz's dot: apt-get install graphviz (or brew install graphviz)"

#: Upper bounds of the colour classes of ``max over dims of RF size / input size``
#: with their fill colours (ColorBrewer YlGnBu, light to dark) and text colours.
RF_BINS: tuple[tuple[Fraction, str, str, str], ...] = (
    (Fraction(1, 32), "#ffffd9", "black", "< 1/32"),
    (Fraction(1, 16), "#edf8b1", "black", "1/32 – 1/16"),
    (Fraction(1, 8), "#c7e9b4", "black", "1/16 – 1/8"),
    (Fraction(1, 4), "#7fcdbb", "black", "1/8 – 1/4"),
    (Fraction(1, 2), "#41b6c4", "black", "1/4 – 1/2"),
    (Fraction(1, 1), "#1d91c0", "white", "1/2 – 1"),
    (Fraction(10**9), "#225ea8", "white", "≥ 1 (larger than input)"),
)
GLOBAL_FILL = "#fdd49e"
GLOBAL_BORDER = "#d94801"
UNKNOWN_FILL = "#eeeeee"
ALARM = "#cb181d"
EDGE = "#636363"
FONT = "Helvetica"
CLUSTER_FILLS = ("#f7f7f7", "#ececec")


class RendererNotFoundError(RfscopeError, OSError):
    """No renderer for the image format asked for: none found, a ``dot=``/``--dot``/``RFSCOPE_DOT``
    that is not an executable file, or PDF with only the bundled ``graphviz-pure``."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Rendered:
    """What :func:`render` wrote: the DOT source and, unless only DOT was asked for, the image."""

    source: Path
    image: Path | None
    renderer: str | None

    @property
    def message(self) -> str:
        """One line for the user (the CLI prints it)."""
        if self.image is not None:
            return f"wrote {self.image} (source {self.source})"
        if self.renderer is not None:
            return (f"wrote {self.source} (render it with: {_command(self.renderer)} -Tsvg {self.source} "
                    f"-o {self.source.with_suffix('.svg')})")
        return f"wrote {self.source}; no Graphviz renderer (dot or graphviz-pure) to render it: {INSTALL_HINT}"


# ----------------------------------------------------------------------------- text helpers
def quote(s: str) -> str:
    """A DOT double-quoted string (ids, tooltips): backslashes, quotes and newlines escaped."""
    s = s.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "\\n")
    return f'"{s}"'


def _h(s: str) -> str:
    """Text inside an HTML-like label."""
    return html.escape(s, quote=True)


def _wrap(s: str, width: int = 40, lines: int = 2) -> list[str]:
    """Word-wrap ``s`` into at most ``lines`` lines, the last one cut with an ellipsis."""
    out: list[str] = []
    cur = ""
    for w in s.split():
        if cur and len(cur) + 1 + len(w) > width:
            out.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    if cur:
        out.append(cur)
    if len(out) > lines:
        last = " ".join(out[lines - 1:])
        out = out[: lines - 1] + [last[: width - 1] + "…"]
    return [x if len(x) <= width else x[: width - 1] + "…" for x in out]


def _sizes(rf: RF) -> str:
    """Per-dim size; ``a–b`` where it depends on the phase (fractional strides)."""
    out = []
    for d, ph in zip(rf.dims, rf.sizes, strict=False):
        if ph is not None and min(ph) != max(ph):
            out.append(f"({min(ph)}–{max(ph)})")
        else:
            out.append(str(d.size))
    return "×".join(out)


# ----------------------------------------------------------------------------- model structure
def _cls_name(c: Any) -> str:
    if isinstance(c, type):
        return c.__name__
    return str(c).rsplit(".", 1)[-1].strip("'>")


@dataclass
class _Unit:
    """One drawn box: an fx node, or a collapsed module call."""

    id: str
    clusters: tuple[str, ...]
    rec: NodeRecord | None  # the node (or the module's output node)
    module_key: str | None = None  # set for collapsed modules
    members: list[str] = field(default_factory=list)
    #: the module call this single op makes up (drawn as the module, not as a one-node cluster)
    inline: str | None = None


class _Builder:
    def __init__(self, report: Report, depth: int | None, rankdir: str) -> None:
        if depth is not None and depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        rd = rankdir.upper()
        if rd not in ("TB", "LR"):
            raise ValueError(f"rankdir must be TB or LR, got {rankdir!r}")
        self.report = report
        self.depth = depth
        self.rankdir = rd
        self.stacks: dict[str, list[str]] = {}
        self.classes: dict[str, str] = {}
        for n in report.gm.graph.nodes:
            st = n.meta.get("nn_module_stack") or {}
            self.stacks[n.name] = list(st.keys())
            for k, v in st.items():
                self.classes.setdefault(k, _cls_name(v[1]) if isinstance(v, tuple) and len(v) > 1 else "")
        self._param_cache: dict[str, int | None] = {}

    # -- what is drawn
    def drawn(self, rec: NodeRecord) -> bool:
        """Tensors that depend on the input, tensor inputs, and the output."""
        if rec.op == "output":
            return True
        if rec.op == "placeholder":
            return rec.shape is not None
        return rec.op != "get_attr" and isinstance(rec.state, TensorRF)

    def passthrough(self, rec: NodeRecord) -> bool:
        """Not drawn, but carries tensors (tuple outputs): edges are contracted through it."""
        st = rec.state
        return isinstance(st, (tuple, list)) and any(isinstance(s, TensorRF) for s in _flat_states(st))

    def units(self) -> tuple[dict[str, _Unit], dict[str, str]]:
        units: dict[str, _Unit] = {}
        of: dict[str, str] = {}
        for rec in self.report.records.values():
            if not self.drawn(rec):
                continue
            stack = self.stacks.get(rec.name, [])
            own = stack[:-1] if rec.op == "call_module" and stack else stack
            if self.depth is not None and len(own) >= self.depth:
                key = stack[self.depth - 1]
                uid = "mod:" + key
                out = self.report.modules.get(key)
                if uid not in units:
                    units[uid] = _Unit(uid, tuple(stack[: self.depth - 1]), None, key)
                    if out is not None:
                        units[uid].rec = self.report.records[out]
                u = units[uid]
                u.members.append(rec.name)
                if out is None:
                    u.rec = rec  # the last member in graph order stands for the output
                of[rec.name] = uid
            else:
                units[rec.name] = _Unit(rec.name, tuple(own), rec)
                of[rec.name] = rec.name
        return units, of

    def sources(self, name: str, of: Mapping[str, str], seen: set[str] | None = None) -> list[str]:
        """Drawn nodes feeding ``name``, looking through tuple-valued nodes."""
        seen = set() if seen is None else seen
        out: list[str] = []
        for a in self.report.records[name].inputs:
            if a in seen:
                continue
            seen.add(a)
            if a in of:
                out.append(a)
            elif self.passthrough(self.report.records[a]):
                out.extend(self.sources(a, of, seen))
        return out

    def module_params(self, key: str) -> int | None:
        """Parameters of the module of call ``key``, each tensor once (``report.module_params``)."""
        if key not in self._param_cache:
            path = key.split("@", 1)[0]
            count: int | None
            try:
                count = self.report.module_params(path).total
            except KeyError:  # a call key that is not a submodule path
                count = None
            self._param_cache[key] = count
        return self._param_cache[key]

    def node_params(self, rec: NodeRecord) -> str | None:
        """``"9.22K params"``, ``"params shared with conv1"`` or ``None``."""
        c = self.report.counts.node(rec.name)
        p, shared = c.params, c.shared
        if p:
            return f"{fmt_count(p)} params"
        if shared:
            owners = sorted(set(shared.values()))
            return "params shared with " + ", ".join(owners[:2]) + (" …" if len(owners) > 2 else "")
        return None

    # -- status helpers
    def rf(self, rec: NodeRecord | None) -> RF | None:
        return self.report.node_rf(rec) if rec is not None else None

    def inherited(self, rec: NodeRecord) -> bool:
        """Unknown because an input already was (same reason)."""
        st = rec.state
        if not isinstance(st, TensorRF) or st.why is None:
            return False
        for a in rec.inputs:
            ins = self.report.records[a].state
            for s in _flat_states(ins):
                if isinstance(s, TensorRF) and s.why == st.why:
                    return True
        return False

    def misaligned(self, rec: NodeRecord | None) -> bool:
        if rec is None or not isinstance(rec.state, TensorRF):
            return False
        why = rec.state.why
        return why is not None and "misaligned" in why and not self.inherited(rec)

    # -- labels
    def rf_rows(self, rf: RF | None, inherited: bool) -> list[str]:
        if rf is None:
            return []
        if rf.status == "unknown":
            why = rf.reason or "unknown"
            if inherited:
                return ["RF unknown (from an input)"]
            return ["RF unknown", *_wrap(why)]
        if rf.status == "global":
            rows = ["RF global (sees the whole input)"]
            if rf.local is not None and rf.local.status == "unknown":
                rows.append(f"local RF unknown ({rf.local.reason or 'local paths misaligned'})"[:60])
            elif rf.local is not None:
                rows.append(f"local RF {_sizes(rf.local)}, stride {_fmt_dims(rf.local.stride, '×', '?')}")
            return rows
        if rf.table is not None:  # token layouts: each element has its own window
            return [f"RF ≤{_sizes(rf)}, per position"]
        rows = [f"RF {_sizes(rf)}, stride {_fmt_dims(rf.stride, '×', '?')}"]
        cov = [c for c in rf.coverage if c is not None]
        if cov and min(cov) < 1:
            rows.append("holes: sees " + ", ".join(_fmt(c, "?") for c in rf.coverage) + " of the box")
        return rows

    def fill(self, rf: RF | None) -> tuple[str, str]:
        if rf is None:
            return "#ffffff", "black"
        if rf.status == "unknown":
            return UNKNOWN_FILL, "black"
        if rf.status == "global":
            if rf.local is None or rf.local.status != "exact":
                return GLOBAL_FILL, "black"
            rf = rf.local  # e.g. SE blocks: the border says global, the fill keeps the local RF's growth
        ext = self.report.input_size
        frac = max((Fraction(s, e) for s, e in zip(rf.size, ext, strict=False) if e > 0), default=Fraction(0))
        for hi, col, text, _ in RF_BINS:
            if frac < hi:
                return col, text
        return RF_BINS[-1][1], RF_BINS[-1][2]

    def label(self, title: str, sub: str, rows: list[str], params: str | None, text: str,
              alarm: str | None = None) -> str:
        grey = "#444444" if text == "black" else "#f0f0f0"
        cells = [f'<TR><TD><B>{_h(title)}</B></TD></TR>']
        if sub and sub != title:
            cells.append(f'<TR><TD><FONT POINT-SIZE="9" COLOR="{grey}">{_h(sub)}</FONT></TD></TR>')
        if alarm:
            cells.append(f'<TR><TD><FONT COLOR="{ALARM}"><B>{_h(alarm)}</B></FONT></TD></TR>')
        for r in rows:
            cells.append(f'<TR><TD><FONT POINT-SIZE="10">{_h(r)}</FONT></TD></TR>')
        if params:
            cells.append(f'<TR><TD><FONT POINT-SIZE="9" COLOR="{grey}">{_h(params)}</FONT></TD></TR>')
        inner = "".join(cells)
        font = "" if text == "black" else f' COLOR="{text}"'
        table = f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">{inner}</TABLE>'
        return f"<<FONT{font}>{table}</FONT>>" if font else f"<{table}>"

    def node_stmt(self, u: _Unit) -> str:
        rec = u.rec
        shape = "×".join(map(str, rec.shape)) if rec is not None and rec.shape else ""
        attrs: dict[str, str] = {}
        if rec is not None and rec.op in ("placeholder", "output") and u.module_key is None:
            title = "input" if rec.op == "placeholder" else "output"
            sub = rec.name if rec.op == "placeholder" else ""
            rows = [shape] if shape else []
            attrs["label"] = self.label(title, sub, rows, None, "black")
            attrs["shape"] = "box"
            attrs["style"] = '"rounded,filled"'
            attrs["fillcolor"] = quote("#ffffff")
            attrs["color"] = quote("#252525")
            return f"{quote(u.id)} [{_attrs(attrs)}];"
        rf = self.rf(rec)
        if u.module_key is not None:
            key = u.module_key
            title = self.classes.get(key) or "module"
            sub = f"{key}  ({len(u.members)} ops)"
            p = self.module_params(key)
            params = f"{fmt_count(p)} params" if p else None
        else:
            assert rec is not None
            if rec.op == "call_module":
                title = rec.target
                sub = rec.call or rec.module or rec.name
            elif u.inline is not None:
                title = self.classes.get(u.inline) or _op_name(rec)
                sub = f"{u.inline} · {_op_name(rec)}"
            else:
                title = _op_name(rec)
                sub = rec.label
            params = self.node_params(rec)
        recs = [self.report.records[m] for m in u.members] if u.members else [rec]
        mis = any(self.misaligned(r) for r in recs)
        origin = any(
            r is not None and isinstance(r.state, TensorRF) and r.state.why is not None and not self.inherited(r)
            for r in recs
        )
        rows = ([shape] if shape else []) + self.rf_rows(rf, not origin)
        fill, text = self.fill(rf)
        attrs["label"] = self.label(title, sub, rows, params, text, "misaligned merge" if mis else None)
        attrs["fillcolor"] = quote(fill)
        style = ["filled"]
        tooltip = [f"{sub}: {title}"]
        if u.module_key is not None:
            attrs["shape"] = "box3d"
            tooltip.append(f"collapsed module call, {len(u.members)} ops")
        else:
            attrs["shape"] = "box"
            style.insert(0, "rounded")
        if rf is not None and rf.status == "global":
            attrs["color"] = quote(GLOBAL_BORDER)
            attrs["peripheries"] = "2"
            tooltip.append("global: every unit sees the whole input")
        elif rf is not None and rf.status == "unknown":
            tooltip.append(f"unknown: {rf.reason}")
            if not origin:
                style.append("dashed")
                attrs["color"] = quote("#969696")
            else:
                attrs["color"] = quote(ALARM)
                attrs["penwidth"] = "2"
                if not mis:
                    style.append("dashed")
        else:
            attrs["color"] = quote("#525252")
        attrs["style"] = quote(",".join(style))
        attrs["tooltip"] = quote(" | ".join(tooltip))
        return f"{quote(u.id)} [{_attrs(attrs)}];"

    def cluster_label(self, key: str, parent: str | None) -> str:
        cls = self.classes.get(key, "")
        name = key[len(parent) + 1:] if parent and key.startswith(parent + ".") else key
        txt = f"<B>{_h(name)}</B>" + (f" : {_h(cls)}" if cls else "")
        p = self.module_params(key)
        if p:
            txt += f' <FONT COLOR="#636363">· {_h(fmt_count(p))} params</FONT>'
        return txt

    def legend(self, statuses: set[str]) -> str:
        """The graph label: a colour key laid out in rows, outside the rank layout.

        ``statuses`` (``"global"``, ``"unknown"``, ``"misaligned"``) says which other keys to show."""
        ins = "×".join(map(str, self.report.input_size))

        def swatch(fill: str, border: str, dashed: bool = False, double: bool = False) -> str:
            style = ' STYLE="dashed"' if dashed else ""
            return (f'<TD BGCOLOR="{fill}" COLOR="{border}" BORDER="{2 if double else 1}" WIDTH="18" HEIGHT="13" '
                    f'FIXEDSIZE="TRUE"{style}></TD>')

        bins = "".join(f'{swatch(col, "#525252")}<TD ALIGN="LEFT">{_h(name)}  </TD>' for _, col, _t, name in RF_BINS)
        keys: list[tuple[str, str]] = []
        if "global" in statuses:
            keys.append((swatch(GLOBAL_FILL, GLOBAL_BORDER, double=True),
                         "global: sees the whole input (fill: local RF, if any)"))
        if "unknown" in statuses:
            keys.append((swatch(UNKNOWN_FILL, ALARM, dashed=True), "unknown: reason in the box"))
        if "misaligned" in statuses:
            keys.append((f'<TD WIDTH="18"><FONT COLOR="{ALARM}"><B>→</B></FONT></TD>',
                         "misaligned merge input"))
        n = 2 * len(RF_BINS)
        # one row per status key, its text spanning the bins' other columns
        row2 = "".join(f'<TR>{cell}<TD ALIGN="LEFT" COLSPAN="{n - 1}">{_h(text)}</TD></TR>' for cell, text in keys)
        return (
            '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="3" CELLPADDING="1">'
            f'<TR><TD COLSPAN="{n}" ALIGN="LEFT"><B>Fill: RF size / input size</B> '
            f'<FONT POINT-SIZE="9">(largest over dims; input {_h(ins)})</FONT></TD></TR>'
            f"<TR>{bins}</TR>{row2}"
            "</TABLE>>"
        )

    # -- whole graph
    def build(self) -> str:
        units, of = self.units()
        statuses: set[str] = set()
        for name in of:
            rec = self.report.records[name]
            if isinstance(rec.state, TensorRF) and rec.op != "output":
                statuses.add(rec.state.status)
                if self.misaligned(rec):
                    statuses.add("misaligned")
        lines = [
            "digraph rfscope {",
            f'  graph [rankdir={self.rankdir}, newrank=true, fontname="{FONT}", fontsize=11, '
            'nodesep=0.25, ranksep=0.3, pad=0.2, bgcolor="white", labelloc="t", labeljust="l",\n'
            f"    label={self.legend(statuses)}];",
            f'  node [fontname="{FONT}", fontsize=10, margin="0.08,0.04", penwidth=1];',
            f'  edge [color="{EDGE}", arrowsize=0.6, penwidth=1];',
        ]
        # a module call made of one op (a leaf module in ATen graphs, a one-line custom module)
        # is drawn as that one box rather than a cluster around it
        count: dict[tuple[str, ...], int] = {}
        has_sub: set[tuple[str, ...]] = set()
        for u in units.values():
            count[u.clusters] = count.get(u.clusters, 0) + 1
            has_sub.update(u.clusters[:i] for i in range(len(u.clusters)))
        for u in units.values():
            c = u.clusters
            if (c and count[c] == 1 and c not in has_sub and u.module_key is None and u.rec is not None
                    and u.rec.op not in ("call_module", "placeholder", "output")):
                u.inline, u.clusters = c[-1], c[:-1]
        # cluster tree, in first-appearance order
        children: dict[tuple[str, ...], list[str]] = {}
        members: dict[tuple[str, ...], list[_Unit]] = {}
        for u in units.values():
            members.setdefault(u.clusters, []).append(u)
            for i in range(len(u.clusters)):
                parent, child = u.clusters[:i], u.clusters[i]
                lst = children.setdefault(parent, [])
                if child not in lst:
                    lst.append(child)
        edges: dict[tuple[str, str], bool] = {}
        for rec in self.report.records.values():
            if rec.name not in of:
                continue
            dst = of[rec.name]
            bad = self.misaligned(rec)
            for a in self.sources(rec.name, of):
                src = of[a]
                if src != dst:
                    edges[(src, dst)] = edges.get((src, dst), False) or bad
        preds: dict[str, list[str]] = {}
        for s, d in edges:
            preds.setdefault(d, []).append(s)
        counter = [0]
        # TB: a cluster's title is a plaintext node beside its first entry node, because dot
        # draws edges over cluster labels; LR: edges enter from the side, labels are fine.
        headers = self.rankdir == "TB"

        def emit(path: tuple[str, ...], indent: str) -> str | None:
            """Emit the members and sub-clusters of ``path``; return the id of its top node."""
            anchor: str | None = None
            for u in members.get(path, []):
                lines.append(indent + self.node_stmt(u))
                ps = preds.get(u.id, [])
                if anchor is None and (not ps or any(units[p].clusters[: len(path)] != path for p in ps)):
                    anchor = quote(u.id)
            for child in children.get(path, []):
                counter[0] += 1
                sub = (*path, child)
                fill = CLUSTER_FILLS[(len(sub) - 1) % len(CLUSTER_FILLS)]
                title = self.cluster_label(child, path[-1] if path else None)
                lines.append(f"{indent}subgraph cluster_{counter[0]} {{")
                lines.append(f'{indent}  style="rounded,filled"; fillcolor="{fill}"; color="#bdbdbd"; '
                             f"tooltip={quote(child)};")
                if headers:
                    hid = quote(f"hdr:{counter[0]}")
                    lines.append(f'{indent}  label=""; {hid} [shape=plaintext, margin="0.04,0", height=0.2, '
                                 f"fontsize=10, label=<{title}>];")
                    inner = emit(sub, indent + "  ")
                    if inner is not None:
                        lines.append(f"{indent}  {{rank=same; {hid}; {inner};}}")
                    anchor = anchor or hid
                else:
                    lines.append(f'{indent}  label=<{title}>; labeljust="l"; fontsize=10;')
                    emit(sub, indent + "  ")
                lines.append(f"{indent}}}")
            return anchor

        emit((), "  ")
        for (s, d), bad in edges.items():
            extra = f' [color="{ALARM}", penwidth=2, tooltip="misaligned merge input"]' if bad else ""
            lines.append(f"  {quote(s)} -> {quote(d)}{extra};")
        lines.append("}")
        return "\n".join(lines) + "\n"


def _attrs(d: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def _op_name(rec: NodeRecord) -> str:
    packet = getattr(rec.target_obj, "overloadpacket", None)  # ATen ops: conv2d, not conv2d.default
    name = getattr(packet if packet is not None else rec.target_obj, "__name__", None)
    if isinstance(name, str) and name:
        return name
    t = rec.target
    for pre in ("operator.", "Tensor.", "torch.nn.functional.", "torch."):
        if t.startswith(pre):
            return t[len(pre):]
    return t


# ----------------------------------------------------------------------------- public API
def to_dot(report: Report, depth: int | None = None, rankdir: str = "TB") -> str:
    """DOT source of ``report``'s graph.

    ``depth`` collapses every module call nested deeper than ``depth`` calls into
    one box per module call at that depth (its aggregate RF is the RF of the
    module's output, its parameters those of the module), so large models stay
    readable; ``None`` draws every node.  ``rankdir`` is ``"TB"`` or ``"LR"``.
    """
    return _Builder(report, depth, rankdir).build()


@dataclass(frozen=True)
class Renderer:
    """The program that turns DOT into an image, and where it came from."""

    path: str
    #: ``"--dot"`` (the ``dot=`` argument), ``"RFSCOPE_DOT"``, ``"PATH"`` (Graphviz's dot) or ``"bundled"``
    origin: str

    @property
    def bundled(self) -> bool:
        """It is ``graphviz-pure`` (found, or named by an override, or linked to), which cannot write PDF."""
        names = {Path(self.path).name.lower(), Path(os.path.realpath(self.path)).name.lower()}
        return any(n.removesuffix(".exe") == BUNDLED for n in names)

    @property
    def formats(self) -> tuple[str, ...]:
        return BUNDLED_FORMATS if self.bundled else IMAGE_FORMATS


def _command(path: str) -> str:
    """How to type ``path`` in a shell: its bare name when ``PATH`` finds that same program."""
    name = Path(path).name
    found = shutil.which(name)
    try:
        return name if found is not None and os.path.samefile(found, path) else path
    except OSError:
        return path


def _executable(path: str | os.PathLike[str]) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_dot() -> str | None:
    """Path of Graphviz's ``dot`` on ``PATH``, or ``None``."""
    return shutil.which("dot")


def find_bundled() -> str | None:
    """Path of the ``graphviz-pure`` program installed with rfscope, or ``None``.

    Looked up in this Python environment first, so that it is found when its scripts directory
    is not on ``PATH`` (a venv that is not activated, ``pip install --user``): the files the
    ``graphviz-pure`` distribution installed, then this interpreter's scripts directories; then
    on ``PATH``.
    """
    names = {BUNDLED, BUNDLED + ".exe"}
    candidates: list[str] = []
    try:
        from importlib.metadata import PackageNotFoundError, files

        try:
            candidates += [os.path.normpath(f.locate()) for f in files(BUNDLED) or () if f.name in names]
        except PackageNotFoundError:
            pass
    except Exception:  # pragma: no cover - broken metadata must not hide the other places
        pass
    dirs = [sysconfig.get_path("scripts"), os.path.dirname(sys.executable)]
    try:
        dirs.append(sysconfig.get_path("scripts", f"{os.name}_user"))
    except KeyError:  # pragma: no cover - no user scheme on this platform
        pass
    exe = BUNDLED + (".exe" if os.name == "nt" else "")
    candidates += [os.path.join(d, exe) for d in dirs if d]
    for c in candidates:
        if _executable(c):
            return c
    return shutil.which(BUNDLED)


def _override(value: str, origin: str) -> Renderer:
    """The renderer named by ``--dot``/``dot=`` or ``RFSCOPE_DOT``: a path, or a program on ``PATH``."""
    where = f"--dot {value!r}" if origin == "--dot" else f"{ENV_VAR}={value!r}"
    path = os.path.expanduser(value)
    if value and not os.path.exists(path) and os.sep not in value and (os.altsep is None or os.altsep not in value):
        found = shutil.which(value)  # a bare program name
        if found is None:
            raise RendererNotFoundError(f"renderer {where}: no such file, nor a program of that name on PATH")
        path = found
    if not os.path.exists(path):
        raise RendererNotFoundError(f"renderer {where}: no such file")
    if not _executable(path):
        what = "is a directory" if os.path.isdir(path) else "is not executable"
        raise RendererNotFoundError(f"renderer {where} {what}; name Graphviz's dot or graphviz-pure")
    return Renderer(path, origin)


def find_renderer(dot: str | os.PathLike[str] | None = None) -> Renderer | None:
    """The renderer :func:`render` uses, or ``None`` when there is none.

    ``dot`` (the CLI's ``--dot``) wins, then the ``RFSCOPE_DOT`` environment variable (unset or
    empty: not set), then Graphviz's ``dot`` on ``PATH``, then the bundled ``graphviz-pure``
    (:func:`find_bundled`).

    Raises
    ------
    RendererNotFoundError
        ``dot`` or ``RFSCOPE_DOT`` names no executable file (nor a program on ``PATH``).
    """
    if dot is not None:
        return _override(os.fspath(dot), "--dot")
    env = os.environ.get(ENV_VAR, "")
    if env:
        return _override(env, ENV_VAR)
    system = find_dot()
    if system is not None:
        return Renderer(system, "PATH")
    bundled = find_bundled()
    return Renderer(bundled, "bundled") if bundled is not None else None


def _check(path: str | os.PathLike[str], dot: str | os.PathLike[str] | None) -> tuple[Path, str, Renderer | None]:
    """:func:`check_path`, also returning the renderer."""
    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in IMAGE_FORMATS + SOURCE_SUFFIXES:
        allowed = ", ".join("." + s for s in IMAGE_FORMATS + SOURCE_SUFFIXES)
        raise ValueError(f"diagram path {str(p)!r} must end in one of {allowed}")
    check_output_file(p, "diagram")  # its directory exists, is one and is writable (through symlinks)
    if fmt not in SOURCE_SUFFIXES:
        check_output_file(p.with_suffix(".dot"), "diagram source")
    renderer = find_renderer(dot)
    if renderer is not None and fmt in IMAGE_FORMATS and fmt not in renderer.formats:
        found = "the only renderer found" if renderer.origin == "bundled" else f"the renderer ({renderer.origin})"
        raise RendererNotFoundError(
            f"cannot write {str(p)!r}: {found} is graphviz-pure ({renderer.path}), which writes "
            f"{', '.join('.' + f for f in renderer.formats)}, not .{fmt}; {PDF_HINT}"
        )
    return p, fmt, renderer


def check_path(path: str | os.PathLike[str], dot: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """Validate an output path and the renderer before any work; returns ``(path, format)``.

    Raises ``ValueError`` for an unsupported suffix and ``OSError`` for a missing
    or unwritable directory, or a target (through symlinks) that is a directory or
    read-only; for an image, its ``.dot`` source is checked too (one-line messages
    that say what to do).  :class:`RendererNotFoundError` (an ``OSError``) when ``dot``
    or ``RFSCOPE_DOT`` names no executable, or for ``.pdf`` when the renderer is the bundled
    ``graphviz-pure`` (no renderer at all is :func:`render`'s error, after it writes the source).
    """
    p, fmt, _ = _check(path, dot)
    return p, fmt


def _disk_full(path: Path) -> bool:
    """No free block left where ``path`` lives (why an external writer failed)."""
    try:
        return os.statvfs(path.parent).f_bavail == 0
    except (OSError, AttributeError):
        return False


def render(
    report: Report,
    path: str | os.PathLike[str],
    depth: int | None = None,
    rankdir: str = "TB",
    dot: str | os.PathLike[str] | None = None,
) -> Rendered:
    """Write the diagram to ``path`` (``.svg``, ``.png``, ``.pdf``, ``.dot`` or ``.gv``).

    The DOT source is always written (``path`` itself for ``.dot``/``.gv``,
    otherwise next to the image with the suffix ``.dot``).  Images are made by
    the renderer :func:`find_renderer` picks: ``dot=`` (a path, or a program on ``PATH``),
    else ``RFSCOPE_DOT``, else Graphviz's ``dot`` on ``PATH``, else the bundled ``graphviz-pure``
    (SVG and PNG only); when there is none, the source is written and
    :class:`RendererNotFoundError` is raised.  Each file
    is replaced atomically (:mod:`rfscope.export.files`: through symlinks, keeping the
    replaced file's permissions and owner), so a failure leaves nothing half-written.

    Raises
    ------
    ValueError
        ``path`` has a suffix no renderer writes.
    RendererNotFoundError
        An image was asked for and no renderer was found (the ``.dot`` source is written);
        or, before anything is written, ``dot=``/``RFSCOPE_DOT`` names no executable, or
        ``.pdf`` was asked for and the renderer is ``graphviz-pure``.
    OutputError
        A file could not be written (:class:`~rfscope.export.files.DiskFullError` when the
        disk is full); the previous file is left as it was.
    """
    p, fmt, renderer = _check(path, dot)
    src = p if fmt in SOURCE_SUFFIXES else p.with_suffix(".dot")
    text = to_dot(report, depth=depth, rankdir=rankdir)
    write_file(src, text.encode("utf-8"))
    exe = renderer.path if renderer is not None else None
    if fmt in SOURCE_SUFFIXES:
        return Rendered(src, None, exe)
    if exe is None:
        hint = PDF_HINT if fmt not in BUNDLED_FORMATS else INSTALL_HINT
        raise RendererNotFoundError(
            f"wrote {src} but cannot make {p}: no Graphviz renderer (neither dot on PATH nor graphviz-pure "
            f"in this Python environment); {hint}; or render the .dot elsewhere (dot -T{fmt} {src} -o {p})"
        )
    name = Path(exe).name
    with staged() as stage:
        tmp = stage.reserve(p)
        cmd = [exe, f"-T{fmt}", "-o", str(tmp), str(src)]
        if fmt == "png":
            cmd.insert(1, "-Gdpi=110")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as e:
            raise OSError(f"{name} took over 10 minutes to render {p}; try --depth; the source is in {src}") from e
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            # the error, not a warning printed before it (graphviz-pure warns about text widths)
            msg = next((ln for ln in lines if not ln.startswith("Warning")), lines[0] if lines else "no message")
            if _disk_full(tmp):
                raise DiskFullError(errno.ENOSPC, f"cannot write {str(p)!r}: the disk is full ({name}: {msg}); "
                                                  f"the previous image is unchanged; the source is in {src}")
            raise OSError(f"{name} failed to render {p} (exit {proc.returncode}): {msg}; the source is in {src}")
    return Rendered(src, p, exe)
