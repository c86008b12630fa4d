"""Data-dependent ops: shapes from real tensors, and what depends on the data's values marked unknown.

Shape propagation runs on ``meta`` tensors, which have shapes but no values.  An op whose output
shape (``nonzero``, boolean masks, NMS, ``unique``) or value (``.item()``) is decided by the data
cannot run there; nor can an op with no meta kernel (``istft``).  For such a graph the shape
pass runs once more on real tensors (:func:`real_pass`): the example input, or a seeded random
one of the declared shape, with the model's own weights where it has them (seeded random ones
where it is on ``meta``), the global random generators left where they were.  The model itself
is never called: only the graph's modules, on copies when they hold meta tensors.

:func:`mark` then sets ``node.meta[UNKNOWN_META]`` on every data-dependent node and on everything
computed from it (whose shape would change with the data), with a reason naming the op; the
interpreter reports those nodes as ``unknown`` with that reason.  Everything else (a detector's
backbone and FPN) is analysed as usual.
"""

from __future__ import annotations

import copy as _copy
import operator
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx

from rfscope.trace.copy import modules

#: ``node.meta`` key read by the interpreter (``rfscope.passes.interpret.UNKNOWN_META``)
UNKNOWN_META = "rfscope_unknown"

#: ``gm.meta`` keys: the real tensors make_fx traced with (attribute name -> tensor), and its inputs
REAL_ATTRS = "rfscope_real_attrs"
REAL_INPUTS = "rfscope_real_inputs"

#: ``gm.meta`` key: the graph's placeholders are the inputs' pytree leaves (the ATen tracers' graphs)
FLAT_INPUTS = "rfscope_flat_inputs"

#: ``gm.meta`` key: why shapes were propagated on real tensors (set by :func:`real_pass`)
REAL_SHAPES = "rfscope_real_shapes"

_KEPT = "the data decides which positions are kept"

#: op name (an fx target's last name, overload dropped) -> (what is data-dependent, why)
DATA_DEPENDENT: dict[str, tuple[str, str]] = {
    "nonzero": ("shape", _KEPT),
    "argwhere": ("shape", _KEPT),
    "masked_select": ("shape", "the mask decides which elements are kept"),
    "nms": ("shape", "the scores decide which boxes are kept"),
    "batched_nms": ("shape", "the scores decide which boxes are kept"),
    "unique": ("shape", "the values decide how many are kept"),
    "_unique": ("shape", "the values decide how many are kept"),
    "_unique2": ("shape", "the values decide how many are kept"),
    "unique_dim": ("shape", "the values decide how many are kept"),
    "unique_consecutive": ("shape", "the values decide how many are kept"),
    "bincount": ("shape", "the largest value decides the length"),
    "item": ("value", "a tensor's value is read as a Python number"),
    "_local_scalar_dense": ("value", "a tensor's value is read as a Python number"),
    "tolist": ("value", "a tensor's values are read as Python numbers"),
}

_MASK_WHY = ("shape", "the boolean mask decides which elements are kept")

#: how the reason names an op whose fx name says little
_LABELS = {"item": "item()", "_local_scalar_dense": "item()", "tolist": "tolist()",
           "where": "torch.where(condition)"}


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


def _op_name(n: fx.Node) -> str:
    """``aten.nonzero.default`` -> ``nonzero``; ``torchvision.ops.boxes.nms`` -> ``nms``."""
    if n.op == "call_method":
        return str(n.target)
    name = getattr(n.target, "__name__", None) or str(n.target)
    overload = getattr(n.target, "_overloadpacket", None)
    if overload is not None:  # an ATen OpOverload: its packet's name
        name = getattr(overload, "__name__", name)
    return str(name).rsplit(".", 1)[-1]


def _is_bool_tensor(v: Any) -> bool:
    return isinstance(v, torch.Tensor) and v.dtype == torch.bool


def _has_bool_index(idx: Any) -> bool:
    if _is_bool_tensor(idx):
        return True
    if isinstance(idx, (tuple, list)):
        return any(_has_bool_index(v) for v in idx)
    return False


def _value(a: Any) -> Any:
    return a.meta.get("val") if isinstance(a, fx.Node) else a


def first_data_dependent(gm: fx.GraphModule) -> fx.Node | None:
    """The first data-dependent node of ``gm`` (:func:`data_dependent`), or ``None``."""
    return next((n for n in gm.graph.nodes if data_dependent(n) is not None), None)


def data_dependent_op(n: fx.Node) -> tuple[str, str]:
    """:func:`data_dependent` of a node known to be one."""
    hit = data_dependent(n)
    assert hit is not None
    return hit


