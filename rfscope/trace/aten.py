"""The ATen-level tracers: ``torch.export`` on a meta copy, ``make_fx`` on the example input."""

from __future__ import annotations

import contextlib
import copy as _copy
import dataclasses
import io
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.fx as fx

from rfscope.core.errors import TraceError
from rfscope.core.locks import TRACE_LOCK, exclusive
from rfscope.trace.aliasing import input_dependent, is_view, written_args
from rfscope.trace.copy import _to_meta, clear_hooks, meta_copy, modules, named_modules
from rfscope.trace.datadep import FLAT_INPUTS, REAL_ATTRS, REAL_INPUTS, _to_real
from rfscope.trace.runtime import keep_rng_state


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
    functionalised first (slower, so only when needed: 4.8 s of MONAI SwinUNETR's 7.5 s export).

    A mutation none of whose operands depends on an input (a window mask that a forward builds
    with ``mask[:, h, w] = cnt`` on ``torch.zeros``) is no hazard: every tensor it touches is a
    constant before and after it, which is all the analysis says of them.
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    live = input_dependent(gm)
    return any(_hazardous_write(n, x, order) for n in gm.graph.nodes if n in live for x in written_args(n))


def _hazardous_write(n: fx.Node, x: fx.Node, order: dict[fx.Node, int]) -> bool:
    """``n``'s in-place write to ``x`` is seen through another node: ``x`` is read again later, is a
    view (its base changes too; in-place ops' results are checked at that op) or an input."""
    return any(order[u] > order[n] for u in x.users if u is not n) or is_view(x) or x.op == "placeholder"


def _drop_unread_constant_updates(gm: fx.GraphModule) -> None:
    """Erase the in-place updates of input-independent tensors that nothing input-dependent (nor
    the output) reads, then the code that only fed them.

    fx's dead-code elimination keeps every in-place op (it is impure), where the functionalised
    graph drops them: MONAI's SwinUNETR builds a shifted-window attention mask in every stage
    (``img_mask[:, h, w] = cnt`` on ``torch.zeros``) that a stage without shifted blocks never reads.
    """
    live = input_dependent(gm)
    needed: set[fx.Node] = set()
    stack = [a for n in gm.graph.nodes if n in live or n.op == "output" for a in n.all_input_nodes if a not in live]
    while stack:
        a = stack.pop()
        if a not in needed:
            needed.add(a)
            stack.extend(a.all_input_nodes)

    def unread(n: fx.Node) -> bool:
        if n.op != "call_function" or n in live or n in needed:
            return False
        seen: set[fx.Node] = set()
        todo = list(n.all_input_nodes)
        while todo:
            a = todo.pop()
            if a not in seen:
                seen.add(a)
                todo.extend(a.all_input_nodes)
        return not seen & needed

    changed = True
    while changed:  # an update's result may itself be updated or viewed: erase from the last user back
        changed = False
        for n in reversed(list(gm.graph.nodes)):
            schema = getattr(n.target, "_schema", None) if n.op == "call_function" else None
            if schema is not None and schema.is_mutable and not n.users and unread(n):
                gm.graph.erase_node(n)
                changed = True
        changed = gm.graph.eliminate_dead_code() or changed


#: in-place ops that write nothing when their ``train`` argument (the third) is False: eval-mode dropout
_EVAL_IDENTITY_UPDATES = frozenset({
    torch.ops.aten.dropout_.default,
    torch.ops.aten.alpha_dropout_.default,
    torch.ops.aten.feature_dropout_.default,
    torch.ops.aten.feature_alpha_dropout_.default,
})


def _drop_eval_dropouts(gm: fx.GraphModule) -> None:
    """Remove the in-place dropouts with ``train=False`` (they return their operand unchanged) that
    :func:`_aliasing_hazard` would count as a hazard.

    ``nn.Dropout(inplace=True)`` on a view (torchvision's MViT applies it to ``x[:, 0]``) is an
    in-place update of a view, and functionalising the graph for it costs more than the export
    itself (3 s of MViT-B's 5.4 s); in eval mode it writes nothing.  Any other one stays in the
    graph (and its module's row in the report), as before.
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    live = input_dependent(gm)
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target not in _EVAL_IDENTITY_UPDATES or n not in live:
            continue
        x, train = n.args[0], n.args[2] if len(n.args) > 2 else n.kwargs.get("train")
        if train is False and isinstance(x, fx.Node) and _hazardous_write(n, x, order):
            n.replace_all_uses_with(x)
            gm.graph.erase_node(n)


@exclusive  # torch.export keeps process-wide tracer state and hijacks other threads (rfscope.core.locks)
def trace_export(model: torch.nn.Module, example_inputs: Sequence[Any]) -> fx.GraphModule:
    """``torch.export`` a meta copy of ``model``; returns the functional ATen graph."""
    cp = meta_copy(model)
    types = _module_types(cp)
    ep = torch.export.export(cp, tuple(_to_meta(x) for x in example_inputs), strict=False)
    gm = ep.module()
    _drop_eval_dropouts(gm)
    if _aliasing_hazard(gm):
        gm = ep.run_decompositions({}).module()
    else:
        _drop_unread_constant_updates(gm)
    assert isinstance(gm, fx.GraphModule)
    # plain calling convention (no pytree flattening), a single output as symbolic_trace gives it
    gm.graph._codegen = fx.graph.CodeGen()
    out = next(n for n in gm.graph.nodes if n.op == "output")
    if isinstance(out.args[0], (tuple, list)) and len(out.args[0]) == 1:
        out.args = (out.args[0][0],)
    _drop_asserts(gm)
    _normalise_stacks(gm, types)
    gm.meta[FLAT_INPUTS] = True
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


def _real_attrs(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """Every tensor the graph holds, by its attribute path (before :func:`_meta_attrs` replaces them)."""
    out: dict[str, torch.Tensor] = {}
    for prefix, mod in named_modules(gm):
        for name, t in (*mod._parameters.items(), *mod._buffers.items(), *vars(mod).items()):
            if isinstance(t, torch.Tensor):
                out[f"{prefix}.{name}" if prefix else name] = t
    return out


@exclusive  # make_fx patches nn.Module and keeps process-wide node meta (rfscope.core.locks)
def trace_make_fx(model: torch.nn.Module, example_inputs: Sequence[Any], functional: bool = False) -> fx.GraphModule:
    """Trace the path the example input takes through a deep copy of ``model`` (real tensors).

    ``functional=True`` functionalises at once rather than after a first trace shows in-place
    updates of views (a model with data-dependent parts, such as a detector, has them: one trace
    instead of two).
    """
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
        if functional:
            gm = _functional_make_fx(cp, inputs, opts)
        else:
            gm = make_fx(lambda *a: plain_outputs(cp(*a)), **opts)(*inputs)
        if not functional and _aliasing_hazard(gm):
            calls.clear()
            gm = _functional_make_fx(cp, inputs, opts)
        elif not functional:
            _drop_unread_constant_updates(gm)
    # the real values traced with, for a shape pass that needs them (rfscope.trace.datadep.real_pass)
    gm.meta[REAL_ATTRS] = _real_attrs(gm)
    gm.meta[REAL_INPUTS] = inputs
    gm.meta[FLAT_INPUTS] = True
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


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence log records up to WARNING (torch logs failed export attempts at length)."""
    with TRACE_LOCK:  # logging and sys.stderr are process-wide: one silencer at a time (rfscope.core.locks)
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            logging.disable(previous)

