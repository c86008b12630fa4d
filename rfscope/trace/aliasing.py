"""What an ATen graph's in-place ops write, read from the ops' schemas (``Tensor(a!)``).

Shared by the export path (which decides whether a graph must be functionalised,
:mod:`rfscope.trace.aten`) and the interpreter's in-place pass (:mod:`rfscope.passes.inplace`).
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx

__all__ = ["schema", "is_view", "written_args", "returns_written", "input_dependent"]


def schema(n: fx.Node) -> Any:
    """The ATen schema of a ``call_function`` node (``None`` for other targets)."""
    return getattr(n.target, "_schema", None) if n.op == "call_function" else None


def is_view(n: fx.Node) -> bool:
    """The node returns an alias (a view) of an input, without writing it."""
    s = schema(n)
    return bool(s is not None and any(r.alias_info is not None and not r.alias_info.is_write for r in s.returns))


def written_args(n: fx.Node) -> list[fx.Node]:
    """The node arguments ``n`` writes in place."""
    s = schema(n)
    if s is None or not s.is_mutable:
        return []
    out = []
    for i, arg in enumerate(s.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        v = n.args[i] if i < len(n.args) else n.kwargs.get(arg.name)
        if isinstance(v, fx.Node):
            out.append(v)
    return out


def returns_written(n: fx.Node) -> bool:
    """The node returns the tensor it wrote (``add_``, ``copy_``)."""
    s = schema(n)
    return bool(s is not None and len(s.returns) == 1 and s.returns[0].alias_info is not None
                and s.returns[0].alias_info.is_write)


def input_dependent(gm: fx.GraphModule) -> set[fx.Node]:
    """The nodes whose value may depend on an input (placeholder)."""
    live: set[fx.Node] = set()
    for n in gm.graph.nodes:  # graph order: a node's operands come before it
        if n.op == "placeholder" or any(a in live for a in n.all_input_nodes):
            live.add(n)
    return live
