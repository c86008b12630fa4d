"""What a plugin sees when it is asked about one fx node."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import Any, Protocol

import torch
import torch.fx as fx

from rfscope.core.state import CONST, TensorRF, unknown

__all__ = ["OpContext", "Unsupported", "param_positions"]


class Unsupported(Exception):
    """Raised by a plugin for a call it cannot analyse exactly; the node becomes ``unknown``."""


class PluginLookup(Protocol):
    """What a plugin may ask of the analysis's registry (:class:`rfscope.core.registry.Registry`),
    named here so that this module does not import the registry (which imports it)."""

    def lookup(self, target: Any) -> Any: ...


@dataclass
class OpContext:
    """One call: the fx node, the (meta) module, argument states and meta values.

    ``args``/``kwargs`` hold the RF states of the arguments (:class:`TensorRF`,
    :data:`CONST`, or tuples of those); ``arg_values``/``kwarg_values`` hold the
    propagated values (meta tensors or Python objects); ``out`` is the node's value.
    """

    node: fx.Node
    module: torch.nn.Module | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    arg_values: tuple[Any, ...]
    kwarg_values: dict[str, Any]
    out: Any
    input_size: tuple[int, ...]
    #: per-call scratch space for plugins (one context per node and analysis, so never shared)
    memo: dict[str, Any] = field(default_factory=dict)
    #: the registry of this analysis (a plugin that hands a call to another plugin looks it up here,
    #: so per-analysis overrides reach it)
    registry: PluginLookup | None = None
    #: the graph's own node when ``node`` stands for it (an ATen call handed to a torch-level plugin
    #: gets a one-node graph): where its users are
    origin: fx.Node | None = None

    # -- convenience ----------------------------------------------------
    @property
    def first(self) -> TensorRF:
        """State of the first tensor argument."""
        for a in self.args:
            if isinstance(a, TensorRF):
                return a
        raise Unsupported("no input tensor depends on the model input")

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """A call argument's *value* by position or keyword."""
        if index < len(self.arg_values):
            return self.arg_values[index]
        return self.kwarg_values.get(name, default)

    def once(self, key: str, compute: Callable[[OpContext], Any]) -> Any:
        """``compute(self)``, kept in :attr:`memo` under ``key``: a plugin's RF, MACs and geometry
        functions that read the same facts of one call compute them once."""
        if key not in self.memo:
            self.memo[key] = compute(self)
        return self.memo[key]

    def param(self, name: str, default: Any = None) -> Any:
        """A call argument's *value* by its parameter name, wherever it was passed.

        Positions come from the target's own signature or schema (:func:`param_positions`),
        so plugins never hard-code argument indices.  Module plugins read the module's
        attributes instead.

        Raises
        ------
        Unsupported
            The target's signature cannot be found, so a positional argument cannot be named
            (the node becomes ``unknown`` rather than read the wrong argument).
        """
        if name in self.kwarg_values:
            return self.kwarg_values[name]
        n = self.node
        positions = param_positions(n.target, n.op == "call_method")
        if not positions and self.arg_values:  # no signature: never guess which argument it is
            raise Unsupported(f"cannot read argument {name!r}: no signature for {n.target!r}")
        pos = positions.get(name)
        if pos is not None and pos < len(self.arg_values):
            return self.arg_values[pos]
        return default

    def state(self, index: int, name: str) -> Any:
        """A call argument's *state* by position or keyword."""
        if index < len(self.args):
            return self.args[index]
        return self.kwargs.get(name, CONST)

    @property
    def out_shape(self) -> tuple[int, ...]:
        if isinstance(self.out, torch.Tensor):
            return tuple(int(s) for s in self.out.shape)
        raise Unsupported("output is not a tensor")

    def in_shape(self, index: int = 0) -> tuple[int, ...]:
        v = self.arg_values[index] if index < len(self.arg_values) else None
        if isinstance(v, torch.Tensor):
            return tuple(int(s) for s in v.shape)
        raise Unsupported(f"argument {index} is not a tensor")

    def unknown(self, reason: str) -> TensorRF:
        dims = self.first.dims if self.args else ()
        return unknown(dims, reason)


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


@cache  # a pure function of the target, read-only result: safe to share between threads
def param_positions(target: Any, method: bool = False) -> Mapping[str, int]:
    """Parameter name -> position for a call target, from its signature or ATen schema.

    ``method``: ``target`` is a tensor method name (``self`` is position 0).  A name whose
    position differs between the target's overloads is left out (it can only be found when
    passed by keyword).

    >>> import torch.nn.functional as F
    >>> param_positions(F.conv2d)["stride"], param_positions(F.max_pool2d)["dilation"]
    (3, 4)
    >>> dict(param_positions("flatten", method=True))
    {'self': 0, 'start_dim': 1, 'end_dim': 2}
    """
    lists: list[list[str]] = []
    if isinstance(target, torch._ops.OpOverload):
        lists.append([a.name for a in target._schema.arguments if not a.kwarg_only])
    elif method:
        lists.extend([a.name for a in sch.arguments if not a.kwarg_only]
                     for sch in torch._C._jit_get_schemas_for_operator(f"aten::{target}"))
    else:
        from torch._jit_internal import boolean_dispatched
        from torch.fx.operator_schemas import get_signature_for_torch_op

        fns = [target]
        if target in boolean_dispatched:  # F.max_pool2d: two functions behind one name
            fns = [boolean_dispatched[target]["if_true"], boolean_dispatched[target]["if_false"]]
        for fn in fns:
            try:
                sigs = get_signature_for_torch_op(fn) or [inspect.signature(fn)]
            except (TypeError, ValueError, RuntimeError):
                continue
            lists.extend([p.name for p in sig.parameters.values() if p.kind in _POSITIONAL] for sig in sigs)
    pos: dict[str, int] = {}
    clash: set[str] = set()
    for names in lists:
        for i, name in enumerate(names):
            if pos.setdefault(name, i) != i:
                clash.add(name)
    return MappingProxyType({k: v for k, v in pos.items() if k not in clash})
