"""The interpreter pass: run every node's plugin once and write what it says on the node's record.

Each node gets a state (see :mod:`rfscope.core.state`) computed from its inputs'
states by the plugin registered for its target, and its record holds everything the
plugin knows about the call: state and RF, MACs, geometry, traits, the output shape.
A node without a plugin, or whose plugin cannot handle the call, is ``unknown`` and so
is everything that depends on it.  Records are frozen: the passes after this one
(counts, diagnostics, the init check) read them and return their own results.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch
import torch.fx as fx

from rfscope.core.context import OpContext, Unsupported
from rfscope.core.errors import RfscopeError
from rfscope.core.geometry import Geometry
from rfscope.core.registry import Method, Plugin, PluginError, Registry, node_target_name
from rfscope.core.result import RF
from rfscope.core.rf import Axis, covers
from rfscope.core.state import CONST, Const, Global, Merged, TensorRF, input_rf, unknown
from rfscope.passes.inplace import UNKNOWN_META, follow_writes
from rfscope.trace.copy import named_modules

#: ``node.meta`` key: a reason string set by the shape pass on nodes whose values depend on data
#: (after ``nonzero``, a boolean mask, ``.item()``...); the interpreter makes them ``unknown`` with it.

__all__ = ["UNKNOWN_META", "NodeRecord", "run_plugins", "build_graph", "StrictError", "record_fields", "has_rf"]


class StrictError(RfscopeError, RuntimeError):
    """``strict=True`` and some node could not be analysed."""


@dataclass(frozen=True)
class NodeRecord:
    """Everything rfscope knows about one fx node, written once by :func:`run_plugins`."""

    name: str
    op: str
    target: str
    target_obj: Any
    module: str | None
    module_class: str | None
    shape: tuple[int, ...] | None
    state: Any
    plugin: str | None = None
    macs: int | None = None
    inputs: tuple[str, ...] = ()
    #: module call key from ``nn_module_stack`` (``"b@1"`` for the second call of ``b``)
    call: str | None = None
    #: kernel/stride/padding/dilation of a conv or pool call, from its plugin (``None`` otherwise)
    geometry: Geometry | None = None
    #: the plugin's traits (:mod:`rfscope.core.traits`): what kind of op this is
    traits: frozenset[str] = frozenset()
    #: the receptive field of the node's output (``None`` unless it is a tensor that depends on the input)
    rf: RF | None = None

    @property
    def conv_kind(self) -> list[str] | None:
        """Convolution anatomy, primary kind then flags (``["depthwise", "dilated"]``); ``None`` if not a conv."""
        return self.geometry.conv_kind() if self.geometry is not None else None

    @property
    def label(self) -> str:
        """Short row label: the module call for module calls, ``module/node`` otherwise."""
        if self.op == "call_module":
            return self.call or self.module or self.name
        if self.op == "placeholder":
            return self.name
        return f"{self.call}/{self.name}" if self.call else self.name


def _module_of(n: fx.Node, stack: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """The module path and class a node belongs to (``stack``: its ``nn_module_stack``)."""
    if n.op == "call_module":
        cls = None
        for path, c in (stack or {}).values():
            if path == n.target:
                cls = c
        return str(n.target), (cls.__qualname__ if isinstance(cls, type) else None)
    if n.op == "output" or not stack:
        return None, None
    path, cls = next(reversed(stack.values()))
    return path, cls.__qualname__ if isinstance(cls, type) else str(cls)


def _shape(v: Any) -> tuple[int, ...] | None:
    if isinstance(v, torch.Tensor):
        return tuple(map(int, v.shape))
    return None


def _value_of(a: fx.Node) -> Any:
    return a.meta.get("val")


def _flat_states(x: Any) -> list[Any]:
    """The leaves of nested lists, tuples, dicts and slices, in order."""
    return _leaves(x, [])


def _leaves(x: Any, out: list[Any]) -> list[Any]:
    if isinstance(x, (list, tuple)):
        for v in x:
            _leaves(v, out)
    elif isinstance(x, dict):
        for v in x.values():
            _leaves(v, out)
    elif isinstance(x, slice):
        _leaves((x.start, x.stop, x.step), out)
    else:
        out.append(x)
    return out


def _dims_like(v: Any) -> tuple[None, ...]:
    return tuple(None for _ in v.shape) if isinstance(v, torch.Tensor) else ()


def _positionless_like(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_positionless_like(x) for x in v)
    if isinstance(v, torch.Tensor):
        return TensorRF(_dims_like(v), ())
    return CONST


def _unknown_like(v: Any, reason: str) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_unknown_like(x, reason) for x in v)
    if isinstance(v, torch.Tensor):
        return unknown(_dims_like(v), reason)
    return CONST


def _input_state(v: Any, n_spatial: int | None) -> Any:
    """The state of an input when the caller gives none (``run_plugins(..., input_states=None)``):
    a float tensor of 3 dims or more laid out as ``(N, C, *spatial)``."""
    if isinstance(v, torch.Tensor) and v.dim() >= 3 and v.is_floating_point():
        ns = v.dim() - 2 if n_spatial is None else n_spatial
        if v.dim() - 2 != ns:
            return unknown(_dims_like(v), "input with a different number of spatial dims")
        return input_rf(v.dim(), ns)
    if isinstance(v, (list, tuple)):
        return tuple(_input_state(x, n_spatial) for x in v)
    return CONST


def run_plugins(
    gm: fx.GraphModule,
    registry: Registry,
    input_size: Sequence[int],
    strict: bool = False,
    input_states: Sequence[Any] | None = None,
    modules: dict[str, torch.nn.Module] | None = None,
) -> tuple[dict[str, NodeRecord], list[str], list[str]]:
    """Annotate every node; returns (records, unsupported targets, plugin errors).

    ``input_size``: the extents of the input axes.  ``input_states``: the state of each
    positional input, in order (:func:`rfscope.pipeline.analyze` builds them from the layouts);
    a placeholder past them (an argument left to its default) is a constant.  Without it, a float
    input of 3 dims or more is ``(N, C, *spatial)`` and anything else a constant.  ``modules``:
    ``gm``'s modules by path (every path), when the caller has them.
    """
    follow_writes(gm)  # reads after an in-place write see it (ATen graphs from torch.export)
    records: dict[str, NodeRecord] = {}
    states: dict[fx.Node, Any] = {}
    unsupported: dict[str, None] = {}
    errors: list[str] = []
    n_spatial = len(input_size)
    size = tuple(input_size)
    rfs: dict[Any, Any] = {}  # equal states give equal (immutable) RFs: most nodes share a few
    cover_memo: dict[tuple[Any, int, int], bool] = {}  # (axis, positions, extent) -> covered (per analysis)
    if modules is None:
        modules = dict(named_modules(gm, remove_duplicate=False))
    state_of = states.__getitem__
    map_arg = fx.node.map_arg
    placeholders = 0
    for n in gm.graph.nodes:
        val = n.meta.get("val")
        module = modules[n.target] if n.op == "call_module" else None
        tname = (
            type(module).__qualname__ if module is not None
            else node_target_name(n) if n.op not in ("placeholder", "output") else str(n.target)
        )
        plugin: Plugin | None = None
        macs: int | None = None
        geometry: Geometry | None = None
        if n.op == "placeholder":
            st = _given_state(val, input_states, placeholders, n) if input_states is not None \
                else _input_state(val, n_spatial)
            placeholders += 1
        elif n.op == "get_attr":
            st = CONST
        elif n.op == "output":
            st = map_arg(n.args[0], state_of)
        else:
            args = map_arg(n.args, state_of)
            kwargs = map_arg(n.kwargs, state_of)
            tensors = [s for s in _leaves(kwargs, _leaves(args, [])) if isinstance(s, TensorRF)]
            if n.op == "call_module":
                plugin = registry.lookup_module(module)
            elif n.op == "call_method":
                plugin = registry.lookup(Method(str(n.target)))
            else:
                plugin = registry.lookup(n.target)
            ctx = OpContext(
                n, module, args, kwargs,
                map_arg(n.args, _value_of),
                map_arg(n.kwargs, _value_of),
                val, size, registry=registry,
            )
            if plugin is not None and plugin.geometry is not None:
                try:
                    geometry = plugin.geometry(ctx)
                except Exception:  # noqa: BLE001 - geometry is descriptive; the RF and MACs report the failure
                    geometry = None
            if plugin is not None and plugin.macs is not None:
                try:
                    macs = _checked_macs(plugin.macs(ctx))
                except _BadMacs as e:  # a wrong count is worse than none: unknown, with a warning
                    msg = (f"plugin {plugin.name!r} returned {e} as the MACs of node {n.name!r} ({tname}); "
                           "MACs must be a non-negative integer or None, so they are unknown here")
                    if strict:
                        raise PluginError(msg) from e
                    errors.append(msg)
                except Unsupported:
                    macs = None
                except Exception as e:  # noqa: BLE001
                    msg = (f"plugin {plugin.name!r} failed counting MACs at node {n.name!r} ({tname}): "
                           f"{type(e).__name__}: {e}")
                    if strict:
                        raise PluginError(msg) from e
                    errors.append(msg)
            fields = record_fields(n.target, args, kwargs) if n.op == "call_function" else None
            forced = n.meta.get(UNKNOWN_META)
            if forced is not None:  # the shape pass could not follow this node (data-dependent values)
                st = _unknown_like(val, str(forced)) if val is not None else unknown((), str(forced))
            elif fields is not None:  # a namedtuple or dataclass built from its fields: their states, in order
                st = tuple(v for _, v in fields)
            elif not tensors or not _has_tensor(val):
                st = CONST if not isinstance(val, (list, tuple)) else tuple(CONST for _ in val)
            elif all(t.reason is None and not t.axes and not t.scrambled and t.table is None for t in tensors):
                # computed from inputs with no positional axis only (a feature vector, a timestep):
                # whatever the op, no dim of the result indexes an input axis, and no RF applies
                st = _positionless_like(val)
            elif any(t.reason is not None for t in tensors) and not _handles_unknown(plugin):
                reason = next(t.reason for t in tensors if t.reason is not None)
                st = _unknown_like(val, reason or "unknown input")
            elif any(t.table is not None for t in tensors) and (plugin is None or plugin.table is None):
                st = _unknown_like(val, f"{tname}: no rule for per-position (token layout) inputs")
                if plugin is None or plugin.rf is None:
                    unsupported[tname] = None
            elif plugin is None or (plugin.rf is None and plugin.table is None):
                unsupported[tname] = None
                msg = f"no plugin for {tname}"
                if strict:
                    raise StrictError(
                        f"node {n.name!r}: {msg}; register a plugin (see README, 'Writing a plugin') "
                        "or run without strict"
                    )
                st = _unknown_like(val, msg)
            else:
                tabled = any(t.table is not None for t in tensors)
                rule = plugin.table if tabled or plugin.rf is None else plugin.rf
                assert rule is not None
                retry = not tabled and plugin.table is not None and rule is not plugin.table
                st = _call_rule(rule, ctx, val, plugin, tname, strict and not retry, errors)
                uncovered = None if tabled else _uncovered(st, ctx, tensors, size, cover_memo)
                if uncovered is not None:
                    # 'global' claimed over positions that do not see the whole input (a mean over a
                    # cropped or subsampled map): the per-position form states the real union
                    st = _unknown_like(val, f"{tname}: the mixed positions do not cover the whole input "
                                            f"along axis {uncovered}")
                if retry and _lost(st):
                    # the periodic form cannot say it: try the per-position form
                    assert plugin.table is not None
                    alt = _call_rule(plugin.table, ctx, val, plugin, tname, False, [])
                    if not _lost(alt):
                        st = alt
                    elif strict:
                        raise StrictError(f"node {n.name!r}: {next(iter(_reasons(st)), tname)}")
        states[n] = st
        stack = n.meta.get("nn_module_stack")
        mpath, mcls = _module_of(n, stack)
        call = next(reversed(stack)) if stack else None
        records[n.name] = NodeRecord(
            name=n.name,
            op=n.op,
            target=tname,
            target_obj=n.target,
            module=mpath,
            module_class=mcls,
            shape=_shape(val),
            state=st,
            plugin=plugin.name if plugin is not None else None,
            macs=macs,
            inputs=tuple([a.name for a in n.all_input_nodes]),
            call=call,
            geometry=geometry,
            traits=plugin.traits if plugin is not None else frozenset(),
            rf=_rf_memo(rfs, st, size) if isinstance(st, TensorRF) and has_rf(st, size) else None,
        )
    return records, list(unsupported), errors


def record_fields(target: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> list[tuple[str, Any]] | None:
    """``[(field, value), ...]`` when ``target(*args, **kwargs)`` builds a namedtuple or dataclass, else ``None``.

    A field the call leaves to its default is ``CONST``.
    """
    if not isinstance(target, type):
        return None
    if issubclass(target, tuple) and hasattr(target, "_fields"):
        names = [str(f) for f in target._fields]
    elif dataclasses.is_dataclass(target):
        names = [f.name for f in dataclasses.fields(target) if f.init]
    else:
        return None
    given = dict(zip(names, args, strict=False))
    if len(args) > len(names) or any(k in given or k not in names for k in kwargs):
        return None  # not a call that builds the record field by field
    given.update(kwargs)
    return [(k, given.get(k, CONST)) for k in names]


class _BadMacs(ValueError):
    """A plugin's ``macs`` returned something that is not a count."""


