"""Tracing paths for models ``torch.fx.symbolic_trace`` cannot handle.

``trace_model`` tries, in order (``mode="auto"``):

1. ``symbolic_trace`` on the structural copy (module-level graph, plugin classes kept as leaves);
2. ``torch.export`` on a meta copy: Python control flow on *shapes* is resolved for the
   given input shape; the ATen graph is analysed by ``plugins/aten.py`` (functionalised
   first when an in-place op writes to a tensor that is read again, see ``_aliasing_hazard``);
3. ``make_fx`` in real mode on a deep copy of the model run on the example input (random
   values when only a shape is given): control flow on tensor *values* follows the path
   that input takes, so the graph -- and the report -- is specialised to that input.

The user's model is never run or modified: paths 1-2 trace meta copies, path 3 runs a deep
copy (with the user's hooks removed, in eval mode, without gradients).
Module paths in ATen graphs come from ``nn_module_stack`` meta, rewritten to the keys
the symbolic tracer uses (``"block"``, ``"block@1"`` for its second call).
"""

from __future__ import annotations

import contextlib
import copy as _copy
import dataclasses
import inspect
import io
import logging
import operator
import os
import re
import traceback
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.fx as fx

from ._locks import TRACE_LOCK, exclusive, running
from .registry import Registry
from .trace import (
    TYPE_TESTS,
    TraceError,
    clear_hooks,
    keep_rng_state,
    meta_copy,
    modules,
    named_modules,
    structural_copy,
    trace,
)

__all__ = ["TRACE_MODES", "PATH_NAMES", "trace_model", "trace_export", "trace_make_fx", "failure_site",
           "symbolic_mutation_hazard", "minimum_input", "explain_shape_error", "fallback_paths",
           "graph_differs", "real_outputs", "tests_tensor_types"]

#: values of ``analyze(..., trace=)``
TRACE_MODES = ("auto", "symbolic_trace", "export", "make_fx")
#: what ``Report.trace_path`` says for each path
PATH_NAMES = {
    "symbolic_trace": "symbolic_trace",
    "export": "torch.export",
    "make_fx": "make_fx (specialised to the example input)",
}
_PLUGIN_DOCS = "README, 'Writing a plugin'"


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return f"{type(e).__name__}: {s.splitlines()[0] if s else ''}".rstrip(": ")


def failure_site(e: BaseException) -> str | None:
    """``file:line `code` `` of the innermost frame of ``e`` outside torch and rfscope."""
    exc: BaseException | None = e
    while exc is not None and exc.__cause__ is not None:
        exc = exc.__cause__
    if exc is None or exc.__traceback__ is None:
        return None
    torch_dir = os.path.dirname(torch.__file__)
    own_dir = os.path.dirname(os.path.abspath(__file__))
    site = None
    for fr in traceback.extract_tb(exc.__traceback__):
        f = os.path.abspath(fr.filename)
        if f.startswith(torch_dir) or f.startswith(own_dir) or "<" in fr.filename:
            continue
        site = f"{os.path.basename(fr.filename)}:{fr.lineno}" + (f" `{fr.line.strip()}`" if fr.line else "")
    return site


def _to_meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.empty_like(x, device="meta")
    if isinstance(x, (list, tuple)):
        return type(x)(_to_meta(v) for v in x)
    return x


def _to_real(x: Any, gen: torch.Generator | None = None) -> Any:
    """A real tensor for an example input: a clone of a real one, random values for a meta one
    (from a private generator: the user's random stream does not move)."""
    if gen is None:
        gen = torch.Generator().manual_seed(0)
    if isinstance(x, torch.Tensor):
        if x.device.type != "meta":
            return x.detach().clone()
        if x.is_floating_point() or x.is_complex():
            return torch.randn(x.shape, dtype=x.dtype, generator=gen)
        return torch.zeros(x.shape, dtype=x.dtype)
    if isinstance(x, (list, tuple)):
        return type(x)(_to_real(v, gen) for v in x)
    return x


def _module_types(model: torch.nn.Module) -> dict[str, type]:
    return {name: type(m) for name, m in named_modules(model)}


