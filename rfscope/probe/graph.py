"""Turn the analysed (meta) fx graph into a runnable copy whose outputs are chosen nodes.

Both probes run the graph rfscope analysed (``report.gm``), so node names are
exactly the report's.  The copy gets real tensors: the user's weights (ERF) or
positive constants (exact validation, see :mod:`rfscope.probe.linear`).  The
user's model is only read.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx

from rfscope.core.errors import RfscopeError
from rfscope.trace.copy import modules, named_modules, own_tensors

__all__ = ["ProbeError", "materialise", "select_outputs", "check_trace_path"]


class ProbeError(RfscopeError, ValueError):
    """The probe cannot run on this model/input; the message says why and what to do."""


def check_trace_path(trace_path: str) -> None:
    """The probes need graphs whose tensors keep the model's names (symbolic_trace, torch.export)."""
    if trace_path.startswith("make_fx"):
        raise ProbeError(
            "this report was traced with make_fx, whose graph holds anonymous copies of the weights; "
            "the probe needs the symbolic_trace or torch.export path (analyze(..., trace='export'))"
        )


ParamFn = Callable[[str, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _qual(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def materialise(
    gm_meta: fx.GraphModule,
    model: torch.nn.Module,
    *,
    device: torch.device,
    dtype: torch.dtype,
    param_fn: ParamFn | None = None,
) -> fx.GraphModule:
    """A real copy of ``gm_meta`` on ``device``: floating tensors in ``dtype``, eval mode.

    Parameters come from ``model`` (same qualified names) unless ``param_fn(name,
    meta_param, user_param)`` supplies a value; buffers always come from ``model``.
    Tied tensors stay tied.  Parameters never require grad (input-only gradients).
    """
    # the graph's tensors (the user's own, or meta) are all replaced below: share them in the copy
    # instead of copying real weights only to drop them
    keep: dict[int, Any] = {id(t): t for mod in modules(gm_meta) for t in own_tensors(mod)}
    gm = copy.deepcopy(gm_meta, keep)
    tree = named_modules(model, remove_duplicate=False)
    src_p = {_qual(p, k): t for p, m in tree for k, t in m._parameters.items() if t is not None}
    src_b = {_qual(p, k): t for p, m in tree for k, t in m._buffers.items() if t is not None}
    made: dict[int, torch.Tensor] = {}

    def convert(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if t.is_floating_point():
            return t.to(device=device, dtype=dtype, copy=True)
        return t.to(device=device, copy=True)

    def param(qual: str, p: torch.Tensor) -> torch.Tensor:
        user = src_p.get(qual)
        if param_fn is not None:
            val = param_fn(qual, p, user)
        elif user is None:
            raise ProbeError(f"parameter {qual!r} of the traced graph is not in the model")
        else:
            val = user
        return torch.nn.Parameter(convert(val), requires_grad=False)

    def buffer(qual: str, b: torch.Tensor) -> torch.Tensor:
        user_b = src_b.get(qual)
        if user_b is None:
            if b.is_meta:
                raise ProbeError(f"buffer {qual!r} of the traced graph is not in the model")
            user_b = b
        if user_b.is_meta:
            raise ProbeError(f"buffer {qual!r} is on the meta device; build the model on a real device")
        return convert(user_b)

    for mname, mod in named_modules(gm):
        stores: tuple[tuple[dict[str, Any], Callable[[str, torch.Tensor], torch.Tensor]], ...] = (
            (mod._parameters, param), (mod._buffers, buffer))
        for store, make in stores:  # tied tensors: one copy
            for tname, t in list(store.items()):
                if t is None:
                    continue
                if id(t) not in made:
                    made[id(t)] = make(_qual(mname, tname), t)
                store[tname] = made[id(t)]
        for aname, v in list(vars(mod).items()):
            if isinstance(v, torch.Tensor) and not isinstance(v, torch.nn.Parameter):
                if v.is_meta:
                    raise ProbeError(
                        f"tensor attribute {_qual(mname, aname)!r} is on the meta device; "
                        "the probe needs real values"
                    )
                setattr(mod, aname, convert(v))
    flat = _flatten_deep_targets(gm)
    _retarget_devices(gm, device, flat)
    gm.eval()
    return gm


def _retarget_devices(gm: fx.GraphModule, device: torch.device, recompile: bool = False) -> None:
    """Devices the trace recorded (``torch.zeros(..., device=next(self.parameters()).device)``) name
    the analysis copy's device, ``meta``: the probe creates those tensors on its own device."""

    def fix(a: Any) -> Any:
        if isinstance(a, torch.device):
            return device
        if isinstance(a, (tuple, list)):
            return type(a)(fix(v) for v in a)
        if isinstance(a, dict):
            return {k: fix(v) for k, v in a.items()}
        return a

    changed = False
    for n in gm.graph.nodes:
        if n.op in ("call_function", "call_method"):
            args, kwargs = fix(n.args), fix(n.kwargs)
            if kwargs.get("device") == "meta":
                kwargs["device"] = device
            if args != n.args or kwargs != n.kwargs:
                n.args, n.kwargs, changed = args, kwargs, True
    if changed or recompile:
        gm.recompile()


def select_outputs(gm: fx.GraphModule, names: Sequence[str]) -> fx.GraphModule:
    """Make ``gm`` return the values of the nodes ``names`` (a tuple), dropping unused work."""
    nodes = {n.name: n for n in gm.graph.nodes}
    missing = [n for n in names if n not in nodes]
    if missing:
        raise ProbeError(f"node(s) {', '.join(missing)} not in the traced graph")
    out = next(n for n in gm.graph.nodes if n.op == "output")
    out.args = (tuple(nodes[n] for n in names),)
    gm.graph.eliminate_dead_code()
    _flatten_deep_targets(gm)
    gm.recompile()
    return gm


#: module paths nested deeper than this are called through a flat alias (fx writes a path as nested
#: ``getattr`` calls, and Python's parser refuses more than 200 nested parentheses)
_DEEP_PATH = 64


def _flatten_deep_targets(gm: fx.GraphModule) -> bool:
    """Give modules and tensors with very deep paths an alias on the root (the same objects);
    True if any target changed."""
    changed = False
    for k, n in enumerate(gm.graph.nodes):
        if n.op not in ("call_module", "get_attr") or str(n.target).count(".") < _DEEP_PATH:
            continue
        owner, _, attr = str(n.target).rpartition(".")
        parent = gm.get_submodule(owner)
        obj = getattr(parent, attr)
        alias = f"_rfscope_flat_{k}"
        if isinstance(obj, torch.nn.Module):
            gm.add_module(alias, obj)
        elif isinstance(obj, torch.nn.Parameter):
            gm.register_parameter(alias, obj)
        elif attr in parent._buffers:
            gm.register_buffer(alias, obj)
        else:
            setattr(gm, alias, obj)
        n.target = alias
        changed = True
    return changed