def _checked_macs(v: Any) -> int | None:
    """``v`` as a MAC count: a non-negative integer (``int``, NumPy or 0-d integer tensor) or ``None``.

    Anything else (a negative number, a float, a bool, a string...) raises :class:`_BadMacs`
    rather than being truncated or summed into the total.
    """
    if v is None:
        return None
    if isinstance(v, bool) or (isinstance(v, torch.Tensor) and v.is_floating_point()):
        raise _BadMacs(repr(v))
    try:
        n = operator.index(v)
    except TypeError:
        raise _BadMacs(f"{type(v).__name__} {v!r}"[:80]) from None
    if n < 0:
        raise _BadMacs(repr(n))
    return n


def has_rf(st: TensorRF, input_size: Sequence[int]) -> bool:
    """A receptive field applies to a tensor that depends on the input: the input has a positional
    axis and the tensor's units depend on positions along it (an input with no positional axis, a
    feature vector, and what is computed from it alone, have none: the table says ``n/a``)."""
    return bool(input_size) and (st.reason is not None or bool(st.scrambled) or bool(st.axes)
                                 or st.table is not None)


def _given_state(val: Any, states: Sequence[Any], k: int, n: fx.Node) -> Any:
    """The state of the ``k``-th placeholder: the ``k``-th given input state (the rest for ``*args``)."""
    if str(n.target).startswith("*"):
        return tuple(states[k:])
    if k >= len(states):
        return CONST  # an argument left to its default
    st = states[k]
    if isinstance(st, TensorRF) and not (isinstance(val, torch.Tensor) and val.dim() == len(st.dims)):
        return _unknown_like(val, "the traced graph's input does not match the example input")
    return st


