"""``torch.fx`` symbolic tracing: modules with a plugin stay leaves; hazards that send a model
to another tracer (writes to parameters, in-place merges, type tests on traced values)."""

from __future__ import annotations

import operator
import threading
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
from torch.utils._python_dispatch import TorchDispatchMode

from rfscope.core.errors import TraceError
from rfscope.core.locks import serialised
from rfscope.core.registry import Registry
from rfscope.trace.copy import (
    named_modules,
)


class _ParameterWriteGuard(TorchDispatchMode):
    """Refuses any ATen op that writes into the storage of one of the given (name, real tensor) pairs.

    Active while the structural copy is traced: fx proxies parameters reached as attributes,
    but a forward can reach the real objects (``for p in self.parameters(): p.clamp_(...)``)
    and would run that update on the user's weights.
    """

    def __init__(self, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().__init__()
        self.storages = {t.untyped_storage().data_ptr(): name for name, t in tensors if not t.is_meta
                         and t.numel()}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        schema = func._schema
        if schema.is_mutable and self.storages:
            for i, a in enumerate(schema.arguments):
                if a.alias_info is None or not a.alias_info.is_write:
                    continue
                x = args[i] if i < len(args) else kwargs.get(a.name)
                for t in x if isinstance(x, (list, tuple)) else (x,):
                    if isinstance(t, torch.Tensor) and not t.is_meta and t.numel():
                        name = self.storages.get(t.untyped_storage().data_ptr())
                        if name is not None:
                            raise TraceError(f"the forward writes to parameter {name!r} in place ({func}); "
                                             "rfscope never modifies the model")
        return func(*args, **kwargs)


class RFTracer(fx.Tracer):
    """Keeps every module class that has a plugin (and user-named paths) as a leaf."""

    def __init__(self, registry: Registry, leaf_modules: Iterable[str] = ()) -> None:
        super().__init__()
        self.registry = registry
        self.leaf_paths = set(leaf_modules)
        self._thread = threading.get_ident()
        #: module path -> node of the first tensor it returns, for calls that return a tuple, list or
        #: dict (the module's "output" in a report; otherwise its last node inside the call stands for it)
        self.first_outputs: dict[str, str] = {}

    # While tracing, fx patches nn.Module.__call__/__getattr__ for every thread: another thread's
    # module calls and attribute reads reach this tracer, which hands them straight back.
    def call_module(self, m: torch.nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if threading.get_ident() != self._thread:
            return forward(*args, **kwargs)
        out = super().call_module(m, forward, args, kwargs)
        if isinstance(out, (tuple, list, dict)):
            leaves = [x for x in torch.utils._pytree.tree_leaves(out) if isinstance(x, fx.Proxy)]
            if leaves:
                try:
                    self.first_outputs.setdefault(self.path_of_module(m), leaves[0].node.name)
                except NameError:  # a module that is not a submodule of the root
                    pass
        return out

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if threading.get_ident() != self._thread:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: torch.nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_paths:
            return True
        if self.registry.has_module_class(type(m)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


@serialised  # fx patches nn.Module process-wide while it traces: one trace at a time (rfscope.core.locks)
def trace(
    model: torch.nn.Module, registry: Registry, leaf_modules: Iterable[str] = ()
) -> fx.GraphModule:
    tracer = RFTracer(registry, leaf_modules)
    try:
        params = ((f"{path}.{k}" if path else k, p) for path, m in named_modules(model)
                  for k, p in m._parameters.items() if p is not None)
        with _ParameterWriteGuard(params), _TypeTests(tracer) as tests:
            graph = tracer.trace(model)
    except Exception as e:
        err = TraceError(f"torch.fx could not trace the model: {type(e).__name__}: {e}")
        # the module being traced when it failed (fx leaves its stack as it was): see rfscope.trace.strategy
        err.module = next(reversed(tracer.module_stack.values()))[0] if tracer.module_stack else None
        raise err from e
    gm = _graph_module(tracer.root, graph, type(model).__name__)
    if tracer.first_outputs:
        gm.meta[FIRST_OUTPUTS] = dict(tracer.first_outputs)
    if tests.seen:
        gm.meta[TYPE_TESTS] = tests.seen
    return gm


#: ``GraphModule.meta`` key: module path -> node of the first tensor a call returns (tuple outputs)
FIRST_OUTPUTS = "rfscope_first_outputs"
#: ``GraphModule.meta`` key: where the forward tested the type of a traced value (see :class:`_TypeTests`)
TYPE_TESTS = "rfscope_type_tests"


class _TypeTests:
    """Records ``torch.jit.isinstance`` calls on fx proxies while tracing.

    Such a test is answered for the Proxy (``False`` for ``torch.Tensor``), not for the tensor the
    model really gets, so the graph may follow another branch than the model (MONAI's ``UpCat``
    drops its skip connection).  ``torch.jit.isinstance`` is swapped for a recording wrapper for
    the duration of the trace (traces are serialised; other callers get the same answers).
    """

    def __init__(self, tracer: fx.Tracer) -> None:
        self.tracer = tracer
        self.seen: list[str] = []

    def __enter__(self) -> _TypeTests:
        self.original = orig = torch.jit.isinstance

        def recording(obj: Any, target_type: Any) -> bool:
            if isinstance(obj, fx.Proxy):
                stack = getattr(self.tracer, "module_stack", None)
                where = next(reversed(stack.values()))[0] if stack else ""
                self.seen.append(f"torch.jit.isinstance in {where or 'the model'!r}")
            return orig(obj, target_type)

        torch.jit.isinstance = recording  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.jit.isinstance = self.original  # type: ignore[assignment]


def _graph_module(root: torch.nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    """A GraphModule whose Python code is generated on first call, not now: the analysis only
    interprets the graph, and code generation costs about a tenth of an analysis."""
    try:
        from torch.fx._lazy_graph_module import _make_graph_module, _use_lazy_graph_module
    except ImportError:  # pragma: no cover - older torch
        return fx.GraphModule(root, graph, name)
    with _use_lazy_graph_module(True):
        return _make_graph_module(root, graph, name)


_INPLACE_FUNCS = frozenset({
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv, operator.imod,
    operator.ipow, operator.imatmul, operator.iand, operator.ior, operator.ixor,
})


_NOT_MUTATING = frozenset({"requires_grad_", "share_memory_", "retain_grad_"})


_VIEW_METHODS = frozenset({"view", "view_as", "reshape", "transpose", "permute", "t", "narrow", "select", "squeeze",
                           "unsqueeze", "flatten", "expand", "expand_as", "unflatten", "movedim", "swapaxes",
                           "chunk", "split", "unbind", "diagonal", "as_strided", "__getitem__"})


def _node_args(x: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg(x, out.append)
    return out


def symbolic_mutation_hazard(gm: fx.GraphModule) -> str | None:
    """An in-place op of a symbolic graph that merges in another tensor and whose target is read again.

    ``symbolic_trace`` records ``y.add_(z)`` as a node but later reads of ``y`` still point at
    the old node, so the analysis would miss ``z``; such graphs go to ``torch.export``, which
    functionalises them.  In-place *unary* ops (``relu_``) cannot change an RF and are fine.
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is operator.setitem:
            what, others = "item assignment", _node_args(n.args[2:])
        elif (n.op == "call_method" and isinstance(n.target, str) and n.target.endswith("_")
              and not n.target.startswith("_") and n.target not in _NOT_MUTATING) or (
                n.op == "call_function" and n.target in _INPLACE_FUNCS):
            what, others = f"in-place {getattr(n.target, '__name__', n.target)}", _node_args((n.args[1:], n.kwargs))
        else:
            continue
        dest = n.args[0] if n.args else None
        if not isinstance(dest, fx.Node) or not any(a.op != "get_attr" for a in others):
            continue
        read_later = any(order[u] > order[n] for u in dest.users if u is not n)
        is_view = (dest.op == "call_method" and dest.target in _VIEW_METHODS) or (
            dest.op == "call_function" and dest.target is operator.getitem)
        if read_later or is_view:
            return f"{what} at node {n.name!r} updates {dest.name!r}, which is read again"
    return None

