"""The shape pass: run the graph once on meta tensors and store each node's value."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch.fx.immutable_collections import immutable_dict, immutable_list

import rfscope.trace.datadep as datadep
from rfscope.core.errors import TraceError
from rfscope.core.locks import running
from rfscope.core.registry import node_target_name
from rfscope.trace.copy import (
    _meta_twin,
    _to_meta,
    meta_copy,
    modules,
    named_modules,
    own_tensors,
)
from rfscope.trace.datadep import REAL_ATTRS, REAL_SHAPES, UNKNOWN_META
from rfscope.trace.runtime import keep_rng_state
from rfscope.trace.shortcuts import ModuleCallCache, fast_module_output


class _ShapePass:
    """Runs the graph once on meta tensors and stores each node's value in ``node.meta["val"]``.

    What ``fx.Interpreter.run`` does, minus its per-node bookkeeping (context managers,
    last-use tracking, attribute walks): modules and attributes are looked up in dicts
    built once, and BatchNorm/Conv/Linear... take the shortcuts of :mod:`rfscope.trace.shortcuts`.
    """

    def __init__(self, gm: fx.GraphModule, real: torch.Generator | None = None) -> None:
        self.gm = gm
        #: real tensors instead of meta ones (rfscope.trace.datadep), random values from this generator
        self.real = real
        self.real_attrs: dict[str, torch.Tensor] = (gm.meta.get(REAL_ATTRS) or {}) if real is not None else {}
        #: the node that failed and its exception (after ``run`` raised)
        self.failed: tuple[fx.Node, Exception] | None = None
        self.modules = dict(named_modules(gm, remove_duplicate=False))
        self.calls = ModuleCallCache()
        self._metas: dict[int, Any] = {}  # id(user tensor or module) -> its meta copy

    def _meta_tensor(self, t: torch.Tensor) -> torch.Tensor:
        """A meta tensor like ``t`` (one per tensor, so tied tensors stay tied)."""
        hit = self._metas.get(id(t))
        if hit is None:
            hit = self._metas[id(t)] = _meta_twin(t)
        return hit

    def _real_attr(self, target: str, t: torch.Tensor) -> torch.Tensor:
        """The real tensor for attribute ``target``: the one make_fx traced with, ``t`` when it is
        real, else seeded random values (one per tensor)."""
        hit = self.real_attrs.get(target)
        if hit is not None:
            return hit
        if t.device.type != "meta":
            return t
        got = self._metas.get(id(t))
        if got is None:
            assert self.real is not None
            got = self._metas[id(t)] = datadep._real_tensor(t, self.real)
        return got

    def _runnable(self, m: torch.nn.Module) -> torch.nn.Module:
        """``m`` itself when it holds no tensor, else a meta copy of it (made once)."""
        hit = self._metas.get(id(m))
        if hit is None:
            hit = self._metas[id(m)] = m if _runs_as_is(m) else meta_copy(m)
        return hit

    def fetch_attr(self, target: str) -> Any:
        owner, _, attr = target.rpartition(".")
        obj: Any = self.modules.get(owner)
        if obj is None:  # an attribute of a plain (non-module) object
            obj, attr = self.gm, target
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise RuntimeError(f"node referenced nonexistent target {target}")
            obj = getattr(obj, part)
        return obj

    def run(self, *args: Any) -> None:
        env: dict[fx.Node, Any] = {}
        inputs = iter(args)
        value = env.__getitem__
        for n in self.gm.graph.nodes:
            op = n.op
            try:
                if op == "placeholder":
                    out = self._placeholder(n, inputs)
                elif op == "get_attr":
                    out = self.fetch_attr(n.target)
                    if isinstance(out, torch.Tensor):
                        out = self._meta_tensor(out) if self.real is None else self._real_attr(n.target, out)
                elif self.real is not None:
                    out = self._run_real(n, value)
                else:
                    a = _thaw(fx.node.map_arg(n.args, value))
                    kw = _thaw(fx.node.map_arg(n.kwargs, value))
                    if op == "call_module":
                        out = self._call_module(str(n.target), a, kw)
                    elif op == "call_function":
                        fn = n.target
                        out = self.calls.call_function(fn, a, kw, lambda: fn(*a, **kw))  # run now, in this step
                    elif op == "call_method":
                        out = getattr(a[0], n.target)(*a[1:], **kw)
                    else:  # output
                        out = a[0]
            except Exception as e:
                self.failed = (n, e)
                raise self._error(n, e) from e
            env[n] = out
            n.meta["val"] = out if self.real is None else datadep.to_meta_value(out)

    def _run_real(self, n: fx.Node, value: Any) -> Any:
        """One node on real tensors: no shortcuts, modules holding meta tensors on seeded random copies."""
        a = _thaw(fx.node.map_arg(n.args, value))
        kw = _thaw(fx.node.map_arg(n.kwargs, value))
        if n.op == "call_module":
            m = self.modules[str(n.target)]
            hit = self._metas.get(id(m))
            if hit is None:
                assert self.real is not None
                hit = self._metas[id(m)] = datadep.real_module(m, self.real)
            return hit(*a, **kw)
        if n.op == "call_function":
            return n.target(*a, **datadep.device_kwargs(kw))  # type: ignore[operator]
        if n.op == "call_method":
            return getattr(a[0], str(n.target))(*a[1:], **kw)
        return a[0]  # output

    @staticmethod
    def _placeholder(n: fx.Node, inputs: Any) -> Any:
        if str(n.target).startswith("*"):
            return list(inputs)
        try:
            return next(inputs)
        except StopIteration:
            if n.args:
                return n.args[0]
            raise RuntimeError(f"expected an input for {n.target!r}, but the example inputs ran out") from None

    def _call_module(self, target: str, args: Any, kwargs: Any) -> Any:
        # BatchNorm, Conv, Linear... skip their slow Python meta kernels, and a repeated
        # identical torch.nn call reuses the first one's output layout (see fastshape)
        m = self.modules[target]
        out = fast_module_output(m, args, kwargs)
        if out is not None:
            return out
        return self.calls.call(m, args, kwargs, lambda: self._runnable(m)(*args, **kwargs))

    def _error(self, n: fx.Node, e: Exception) -> TraceError:
        if n.op == "call_module":
            args = fx.node.map_arg(n.args, lambda a: a.meta.get("val"))
            hint = _layer_problem(str(n.target), self.modules.get(str(n.target)), args)
            if hint:
                return TraceError(hint)
        where = n.meta.get("nn_module_stack")
        mod = next(reversed(where.values()))[0] if where else None
        loc = f" in module {mod!r}" if mod else ""
        return TraceError(
            f"shape propagation failed at node {n.name!r}{loc} ({node_target_name(n)}): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        )


_FROZEN = (immutable_list, immutable_dict)


def _thaw(x: Any) -> Any:
    """fx's immutable argument lists/dicts as the plain ones the model's own code would get (a
    function may fill in a list it is given, as Swin3d's ``_get_window_and_shift_size`` does)."""
    t = type(x)
    if t is tuple:
        return tuple(_thaw(v) for v in x) if any(type(v) in _FROZEN for v in x) else x
    if t is immutable_list:
        return [_thaw(v) for v in x]
    if t is immutable_dict:
        return {k: _thaw(v) for k, v in x.items()}
    return x


def _runs_as_is(m: torch.nn.Module) -> bool:
    """The module (of the structural copy: its Python state is already a copy) holds no tensor at
    all, so calling it touches nothing of the user's (tensors, even meta ones, are the user's)."""
    return not any(own_tensors(sub) for sub in modules(m))


def _layer_problem(name: str, m: Any, args: Any) -> str | None:
    """A conv/pool/norm/linear layer's input has the wrong channel count or is too small, in words."""
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    conv = isinstance(m, torch.nn.modules.conv._ConvNd)
    pool = isinstance(m, (torch.nn.modules.pooling._MaxPoolNd, torch.nn.modules.pooling._AvgPoolNd))
    cls = type(m).__name__
    want = {torch.nn.modules.batchnorm._BatchNorm: ("num_features", 1), torch.nn.GroupNorm: ("num_channels", 1),
            torch.nn.Linear: ("in_features", -1)}
    for c, (attr, dim) in want.items():
        if x is not None and isinstance(m, c) and x.dim() > max(dim, 0) and int(x.shape[dim]) != getattr(m, attr):
            where = "channels" if dim == 1 else "features (last dim)"
            return f"layer {name!r} ({cls}) expects {getattr(m, attr)} input {where} but gets {int(x.shape[dim])}"
    if x is None or not (conv or pool):
        return None
    nn_ = torch.nn
    dims = {nn_.MaxPool1d: 1, nn_.AvgPool1d: 1, nn_.MaxPool2d: 2, nn_.AvgPool2d: 2, nn_.MaxPool3d: 3, nn_.AvgPool3d: 3}
    n = len(m.kernel_size) if conv else next((v for c, v in dims.items() if isinstance(m, c)), x.dim() - 2)
    if x.dim() not in (n + 1, n + 2):
        return (f"layer {name!r} ({cls}) expects a {n + 1}-d or {n + 2}-d input but gets a {x.dim()}-d one "
                f"(shape {'x'.join(str(int(d)) for d in x.shape)})")
    if conv and int(x.shape[-n - 1]) != m.in_channels:
        c = m.in_channels
        return (f"layer {name!r} ({cls}) expects {c} input channels but gets {int(x.shape[-n - 1])}; "
                f"if it is the first layer use --input-shape {c},H,W (input_shape=(N, {c}, ...))")

    def tup(v: Any) -> tuple[int, ...]:
        return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * n

    pad = getattr(m, "padding", 0)
    p = (0,) * n if isinstance(pad, str) else tup(pad)
    need = tuple(max(1, dd * (kk - 1) + 1 - 2 * pp)
                 for kk, dd, pp in zip(tup(m.kernel_size), tup(getattr(m, "dilation", 1)), p, strict=False))
    got = tuple(int(s) for s in x.shape[-n:])
    if not getattr(m, "transposed", False) and any(g < q for g, q in zip(got, need, strict=False)):
        fmt = lambda t: "x".join(map(str, t))
        return (f"input too small for layer {name!r} ({cls}): it gets {fmt(got)} positions but needs at least "
                f"{fmt(need)}; use a larger --input-shape (input_shape)")
    return None


def propagate_shapes(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
    """Run ``gm`` on meta tensors, storing each node's value in ``node.meta['val']``.

    When a data-dependent op (``nonzero``, a boolean mask, NMS, ``.item()``) or one with no meta
    kernel stops the meta run, the graph runs on real tensors instead (:mod:`rfscope.trace.datadep`;
    ``gm.meta[REAL_SHAPES]`` then says why); in any case the nodes whose values depend on the data's
    values are marked ``node.meta[UNKNOWN_META]``.
    """
    gm.meta.pop(REAL_SHAPES, None)
    for n in gm.graph.nodes:
        n.meta.pop(UNKNOWN_META, None)
    with torch.no_grad(), running():  # not while torch.export traces (rfscope.core.locks)
        first = datadep.first_data_dependent(gm) if datadep.traced_for(gm, example_inputs) else None
        if first is not None and _traced_values(gm):  # make_fx ran it on real tensors: their values' shapes
            what = datadep.reason(first, *datadep.data_dependent_op(first)).replace("after ", "", 1)
            _note_real(gm, first, what, "the values make_fx traced, " + datadep.real_inputs_source(example_inputs))
        else:
            sp = _ShapePass(gm)
            try:
                sp.run(*[_to_meta(x) for x in datadep.graph_inputs(gm, example_inputs)])
            except TraceError as err:
                failed = sp.failed
                why = datadep.needs_real(*failed) if failed is not None else None
                if failed is None or why is None:
                    raise
                _real_shapes(gm, example_inputs, failed[0], why, err)
    datadep.detach_factories(gm)
    datadep.mark(gm)


def _traced_values(gm: fx.GraphModule) -> bool:
    """Each node's value from the one make_fx recorded on real tensors (``node.meta['val']``, fake
    tensors), as meta tensors; ``False`` (nothing changed) when a node has none."""
    sp = _ShapePass(gm)
    vals: dict[fx.Node, Any] = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            v = sp.fetch_attr(n.target)
            vals[n] = sp._meta_tensor(v) if isinstance(v, torch.Tensor) else v
        elif n.op == "output":
            vals[n] = fx.node.map_arg(n.args[0], vals.__getitem__)
        elif n.meta.get("val") is None:
            return False
        else:
            vals[n] = datadep.to_meta_value(n.meta["val"])
    for n, v in vals.items():
        n.meta["val"] = v
    return True


def _real_shapes(gm: fx.GraphModule, example_inputs: Sequence[Any], node: fx.Node, why: str,
                 err: TraceError) -> None:
    """The shape pass on real tensors (the meta one failed at ``node`` for reason ``why``)."""
    gen = torch.Generator().manual_seed(0)
    inputs, source = datadep.real_inputs(gm, example_inputs, gen)
    real = _ShapePass(gm, real=gen)
    try:
        with keep_rng_state():  # the graph may draw from the global generator (dropout, noise)
            real.run(*datadep.graph_inputs(gm, inputs))
    except TraceError as e2:
        first = str(err).splitlines()[0]
        raise TraceError(f"{first}; rfscope reran the shapes on real tensors ({why}), which failed too: "
                         f"{str(e2).splitlines()[0]}") from e2
    _note_real(gm, node, why, source)


def _note_real(gm: fx.GraphModule, node: fx.Node, why: str, source: str) -> None:
    mod = node.meta.get("nn_module_stack")
    where = f" in module {next(reversed(mod.values()))[0]!r}" if mod else ""
    after = "" if "no meta kernel" in why else "; what depends on its values is unknown"
    gm.meta[REAL_SHAPES] = (f"shapes propagated on real tensors ({source}) because of node {node.name!r}{where}: "
                            f"{why}{after}")


def minimum_input(gm: fx.GraphModule, example_inputs: Sequence[Any], limit: int = 8192) -> tuple[int, ...] | None:
    """The smallest input shape (spatial dims raised to a common floor) whose shapes propagate through ``gm``.

    Only for a single input tensor ``(N, C, *spatial)``; ``None`` when not found up to ``limit``.
    Shapes are propagated on meta tensors, so each try is cheap.
    """

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