def _rf_memo(memo: dict[Any, Any], st: TensorRF, input_size: tuple[int, ...]) -> RF:
    """``RF.from_state(st, input_size)``, once per distinct state: looked up by identity first (a
    pointwise op passes its input's state object on), then by value."""
    hit = memo.get(id(st))
    if hit is not None and hit[0] is st:
        return hit[1]  # type: ignore[no-any-return]
    try:
        rf = memo.get(st)
    except TypeError:  # a plugin put something unhashable in the state
        return RF.from_state(st, input_size)
    if rf is None:
        rf = memo[st] = RF.from_state(st, input_size)
    memo[id(st)] = (st, rf)  # holds st, so its id stays its own for this analysis
    return rf


def build_graph(records: dict[str, NodeRecord]) -> nx.DiGraph:
    """The records as a networkx graph: one node per record (attributes ``op``, ``target``,
    ``module``, ``module_class``, ``shape``, ``rf``, ``record``), edges from inputs to users."""
    g = nx.DiGraph()
    for r in records.values():
        g.add_node(r.name, op=r.op, target=r.target, module=r.module, module_class=r.module_class,
                   shape=r.shape, rf=r.rf, record=r)
        for a in r.inputs:
            g.add_edge(a, r.name)
    return g


def _uncovered(st: Any, ctx: OpContext, inputs: Sequence[TensorRF], size: Sequence[int],
               memo: dict[tuple[Any, int, int], bool]) -> int | None:
    """An input axis the periodic result calls global although it was exact in an input whose
    positions along it, all of them, do not see the whole input; ``None`` when there is none."""
    if isinstance(st, TensorRF) and (st.reason is not None or st.table is not None
                                     or not any(isinstance(ax, Global) for ax in st.axes)):
        return None  # no global axis claimed (most nodes)
    outs = [st] if isinstance(st, TensorRF) else [x for x in st if isinstance(x, TensorRF)] \
        if isinstance(st, tuple) else []
    new = {a for o in outs if o.reason is None and o.table is None
           for a, ax in enumerate(o.axes) if isinstance(ax, Global)}
    # an axis some input already sees whole stays global whatever the others add (a residual sum)
    new -= {a for s in inputs if s.reason is None for a, ax in enumerate(s.axes) if isinstance(ax, Global)}
    if not new:
        return None
    for s, v in _pairs((ctx.args, ctx.kwargs), (ctx.arg_values, ctx.kwarg_values)):
        if s.reason is not None or s.table is not None or s.scrambled:
            continue
        for d, tag in enumerate(s.dims):
            parts = [(tag, v.shape[d])] if isinstance(tag, int) else list(tag.parts) if isinstance(tag, Merged) else []
            for a, n in parts:
                if a is None or a not in new or a >= len(s.axes):
                    continue
                ax = s.axes[a]
                if not isinstance(ax, Axis):
                    continue
                key = (ax, int(n), int(size[a]))
                if key not in memo:
                    memo[key] = covers(ax, int(n), int(size[a]))
                if not memo[key]:
                    return a
    return None


