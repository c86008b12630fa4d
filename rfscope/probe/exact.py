"""Exact validation of the static RF with a gradient oracle (docs/design.md §5).

The analysed graph is run on a linearised float64 copy (:mod:`rfscope.probe.linear`)
with an all-ones input; the non-zero support of d(unit)/d(input) is the unit's
exact RF, clipped to the input.  Probed units per node and axis: a central run of
``period + 1`` units (every phase of a fractional stride, plus one step), and the
first and last two units.  Each probe is one batch row; per node, a graph cut after
that node runs one forward and one input-only backward per chunk of rows.  A node
*agrees* when every central unit's support equals its static window pixel for pixel
(holes included) and every border unit's support lies inside its window (padding
feeds border units zeros, so they may see less).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import zip_longest
from typing import Any

import torch
import torch.fx as fx

from rfscope.core.locks import running
from rfscope.core.registry import Registry
from rfscope.core.result import RF
from rfscope.core.rf import Axis
from rfscope.core.state import Global, TensorRF
from rfscope.pipeline import analyze
from rfscope.probe.effective import _resolve
from rfscope.probe.graph import ProbeError, check_trace_path, materialise, select_outputs
from rfscope.probe.linear import constant_param, linearise
from rfscope.probe.runtime import Progress, exact_kernels, resolve_device
from rfscope.probe.units import axis_extents, layout_of, unit_mask
from rfscope.report import Report
from rfscope.trace.runtime import deep_entry, keeps_rng_state

__all__ = ["validate", "Validation", "NodeCheck", "AxisMeasure"]


@dataclass(frozen=True)
class AxisMeasure:
    """What the probe measured along one input axis (``None``: not measurable at this input size).

    ``full`` is True when every probed unit saw the whole axis (a global RF).
    """

    size: int | None
    stride: Fraction | None
    padding: Fraction | None
    full: bool = False


@dataclass
class NodeCheck:
    """One probed node: the static RF, the measurement and the verdict.

    ``verdict`` is ``"agree"``, ``"disagree"`` (``detail`` names the first
    mismatching unit), or ``"measured"`` when the static RF is unknown (the
    measurement is then the answer).
    """

    node: str
    label: str
    static: RF
    measured: tuple[AxisMeasure, ...]
    verdict: str
    detail: str = ""
    units: int = 0

    def to_dict(self) -> dict[str, Any]:
        def num(x: Fraction | None) -> float | int | None:
            if x is None:
                return None
            return int(x) if x.denominator == 1 else float(x)

        return {
            "node": self.node,
            "label": self.label,
            "static": self.static.to_dict(),
            "measured": {
                "size": [m.size for m in self.measured],
                "stride": [num(m.stride) for m in self.measured],
                "padding": [num(m.padding) for m in self.measured],
                "global": [m.full for m in self.measured],
            },
            "verdict": self.verdict,
            "detail": self.detail,
            "units_probed": self.units,
        }


@dataclass
class Validation:
    """Result of :func:`validate`: one :class:`NodeCheck` per probed node."""

    input_shape: tuple[int, ...]
    device: str
    dtype: str
    checks: list[NodeCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No probed node disagrees with the static analysis."""
        return all(c.verdict != "disagree" for c in self.checks)

    def __getitem__(self, name: str) -> NodeCheck:
        for c in self.checks:
            if name in (c.node, c.label):
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "device": self.device,
            "dtype": self.dtype,
            "ok": self.ok,
            "nodes": [c.to_dict() for c in self.checks],
            "notes": self.notes,
        }

    def table(self) -> str:
        """Plain-text table: static vs probe size/stride/padding and the verdict."""
        rows = [("layer", "static size", "probe size", "static stride", "probe stride",
                 "static pad", "probe pad", "verdict")]
        for c in self.checks:
            s = c.static
            if s.status == "unknown":
                ss = st = sp = "?"
            else:
                ss = "x".join("all" if d.exact is None else str(d.size) for d in s.dims)
                st = "x".join("-" if d.exact is None else _f(d.stride) for d in s.dims)
                sp = "x".join("-" if d.exact is None else _f(d.padding) for d in s.dims)
            ms = "x".join("all" if m.full else ("?" if m.size is None else str(m.size)) for m in c.measured)
            mt = "x".join("-" if m.full else _f(m.stride) for m in c.measured)
            mp = "x".join("-" if m.full else _f(m.padding) for m in c.measured)
            verdict = c.verdict if not c.detail else f"{c.verdict}: {c.detail}"
            rows.append((c.label, ss, ms, st, mt, sp, mp, verdict))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = [f"gradient probe, input {'x'.join(map(str, self.input_shape))}, {self.dtype} on {self.device}"]
        for i, r in enumerate(rows):
            lines.append("  ".join(a.ljust(w) for a, w in zip(r, widths, strict=False)) + "  " + r[-1])
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 7)
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _f(x: Fraction | None) -> str:
    if x is None:
        return "?"
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


