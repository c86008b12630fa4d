"""Dataflow helpers of the initialisation check: which calls hold weights, and where their units go.

Everything here reads what the plugins said about each node (its record's traits and its
plugin's ``init_view``): no table of targets.  A unit is one output channel (feature) of a
weighted call; following it downstream through channelwise ops (:data:`~rfscope.core.traits.CHANNELWISE`)
and flattens tells whether anything can ever tell two units apart.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from rfscope.core.initview import InitContext, InitView, WeightView
from rfscope.core.registry import Method, Registry
from rfscope.core.traits import CHANNELWISE, FLATTEN, NORM, RELU

__all__ = ["UnitGraph", "End", "unit_axis", "view_of_class"]


@dataclass
class End:
    """Where a unit's values stop being followed: ``kind`` is "layer", "relu", "output" or "other"."""

    kind: str
    node: fx.Node
    #: positions per unit after a flatten (1 before)
    spread: int = 1
    #: the channelwise ops and flattens on the way
    via: tuple[fx.Node, ...] = ()


def view_of_class(registry: Registry, cls: type) -> InitView | None:
    """The ``init_view`` of the plugin for a module class, found through its whole MRO."""
    for c in cls.__mro__:
        p = registry.lookup(c)
        if p is not None and p.init_view is not None:
            return p.init_view
    return None


def _view_of(registry: Registry, n: fx.Node, module: nn.Module | None) -> InitView | None:
    if module is not None:
        return view_of_class(registry, type(module))
    p = registry.lookup(Method(str(n.target))) if n.op == "call_method" else registry.lookup(n.target)
    return p.init_view if p is not None else None


class UnitGraph:
    """The analysed graph with the real modules (of ``model``) and the weighted calls' views attached."""

    def __init__(self, records: Mapping[str, Any], gm: fx.GraphModule, model: nn.Module, registry: Registry) -> None:
        self.gm = gm
        self.records = records
        self.model = model
        self.names: dict[int, str] = {}
        for name, t in model.named_parameters(remove_duplicate=False):
            self.names.setdefault(id(t), name)
        for name, b in model.named_buffers(remove_duplicate=False):
            self.names.setdefault(id(b), name)
        self.views: dict[fx.Node, WeightView] = {}
        self.modules: dict[fx.Node, nn.Module] = {}
        for n in gm.graph.nodes:
            if n.op not in ("call_module", "call_function", "call_method"):
                continue
            module = None
            if n.op == "call_module":
                try:
                    module = model.get_submodule(str(n.target))
                except AttributeError:
                    continue
                self.modules[n] = module
            view = _view_of(registry, n, module)
            if view is None:
                continue
            v = view(InitContext.of(n, module, model, self.names))
            if v is not None and v.weight.dim() >= 2:
                self.views[n] = v

    def label(self, n: fx.Node | str) -> str:
        """The node's row label (module path / call)."""
        name = n if isinstance(n, str) else n.name
        rec = self.records.get(name)
        return rec.label if rec is not None else name  # type: ignore[no-any-return]

    def traits(self, n: fx.Node) -> frozenset[str]:
        rec = self.records.get(n.name)
        return rec.traits if rec is not None else frozenset()  # type: ignore[no-any-return]

    def is_data_input(self, user: fx.Node, n: fx.Node) -> bool:
        return bool(user.args) and user.args[0] is n

    def flatten_spread(self, u: fx.Node) -> int | None:
        """Positions per channel if ``u`` flattens (N, C, *S) to (N, C*prod(S)), else None."""
        if FLATTEN not in self.traits(u) or not u.args or not isinstance(u.args[0], fx.Node):
            return None
        x, y = u.args[0].meta.get("val"), u.meta.get("val")
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.dim() < 2 or y.dim() != 2:
            return None
        if y.shape[0] != x.shape[0] or y.shape[1] != math.prod(x.shape[1:]):
            return None
        return math.prod(x.shape[2:])

    def ends(self, n: fx.Node, stop_at_relu: bool) -> list[End]:
        """Where ``n``'s units go, through ops that treat every unit alike."""
        out: list[End] = []
        stack: list[tuple[fx.Node, int, tuple[fx.Node, ...]]] = [(n, 1, ())]
        while stack:
            x, spread, via = stack.pop()
            for u in x.users:
                traits = self.traits(u)
                if u.op == "output":
                    out.append(End("output", u, spread, via))
                elif stop_at_relu and RELU in traits:
                    out.append(End("relu", u, spread, via))
                elif u in self.views and self.is_data_input(u, x):
                    out.append(End("layer", u, spread, via))
                elif CHANNELWISE in traits and self.is_data_input(u, x):
                    stack.append((u, spread, (*via, u)))
                elif (s := self.flatten_spread(u)) is not None and spread == 1:
                    stack.append((u, s, (*via, u)))
                else:
                    out.append(End("other", u, spread, via))
        return out

    def normalised(self, n: fx.Node) -> bool:
        """A normalisation layer follows ``n`` on some path before the next weighted layer."""
        seen: set[fx.Node] = set()
        stack = list(n.users)
        while stack:
            u = stack.pop()
            if u in seen:
                continue
            seen.add(u)
            if NORM in self.traits(u):
                return True
            if u in self.views or u.op == "output":
                continue
            stack.extend(u.users)
        return False

    def params_same(self, via: Iterable[fx.Node], units: torch.Tensor) -> bool:
        """The modules on the path have the same per-channel parameters and buffers for ``units``.

        A channelwise module's 1-d tensors hold one value per channel (BatchNorm's affine
        parameters and statistics, PReLU's slopes) or one shared value.
        """
        for u in via:
            m = self.modules.get(u)
            if m is None:
                continue
            for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)):
                if isinstance(t, torch.Tensor) and t.dim() == 1 and t.numel() > 1:
                    if len(units) and int(units.max()) >= t.numel():
                        return False
                    v = t.detach().float()[units]
                    if not bool((v == v[0]).all()):
                        return False
        return True


def unit_axis(v: WeightView, x: fx.Node) -> int | None:
    """Tensor dim of ``x`` (a layer's output or input) that holds that layer's units."""
    val = x.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    return val.dim() - 1 if v.weight.dim() == 2 else min(1, val.dim() - 1)
