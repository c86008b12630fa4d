"""Parameter and MAC counts and depthwise-separable blocks: a pure pass over the records.

:func:`count` reads the interpreter pass's records, the traced graph and the analysed copy
of the model (:func:`rfscope.trace.copy.structural_copy`), which keeps tensor identity: a
weight tied in two places, or a module called twice, is *one* parameter tensor.  It is
counted at the first node that uses it; later uses list it in ``NodeCount.shared``
(parameter name -> the node that counted it) and add nothing.

* A ``call_module`` node uses all parameters of its (leaf) module.
* A ``get_attr`` parameter (functional models: ``F.conv2d(x, self.w)``) is
  counted at the first node downstream of it that depends on the model input, so
  ``F.conv2d(x, standardize(self.w))`` counts ``w`` at the conv.
* MACs come from the plugins' ``macs(ctx)`` on the propagated (meta) shapes; a
  node whose MACs cannot be counted is listed in ``summary.macs_unknown``, and so is
  a node after a data-dependent op (its shapes are one input's: ``rfscope.trace.datadep``),
  whose MACs are left out of the totals.

Convolution anatomy (``NodeRecord.conv_kind``, from the plugin's
:class:`~rfscope.core.geometry.Geometry`) is a list: a primary kind, then flags; see
:meth:`~rfscope.core.geometry.Geometry.conv_kind`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn as nn

from rfscope.core.state import TensorRF
from rfscope.core.traits import POINTWISE
from rfscope.trace.copy import named_modules
from rfscope.trace.datadep import UNKNOWN_META

if TYPE_CHECKING:
    from rfscope.passes.interpret import NodeRecord

__all__ = [
    "ParamCount",
    "Summary",
    "SeparableBlock",
    "Counts",
    "count",
    "NodeCount",
    "fmt_count",
]



# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamCount:
    """Parameter and buffer element counts of a module, each tensor counted once."""

    total: int
    trainable: int
    frozen: int
    buffers: int
    #: MACs of the nodes inside the module (all its calls), from the analysis.
    macs: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"params_total": self.total, "params_trainable": self.trainable,
                "params_frozen": self.frozen, "buffers": self.buffers, "macs": self.macs}


@dataclass(frozen=True)
class Summary:
    """Whole-model totals.

    ``params_unused`` counts parameters that no traced node uses (modules that
    ``forward`` never calls); they are still part of ``params_total``.
    ``macs_unknown`` names nodes whose cost is not in ``macs`` (ops without a
    plugin), so ``macs`` is a lower bound when it is not empty.
    """

    params_total: int
    params_trainable: int
    params_frozen: int
    buffers: int
    macs: int
    params_unused: int = 0
    macs_unknown: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"params_total": self.params_total, "params_trainable": self.params_trainable,
                "params_frozen": self.params_frozen, "buffers": self.buffers, "macs": self.macs,
                "params_unused": self.params_unused, "macs_unknown": list(self.macs_unknown)}


@dataclass(frozen=True)
class SeparableBlock:
    """A depthwise k×k conv feeding (through norm/activation only) a pointwise 1×1 conv.

    ``params`` counts the two convolutions' weights (biases and norm layers
    excluded, as in the textbook formula); ``standard_params`` is ``prod(k)·C_in·C_out``,
    the weights of one standard conv with the same kernel and channels.
    ``formula_ratio`` is ``m·(1/C_out + 1/prod(k))`` (``m`` the depth multiplier,
    usually 1: ``1/C_out + 1/k²``).  MACs are those of the two nodes against the
    standard conv producing the pointwise conv's output.
    """

    depthwise: str
    pointwise: str
    via: tuple[str, ...]
    kernel: tuple[int, ...]
    c_in: int
    c_out: int
    multiplier: int
    params: int
    standard_params: int
    macs: int | None
    standard_macs: int | None

    @property
    def params_ratio(self) -> float:
        return self.params / self.standard_params

    @property
    def macs_ratio(self) -> float | None:
        if self.macs is None or not self.standard_macs:
            return None
        return self.macs / self.standard_macs

    @property
    def formula_ratio(self) -> float:
        return self.multiplier * (1 / self.c_out + 1 / math.prod(self.kernel))

    def to_dict(self) -> dict[str, Any]:
        return {"depthwise": self.depthwise, "pointwise": self.pointwise, "via": list(self.via),
                "kernel": list(self.kernel), "c_in": self.c_in, "c_out": self.c_out,
                "multiplier": self.multiplier, "params": self.params,
                "standard_params": self.standard_params, "params_ratio": self.params_ratio,
                "formula_ratio": self.formula_ratio, "macs": self.macs,
                "standard_macs": self.standard_macs, "macs_ratio": self.macs_ratio}


@dataclass(frozen=True)
class NodeCount:
    """The parameters one node uses: ``params`` elements first counted here (``None``: it uses
    none), ``shared`` the ones an earlier node counted (parameter name -> that node)."""

    params: int | None = None
    shared: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"params": self.params}
        if self.shared:
            d["shared"] = dict(self.shared)
        return d


_NONE = NodeCount()


@dataclass
class Counts:
    """What :func:`count` returns: whole-model totals, separable blocks, and per node and module counts."""

    summary: Summary
    separable_blocks: list[SeparableBlock]
    model: nn.Module
    records: dict[str, NodeRecord] = field(repr=False)
    per_node: dict[str, NodeCount] = field(default_factory=dict, repr=False)
    _macs_by_module: dict[str, int] | None = field(default=None, repr=False)
    #: nodes whose shapes depend on the data's values (``rfscope.trace.datadep``): their MACs are not counted
    data_dependent: frozenset[str] = field(default=frozenset(), repr=False)
    _tensors_by_module: dict[str, tuple[int, int, int]] | None = field(default=None, repr=False)

    def node(self, name: str) -> NodeCount:
        """The parameters node ``name`` uses (none for a node that uses no parameter)."""
        return self.per_node.get(name, _NONE)

    def module_params(self, path: str) -> ParamCount:
        """Counts for the submodule at ``path`` (``""`` is the whole model)."""
        got = self._module_tensors().get(path)
        if got is None:
            raise KeyError(f"{path!r} is not a submodule path of the model")
        total, trainable, buffers = got
        return ParamCount(total, trainable, total - trainable, buffers, self._module_macs().get(path, 0))

    def _module_tensors(self) -> dict[str, tuple[int, int, int]]:
        """(parameters, trainable, buffer elements) of every submodule path, each tensor once per path:
        one walk over the tree, every tensor added to the paths that enclose its module."""
        if self._tensors_by_module is None:
            params: dict[str, dict[int, torch.Tensor]] = {}
            bufs: dict[str, dict[int, torch.Tensor]] = {}
            for path, m in named_modules(self.model, remove_duplicate=False):  # iterative: no depth limit
                params.setdefault(path, {})
                bufs.setdefault(path, {})
                if not (m._parameters or m._buffers):
                    continue  # (enclosing paths cost depth^2 characters: only for modules with tensors)
                parts = path.split(".") if path else []
                enclosing = [".".join(parts[:i]) for i in range(len(parts) + 1)]
                for store, ts in ((params, m._parameters.values()), (bufs, m._buffers.values())):
                    for t in ts:
                        if t is not None:
                            for p in enclosing:
                                store.setdefault(p, {})[id(t)] = t
            self._tensors_by_module = {
                p: (sum(t.numel() for t in ps.values()), sum(t.numel() for t in ps.values() if t.requires_grad),
                    sum(b.numel() for b in bufs[p].values()))
                for p, ps in params.items()
            }
        return self._tensors_by_module

    def _module_macs(self) -> dict[str, int]:
        """MACs summed into every enclosing module path (computed once)."""
        if self._macs_by_module is None:
            acc: dict[str, int] = {}
            for r in self.records.values():
                if not r.macs or r.name in self.data_dependent:
                    continue
                acc[""] = acc.get("", 0) + r.macs
                if r.module:
                    parts = r.module.split(".")
                    for i in range(1, len(parts) + 1):
                        key = ".".join(parts[:i])
                        acc[key] = acc.get(key, 0) + r.macs
            self._macs_by_module = acc
        return self._macs_by_module


# ---------------------------------------------------------------------------
def fmt_count(n: int | None) -> str:
    """Three significant digits with a unit: ``1234567 -> '1.23M'``, ``None -> '-'``.

    The unit is chosen after rounding, so ``999_999`` is ``'1.00M'``, never ``'1e+03K'``.

    >>> [fmt_count(v) for v in (999, 1000, 12_345, 999_500, 999_999, 123_456_789, None)]
    ['999', '1.00K', '12.3K', '1.00M', '1.00M', '123M', '-']
    """
    if n is None:
        return "-"
    if abs(n) < 1000:
        return str(n)
    units = ((10**3, "K"), (10**6, "M"), (10**9, "G"), (10**12, "T"))
    for i, (div, suf) in enumerate(units):
        v = float(f"{n / div:.3g}")  # rounded to three significant digits
        if abs(v) < 1000 or i == len(units) - 1:
            decimals = max(0, 2 - len(str(int(abs(v)))) + 1)
            return f"{v:.{decimals}f}{suf}"
    raise AssertionError("unreachable")


def _unique(ts: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for t in ts:
        seen.setdefault(id(t), t)
    return list(seen.values())


def _param_totals(ps: Iterable[torch.Tensor]) -> tuple[int, int, list[torch.Tensor]]:
    """Total and trainable element counts, and the unique tensors they were summed over."""
    u = _unique(ps)
    total = sum(p.numel() for p in u)
    trainable = sum(p.numel() for p in u if p.requires_grad)
    return total, trainable, u


def _first_data_consumer(n: fx.Node, records: dict[str, NodeRecord], order: dict[fx.Node, int]) -> fx.Node:
    """First node (graph ``order``) downstream of ``n`` whose value depends on the input."""
    found: list[fx.Node] = []
    stack = list(n.users)
    seen: set[fx.Node] = set()
    while stack:
        u = stack.pop()
        if u in seen:
            continue
        seen.add(u)
        rec = records.get(u.name)
        if u.op == "output":
            continue
        if rec is not None and isinstance(rec.state, TensorRF):
            found.append(u)
        else:
            stack.extend(u.users)
    if not found:
        return n
    return min(found, key=lambda x: order[x])


def _attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _resolve(model: nn.Module, gm: fx.GraphModule, target: str) -> Any:
    """A get_attr / call_module target in the model itself (ATen graphs hold their own tensor
    objects under the model's qualified names), else in the graph module."""
    for root in (model, gm):
        try:
            return _attr(root, target)
        except AttributeError:
            continue
    return None


def count(records: dict[str, NodeRecord], gm: fx.GraphModule, model: nn.Module) -> Counts:
    """Parameters (by tensor identity), MACs and separable blocks of an analysed graph.

    ``records`` are the interpreter pass's records of ``gm``; ``model`` is the analysed copy of
    the user's model (it shares the user's tensors, so tied weights are one tensor).

    Parameters
    ----------
    records : dict of str to NodeRecord
        The records of every node of ``gm``, in graph order.
    gm : torch.fx.GraphModule
        The traced graph.
    model : torch.nn.Module
        The analysed copy of the model.

    Returns
    -------
    Counts
        Totals, per-node and per-module counts; nothing is written to ``records``.

    Examples
    --------
    >>> import torch.nn as nn, rfscope
    >>> r = rfscope.analyze(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1)), input_shape=(1, 3, 8, 8))
    >>> r.counts.summary.params_total, r.counts.per_node["_1"].params
    (296, 72)
    """
    # one walk over the module tree: parameter names (first qualified name of each tensor), all
    # parameters and buffers (as model.named_parameters / parameters / buffers would list them)
    submodules = dict(named_modules(model, remove_duplicate=False))  # iterative: no depth limit
    names: dict[int, str] = {}
    all_params: list[torch.Tensor] = []
    all_buffers: list[torch.Tensor] = []
    for mname, m in submodules.items():
        for pname, p in m._parameters.items():
            if p is not None:
                names.setdefault(id(p), f"{mname}.{pname}" if mname else pname)
                all_params.append(p)
        all_buffers.extend(b for b in m._buffers.values() if b is not None)
    # Which parameters does each node use?
    uses: dict[str, list[torch.Tensor]] = {}
    mods: dict[str, Any] = {}  # call_module node -> its module, resolved once
    order = {x: i for i, x in enumerate(gm.graph.nodes)}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            mod = submodules.get(str(n.target))
            if mod is None:
                mod = _resolve(model, gm, str(n.target))
            mods[n.name] = mod
            if isinstance(mod, nn.Module):
                # a childless module's parameters are its own dict (what .parameters() walks to)
                own = mod._parameters.values() if not mod._modules else mod.parameters()
                uses.setdefault(n.name, []).extend(p for p in own if p is not None)
        elif n.op == "get_attr":
            t = _resolve(model, gm, str(n.target))
            if isinstance(t, nn.Parameter):
                names.setdefault(id(t), str(n.target))
                uses.setdefault(_first_data_consumer(n, records, order).name, []).append(t)
    counted: dict[int, str] = {}
    per_node: dict[str, NodeCount] = {}
    for n in gm.graph.nodes:
        ps = uses.get(n.name)
        if not ps or n.name not in records:
            continue
        new, shared = 0, {}
        for t in _unique(ps):
            if id(t) in counted:
                shared[names.get(id(t), "?")] = counted[id(t)]
            else:
                counted[id(t)] = n.name
                new += t.numel()
        per_node[n.name] = NodeCount(new, shared)
    total, trainable, params = _param_totals(all_params)
    used = sum(p.numel() for p in params if id(p) in counted)
    buffers = sum(b.numel() for b in _unique(all_buffers))
    # a node after a data-dependent op has the shapes of one input's data: its cost is not known
    dd = frozenset(n.name for n in gm.graph.nodes if n.meta.get(UNKNOWN_META) is not None)
    macs = sum(r.macs or 0 for r in records.values() if r.name not in dd)
    unknown = tuple(r.name for r in records.values()
                    if r.op in ("call_module", "call_function", "call_method") and r.shape is not None
                    and ((r.macs is None and r.plugin is None) or (r.name in dd and r.macs)))
    summary = Summary(total, trainable, total - trainable, buffers, macs, total - used, unknown)
    blocks = _separable_blocks(records, gm, mods)
    return Counts(summary, blocks, model, records, per_node, data_dependent=dd)


def _between(rec: NodeRecord | None) -> bool:
    """An op allowed between a depthwise and a pointwise conv: pointwise, one input, same shape
    (norms, activations, dropout, copies; the plugins say so with their traits)."""
    return rec is not None and POINTWISE in rec.traits


def _separable_blocks(records: dict[str, NodeRecord], gm: fx.GraphModule, mods: dict[str, Any]) -> list[SeparableBlock]:
    nodes = {n.name: n for n in gm.graph.nodes}
    blocks: list[SeparableBlock] = []
    for name, rec in records.items():
        g = rec.geometry
        if g is None or g.kind != "conv" or g.transposed or g.weight_shape is None or g.groups <= 1 \
                or not rec.conv_kind or rec.conv_kind[0] != "depthwise" or name not in nodes:
            continue
        c_in = g.groups
        c_mid = int(g.weight_shape[0])
        # Follow single-input, channel-preserving ops to pointwise convs.
        stack: list[tuple[fx.Node, tuple[str, ...]]] = [(u, ()) for u in nodes[name].users]
        while stack:
            u, via = stack.pop()
            urec = records.get(u.name)
            ug = urec.geometry if urec is not None else None
            if ug is not None and urec is not None and ug.kind == "conv" and ug.weight_shape is not None \
                    and urec.conv_kind == ["pointwise"] and int(ug.weight_shape[1]) == c_mid \
                    and u.args and isinstance(u.args[0], fx.Node):
                c_out = int(ug.weight_shape[0])
                kprod = math.prod(g.kernel)
                params = math.prod(g.weight_shape) + math.prod(ug.weight_shape)
                std_macs = None
                out = urec.shape
                if out is not None and len(out) >= 2:
                    std_macs = math.prod(out) * c_in * kprod
                macs = (rec.macs + urec.macs) if rec.macs is not None and urec.macs is not None else None
                blocks.append(SeparableBlock(
                    name, u.name, via, g.kernel, c_in, c_out, c_mid // c_in, params,
                    kprod * c_in * c_out, macs, std_macs))
            elif (_between(records.get(u.name)) and len([a for a in u.all_input_nodes if _is_data(a, records)]) == 1) \
                    or _gate(u, records):
                stack.extend((w, (*via, u.name)) for w in u.users)
    order = {name: i for i, name in enumerate(nodes)}
    blocks.sort(key=lambda b: order[b.depthwise])
    return blocks


_MULS = (operator.mul, torch.mul)


def _gate(u: fx.Node, records: dict[str, NodeRecord]) -> bool:
    """``x * gate`` with a per-channel gate of ``x``'s own shape after broadcasting (squeeze-excitation)."""
    if not ((u.op == "call_function" and u.target in _MULS) or (u.op == "call_method" and u.target == "mul")):
        return False
    shapes = [records[a.name].shape for a in u.all_input_nodes if a.name in records]
    out = records[u.name].shape if u.name in records else None
    return len(shapes) == 2 and out is not None and out in shapes and all(
        s is not None and len(s) == len(out) and all(x in (1, y) for x, y in zip(s, out, strict=True))
        and (len(s) < 3 or all(x == 1 for x in s[2:]) or s == out) for s in shapes)


def _is_data(n: fx.Node, records: dict[str, NodeRecord]) -> bool:
    rec = records.get(n.name)
    return rec is not None and isinstance(rec.state, TensorRF)