def traced_for(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> bool:
    """``gm`` was traced by make_fx on real inputs of the example inputs' shapes (its nodes' ``val``
    are those inputs' values)."""
    traced = gm.meta.get(REAL_INPUTS)
    return traced is not None and _shapes(traced) == _shapes(example_inputs)


def real_inputs_source(example_inputs: Sequence[Any]) -> str:
    if all(not isinstance(x, torch.Tensor) or x.device.type != "meta" for x in example_inputs):
        return "the example input"
    return "a seeded random input of the declared shape"


def data_dependent(n: fx.Node) -> tuple[str, str] | None:
    """``(what, why)`` when ``n``'s output shape or value is decided by the data, else ``None``.

    Reads argument values from ``node.meta['val']`` (bool masks are told apart by dtype).
    """
    if n.op not in ("call_function", "call_method"):
        return None
    name = _op_name(n)
    hit = DATA_DEPENDENT.get(name)
    if hit is not None:
        return hit
    if name == "where" and len(n.args) == 1 and not n.kwargs:  # torch.where(cond): nonzero
        return ("shape", _KEPT)
    if n.target is operator.getitem or name in ("index", "__getitem__", "_unsafe_index"):
        idx = n.args[1] if len(n.args) > 1 else n.kwargs.get("indices")
        if _has_bool_index(_value(idx) if isinstance(idx, fx.Node) else fx.node.map_arg(idx, _value)):
            return _MASK_WHY
    if name == "repeat_interleave":
        reps = n.args[1] if len(n.args) > 1 else n.kwargs.get("repeats")
        if isinstance(_value(reps), torch.Tensor) or (len(n.args) == 1 and n.op == "call_function"
                                                      and isinstance(_value(n.args[0]), torch.Tensor)):
            return ("shape", "the repeat counts come from the data")
    return None


def reason(n: fx.Node, what: str, why: str) -> str:
    """The unknown reason for ``n`` and what follows it."""
    name = _op_name(n)
    label = "boolean-mask indexing" if (what, why) == _MASK_WHY else _LABELS.get(name, name)
    return f"after {label} (data-dependent {what}): {why}"


def mark(gm: fx.GraphModule) -> int:
    """Mark each data-dependent node and every node computed from one ``node.meta[UNKNOWN_META]``
    (the reason names the op); returns how many nodes were marked.  Placeholders, attributes
    and the output node are never marked."""
    marked = 0
    for n in gm.graph.nodes:
        if n.op in ("placeholder", "get_attr", "output"):
            continue
        why: str | None = None
        for a in n.all_input_nodes:
            why = a.meta.get(UNKNOWN_META)
            if why is not None:
                break
        if why is None:
            hit = data_dependent(n)
            if hit is not None:
                why = reason(n, *hit)
        if why is not None:
            n.meta[UNKNOWN_META] = why
            marked += 1
    return marked


def needs_real(n: fx.Node, e: BaseException) -> str | None:
    """Why node ``n``, which failed on meta with ``e``, needs real tensors; ``None`` when its failure
    is not about meta (a wrong shape, a layer too small: the error stands)."""
    hit = data_dependent(n)
    if hit is not None:
        return reason(n, *hit).replace("after ", "", 1)
    text = f"{type(e).__name__}: {e}"
    low = text.lower()
    cls = type(e).__name__
    if cls in ("DataDependentOutputException", "DynamicOutputShapeException", "GuardOnDataDependentSymNode") \
            or "data-dependent" in low or "data dependent" in low:
        return f"{_op_name(n)} (data-dependent output)"
    if "meta" in low and (isinstance(e, NotImplementedError) or "kernel" in low or "backend" in low
                          or "cannot" in low or "not implemented" in low or "numpy" in low):
        return f"{_op_name(n)} (no meta kernel: it runs on real tensors only)"
    return None


def _real_tensor(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A real tensor like the meta ``t``: seeded small random floats, zeros otherwise."""
    if t.is_floating_point() or t.is_complex():
        out = torch.randn(t.shape, dtype=t.dtype, generator=gen) * 0.02
    else:
        out = torch.zeros(t.shape, dtype=t.dtype)
    if isinstance(t, torch.nn.Parameter):
        return torch.nn.Parameter(out, requires_grad=False)
    return out


def real_module(m: torch.nn.Module, gen: torch.Generator) -> torch.nn.Module:
    """``m`` itself when it holds no meta tensor, else a copy whose meta tensors are seeded random."""
    if not any(t is not None and t.device.type == "meta"
               for sub in modules(m) for t in (*sub._parameters.values(), *sub._buffers.values())):
        return m
    cp = _copy.deepcopy(m)
    memo: dict[int, torch.Tensor] = {}
    for sub in modules(cp):
        for store in (sub._parameters, sub._buffers):
            for k, t in list(store.items()):
                if t is not None and t.device.type == "meta":
                    if id(t) not in memo:
                        memo[id(t)] = _real_tensor(t, gen)
                    store[k] = memo[id(t)]  # type: ignore[assignment]
    return cp


def real_inputs(gm: fx.GraphModule, example_inputs: Sequence[Any],
                gen: torch.Generator) -> tuple[list[Any], str]:
    """The inputs of the real pass and where they come from: those make_fx traced with (its graph
    is specialised to them), the example inputs when they are real, else seeded random ones of
    their shapes (:func:`_to_real`)."""

    traced = gm.meta.get(REAL_INPUTS)
    src = real_inputs_source(example_inputs)
    if traced is not None and traced_for(gm, example_inputs):
        return list(traced), src
    return [_to_real(x, gen) for x in example_inputs], src


def graph_inputs(gm: fx.GraphModule, inputs: Sequence[Any]) -> list[Any]:
    """``inputs`` as ``gm``'s placeholders take them: flattened to their pytree leaves for an ATen
    graph (a list of images is one placeholder per image there)."""
    if not gm.meta.get(FLAT_INPUTS) or all(isinstance(x, torch.Tensor) for x in inputs):
        return list(inputs)
    from torch.utils._pytree import tree_leaves

    return list(tree_leaves(tuple(inputs)))


def _shapes(xs: Sequence[Any]) -> list[Any]:
    return [(tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else
            _shapes(x) if isinstance(x, (list, tuple)) else type(x) for x in xs]


def device_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    """Factory keyword arguments that say ``device=meta`` (make_fx graphs) pointed at the CPU."""
    dev = kw.get("device")
    if dev is not None and str(dev) == "meta":
        return {**kw, "device": torch.device("cpu")}
    return kw


def to_meta_value(v: Any) -> Any:
    """A real value with its tensors as meta tensors (what ``node.meta['val']`` holds)."""
    if isinstance(v, torch.Tensor):
        return torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device="meta") if v.layout == torch.strided \
            else torch.empty(v.shape, dtype=v.dtype, device="meta")
    if isinstance(v, tuple) and hasattr(v, "_fields"):
        return type(v)(*(to_meta_value(x) for x in v))
    if isinstance(v, (list, tuple)):
        return type(v)(to_meta_value(x) for x in v)
    if isinstance(v, dict):
        return {k: to_meta_value(x) for k, x in v.items()}
    return v


#: factories that take only the dtype and device of a tensor argument (``x.new_zeros(size)``)
_NEW_FACTORIES = frozenset({"new_full", "new_zeros", "new_ones", "new_empty", "new_empty_strided"})


def detach_factories(gm: fx.GraphModule) -> None:
    """``x.new_full(size, v)`` and friends read only ``x``'s dtype and device, not its values: their
    ``x`` becomes a constant attribute of that dtype, so that the new tensor (a detector's padded
    image batch) does not look computed from the input; and ``aten.copy(dst, src)`` (a functionalised
    ``dst.copy_(src)``) of one shape and dtype is ``src``'s values: a clone of ``src``.  Both rewrites
    keep the graph's values.  Run after a shape pass (reads ``val``)."""
    for n in list(gm.graph.nodes):
        if n.op not in ("call_function", "call_method") or _op_name(n) not in _NEW_FACTORIES or not n.args:
            continue
        src = n.args[0]
        if not isinstance(src, fx.Node) or src.op == "get_attr" or not isinstance(src.meta.get("val"), torch.Tensor):
            continue
        dtype = src.meta["val"].dtype
        attr = f"_rfscope_like_{str(dtype).rsplit('.', 1)[-1]}"
        if attr not in gm.__dict__:
            gm.__dict__[attr] = torch.empty((), dtype=dtype, device="meta")  # not a buffer: counts skip it
        with gm.graph.inserting_before(n), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fx wants a parameter, buffer or module: a plain attribute is enough
            like = gm.graph.get_attr(attr)
        like.meta["val"] = getattr(gm, attr)
        n.args = (like, *n.args[1:])
    for n in list(gm.graph.nodes):  # copy(dst, src) of one shape and dtype: src's values, a clone of src
        if n.op != "call_function" or n.target is not torch.ops.aten.copy.default or len(n.args) < 2:
            continue
        dst, src = (a.meta.get("val") if isinstance(a, fx.Node) else a for a in n.args[:2])
        if isinstance(dst, torch.Tensor) and isinstance(src, torch.Tensor) and isinstance(n.args[1], fx.Node) \
                and dst.shape == src.shape and dst.dtype == src.dtype:
            n.target = torch.ops.aten.clone.default
            n.args, n.kwargs = (n.args[1],), {}
    aten = torch.ops.aten
    for n in list(gm.graph.nodes):  # a scatter that overwrites all of its base: a view of its source
        if n.op != "call_function" or n.target not in (aten.select_scatter.default, aten.slice_scatter.default):
            continue
        base, src = (a.meta.get("val") if isinstance(a, fx.Node) else a for a in n.args[:2])
        if not (isinstance(base, torch.Tensor) and isinstance(src, torch.Tensor) and isinstance(n.args[1], fx.Node)) \
                or base.dtype != src.dtype:
            continue
        if n.target is aten.select_scatter.default:
            dim = int(n.args[2]) % base.dim()
            if base.shape[dim] == 1 and tuple(src.shape) == tuple(base.shape[:dim] + base.shape[dim + 1:]):
                n.target, n.args, n.kwargs = aten.unsqueeze.default, (n.args[1], dim), {}
        elif tuple(base.shape) == tuple(src.shape):
            n.target, n.args, n.kwargs = aten.clone.default, (n.args[1],), {}
    gm.recompile()