def _pairs(states: Any, values: Any) -> list[tuple[TensorRF, torch.Tensor]]:
    """(state, value) of every tensor argument, walking args/kwargs alike."""
    if isinstance(states, TensorRF):
        return [(states, values)] if isinstance(values, torch.Tensor) else []
    if isinstance(states, (list, tuple)) and isinstance(values, (list, tuple)):
        return [p for s, v in zip(states, values, strict=False) for p in _pairs(s, v)]
    if isinstance(states, dict) and isinstance(values, dict):
        return [p for k, s in states.items() if k in values for p in _pairs(s, values[k])]
    return []


def _lost(st: Any) -> bool:
    """A state the periodic rules gave up on (unknown, or positions shuffled)."""
    if isinstance(st, TensorRF):
        return st.table is None and (st.reason is not None or bool(st.scrambled))
    if isinstance(st, tuple):
        return any(_lost(x) for x in st)
    return False


def _reasons(st: Any) -> list[str]:
    if isinstance(st, TensorRF):
        return [st.why] if st.why else []
    if isinstance(st, tuple):
        return [r for x in st for r in _reasons(x)]
    return []


def _call_rule(rule: Any, ctx: OpContext, val: Any, plugin: Plugin, tname: str, strict: bool,
               errors: list[str]) -> Any:
    """Run one rule of ``plugin``: its state, or ``unknown`` with the reason it gave."""
    n = ctx.node
    try:
        st = rule(ctx)
        _check(st, val)
        return st
    except Unsupported as e:
        if strict:
            raise StrictError(f"node {n.name!r}: {tname}: {e}") from e
        return _unknown_like(val, f"{tname}: {e}")
    except Exception as e:  # noqa: BLE001
        msg = f"plugin {plugin.name!r} raised at node {n.name!r} ({tname}): {type(e).__name__}: {e}"
        if strict:
            raise PluginError(msg) from e
        errors.append(msg)
        return _unknown_like(val, msg)


def _has_tensor(v: Any) -> bool:
    if isinstance(v, torch.Tensor):
        return True
    if isinstance(v, (list, tuple)):
        return any(_has_tensor(x) for x in v)
    return False


def _handles_unknown(plugin: Plugin | None) -> bool:
    return bool(plugin is not None and plugin.extra.get("handles_unknown"))


def _check(st: Any, val: Any) -> None:
    if isinstance(val, torch.Tensor):
        if not isinstance(st, (TensorRF, Const)):
            raise TypeError(f"returned {type(st).__name__}, expected TensorRF")
        if isinstance(st, TensorRF) and len(st.dims) != val.dim():
            raise TypeError(f"returned {len(st.dims)} dim tags for a {val.dim()}-d output")
    elif isinstance(val, (list, tuple)):
        if not isinstance(st, tuple) or len(st) != len(val):
            raise TypeError("returned a state that does not match the output tuple")
        for s, v in zip(st, val, strict=False):
            _check(s, v)