def _normalise_stacks(gm: fx.GraphModule, types: dict[str, type]) -> None:
    """Rewrite ``nn_module_stack`` to ``{call key: (path, class)}`` as ``symbolic_trace`` writes it."""
    for n in gm.graph.nodes:
        stack = n.meta.get("nn_module_stack")
        if not stack:
            continue
        new: dict[str, tuple[str, Any]] = {}
        for key, val in stack.items():
            path = val[0] if isinstance(val, tuple) else str(val)
            if not path:
                continue  # the root module
            suffix = ""
            if "@" in key and key.rsplit("@", 1)[1].isdigit():
                suffix = "@" + key.rsplit("@", 1)[1]
            new[path + suffix] = (path, types.get(path, val[1] if isinstance(val, tuple) else None))
        n.meta["nn_module_stack"] = new


def _drop_asserts(gm: fx.GraphModule) -> None:
    """Remove nodes with no users that produce no value (guards, runtime asserts)."""
    for n in reversed(list(gm.graph.nodes)):
        if n.op == "call_module" and not n.users:
            gm.graph.erase_node(n)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def _aliasing_hazard(gm: fx.GraphModule) -> bool:
    """Whether an in-place op mutates a tensor read again later or an alias (view) of another tensor.

    The ATen plugins treat ``add_`` like ``add``, which is exact only when the mutated
    tensor is not read again afterwards through another node; otherwise the graph must be
    functionalised first (slower, so only when needed).
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for n in gm.graph.nodes:
        schema = getattr(n.target, "_schema", None) if n.op == "call_function" else None
        if schema is None or not schema.is_mutable:
            continue
        for i, arg in enumerate(schema.arguments):
            if arg.alias_info is None or not arg.alias_info.is_write:
                continue
            x = n.args[i] if i < len(n.args) else n.kwargs.get(arg.name)
            if not isinstance(x, fx.Node):
                continue
            if any(order[u] > order[n] for u in x.users if u is not n):
                return True
            src = getattr(x.target, "_schema", None) if x.op == "call_function" else None
            if src is not None and any(r.alias_info is not None and not r.alias_info.is_write for r in src.returns):
                return True  # a view: its base changes too (in-place ops' results are checked at that op)
            if x.op == "placeholder":
                return True
    return False


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


@exclusive  # torch.export keeps process-wide tracer state and hijacks other threads (rfscope._locks)
def trace_export(model: torch.nn.Module, example_inputs: Sequence[Any]) -> fx.GraphModule:
    """``torch.export`` a meta copy of ``model``; returns the functional ATen graph."""
    cp = meta_copy(model)
    types = _module_types(cp)
    ep = torch.export.export(cp, tuple(_to_meta(x) for x in example_inputs), strict=False)
    gm = ep.module()
    if _aliasing_hazard(gm):
        gm = ep.run_decompositions({}).module()
    assert isinstance(gm, fx.GraphModule)
    # plain calling convention (no pytree flattening), a single output as symbolic_trace gives it
    gm.graph._codegen = fx.graph.CodeGen()
    out = next(n for n in gm.graph.nodes if n.op == "output")
    if isinstance(out.args[0], (tuple, list)) and len(out.args[0]) == 1:
        out.args = (out.args[0][0],)
    _drop_asserts(gm)
    _normalise_stacks(gm, types)
    return gm


def _stack_hooks(model: torch.nn.Module, calls: dict[str, int]) -> list[Any]:
    """Forward hooks that keep ``torch.fx.traceback.current_meta['nn_module_stack']`` up to date.

    ``calls`` counts each module's calls (``"block@1"`` is the second); clear it between traces.
    """
    import torch.fx.traceback as fxt

    handles = []

    def pre(name: str, m: torch.nn.Module) -> Any:
        def hook(mod: torch.nn.Module, args: Any) -> None:
            k = calls.get(name, 0)
            calls[name] = k + 1
            cur = dict(fxt.current_meta.get("nn_module_stack") or {})
            cur[name if k == 0 else f"{name}@{k}"] = (name, type(m))
            fxt.current_meta["nn_module_stack"] = cur

        return hook

    def post(name: str) -> Any:
        def hook(mod: torch.nn.Module, args: Any, out: Any) -> None:
            cur = dict(fxt.current_meta.get("nn_module_stack") or {})
            if cur:
                cur.popitem()
            fxt.current_meta["nn_module_stack"] = cur

        return hook

    for name, m in named_modules(model):
        if name:
            handles.append(m.register_forward_pre_hook(pre(name, m)))
            handles.append(m.register_forward_hook(post(name)))
    return handles


def _meta_attrs(gm: fx.GraphModule) -> None:
    """Replace every tensor the graph holds (constants lifted by make_fx) by a meta tensor."""
    for mod in modules(gm):
        for name, p in list(mod._parameters.items()):
            if p is not None:
                mod._parameters[name] = torch.nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
        for name, b in list(mod._buffers.items()):
            if b is not None:
                mod._buffers[name] = torch.empty_like(b, device="meta")
        for name, v in list(vars(mod).items()):
            if isinstance(v, torch.Tensor):
                setattr(mod, name, torch.empty_like(v, device="meta"))


@exclusive  # make_fx patches nn.Module and keeps process-wide node meta (rfscope._locks)
def trace_make_fx(model: torch.nn.Module, example_inputs: Sequence[Any]) -> fx.GraphModule:
    """Trace the path the example input takes through a deep copy of ``model`` (real tensors)."""
    import torch.fx.traceback as fxt
    from torch.fx.experimental.proxy_tensor import make_fx

    if any(t is not None and t.device.type == "meta"
           for m in modules(model) for t in (*m._parameters.values(), *m._buffers.values())):
        raise TraceError("make_fx runs the model on real tensors, but the model is on the meta device")
    cp = clear_hooks(_copy.deepcopy(model))
    cp.eval()
    types = _module_types(cp)
    gen = torch.Generator().manual_seed(0)
    inputs = tuple(_to_real(x, gen) for x in example_inputs)
    calls: dict[str, int] = {}
    _stack_hooks(cp, calls)
    # real tensors may be read (``if x.sum() > 0``): the graph follows the branch this input takes
    opts: dict[str, Any] = {"tracing_mode": "real", "_error_on_data_dependent_ops": False}
    with torch.no_grad(), fxt.preserve_node_meta(), keep_rng_state():  # the forward may draw (noise)
        gm = make_fx(lambda *a: plain_outputs(cp(*a)), **opts)(*inputs)
        if _aliasing_hazard(gm):
            calls.clear()
            gm = _functional_make_fx(cp, inputs, opts)
    _meta_attrs(gm)
    for n in gm.graph.nodes:  # factory calls recorded with device=cpu (torch.zeros(...)) must make meta tensors
        if isinstance(n.kwargs.get("device"), (torch.device, str)):
            n.kwargs = {**n.kwargs, "device": torch.device("meta")}
    gm.graph.eliminate_dead_code()
    gm.recompile()
    _normalise_stacks(gm, types)
    return gm


def plain_outputs(v: Any) -> Any:
    """``v`` with dataclass instances turned into dicts of their fields, recursively.

    make_fx follows outputs through PyTorch's pytree registry, which does not know a model's own
    dataclasses: their tensors would be recorded as constants, as if they did not depend on the
    input.  As dicts they are followed (their leaves are then reported as ``['field']``).
    """
    if isinstance(v, torch.Tensor):
        return v
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        from torch.utils._pytree import SUPPORTED_NODES

        if type(v) not in SUPPORTED_NODES:
            return {f.name: plain_outputs(getattr(v, f.name)) for f in dataclasses.fields(v)}
        return v
    if isinstance(v, tuple) and hasattr(v, "_fields"):  # namedtuple: pytree knows it
        return type(v)(*(plain_outputs(x) for x in v))
    if isinstance(v, (list, tuple)):
        return type(v)(plain_outputs(x) for x in v)
    if isinstance(v, dict):
        return {k: plain_outputs(x) for k, x in v.items()}
    return v


def _functional_make_fx(cp: torch.nn.Module, inputs: tuple[Any, ...], opts: dict[str, Any]) -> fx.GraphModule:
    """``make_fx(functionalize(cp))``, with the buffers passed in as inputs: functionalisation only
    follows mutations of its inputs, and a forward may update a buffer through a view
    (``self.hist[0] = v``).  The buffer inputs become ``get_attr`` nodes again; the final
    write-back into them has no users and is dropped."""
    from torch.func import functional_call, functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    bufs = [(f"{p}.{k}" if p else k, b) for p, m in named_modules(cp) for k, b in m._buffers.items()
            if b is not None]
    names = [n for n, _ in bufs]

    def run(*args: Any) -> Any:
        return plain_outputs(functional_call(cp, dict(zip(names, args[:len(names)], strict=True)), args[len(names):]))

    gm = make_fx(functionalize(run, remove="mutations_and_views"), **opts)(*(b for _, b in bufs), *inputs)
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"][:len(bufs)]
    for i, ph in enumerate(phs):
        attr = f"_rfscope_buffer_{i}"
        gm.register_buffer(attr, bufs[i][1])
        with gm.graph.inserting_before(ph):
            ga = gm.graph.get_attr(attr)
        ph.replace_all_uses_with(ga)
        gm.graph.erase_node(ph)
    for n in list(gm.graph.nodes):  # the write-back of updated buffers: nothing reads it
        if n.op == "call_function" and n.target is torch.ops.aten.copy_.default and not n.users \
                and isinstance(n.args[0], fx.Node) and n.args[0].op == "get_attr":
            gm.graph.erase_node(n)
    return gm


def _explain(err: TraceError, tried: list[str]) -> str:
    mod = getattr(err, "module", None)
    site = failure_site(err)
    where = (f" in module {mod!r}" if mod else "") + (f" at {site}" if site else "")
    cause = err.__cause__
    what = _first_line(cause) if cause is not None else str(err)
    fix = []
    if mod:
        fix.append(f"keep that module opaque with leaf_modules=[{mod!r}] / --leaf {mod}")
    fix.append("give example_inputs (the model input that the forward expects)")
    fix.append(f"or write a plugin for it ({_PLUGIN_DOCS})")
    also = f"; {'; '.join(tried)}" if tried else ""
    return f"cannot trace the model: torch.fx failed{where}: {what}{also}. Fix: {', '.join(fix)}"


def trace_model(
    model: torch.nn.Module,
    registry: Registry,
    example_inputs: Sequence[Any],
    leaf_modules: Iterable[str] = (),
    mode: str = "auto",
    copy: torch.nn.Module | None = None,
) -> tuple[fx.GraphModule, str, str | None]:
    """Trace ``model`` by the first path that works.

    ``copy`` is the copy to trace symbolically (:func:`structural_copy`, made here when not given).
    Returns ``(graph module, path name, why symbolic tracing was not used or None)``.
    Shapes are not propagated here.
    """
    if mode not in TRACE_MODES:
        raise ValueError(f"trace={mode!r}: use one of {', '.join(TRACE_MODES)}")
    leaves = list(leaf_modules)
    if mode == "export":
        return _wrap(lambda: trace_export(model, example_inputs), "torch.export"), PATH_NAMES["export"], _forced(leaves)
    if mode == "make_fx":
        return _wrap(lambda: trace_make_fx(model, example_inputs), "make_fx"), PATH_NAMES["make_fx"], _forced(leaves)
    cp = copy if copy is not None else structural_copy(model)
    symbolic_err: TraceError | None = None
    try:
        gm = trace(cp, registry, leaves)
    except TraceError as err:
        if mode == "symbolic_trace":
            raise TraceError(_explain(err, [])) from err
        symbolic_err = err
    else:
        hazard = symbolic_mutation_hazard(gm)
        tests: list[str] = gm.meta.get(TYPE_TESTS) or []
        if hazard is None and (not tests or mode == "symbolic_trace"):
            return gm, PATH_NAMES["symbolic_trace"], None
        if mode == "symbolic_trace":
            raise TraceError(f"symbolic_trace cannot follow an {hazard}: use trace='auto' (--trace auto), "
                             "which uses torch.export, or write that update out of place (y = y + z)")
        if hazard is None:
            why = (f"the forward tests the type of a traced value ({'; '.join(dict.fromkeys(tests))}), which "
                   "torch.fx answers for its Proxy, not for the tensor: the symbolic graph may follow another "
                   "branch than the model")
            return fallback_paths(model, example_inputs, why, leaves)
    if symbolic_err is None:
        why = f"symbolic_trace cannot follow an {hazard}"
    else:
        why = _explain(symbolic_err, []).split(". Fix:")[0]
    try:
        return fallback_paths(model, example_inputs, why, leaves)
    except _AllFailed as e:
        if symbolic_err is None:
            raise TraceError(f"{e}; write that update out of place (y = y + z)") from None
        raise TraceError(_explain(symbolic_err, e.tried)) from symbolic_err


class _AllFailed(TraceError):
    """Neither fallback tracer worked (``tried`` says why, one entry each)."""

    def __init__(self, msg: str, tried: list[str]) -> None:
        super().__init__(msg)
        self.tried = tried


def fallback_paths(model: torch.nn.Module, example_inputs: Sequence[Any], why: str,
                   leaves: Sequence[str] = ()) -> tuple[fx.GraphModule, str, str]:
    """``torch.export``, then ``make_fx``, when the symbolic graph cannot be used (``why``).

    Returns ``(graph module, path name, why)``; raises a :class:`TraceError` naming ``why`` and
    each tracer's failure when neither works.
    """
    if leaves:
        why += f"; {_LEAF_NOTE}"
    tried: list[str] = []
    try:
        with _quiet():  # a failed export logs the whole graph as a warning
            return trace_export(model, example_inputs), PATH_NAMES["export"], why
    except Exception as e:  # noqa: BLE001 - any failure moves on to the next path
        tried.append(f"torch.export failed: {_first_line(e)}")
    try:
        with _quiet():
            return trace_make_fx(model, example_inputs), PATH_NAMES["make_fx"], why
    except Exception as e:  # noqa: BLE001
        tried.append(f"make_fx failed: {_first_line(e)}")
    raise _AllFailed(f"{why}, and {'; '.join(tried)}", tried)


def real_outputs(model: torch.nn.Module, example_inputs: Sequence[Any]) -> Any:
    """What the model itself returns for the example inputs, run on a meta copy (no values)."""
    cp = meta_copy(model)
    with torch.no_grad(), running():  # not while torch.export traces (rfscope._locks)
        return cp(*_to_meta(tuple(example_inputs)))


def _signature(x: Any) -> tuple[str, list[tuple[tuple[int, ...], torch.dtype] | str]]:
    """Output structure and, per leaf, the shape and dtype of a tensor (the type name otherwise)."""
    from torch.utils._pytree import tree_flatten

    leaves, spec = tree_flatten(x)
    return str(spec), [(tuple(int(d) for d in v.shape), v.dtype) if isinstance(v, torch.Tensor) else type(v).__name__
                       for v in leaves]


def graph_differs(gm: fx.GraphModule, model: torch.nn.Module, example_inputs: Sequence[Any]) -> str | None:
    """How the shape-propagated graph's output differs from the model's own (run on meta), or None.

    None also when the model cannot run on meta (nothing to compare with).
    """
    out = next(n for n in gm.graph.nodes if n.op == "output")
    try:
        ref = real_outputs(model, example_inputs)
    except Exception:  # noqa: BLE001 - the model needs real values: no comparison
        return None
    (gs, gl), (rs, rl) = _signature(out.meta.get("val")), _signature(ref)
    if gs != rs:
        return "the symbolic graph returns another structure than the model"
    for i, (g, r) in enumerate(zip(gl, rl, strict=True)):
        if g != r:
            return f"output {i} of the symbolic graph is {_fmt(g)}, the model's is {_fmt(r)}"
    return None


def _fmt(sig: Any) -> str:
    if isinstance(sig, tuple):
        return f"{'x'.join(map(str, sig[0]))} {str(sig[1]).replace('torch.', '')}"
    return str(sig)


_TYPE_TEST = re.compile(r"\bisinstance\(\s*[\w.\[\]]+\s*,\s*\(?\s*(torch\.)?Tensor\b")
_type_test_cache: dict[type, bool] = {}


def tests_tensor_types(model: torch.nn.Module) -> bool:
    """A module class of ``model`` (outside torch) whose ``forward`` tests ``isinstance(..., Tensor)``:
    a cheap screen for code that branches on the type of a traced value (a Proxy under fx)."""
    for cls in {type(m) for m in modules(model)}:
        hit = _type_test_cache.get(cls)
        if hit is None:
            hit = False
            if not cls.__module__.startswith("torch."):
                try:
                    hit = bool(_TYPE_TEST.search(inspect.getsource(cls.forward)))
                except (OSError, TypeError):
                    hit = False
            _type_test_cache[cls] = hit  # a pure function of the class: a racing thread writes the same
        if hit:
            return True
    return False


def minimum_input(gm: fx.GraphModule, example_inputs: Sequence[Any], limit: int = 8192) -> tuple[int, ...] | None:
    """The smallest input shape (spatial dims raised to a common floor) whose shapes propagate through ``gm``.

    Only for a single input tensor ``(N, C, *spatial)``; ``None`` when not found up to ``limit``.
    Shapes are propagated on meta tensors, so each try is cheap.
    """
    from .trace import propagate_shapes

    tensors = [x for x in example_inputs if isinstance(x, torch.Tensor)]
    if len(tensors) != 1 or len(example_inputs) != 1 or tensors[0].dim() < 3:
        return None
    x = tensors[0]
    shape = tuple(int(d) for d in x.shape)

    def at(floor: int) -> tuple[int, ...]:
        return shape[:2] + tuple(max(d, floor) for d in shape[2:])

    def works(floor: int) -> bool:
        try:
            propagate_shapes(gm, (torch.empty(at(floor), dtype=x.dtype, device="meta"),))
        except Exception:  # noqa: BLE001 - any failure means "too small" here
            return False
        return True

    lo = min(shape[2:])  # the shape as given (floor = its smallest dim) fails
    hi = lo * 2
    while not works(hi):
        lo, hi = hi, hi * 2
        if hi > limit:
            return None
    while hi - lo > 1:  # works(hi), not works(lo)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if works(mid) else (mid, hi)
    return at(hi)


def explain_shape_error(gm: fx.GraphModule, example_inputs: Sequence[Any], err: TraceError) -> TraceError:
    """Add the smallest input that works to an "input too small for layer ..." error."""
    msg = str(err).splitlines()[0]  # fx appends "While executing ..." lines
    if not msg.startswith("input too small"):
        return err
    best = minimum_input(gm, example_inputs)
    if best is None:
        return err
    spatial = "x".join(map(str, best[2:]))
    cli = ",".join(map(str, best[1:]))
    return TraceError(f"{msg}; the whole model needs an input of at least {spatial} "
                      f"(--input-shape {cli}, input_shape={best})")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence log records up to WARNING (torch logs failed export attempts at length)."""
    with TRACE_LOCK:  # logging and sys.stderr are process-wide: one silencer at a time (rfscope._locks)
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            logging.disable(previous)


_LEAF_NOTE = "leaf_modules are ignored by the ATen-level tracers (their ops are analysed one by one)"


def _forced(leaves: list[str]) -> str:
    return "requested" + (f"; {_LEAF_NOTE}" if leaves else "")


def _wrap(fn: Any, what: str) -> fx.GraphModule:
    try:
        with _quiet():
            gm = fn()
    except TraceError:
        raise
    except Exception as e:  # noqa: BLE001
        raise TraceError(f"{what} could not trace the model: {_first_line(e)}; trace='auto' (--trace auto) "
                         "tries every path") from e
    assert isinstance(gm, fx.GraphModule)
    return gm
