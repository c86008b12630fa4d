"""The initialisation check's view of a weighted op: a plugin's ``init_view``.

A plugin that handles a weighted op (a convolution, a dense map) may give ``init_view(ctx)``:
from an :class:`InitContext` (one call of the op, with the user's *real* tensors) it returns the
:class:`WeightView` of that call, or ``None`` when the call has no weight of its own (a weight
computed in the forward, e.g. weight standardisation).  The initialisation check
(:mod:`rfscope.passes.initcheck`) judges exactly the weights these views name; register one the
same way as ``rf`` and ``macs``: ``registry.add(name, targets, rf=..., init_view=...)``.

>>> import torch
>>> v = WeightView(torch.ones(4, 3, 5), None, "w")
>>> v.fans(), tuple(v.rows().shape)
((15, 20), (4, 15))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from rfscope.core.context import param_positions

__all__ = ["WeightView", "InitContext", "InitView", "module_view"]


@dataclass(frozen=True)
class WeightView:
    """A weighted call's real tensors: its units are ``weight``'s ``out_dim`` slices.

    ``in_dim`` is the weight dim that indexes input units (the previous layer's), ``groups``
    the call's groups (units of different groups see different inputs).
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    weight_name: str
    bias_name: str | None = None
    out_dim: int = 0
    in_dim: int = 1
    groups: int = 1

    def fans(self) -> tuple[int, int]:
        """PyTorch's fan-in / fan-out (``nn.init._calculate_fan_in_and_fan_out``)."""
        w = self.weight
        rf = math.prod(w.shape[2:]) if w.dim() > 2 else 1
        return int(w.shape[1]) * rf, int(w.shape[0]) * rf

    def rows(self, with_bias: bool = True) -> torch.Tensor:
        """One row per output unit: its incoming weights, then its bias (unless ``with_bias=False``)."""
        w = self.weight.detach().float().movedim(self.out_dim, 0).reshape(self.weight.shape[self.out_dim], -1)
        if with_bias and self.bias is not None:
            w = torch.cat([w, self.bias.detach().float().reshape(-1, 1)], dim=1)
        return w

    def columns(self, spread: int) -> torch.Tensor | None:
        """One row per input unit: its outgoing weights (``spread`` inputs per unit after a flatten)."""
        if self.groups != 1:
            return None
        w = self.weight.detach().float().movedim(self.in_dim, 0)
        n_in = int(w.shape[0])
        if n_in % spread:
            return None
        return w.reshape(n_in // spread, -1)  # input index c*spread + p: unit c's block


@dataclass(frozen=True)
class InitContext:
    """One call as an ``init_view`` sees it: the fx node, the real module (or ``None``) and its arguments.

    ``target``/``args``/``kwargs`` are the call's (fx nodes or literals; a tensor method's target
    is its name, as in fx); they differ from the node's own when an ATen call is handed to the
    torch-level plugin it translates to (:meth:`translated`).  :meth:`tensor` turns a
    ``get_attr`` argument into the real tensor.
    """

    node: fx.Node
    module: nn.Module | None
    model: nn.Module
    names: Mapping[int, str]
    target: Any = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, node: fx.Node, module: nn.Module | None, model: nn.Module, names: Mapping[int, str]) -> InitContext:
        """The context of ``node`` itself."""
        return cls(node, module, model, names, node.target, tuple(node.args), dict(node.kwargs))

    def translated(self, target: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> InitContext:
        """The same node seen as the call ``target(*args, **kwargs)`` (an ATen op's torch-level equivalent)."""
        return replace(self, module=None, target=target, args=args, kwargs=kwargs)

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """A raw call argument (an fx node or a literal) by position or keyword."""
        if index < len(self.args):
            return self.args[index]
        return (self.kwargs or {}).get(name, default)

    def param(self, name: str, default: Any = None) -> Any:
        """A raw call argument by parameter name (positions from the target's signature or schema)."""
        kw = self.kwargs or {}
        if name in kw:
            return kw[name]
        pos = param_positions(self.target, isinstance(self.target, str)).get(name)  # a str: a tensor method
        if pos is not None and pos < len(self.args):
            return self.args[pos]
        return default

    def tensor(self, arg: Any) -> torch.Tensor | None:
        """The real tensor behind an fx argument that is a ``get_attr`` node, else ``None``."""
        if isinstance(arg, fx.Node) and arg.op == "get_attr":
            obj: Any = self.model
            try:
                for part in str(arg.target).split("."):
                    obj = getattr(obj, part)
            except AttributeError:
                return None
            return obj if isinstance(obj, torch.Tensor) else None
        return None

    def name(self, t: torch.Tensor | None) -> str | None:
        """The qualified name of a real parameter or buffer (``"?"`` if it is not the model's)."""
        return None if t is None else self.names.get(id(t), "?")


#: a plugin's ``init_view``: the :class:`WeightView` of one call, or ``None``
InitView = Callable[[InitContext], "WeightView | None"]


def module_view(ctx: InitContext) -> WeightView | None:
    """The view of a module holding ``weight`` (and ``bias``); ``transposed`` modules swap the unit dims."""
    m: Any = ctx.module
    w = getattr(m, "weight", None)
    if not isinstance(w, torch.Tensor):
        return None
    b = getattr(m, "bias", None)
    b = b if isinstance(b, torch.Tensor) else None
    transposed = bool(getattr(m, "transposed", False))
    return WeightView(w, b, ctx.name(w) or "weight", ctx.name(b), 1 if transposed else 0,
                      0 if transposed else 1, int(getattr(m, "groups", 1)))