# ----------------------------------------------------------------------------- unit choice
def _central_run(m: int, period: int, run: int) -> list[int]:
    c = (m - 1) // 2
    c -= c % period
    return [i for i in range(c, c + run) if 0 <= i < m]


def _axis_units(m: int, period: int, run: int, border: bool) -> list[int]:
    want = _central_run(m, period, run)
    if border:
        want = want + [0, m - 1 - period, m - 1]
    out: list[int] = []
    for i in want:
        if 0 <= i < m and i not in out:
            out.append(i)
    return out


def _static_pixels(axis: Axis | None, index: int, n: int) -> tuple[torch.Tensor, bool]:
    """Static support along one axis clipped to the input, and whether it lies inside the input."""
    v = torch.zeros(n, dtype=torch.bool)
    if axis is None:  # global along this axis
        v[:] = True
        return v, True
    w = axis.window(index)
    for p in w.pixels():
        if 0 <= p < n:
            v[p] = True
    return v, w.empty or (w.lo >= 0 and w.hi <= n - 1)


def _span(v: torch.Tensor) -> tuple[int, int] | None:
    idx = torch.nonzero(v).flatten()
    if idx.numel() == 0:
        return None
    return int(idx[0]), int(idx[-1])


def _measure_axis(spans: dict[int, tuple[int, int] | None], n: int, period: int) -> AxisMeasure:
    """Size, stride and padding from the central run (``period + 1`` units from a phase-0 unit).

    Only supports that stay clear of both borders count: a unit whose computation
    reaches into padding sees less than its RF.
    """
    q = max(1, period)
    if not spans:
        return AxisMeasure(None, None, None)
    c = min(spans)
    ok = {i: s for i, s in spans.items() if s is not None and s[0] > 0 and s[1] < n - 1}
    sizes = [hi - lo + 1 for i, (lo, hi) in ok.items() if i < c + q]
    size = max(sizes) if len(sizes) == min(q, len(spans)) else None
    if c in ok and c + q in ok:
        step = ok[c + q][0] - ok[c][0]
        return AxisMeasure(size, Fraction(step, q), Fraction((c // q) * step - ok[c][0]))
    return AxisMeasure(size, None, None)


def _compare(my: Sequence[tuple[dict[int, int], torch.Tensor]], axes: Sequence[Axis | None],
             size: Sequence[int], central: dict[int, list[int]], ends: Sequence[tuple[int, int]]) -> tuple[str, str]:
    """Verdict for one node: central units inside the input must match exactly, others be contained.

    Units within one period of either end (``ends``: the allowed index range per axis) are
    only checked for containment even when their window lies inside the input: after a crop
    (negative padding) they may read padding of an intermediate tensor, which feeds them zeros.
    """
    nsp = len(size)
    interior_rows = 0
    for idx, sup in my:
        vecs, inside = zip(*(_static_pixels(axes[a], idx.get(a, 0), size[a]) for a in range(nsp)), strict=True)
        exp = vecs[0]
        for v in vecs[1:]:
            exp = exp.unsqueeze(-1) & v
        interior = all(inside) and all(
            idx.get(a, 0) in central.get(a, [0]) and ends[a][0] <= idx.get(a, 0) <= ends[a][1] for a in range(nsp))
        interior_rows += interior
        # a unit touching the border may see less than its window (padding feeds it zeros)
        bad = not torch.equal(exp, sup) if interior else bool((sup & ~exp).any())
        if bad:
            for a in range(nsp):
                proj = sup if nsp == 1 else sup.movedim(a, 0).flatten(1).any(1)
                if not torch.equal(proj, vecs[a]):
                    return "disagree", f"axis {a} unit {idx.get(a, 0)}: static {_span(vecs[a])} vs probe {_span(proj)}"
            return "disagree", f"unit {idx}: support is not the static product window"
    if not interior_rows:
        return "partial", "every probed unit touches the border (only containment checked); grow the input"
    return "agree", ""


def _ends(axes: Sequence[Axis | None], ext: dict[int, int], nsp: int) -> list[tuple[int, int]]:
    """Per axis, the unit indices at least one period away from both ends."""
    out = []
    for a in range(nsp):
        ax = axes[a] if a < len(axes) else None
        q = ax.period if ax is not None else 1
        m = ext.get(a, 1)
        out.append((q, m - 1 - q) if a in ext else (0, 0))
    return out


# ----------------------------------------------------------------------------- growth
def _needed_size(report: Report, names: Sequence[str]) -> list[int]:
    """Per axis, an input extent at which every probed node's central units avoid the border.

    Returns the current extent where that already holds; otherwise an estimate
    (the central unit sits near the middle) that the caller re-checks.
    """
    size = list(report.input_size)
    need = list(size)
    for name in names:
        rec = report.records[name]
        if not isinstance(rec.state, TensorRF) or rec.shape is None:
            continue
        rf = report.rf(name)
        if rf.status == "unknown":
            continue
        ext = axis_extents(rec.state.dims, rec.shape)
        for a, d in enumerate(rf.dims):
            ax = d.exact
            if ax is None or a >= len(size):
                continue
            run = _central_run(ext.get(a, 1), ax.period, ax.period + 1) or [0]
            ws = [ax.window(i) for i in run]
            if all(w.empty or (w.lo >= 0 and w.hi <= size[a] - 1) for w in ws):
                continue
            r, p, st = ax.size, int(ax.padding), ax.step
            est = 2 * max(p + st, r - p + st) + 1
            need[a] = max(need[a], est if est > size[a] else size[a] + 2 * st)
    return need


# ----------------------------------------------------------------------------- main entry
def _default_nodes(report: Report) -> list[str]:
    out: list[str] = []
    for path, node in report.modules.items():
        if "." not in path and node not in out and isinstance(report.records[node].state, TensorRF):
            out.append(node)
    last = report.output_node
    if last in report.records and isinstance(report.records[last].state, TensorRF) and last not in out:
        out.append(last)
    return out


def _node_names(report: Report, nodes: Sequence[str] | None) -> list[str]:
    return [_resolve(report, n) for n in nodes] if nodes else _default_nodes(report)


def _label(report: Report, node: str, asked: str | None) -> str:
    if asked is not None:
        return asked
    for path, n in report.modules.items():
        if n == node:
            return path
    return node


@contextmanager
def _closing(prog: Progress) -> Iterator[None]:
    try:
        yield
    finally:
        prog.close()


@deep_entry  # a model nested thousands of levels deep runs where the stack has room
@keeps_rng_state  # the linearised graph may still hold the model's random draws
def validate(
    model: torch.nn.Module,
    report: Report | None = None,
    nodes: Sequence[str] | None = None,
    input_shape: Sequence[int] | None = None,
    *,
    registry: Registry | None = None,
    leaf_modules: Sequence[str] = (),
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float64,
    batch_size: int = 4,
    grow: bool = True,
    max_size: int = 2048,
    border: bool = True,
    progress: bool = False,
) -> Validation:
    """Check the static RF of ``nodes`` (module paths or node names) with a gradient oracle.

    Without ``report`` the model is analysed at ``input_shape`` (``(N, C, *spatial)``),
    grown (``grow=True``, up to ``max_size``) until the central units of every probed
    node avoid the border.  With ``report`` its input size is used as is (windows are
    compared clipped to the input; numbers the clipping hides show as ``?``).
    ``nodes=None`` probes the top-level modules and the output.  ``dtype`` float64 is
    the safe default (deep corners underflow in float32).  ``border=False`` probes only
    the central units (cheaper).  ``progress=True`` shows probed units done / to do on stderr
    (tqdm when installed; the command line's default, off with ``--quiet``).  The model is never touched.

    >>> import torch.nn as nn, rfscope
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(), nn.MaxPool2d(2))
    >>> rfscope.probe.validate(net, input_shape=(1, 1, 32, 32), device="cpu").ok
    True
    """
    dev = resolve_device(device)
    notes: list[str] = []
    if report is None:
        if input_shape is None:
            raise ProbeError("give report= or input_shape=(N, C, *spatial)")
        report = analyze(model, input_shape, registry=registry, leaf_modules=leaf_modules)
        for _ in range(4 if grow else 0):
            need = [min(max_size, x) for x in _needed_size(report, _node_names(report, nodes))]
            if need == list(report.input_size):
                break
            shape = (*report.input_shape[:2], *need)
            report = analyze(model, shape, registry=registry, leaf_modules=leaf_modules)
        if grow and any(x >= max_size for x in report.input_size):
            notes.append(f"input capped at {max_size}; some units touch the border")
    check_trace_path(report.trace_path)
    names = _node_names(report, nodes)
    asked = list(nodes) if nodes else [None] * len(names)
    placeholders = [n for n in report.gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ProbeError(f"the probe handles single-input models; this one takes {len(placeholders)} inputs")
    size = report.input_size
    nsp = len(size)

    # rows: (node position, per-axis unit index)
    rows: list[tuple[int, dict[int, int]]] = []
    layouts: list[tuple[Any, ...]] = []
    central_runs: list[dict[int, list[int]]] = []
    extents: list[dict[int, int]] = []
    for k, name in enumerate(names):
        rec = report.records[name]
        st = rec.state
        if not isinstance(st, TensorRF) or rec.shape is None:
            raise ProbeError(f"node {name!r} is not a tensor that depends on the input")
        shape = rec.shape
        dims = layout_of(st, shape, nsp)
        layouts.append(tuple(dims))
        rf = report.rf(name)
        ext = axis_extents(dims, shape)
        per_axis: list[list[int]] = []
        runs: dict[int, list[int]] = {}
        for a in range(nsp):
            if a not in ext:
                per_axis.append([0])
                continue
            exact = rf.dims[a].exact if rf.status != "unknown" else None
            q = exact.period if exact is not None else 1
            run = q + 1 if exact is not None else (2 if rf.status == "global" else 4)
            runs[a] = _central_run(ext[a], q, run)
            per_axis.append(_axis_units(ext[a], q, run, border))
        central_runs.append(runs)
        extents.append(ext)
        for combo in zip_longest(*per_axis):
            idx = {a: (c if c is not None else per_axis[a][0]) for a, c in enumerate(combo)}
            rows.append((k, {a: i for a, i in idx.items() if a in ext}))

    lin = materialise(report.gm, model, device=dev, dtype=dtype, param_fn=constant_param)
    linearise(lin)
    supports: list[torch.Tensor] = []
    tiny = float("inf")
    in_shape = tuple(report.input_shape[1:])
    prog = Progress(len(rows), f"exact probe, {len(names)} node{'s' * (len(names) != 1)}",
                    enabled=progress, unit="unit")
    with exact_kernels(dev), running(), _closing(prog):  # not while torch.export traces in another thread
        for k, name in enumerate(names):
            # one graph per node, cut after it (weights shared): shallow nodes cost only their depth
            gm = select_outputs(fx.GraphModule(lin, copy.deepcopy(lin.graph)), [name])
            node_rows = [r for r in rows if r[0] == k]
            for s in range(0, len(node_rows), max(1, batch_size)):
                chunk = node_rows[s:s + batch_size]
                x = torch.ones((len(chunk), *in_shape), dtype=dtype, device=dev, requires_grad=True)
                (out,) = gm(x)
                if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != len(chunk):
                    raise ProbeError(f"node {name!r} has no batch dimension; the probe needs one")
                want = report.records[name].shape
                if want is not None and tuple(out.shape[1:]) != tuple(want[1:]):
                    raise ProbeError(f"node {name!r}: the linearised graph gives shape {tuple(out.shape)}, the "
                                     f"analysis {tuple(want)}; rerun with --debug and report it")
                masks = torch.stack([unit_mask(layouts[k], out.shape, r[1], dtype=dtype, device=dev)
                                     for r in chunk])
                (g,) = torch.autograd.grad((out * masks).sum(), x)
                g = g.detach().abs()
                pos = g[g > 0]
                if pos.numel():
                    tiny = min(tiny, float(pos.min()))
                supports.extend(list((g != 0).any(1).cpu()))  # (B, *spatial): any input channel
                prog.update(len(chunk))
    finfo = torch.finfo(dtype)
    if tiny < finfo.tiny * 1e6:
        notes.append(f"smallest contribution {tiny:.3g} is near {dtype} underflow; rerun in float64")

    checks: list[NodeCheck] = []
    for k, name in enumerate(names):
        rf = report.rf(name)
        my = [(idx, supports[b]) for b, (kk, idx) in enumerate(rows) if kk == k]
        verdict, detail = "agree", ""
        if rf.status == "unknown":
            verdict = "measured"
        elif rf.table is not None:  # a per-position table: not compared here (the oracle tests do)
            verdict, detail = "measured", "per-position table: measured only"
        else:
            st = report.records[name].state
            assert isinstance(st, TensorRF)
            axes: list[Axis | None] = [None if isinstance(x, Global) else x for x in st.axes]
            ends = _ends(axes, extents[k], nsp)
            verdict, detail = _compare(my, axes, size, central_runs[k], ends)
            if verdict == "disagree" and rf.status == "global":
                # norm layers are identity in the oracle (docs/design.md §5): a node global only through
                # them shows its local RF
                local = [x.local if isinstance(x, Global) else x for x in st.axes]
                ends_l = _ends(local, extents[k], nsp)
                if all(x is not None for x in local) and \
                        _compare(my, local, size, central_runs[k], ends_l)[0] != "disagree":
                    verdict = "agree"
                    detail = "local RF (global only through norm layers, identity in the oracle)"
        measured: list[AxisMeasure] = []
        for a in range(nsp):
            spans: dict[int, tuple[int, int] | None] = {}
            full = True
            crun = central_runs[k].get(a, [0])
            for idx, sup in my:
                proj = sup if nsp == 1 else sup.movedim(a, 0).flatten(1).any(1)
                full = full and bool(proj.all())
                if idx.get(a, 0) in crun:
                    spans.setdefault(idx.get(a, 0), _span(proj))
            ax = rf.dims[a].exact if rf.status != "unknown" else None
            if full and ax is None:
                measured.append(AxisMeasure(size[a], None, None, True))
            else:
                measured.append(_measure_axis(spans, size[a], ax.period if ax is not None else 1))
        checks.append(NodeCheck(name, _label(report, name, asked[k]), rf, tuple(measured), verdict, detail,
                                len(my)))
    return Validation(tuple(report.input_shape), str(dev), str(dtype).replace("torch.", ""), checks, notes)
