"""What a plugin sees when it is asked about one fx node."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from .state import CONST, TensorRF, unknown

__all__ = ["OpContext", "Unsupported"]


class Unsupported(Exception):
    """Raised by a plugin for a call it cannot analyse exactly; the node becomes ``unknown``."""


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
